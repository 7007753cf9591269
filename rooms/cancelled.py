"""A cancellation that a library lost on its way, honoured by the loop that owns the task.

On Python 3.11, ``asyncio.wait_for`` returns the result of its inner call when that call
completes in the same turn of the event loop as the cancellation of the task awaiting it, and
the cancellation is gone (python/cpython#86296; 3.12 rewrote ``wait_for`` on
``asyncio.timeout``). redis-py's send path uses ``wait_for`` whenever ``socket_timeout`` is set,
as every Redis client of ours sets it: a room cancelled while it sent to Redis ran on until its
idle stop, 30 s later, past the drain bound (seen on Redis Cluster in tests/rooms/test_engine.py).

The request is still counted on the task (``Task.cancelling()``; ``asyncio.timeout`` and
``TaskGroup`` take back only their own), so a loop that checks before each wait stops there.
"""

from __future__ import annotations

import asyncio
from typing import Any


def raise_if_cancelled(task: asyncio.Task[Any] | None = None) -> None:
    """Raise ``CancelledError`` if ``task`` (the current one when None: pass it in a hot loop,
    finding it costs more than the check) was asked to stop and is still running: the request
    was lost by a call it awaited. Call it before a loop waits for more work."""
    if task is None:
        task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError

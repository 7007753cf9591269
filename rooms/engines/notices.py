"""The publishing side both buses share (``redis_bus.RedisBus``, ``postgres_bus.NotifyBus``):
notices to other processes wait in a bounded queue that the bus's own task sends in batches, in
the order queued. Putting never blocks and never raises: past the bound a notice is dropped and
counted (the receivers repair from the log at their next sync). A batch whose sending fails is
dropped and counted too, and the next waits a backoff, so a backend that is away fills the queue
rather than spinning the task. What differs per bus is how a batch is sent and what counts as
the backend's failure, passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, NoReturn, TypeVar

from rooms.backoff import backoff_delay
from rooms.cancelled import raise_if_cancelled

DROP_WARNING = 10.0
"""Seconds between two warnings about dropped notices (one line per burst, not per notice)."""

N = TypeVar("N")
Batch = list[tuple[str, N]]
"""``(channel, notice)`` pairs, in the order they were queued."""


class Notices(Generic[N]):
    """The bounded queue of notices and its counters: ``published`` and ``dropped``."""

    def __init__(self, limit: int, most: int, log: logging.Logger) -> None:
        """``limit``: notices that may wait; ``most``: notices one batch sends at most;
        ``log``: the bus's logger."""
        self._log = log
        self._queue: asyncio.Queue[tuple[str, N]] = asyncio.Queue(limit)
        self._most = most
        self._warned = float("-inf")
        self.published = 0
        self.dropped = 0

    def put(self, channel: str, notice: N) -> None:
        try:
            self._queue.put_nowait((channel, notice))
        except asyncio.QueueFull:
            self.drop(1, "the queue is full")

    def drop(self, count: int, why: str) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._warned >= DROP_WARNING:
            self._warned = now
            self._log.warning("bus: %d notice(s) to other processes dropped (%s; %d in all); "
                              "their rooms repair from the log at their next sync", count, why,
                              self.dropped)

    async def publish(self, send: Callable[[Batch[N]], Awaitable[None]],
                      failure: Callable[[Exception], str | None], *, base: float,
                      cap: float) -> NoReturn:
        """The bus's publishing task: forever, the next batch to ``send``. ``failure(exc)``
        says why a batch failed when ``exc`` is the backend's failure (then the next batch
        waits a backoff from ``base`` to ``cap`` seconds), or None for anything else (a bug:
        logged with its traceback; the task goes on)."""
        failures = 0
        while True:
            raise_if_cancelled()  # a stop that a call lost (rooms.cancelled)
            batch = [await self._queue.get()]
            while len(batch) < self._most and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await send(batch)
                self.published += len(batch)
                failures = 0
            except Exception as exc:
                why = failure(exc)
                if why is None:
                    self._log.exception("bus: publishing %d notice(s) failed", len(batch))
                    self.drop(len(batch), "an unexpected error")
                else:
                    self.drop(len(batch), why)
                    await asyncio.sleep(backoff_delay(failures, base=base, cap=cap))
                    failures += 1
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def flush(self, timeout: float) -> None:
        """Wait until what is queued was sent (or dropped), for at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._queue.join()


class Publishing(Generic[N]):
    """What a bus publishing through ``Notices`` (its ``_notices``) shows of it."""

    _notices: Notices[N]

    @property
    def published(self) -> int:
        """Notices sent (a statistic)."""
        return self._notices.published

    @property
    def dropped(self) -> int:
        """Notices dropped: the queue full, or their batch failed (a statistic)."""
        return self._notices.dropped

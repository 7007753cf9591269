"""Hypercorn behaviour corrected for a server of many WebSockets: four parts
(``gateway.hypercorn_ext.parts``), each switched on or off process-wide by ``patch``:

- **close_frames: a frame that fails to parse gets its close frame.** wsproto reports a frame
  it cannot accept (invalid UTF-8 in a text frame, a protocol violation, a message inflating
  past the limit) as a ``CloseConnection`` event while its own state stays OPEN; Hypercorn
  0.17-0.18 answers a ``CloseConnection`` only in the REMOTE_CLOSING state, so it dropped the
  TCP connection without the close frame RFC 6455 (section 7.1.7) requires: clients saw 1006
  instead of 1007, 1002 or 1009. ``WSStream._handle_events`` is replaced with the same loop
  plus that close frame.
- **lean_app_queue and lean_events.** Hypercorn gives every connection (and every HTTP/2
  stream) an ``asyncio.Queue(max_app_queue_size)`` between its reading task and the app's
  ``receive()``. An ``asyncio.Queue`` allocates four deques up front (items, getters,
  putters, and its ``join()`` event's waiters), 760 bytes each: ~3.2 KB of an idle WebSocket's
  ~22 KB in bare Hypercorn (measured, bench/profiles/2026-11-26-idle-memory.md). ``AppQueue``
  keeps the same contract (bounded ``put`` that waits, ``get`` that waits, both cancellable)
  in a few slots. ``TaskGroup.spawn_app`` is replaced with Hypercorn's own code using it.
  Likewise Hypercorn's events (``WorkerContext.event_class``, its extension point: one per
  HTTP/1.1 connection, three per HTTP/2 one) become ``LeanEvent``, which allocates nothing
  until someone waits.
- **free_closed: a closed connection is freed at once.** ``TCPServer`` keeps its protocol,
  and the protocol keeps ``TCPServer.protocol_send``: a reference cycle, so every closed
  connection's objects waited for the garbage collector (~44 of them in cycles per connection,
  with ours; 441,590 freed by one full collection after 10,000 closes). ``TCPServer.run`` now
  drops the protocol when it returns. (Our own cycle, through the ASGI send, is broken by
  ``FrameWriter.detach``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Generic, TypeVar

from hypercorn.asyncio import task_group as hypercorn_task_group
from hypercorn.asyncio import tcp_server, worker_context
from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import FrameTooLargeError
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

_T = TypeVar("_T")


async def _handle_events(self: Any) -> None:
    for event in self.connection.events():
        if isinstance(event, Message):
            try:
                self.buffer.extend(event)
            except FrameTooLargeError:
                await self._send_wsproto_event(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG))
                break
            if event.message_finished:
                await self.app_put(self.buffer.to_message())
                self.buffer.clear()
        elif isinstance(event, Ping):
            await self._send_wsproto_event(event.response())
        elif isinstance(event, CloseConnection):
            if self.connection.state is ConnectionState.REMOTE_CLOSING:
                await self._send_wsproto_event(event.response())
            elif self.connection.state is ConnectionState.OPEN:
                # A frame we could not parse: fail the connection with its code (the fix).
                await self._send_wsproto_event(event)
            await self.send(StreamClosed(stream_id=self.stream_id))


class AppQueue(Generic[_T]):
    """``asyncio.Queue(maxsize)`` as Hypercorn uses it (``put`` and ``get`` only), without its
    up-front deques: items and waiters live in lists created when first needed.

    ``put`` waits while ``maxsize`` items are queued (``maxsize`` <= 0: never); ``get`` waits
    while none are. Waiters are served first come, first served; a cancelled waiter leaves
    without losing an item or a wake-up (the next waiter is woken instead).
    """

    __slots__ = ("_getters", "_items", "_maxsize", "_putters")

    def __init__(self, maxsize: int = 0) -> None:
        self._maxsize = maxsize
        self._items: list[_T] = []
        self._getters: list[asyncio.Future[None]] | None = None
        self._putters: list[asyncio.Future[None]] | None = None

    def qsize(self) -> int:
        return len(self._items)

    def _full(self) -> bool:
        return 0 < self._maxsize <= len(self._items)

    @staticmethod
    def _wake_next(waiters: list[asyncio.Future[None]] | None) -> None:
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    @staticmethod
    async def _wait(waiters: list[asyncio.Future[None]], again: Callable[[], bool]) -> None:
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:  # pass on a wake-up this waiter took but cannot use
            waiter.cancel()
            if waiter in waiters:
                waiters.remove(waiter)
            elif again() and not waiter.cancelled():
                AppQueue._wake_next(waiters)
            raise

    async def put(self, item: _T) -> None:
        while self._full():
            if self._putters is None:
                self._putters = []
            await self._wait(self._putters, lambda: not self._full())
        self._items.append(item)
        self._wake_next(self._getters)

    async def get(self) -> _T:
        while not self._items:
            if self._getters is None:
                self._getters = []
            await self._wait(self._getters, lambda: bool(self._items))
        item = self._items.pop(0)
        self._wake_next(self._putters)
        return item


class LeanEvent:
    """Hypercorn's ``Event`` (async ``set``/``clear``/``wait``, ``is_set``) with asyncio.Event's
    semantics: ``set`` wakes every waiter, ``wait`` returns at once while set. Its waiter list
    exists only while someone waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    async def clear(self) -> None:
        self._set = False

    async def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)

    def is_set(self) -> bool:
        return self._set


async def _spawn_app(self: Any, app: Any, config: Any, scope: Any,
                     send: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """``hypercorn.asyncio.task_group.TaskGroup.spawn_app`` (0.17-0.18) with an ``AppQueue``."""
    app_queue: AppQueue[Any] = AppQueue(config.max_app_queue_size)

    def _call_soon(func: Callable[..., Any], *args: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(func(*args), self._loop)
        return future.result()

    self.spawn(
        hypercorn_task_group._handle,
        app,
        config,
        scope,
        app_queue.get,
        send,
        partial(self._loop.run_in_executor, None),
        _call_soon,
    )
    return app_queue.put


_hypercorn_run = tcp_server.TCPServer.run


async def _run(self: Any) -> None:
    """Hypercorn's ``TCPServer.run``, then the connection's protocol dropped: it refers back to
    this server through its ``send`` (a bound ``protocol_send``), a reference cycle that kept
    every closed connection's objects for the garbage collector to find."""
    try:
        await _hypercorn_run(self)
    finally:
        self.__dict__.pop("protocol", None)


_HYPERCORNS = {
    "close_frames": (ws_stream.WSStream, "_handle_events", ws_stream.WSStream._handle_events,
                     _handle_events),
    "lean_app_queue": (hypercorn_task_group.TaskGroup, "spawn_app",
                       hypercorn_task_group.TaskGroup.spawn_app, _spawn_app),
    "lean_events": (worker_context.WorkerContext, "event_class",
                    worker_context.WorkerContext.event_class, LeanEvent),
    "free_closed": (tcp_server.TCPServer, "run", _hypercorn_run, _run),
}
PARTS = tuple(_HYPERCORNS)


def patch(part: str, on: bool) -> None:
    """Process-wide: put ours (``on``) or Hypercorn's own back in place of ``part``'s
    attribute. Idempotent; connections opened afterwards see the change."""
    owner, name, hypercorns, ours = _HYPERCORNS[part]
    setattr(owner, name, ours if on else hypercorns)

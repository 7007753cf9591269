"""One connection's side of a room: a bounded outbox and the writer that empties it.

The room actor puts server objects into ``Session.offer()`` without ever awaiting; the session's
writer (``run_writer``, run by the connection's own handler) sends everything pending as one frame
(objects joined by ``\\n``), so a busy room costs one send per recipient per wake-up instead of
one per message. A full outbox means the client reads slower than the room talks: ``offer()``
returns False and the actor closes the session with 4009; the client resumes from history.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from typing import Protocol

from rooms.engine import HistoryReader
from rooms.protocol import CloseCode, join_frame
from rooms.state import JoinPlan

log = logging.getLogger("roomchat.session")


class Transport(Protocol):
    """The socket, as the session sees it. Raising from ``send`` means the peer is gone."""

    async def send(self, data: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class SessionState(enum.Enum):
    JOINING = "joining"  # created; welcome not yet sent
    ACTIVE = "active"  # writer running
    CLOSING = "closing"  # close requested; the writer sends what is left (if flushing) and closes
    CLOSED = "closed"


class Session:
    """A connection in a room. ``offer`` and ``close_nowait`` are for the room actor only."""

    def __init__(
        self, session_id: int, user: str, name: str, transport: Transport, *,
        outbox_limit: int, max_frame_messages: int, send_timeout: float, close_timeout: float,
    ) -> None:
        self.id = session_id
        self.user = user
        self.name = name
        self.state = SessionState.JOINING
        self.close_code: int | None = None
        self.close_reason = ""
        self._transport = transport
        # (text, objects): a room broadcasts a whole batch as one entry (objects joined by \n).
        self._outbox: deque[tuple[str, int]] = deque()
        self._queued = 0  # objects in the outbox
        self._outbox_limit = outbox_limit
        self._max_frame = max_frame_messages
        self._send_timeout = send_timeout
        self._close_timeout = close_timeout
        # A future only while the writer is idle (cheaper per idle connection than an Event).
        self._waiter: asyncio.Future[None] | None = None
        # Send timeouts are checked from outside (``stalled``/``abort``, by the room's tick)
        # instead of arming a timer around every send: one frame per recipient per broadcast
        # is the hot path, and a timer per frame was a measurable part of it.
        self.sending_since: float | None = None
        self._writer_task: asyncio.Task[object] | None = None
        self._aborting = False

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def open(self) -> bool:
        """Neither closing nor closed."""
        return self.state in (SessionState.JOINING, SessionState.ACTIVE)

    def offer(self, payload: str, count: int = 1) -> bool:
        """Queue ``count`` server objects (``payload``: their texts joined by ``\n``).

        False if that would take the outbox past ``outbox_limit`` objects (the caller closes
        with 4009). An empty outbox always takes one batch, however large.
        """
        if not self.open:
            return True  # nothing more is sent; not a reason to evict again
        if self._queued and self._queued + count > self._outbox_limit:
            return False
        self._outbox.append((payload, count))
        self._queued += count
        self._wake()
        return True

    def close_nowait(self, code: int, reason: str, *, flush: bool = True) -> None:
        """Ask the writer to close with ``code`` (after sending what is queued when ``flush``)."""
        if not self.open:
            return
        self.state = SessionState.CLOSING
        self.close_code = code
        self.close_reason = reason
        if not flush:
            self._drop_queued()
        self._wake()

    def transport_lost(self) -> None:
        """The peer is gone: the writer stops without sending anything more."""
        self.state = SessionState.CLOSED
        self._drop_queued()
        self._wake()

    def _drop_queued(self) -> None:
        self._outbox.clear()
        self._queued = 0

    @property
    def queued(self) -> int:
        """Server objects waiting to be sent."""
        return self._queued

    def stalled(self, now: float) -> bool:
        """Whether one send has been blocked for more than ``send_timeout`` (``time.monotonic``)."""
        return self.sending_since is not None and now - self.sending_since > self._send_timeout

    def abort(self, code: int, reason: str) -> None:
        """Interrupt a stalled send and close with ``code`` (nothing more is sent first)."""
        self.close_nowait(code, reason, flush=False)
        if self.sending_since is not None and self._writer_task is not None:
            self._aborting = True
            self._writer_task.cancel()

    async def run_writer(self, plan: JoinPlan, room: str, store: HistoryReader,
                         history_page: int) -> None:
        """Send the welcome, the replay in ``plan``, then live objects until the session closes.

        Returns when the socket was closed (by ``close_nowait``, a send timeout or a failed send).
        The caller owns this coroutine and runs it for the whole life of the connection.
        """
        if self.state is SessionState.JOINING:
            self.state = SessionState.ACTIVE
        self._writer_task = asyncio.current_task()
        try:
            if not await self._send(plan.welcome):
                return
            after, upto = plan.replay_after, plan.replay_upto
            del plan  # the welcome text is not kept for the life of the connection
            while after < upto and self.state is SessionState.ACTIVE:
                page = await store.read(room, after, upto, min(history_page, self._max_frame))
                if not page:
                    break
                if not await self._send(join_frame([m.to_wire() for m in page])):
                    return
                after = page[-1].seq
            outbox = self._outbox
            while self.state is not SessionState.CLOSED:
                if outbox:
                    frame, taken = outbox.popleft()
                    if outbox and taken < self._max_frame:
                        parts = [frame]
                        while outbox and taken < self._max_frame:
                            text, count = outbox.popleft()
                            parts.append(text)
                            taken += count
                        frame = join_frame(parts)
                    self._queued -= taken
                    if not await self._send(frame):
                        return
                elif self.state is SessionState.CLOSING:
                    await self._close()
                    return
                else:
                    self._waiter = asyncio.get_running_loop().create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
        finally:
            self.state = SessionState.CLOSED

    async def _send(self, frame: str) -> bool:
        """Send one frame. False when the peer is gone or too slow (then the session is done)."""
        self.sending_since = time.monotonic()
        try:
            await self._transport.send(frame)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._aborting and task is not None and task.uncancel() == 0:
                # Our own abort (the client stopped reading), not a cancellation from outside.
                self._aborting = False
                self.sending_since = None
                await self._close()
                return False
            raise
        except Exception as exc:  # peer gone: ClientDisconnectedError, UnexpectedMessageError...
            log.debug("session %s: send failed: %r", self.id, exc)
            self.state = SessionState.CLOSED
            return False
        finally:
            self.sending_since = None
        return True

    async def _close(self) -> None:
        code = self.close_code if self.close_code is not None else CloseCode.NORMAL
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._transport.close(code, self.close_reason)
        except TimeoutError:
            log.info("session %s: close frame not sent within %.1fs", self.id,
                     self._close_timeout)
        except Exception as exc:
            log.debug("session %s: close failed: %r", self.id, exc)

"""One connection's side of a room: a bounded outbox and the writer that empties it.

The room actor puts server objects into ``Session.offer()`` without ever awaiting; the session's
writer (``run_writer``, run by the connection's own handler) sends everything pending as one frame
(objects joined by ``\\n``), so a busy room costs one send per recipient per wake-up instead of
one per message. A full outbox means the client reads slower than the room talks: ``offer()``
returns False and the actor closes the session with 4009; the client resumes from history.

Two promises hold on every close path (1012 drain, 4001, 4009, 4010, a failed send):

- Nothing is sent past a gap. Live objects queued behind an unfinished replay carry seqs beyond
  it, so a close during the replay drops them: the client sees a contiguous prefix and resumes
  with ``after=<last seq it got>``.
- The closing phase (flush, then the close frame) lasts at most ``close_timeout`` from the close
  request; then the transport is aborted, so a client that stopped reading can hold neither the
  writer nor its TCP socket.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from typing import Protocol, cast, runtime_checkable

from rooms import protocol
from rooms.engine import HistoryReader
from rooms.messages import Entry, StoredMessage
from rooms.protocol import CloseCode, join_frame
from rooms.state import JoinPlan

log = logging.getLogger("roomchat.session")


class Transport(Protocol):
    """The socket, as the session sees it. Raising from ``send`` means the peer is gone."""

    async def send(self, data: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@runtime_checkable
class AbortableTransport(Transport, Protocol):
    """A transport that can also be dropped at once (e.g. ``gateway.hypercorn_ext.FrameWriter``).

    ``abort`` must not block: it drops the connection without a close frame, and pending or
    later sends fail or return. A transport without it (the admin stream's) cannot be freed by
    the session when its close frame is stuck; its owner must do it.
    """

    def abort(self) -> None: ...


@runtime_checkable
class ImmediateTransport(Transport, Protocol):
    """A transport that can write a frame at once when that cannot block
    (``gateway.hypercorn_ext.fastsend``): True when written, False when the caller must
    ``send`` it."""

    def send_now(self, data: str) -> bool: ...


class SharedFrame:
    """One payload a broadcast offers to many sessions, with the wire bytes of it that a
    transport built for the first member it wrote to, for the others to reuse.

    ``ws_frame``: the payload as one final, unmasked WebSocket text frame without extensions
    (RFC 6455 section 5.2): the same bytes for every connection that negotiated no extension,
    so the payload is encoded and framed once per broadcast, not once per member (issue 22,
    item 3). Only transports that write exactly that frame may read or fill it."""

    __slots__ = ("text", "ws_frame")

    def __init__(self, text: str) -> None:
        self.text = text
        self.ws_frame: bytes | None = None


@runtime_checkable
class SharedTransport(ImmediateTransport, Protocol):
    """An ``ImmediateTransport`` that can write a broadcast's shared frame at once
    (``gateway.hypercorn_ext.fastsend``): as ``send_now(shared.text)``, building
    ``shared.ws_frame`` if no member's transport has yet."""

    def send_shared_now(self, shared: SharedFrame) -> bool: ...


@runtime_checkable
class ProgressTransport(Transport, Protocol):
    """A transport that can tell how far the peer has read (``gateway.hypercorn_ext.fastsend``):
    ``(acked, pending)`` bytes, or None."""

    def tcp_progress(self) -> tuple[int, int] | None: ...


# What each transport class can do: isinstance() against a runtime-checkable Protocol inspects
# every member each time (~2 µs each, 2% of a handshake's CPU in a py-spy profile). Keyed by
# class, so it holds one entry per transport class in the program.
_CAPABILITIES: dict[type, tuple[bool, bool, bool, bool]] = {}


def _capabilities(transport: Transport) -> tuple[bool, bool, bool, bool]:
    """``(abortable, reports progress, writes at once, writes shared frames)`` of
    ``transport``'s class."""
    kind = type(transport)
    known = _CAPABILITIES.get(kind)
    if known is None:
        known = _CAPABILITIES[kind] = (isinstance(transport, AbortableTransport),
                                       isinstance(transport, ProgressTransport),
                                       isinstance(transport, ImmediateTransport),
                                       isinstance(transport, SharedTransport))
    return known


class SessionState(enum.Enum):
    JOINING = "joining"  # created; welcome not yet sent
    ACTIVE = "active"  # writer running
    CLOSING = "closing"  # close requested; the writer sends what is left (if flushing) and closes,
    # within close_timeout of the request
    CLOSED = "closed"


class Session:
    """A connection in a room. ``offer`` and ``close_nowait`` are for the room actor only."""

    def __init__(
        self, session_id: int, user: str, name: str, transport: Transport, *,
        outbox_limit: int, max_frame_messages: int, send_timeout: float, close_timeout: float,
        moderator: bool = False,
    ) -> None:
        self.id = session_id
        self.user = user
        self.name = name
        self.moderator = moderator  # may delete messages and ban users in this room
        self.state = SessionState.JOINING
        self.close_code: int | None = None
        self.close_reason = ""
        self._transport = transport
        # (text, objects): a room broadcasts a whole batch as one entry (objects joined by \n).
        # Created on demand and dropped once drained: an empty deque still holds a 64-slot
        # block (760 bytes), and most connections are idle most of the time.
        self._outbox: deque[tuple[str, int]] | None = None
        self._plan: JoinPlan | None = None  # handed to the writer; dropped once the welcome is sent
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
        # Our own cancellations of the writer (abort of a stalled send, close deadline) are told
        # apart from a cancellation from outside by this flag plus Task.uncancel().
        self._interrupting = False
        self._replay_done = False  # until then the outbox may lie beyond a gap (see close_nowait)
        self._replay_progress: float | None = None
        self._acked_seen: int | None = None  # ``reading``'s last look at the peer's TCP acks
        self._replay_tail: int | None = None  # acked bytes at which the whole replay is read
        self._close_timer: asyncio.TimerHandle | None = None
        self._expired = False  # the closing phase ran out of time; the transport was aborted
        abortable, progress, immediate, shares = _capabilities(transport)
        self._abortable = cast(AbortableTransport, transport) if abortable else None
        self._progress = cast(ProgressTransport, transport) if progress else None
        # The transport again, typed by what it can do (no cast per offer, which runs per member
        # per broadcast; references, not bound methods: nothing more kept per connection).
        self._immediate = cast(ImmediateTransport, transport) if immediate else None
        self._sharing = cast(SharedTransport, transport) if shares else None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def open(self) -> bool:
        """Neither closing nor closed."""
        return self.state in (SessionState.JOINING, SessionState.ACTIVE)

    def offer(self, payload: str, count: int = 1, shared: SharedFrame | None = None, *,
              lazy: bool = False) -> bool:
        """Queue ``count`` server objects (``payload``: their texts joined by ``\n``).
        ``shared``: the broadcast's ``SharedFrame`` of ``payload`` when other sessions are
        offered the same payload (its bytes are then built once for all of them). ``lazy``:
        queue without waking the writer; the caller must ``flush`` later (the next offer that
        is not lazy sends it too, ahead of itself).

        False if that would take the outbox past ``outbox_limit`` objects (the caller closes
        with 4009). An empty outbox always takes one batch, however large.
        """
        if not self.open:
            return True  # nothing more is sent; not a reason to evict again
        if self._queued and self._queued + count > self._outbox_limit:
            return False
        waiter = self._waiter
        immediate = self._immediate
        if (not lazy and self._outbox is None and immediate is not None and waiter is not None
                and not waiter.done()
                and self.state is SessionState.ACTIVE and count <= self._max_frame
                and (immediate.send_now(payload) if shared is None or self._sharing is None
                     else self._sharing.send_shared_now(shared))):
            # The writer is idle in its live loop (so nothing is queued before this) and the
            # socket took the frame without buffering: written here, without waking the writer
            # task. In small rooms that wake-up, one per member per message, was a large part
            # of a delivery's cost. Anything else (a backlog, a closing socket) is queued.
            return True
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        outbox.append((payload, count))
        self._queued += count
        if not lazy:
            self._wake()
        return True

    def flush(self) -> None:
        """Send what ``offer(lazy=True)`` queued (the writer wakes for it)."""
        if self._outbox:
            self._wake()

    @property
    def progress_at(self) -> float | None:
        """While the join replay is being sent: ``time.monotonic()`` of the last frame the socket
        took (the welcome, then each replay page). None before the writer starts and once the
        replay is done.

        A client can't answer a ping queued behind its replay, so a room's heartbeat should
        treat this as "seen at": a replay that keeps moving is a live client, not a zombie. A
        replay that stops moving is caught by ``stalled`` (send_timeout) instead.
        """
        return self._replay_progress

    def reading(self) -> bool:
        """Whether the peer is still reading the join replay and has read more of it since the
        last call (also in the middle of one large page's send). The replay counts as read only
        once the peer's TCP stack has acknowledged
        all of it: after the writer hands over the last page, megabytes may still sit in socket
        buffers, and the client's pongs wait behind them. False once it is all acknowledged,
        and for live traffic: a stopped client's kernel still acks what fits in its buffer, so
        only the heartbeat can tell a zombie there."""
        replaying = self._replay_progress is not None
        if not replaying and self._replay_tail is None:
            return False
        progress = self._progress.tcp_progress() if self._progress is not None else None
        if progress is None:
            return False
        acked, _ = progress
        if not replaying and self._replay_tail is not None and acked >= self._replay_tail:
            self._replay_tail = None
            return False
        moved = self._acked_seen is not None and acked > self._acked_seen
        self._acked_seen = acked
        return moved

    def quiet(self) -> bool:
        """Live and idle: the writer waits for something to send, nothing is queued or being
        sent, and the join replay is done and fully acknowledged. A room whose sessions are all
        quiet has nothing for its housekeeping tick to watch but deadlines
        (``RoomState.next_due``)."""
        waiter = self._waiter
        return (self.state is SessionState.ACTIVE and waiter is not None and not waiter.done()
                and not self._queued and self._replay_done and self._replay_tail is None)

    @property
    def replaying(self) -> bool:
        """The join replay is in progress (the writer started it and has not finished it)."""
        return self._replay_progress is not None

    def close_nowait(self, code: int, reason: str, *, flush: bool = True) -> None:
        """Ask the writer to close with ``code`` (after sending what is queued when ``flush``).

        Whatever happens, the socket is closed or aborted within ``close_timeout`` from now.
        """
        if not self.open:
            return
        self.state = SessionState.CLOSING
        self.close_code = code
        self.close_reason = reason
        if not flush or not self._replay_done:
            # Mid-replay, the outbox holds live objects with seqs beyond the part of the replay
            # not sent yet: sending them would leave a gap the client could never see (it
            # resumes after the last seq it got). Stop at the last contiguous seq instead.
            self._drop_queued()
        self._close_timer = asyncio.get_running_loop().call_later(
            self._close_timeout, self._close_expired)
        self._wake()

    def transport_lost(self) -> None:
        """The peer is gone: the writer stops without sending anything more."""
        self.state = SessionState.CLOSED
        self._drop_queued()
        self._wake()

    def _drop_queued(self) -> None:
        self._outbox = None
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
        if self.sending_since is not None:
            self._interrupt()

    def _interrupt(self) -> None:
        """Cancel whatever the writer is awaiting (a send, a replay read, the close frame)."""
        task = self._writer_task
        if task is not None and self._waiter is None and not self._interrupting:
            self._interrupting = True
            task.cancel()

    def _close_expired(self) -> None:
        """The closing phase took ``close_timeout``: drop the connection."""
        self._close_timer = None
        if self.state is SessionState.CLOSED:
            return
        log.info("session %s: not closed within %.1fs; aborting the connection", self.id,
                 self._close_timeout)
        self._expired = True
        self._drop_queued()
        if self._abortable is not None:
            self._abortable.abort()
        self._interrupt()
        self._wake()

    def _own_cancellation(self) -> bool:
        """In an ``except CancelledError``: whether it came from ``_interrupt`` alone."""
        if not self._interrupting:
            return False
        self._interrupting = False
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0

    async def run_writer(self, plan: JoinPlan, room: str, store: HistoryReader,
                         history_page: int) -> None:
        """Send the welcome, the replay in ``plan``, then live objects until the session closes.

        Returns when the socket was closed (by ``close_nowait``, a send timeout or a failed send)
        or aborted (the closing phase outlived ``close_timeout``). The caller owns this coroutine
        and runs it for the whole life of the connection; the close frame being written does not
        mean the TCP connection is gone (the caller waits for that).
        """
        if self.state is SessionState.JOINING:
            self.state = SessionState.ACTIVE
        self._writer_task = asyncio.current_task()
        # Kept by the session, not by this frame, so that the welcome (the member list: kilobytes
        # in a big room) is freed once sent instead of living as long as the connection. The
        # caller must not keep ``plan`` either.
        self._plan = plan
        del plan
        try:
            try:
                if await self._start(room, store, history_page):
                    # The live loop runs in this frame: an idle connection keeps one writer
                    # frame, not two.
                    while self.state is not SessionState.CLOSED:
                        if self._outbox:
                            # Sent from a call: no local keeps the last frame alive while idle.
                            if not await self._send(self._take_frame()):
                                break
                        elif self.state is SessionState.CLOSING:
                            break
                        else:
                            self._waiter = asyncio.get_running_loop().create_future()
                            try:
                                await self._waiter
                            finally:
                                self._waiter = None
            except asyncio.CancelledError:
                if not self._own_cancellation():
                    raise
            if self.state is SessionState.CLOSING:
                try:
                    await self._close()
                except asyncio.CancelledError:
                    if not self._own_cancellation():
                        raise
        finally:
            self._writer_task = None
            self._plan = None
            self._replay_progress = None
            if self._close_timer is not None:
                self._close_timer.cancel()
                self._close_timer = None
            self.state = SessionState.CLOSED

    async def _start(self, room: str, store: HistoryReader, history_page: int) -> bool:
        """The welcome and the replay. True when live objects may follow; False when closing
        or the peer is gone.

        The replay's end is read before the welcome is sent, so that the welcome can say
        where the replay ends (``replay_upto``: a client cannot tell otherwise when a fresh
        replay, messages only, stops below the welcome's seq, or a resume's last entries were
        removed from the log). A fresh replay is read whole (``history_on_join`` messages, as
        before); a resume's last page is read first (``_tail``) and sent last, so its end is
        exactly what was said. Costs no read more than before when the replay fits in a page."""
        plan, self._plan = self._plan, None
        assert plan is not None
        welcome, after, upto, fresh, ends = (plan.welcome, plan.replay_after, plan.replay_upto,
                                             plan.fresh, plan.ends)
        del plan
        if self._expired:
            return False
        messages: list[StoredMessage] = []
        tail: list[Entry] = []
        tail_after = after
        if fresh and upto:
            self._replay_progress = time.monotonic()
            messages = await store.history(room, before=upto + 1, limit=fresh, newest=True)
            last = messages[-1].seq if messages else 0
        elif after < upto:
            self._replay_progress = time.monotonic()
            page = min(history_page, self._max_frame)
            tail_after, tail = await self._tail(room, store, page, after, upto)
            last = tail[-1].seq if tail else 0
        else:
            last = 0
        if ends:
            welcome = protocol.with_replay_upto(welcome, last)
        if self._expired or not await self._send(welcome):
            return False
        del welcome
        if messages:
            if not await self._fresh(messages):
                return False
        elif tail:
            if not await self._replay(room, store, history_page, after, tail_after):
                return False
            if self.state is SessionState.ACTIVE and not await self._send(
                    join_frame([m.to_wire() for m in tail])):
                return False
        del messages, tail
        if not self.open:
            return False  # closed mid-replay: close_nowait dropped the live outbox (no gap)
        self._replay_done = True
        if self._replay_progress is not None:
            progress = self._progress.tcp_progress() if self._progress is not None else None
            if progress is not None:
                self._replay_tail = progress[0] + progress[1]
        self._replay_progress = None
        return True

    @staticmethod
    async def _tail(room: str, store: HistoryReader, page: int, after: int,
                    upto: int) -> tuple[int, list[Entry]]:
        """The last page of a resume's replay ``(after, upto]``: ``(lo, entries)`` with the
        stored entries in ``(lo, upto']`` (``upto'``: the highest stored seq up to ``upto``),
        at most ``page``; ``(after, [])`` when nothing is stored in the range. Windows of
        ``page`` seqs hold at most ``page`` entries; empty ones (entries removed by an erasure,
        pruned) are stepped over downwards."""
        high = upto
        while high > after:
            low = max(after, high - page)
            entries = await store.read(room, low, high, page)
            if entries:
                return low, entries
            high = low
        return after, []

    async def _replay(self, room: str, store: HistoryReader, history_page: int, after: int,
                      upto: int) -> bool:
        """Send the stored messages in (after, upto], page by page, while active. False when
        the peer is gone. (Its own frame, so the last page is not kept once it is sent.)"""
        while after < upto and self.state is SessionState.ACTIVE:
            page = await store.read(room, after, upto, min(history_page, self._max_frame))
            if not page:
                break  # pruned by retention meanwhile: nothing older can be sent any more
            if not await self._send(join_frame([m.to_wire() for m in page])):
                return False
            after = page[-1].seq
            self._replay_progress = time.monotonic()
        return True

    async def _fresh(self, messages: list[StoredMessage]) -> bool:
        """Send ``messages`` (a join without a recovered resume: the newest, in their current
        state), in frames of at most ``max_frame_messages``. False when the peer is gone."""
        step = self._max_frame
        for start in range(0, len(messages), step):
            if self.state is not SessionState.ACTIVE:
                break
            if not await self._send(join_frame([m.to_wire()
                                                for m in messages[start:start + step]])):
                return False
            self._replay_progress = time.monotonic()
        return True

    def _take_frame(self) -> str:
        """Take the next frame from the (non-empty) outbox: queued batches joined, up to
        ``max_frame_messages`` objects unless the first batch alone is larger."""
        outbox = self._outbox
        assert outbox
        frame, taken = outbox.popleft()
        if outbox and taken < self._max_frame:
            parts = [frame]
            while outbox and taken < self._max_frame:
                text, count = outbox.popleft()
                parts.append(text)
                taken += count
            frame = join_frame(parts)
        if not outbox:
            self._outbox = None
        self._queued -= taken
        return frame

    async def _send(self, frame: str) -> bool:
        """Send one frame. False when the peer is gone (then the session is done)."""
        self.sending_since = time.monotonic()
        try:
            await self._transport.send(frame)
        except Exception as exc:  # peer gone: ClientDisconnectedError, UnexpectedMessageError...
            log.debug("session %s: send failed: %r", self.id, exc)
            self.state = SessionState.CLOSED
            return False
        finally:
            self.sending_since = None
        return True

    async def _close(self) -> None:
        """Send the close frame; bounded by the close deadline armed in ``close_nowait``."""
        if self._expired:
            return
        code = self.close_code if self.close_code is not None else CloseCode.NORMAL
        try:
            await self._transport.close(code, self.close_reason)
        except Exception as exc:
            log.debug("session %s: close failed: %r", self.id, exc)

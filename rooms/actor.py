"""RoomActor: the one task that owns a room.

Callers talk to it only through its inbox: ``join`` (an ask: awaits the actor's answer),
``leave_nowait`` and ``frame_nowait`` (tells). The actor wakes when something arrives or a tick is
due, handles up to ``max_batch`` frames, stores the messages they produced in one commit, then
delivers the results to the sessions' outboxes without awaiting any client.

Supervision: an exception inside the actor is logged, the room's sessions are closed with 1011,
pending asks fail with ``RoomStopped``, and the registry forgets the room; the next join starts a
fresh actor from storage. Nothing escapes to other rooms.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from rooms.config import RoomConfig
from rooms.errors import RoomStopped
from rooms.observer import NullObserver, RoomObserver
from rooms.protocol import ClientFrame, CloseCode
from rooms.session import Session
from rooms.state import Broadcast, Close, Effect, JoinPlan, RoomState, Send
from rooms.store import MessageStore

log = logging.getLogger("roomchat.room")


@dataclass(slots=True)
class _Join:
    session: Session
    after: int | None
    expires_at: float  # Unix time (seconds)
    reply: asyncio.Future[JoinPlan]


@dataclass(slots=True)
class _Leave:
    session_id: int


@dataclass(slots=True)
class _Drain:
    code: CloseCode
    reason: str


@dataclass(slots=True)
class _Frame:
    session_id: int
    frame: ClientFrame
    received_at: float


class RoomLifecycle(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"  # closing its sessions; refuses joins
    STOPPED = "stopped"


class Inbox:
    """A room's inbox: bounded client frames, plus control commands.

    Frames beyond ``limit`` are refused (``put_frame`` returns False; the sender is told ``busy``).
    Control commands (join, leave, drain) are never refused: each connection sends at most one
    join and one leave, so their number is bounded by the connection limit.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.frames: deque[_Frame] = deque()
        self.control: deque[_Join | _Leave | _Drain] = deque()
        self._event = asyncio.Event()

    def put_frame(self, item: _Frame) -> bool:
        if len(self.frames) >= self.limit:
            return False
        self.frames.append(item)
        self._event.set()
        return True

    def put_control(self, item: _Join | _Leave | _Drain) -> None:
        self.control.append(item)
        self._event.set()

    def __bool__(self) -> bool:
        return bool(self.frames or self.control)

    async def wait(self, timeout: float) -> None:
        """Return when something is queued or after ``timeout`` seconds."""
        if self:
            return
        self._event.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            pass


class RoomActor:
    """One room. Create with the registry (``rooms.registry.RoomRegistry``), not directly."""

    def __init__(
        self, room: str, config: RoomConfig, store: MessageStore, *,
        observer: RoomObserver | None = None,
        on_exit: Callable[[RoomActor], None] | None = None,
        state_factory: Callable[..., RoomState] = RoomState,
    ) -> None:
        self.room = room
        self.config = config
        self.lifecycle = RoomLifecycle.STARTING
        self._store = store
        self._observer = observer or NullObserver()
        self._on_exit = on_exit
        self._state_factory = state_factory
        self._inbox = Inbox(config.inbox_limit)
        self._sessions: dict[int, Session] = {}
        self._state: RoomState | None = None

    # -- the handle callers use -------------------------------------------------------------

    async def join(self, session: Session, *, after: int | None, expires_at: float) -> JoinPlan:
        """Admit ``session``; returns what it must send first (welcome, replay).

        Raises ``RoomFull`` or ``RoomStopped``. Whatever happens, the caller must later call
        ``leave_nowait(session.id)`` (it is a no-op for a session that never joined).
        """
        if self.lifecycle in (RoomLifecycle.DRAINING, RoomLifecycle.STOPPED):
            raise RoomStopped(f"room {self.room} is stopping")
        reply: asyncio.Future[JoinPlan] = asyncio.get_running_loop().create_future()
        self._inbox.put_control(_Join(session, after, expires_at, reply))
        return await reply

    def leave_nowait(self, session_id: int) -> None:
        """The session's socket is gone. Never fails."""
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self._inbox.put_control(_Leave(session_id))

    def frame_nowait(self, session_id: int, frame: ClientFrame) -> bool:
        """Hand a client frame to the room. False when the inbox is full (tell the client busy)."""
        if self.lifecycle is RoomLifecycle.STOPPED:
            return True  # its sessions are being closed; the frame has nowhere to go
        return self._inbox.put_frame(_Frame(session_id, frame, time.monotonic()))

    def drain_nowait(self, code: CloseCode, reason: str) -> None:
        """Close every session with ``code``, refuse joins, store what is pending, then stop."""
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self.lifecycle = RoomLifecycle.DRAINING
            self._inbox.put_control(_Drain(code, reason))

    def statistics(self) -> dict[str, object]:
        stats: dict[str, object] = {"room": self.room, "lifecycle": self.lifecycle.value,
                                    "inbox": len(self._inbox.frames)}
        if self._state is not None:
            stats.update(self._state.statistics())
        return stats

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        """The actor's body; the registry runs it as a task and awaits it. Never raises
        ``Exception`` (a crash is contained here); cancellation propagates."""
        crashed = False
        try:
            snapshot = await self._store.load(self.room, self.config.dedup_window)
            self._state = self._state_factory(self.room, self.config, snapshot)
            if self.lifecycle is RoomLifecycle.STARTING:
                self.lifecycle = RoomLifecycle.RUNNING
            self._observer.room_started(self.room)
            await self._loop(self._state)
        except Exception:
            crashed = True
            log.exception("room %s crashed; closing its sessions with 1011", self.room)
            for session in self._sessions.values():
                # abort: no tick will ever check this room's sends again
                session.abort(CloseCode.INTERNAL_ERROR, "room restarting")
                self._observer.session_closed(CloseCode.INTERNAL_ERROR)
        finally:
            self.lifecycle = RoomLifecycle.STOPPED
            self._fail_pending_joins()
            self._sessions.clear()
            if self._on_exit is not None:
                self._on_exit(self)
            self._observer.room_stopped(self.room, crashed)

    async def _loop(self, state: RoomState) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + cfg.tick_interval
        idle_since: float | None = loop.time()
        while True:
            await self._inbox.wait(max(0.0, next_tick - loop.time()))
            if cfg.batch_delay and 0 < len(self._inbox.frames) < cfg.max_batch:
                # Let a burst gather: every message costs one frame per member, and a batch of
                # n costs one frame per member too (and one commit).
                await asyncio.sleep(cfg.batch_delay)
            now = loop.time()
            wall_ms = int(time.time() * 1000)
            effects: list[Effect] = []
            drain: _Drain | None = None
            while self._inbox.control:
                cmd = self._inbox.control.popleft()
                if isinstance(cmd, _Join):
                    effects += self._admit(state, cmd, now, wall_ms)
                elif isinstance(cmd, _Leave):
                    if self._sessions.pop(cmd.session_id, None) is not None:
                        effects += state.leave(cmd.session_id, wall_ms)
                else:
                    drain = cmd
            frames = self._inbox.frames
            count = min(len(frames), cfg.max_batch)
            oldest = frames[0].received_at if count else 0.0
            for _ in range(count):
                item = frames.popleft()
                effects += state.receive(item.session_id, item.frame, now, wall_ms)
            if count:
                self._observer.frames_received(count)
            self._deliver(state, effects, wall_ms)

            batch = state.take_pending()
            if batch:
                await self._store.append(batch, cfg.history_retention)
                self._deliver(state, state.committed(batch), wall_ms)
                self._observer.broadcast_latency(time.monotonic() - oldest)

            if now >= next_tick:
                next_tick = now + cfg.tick_interval
                self._deliver(state, state.tick(now, wall_ms), wall_ms)
                self._abort_stalled(state, wall_ms)

            if drain is not None:
                for session_id in list(self._sessions):
                    self._deliver(state, state.evict(session_id, drain.code, drain.reason,
                                                     wall_ms), wall_ms)
                # Frames still queued come from sessions just closed: their messages were never
                # acked, so their clients resend them after reconnecting.
                return
            if self._sessions or self._inbox:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= cfg.room_idle_ttl:
                # No await between this check and leaving the registry: no join can slip in.
                log.debug("room %s idle for %.0fs; stopping", self.room, now - idle_since)
                self.lifecycle = RoomLifecycle.STOPPED
                return

    def _admit(self, state: RoomState, cmd: _Join, now: float, wall_ms: int) -> list[Effect]:
        if cmd.reply.done():  # the caller gave up (disconnected) before we got to it
            return []
        if self.lifecycle is not RoomLifecycle.RUNNING:
            cmd.reply.set_exception(RoomStopped(f"room {self.room} is stopping"))
            return []
        session = cmd.session
        try:
            plan, effects = state.join(
                session.id, session.user, session.name, after=cmd.after,
                expires_at=now + (cmd.expires_at - wall_ms / 1000), now=now, wall_ms=wall_ms,
            )
        except Exception as exc:  # RoomFull: the caller's problem, not the room's
            cmd.reply.set_exception(exc)
            return []
        self._sessions[session.id] = session
        cmd.reply.set_result(plan)
        return effects

    def _deliver(self, state: RoomState, effects: list[Effect], wall_ms: int) -> None:
        """Put effects into outboxes. Never awaits; overflowing sessions are closed with 4009."""
        overflow: list[int] = []
        delivered = 0
        for effect in effects:
            if isinstance(effect, Broadcast):
                payload, exclude, count = effect.payload, effect.exclude, effect.count
                for session in self._sessions.values():
                    if session.id != exclude:
                        if session.offer(payload, count):
                            delivered += count
                        else:
                            overflow.append(session.id)
            elif isinstance(effect, Send):
                target = self._sessions.get(effect.session)
                if target is not None and not target.offer(effect.payload):
                    overflow.append(effect.session)
            elif isinstance(effect, Close):
                closing = self._sessions.pop(effect.session, None)
                if closing is not None:
                    closing.close_nowait(effect.code, effect.reason, flush=effect.flush)
                    self._observer.session_closed(effect.code)
        if delivered:
            self._observer.messages_delivered(delivered)
        for session_id in overflow:
            if session_id in self._sessions:
                log.info("room %s: session %s is too slow; closing with 4009", self.room,
                         session_id)
                self._deliver(state, state.evict(session_id, CloseCode.SLOW_CONSUMER,
                                                 "slow consumer", wall_ms, flush=False), wall_ms)

    def _abort_stalled(self, state: RoomState, wall_ms: int) -> None:
        """Close sessions whose writer has been stuck in one send for ``send_timeout``."""
        mono = time.monotonic()
        for session in [s for s in self._sessions.values() if s.stalled(mono)]:
            log.info("room %s: session %s stalled in a send; closing with 4009", self.room,
                     session.id)
            self._deliver(state, state.evict(session.id, CloseCode.SLOW_CONSUMER,
                                             "slow consumer", wall_ms, flush=False), wall_ms)
            session.abort(CloseCode.SLOW_CONSUMER, "slow consumer")

    def _fail_pending_joins(self) -> None:
        while self._inbox.control:
            cmd = self._inbox.control.popleft()
            if isinstance(cmd, _Join) and not cmd.reply.done():
                cmd.reply.set_exception(RoomStopped(f"room {self.room} stopped"))
        self._inbox.frames.clear()

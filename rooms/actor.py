"""RoomActor: the one task that owns a room (in this process).

Callers talk to it only through its inbox: ``join`` and ``submit`` (asks: await the actor's
answer), ``leave_nowait``, ``frame_nowait`` and the moderation tell ``ban_nowait``. The actor
wakes when something arrives or a tick is due, handles up to ``max_batch`` frames, stores the
messages and changes they produced in one engine append (the log checks the changes against
their targets' current state), then delivers the results to the sessions' outboxes without
awaiting any client. Read markers members move are written by a task of the actor's own
(``_write_reads``), so the room never waits for them.

With a shared engine (Redis) other processes serve members of the same room: the engine hands
the actor their log entries (``remote_messages``, a bounded lane: overflow is repaired from the
log), presence changes and read markers; the actor delivers strictly in seq order, reads any gap
from the log, and syncs with the engine every ``sync_interval`` (presence, and the log's top seq
as a check that nothing published was missed). Deletes, edits and reactions are entries of the
log like messages, so they travel, and are repaired, the same way.

Moderators (``Session.moderator``) may delete others' messages (a change entry like the
author's own delete) and send ``ban`` frames: ``RoomState`` applies the rules and queues what
passes; after each batch is stored the actor carries the bans out through the engine (the same
call as the server API) and delivers what follows (the banned user's 4004 closes, the
moderator's answer). Other processes hear of it from the engine. A storage failure there
answers the moderator ``unavailable``; nothing else changes.

Storage outages: a failed append is retried with backoff; meanwhile members get an
``unavailable`` error and their new messages are refused (not acked: they resend). An append
(or the first load) that takes longer than ``store_timeout`` counts as failed: a store that
hangs instead of failing holds the room that long at most. After ``store_outage_timeout`` the
room closes its sessions with 1013 and stops; clients reconnect and resume once storage is
back.

Supervision: an exception inside the actor is logged, the room's sessions are closed with 1011,
pending asks fail with ``RoomStopped``, and the registry forgets the room; the next join starts a
fresh actor from storage. Nothing escapes to other rooms.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rooms import protocol
from rooms.batching import BatchPacer
from rooms.config import RoomConfig
from rooms.engine import Ban, Engine
from rooms.errors import (
    Banned,
    LogReset,
    RoomBusy,
    RoomError,
    RoomStopped,
    StoreError,
    Unstorable,
)
from rooms.messages import AnyDraft, Appended, Draft, Unread, WireMessage
from rooms.observer import NullObserver, RoomObserver
from rooms.protocol import ClientFrame, CloseCode, ErrorCode
from rooms.session import Session
from rooms.state import (
    Broadcast,
    Close,
    Effect,
    JoinPlan,
    Moderation,
    ModerationOutcome,
    RoomState,
    Send,
)

log = logging.getLogger("roomchat.room")

READ_RETRY = 1.0
"""Seconds before read markers that storage refused are written again."""
MAX_RESETS = 2
"""``LogReset``s one append may meet in a row before it counts as a storage failure (each
reset takes the log's new epoch and top, so a second is another process moving it too)."""


Stored = Callable[[str, Sequence[AnyDraft], Sequence[Appended]], None]
"""Told ``(room, batch, results)`` after each append of the room's own drafts (members' and
the server API's), on the room's loop: it must not block (queue the work, return). What the
gateway uses to attach a message's files once its seq is known, and to remove the files of
deleted and pruned messages (``gateway.attachments``): the room never touches files."""


@dataclass(slots=True)
class _Join:
    session: Session
    after: int | None
    expires_at: float  # Unix time (seconds)
    reply: asyncio.Future[JoinPlan]
    checked: int  # RoomActor._bans_applied when the user's ban check began
    epoch: str | None  # of the welcome the client resumes from, if it said
    unread: Unread  # the user's read marker and counts, read before the join
    top: int  # the log's top when the join was asked for (shared engines; else 0)


class _BanRaced(Exception):
    """The answer to a join whose ban check began before the room carried out a ban of its
    user: ``join`` checks again (the ban is stored by then) instead of admitting it."""


@dataclass(slots=True)
class _Leave:
    session_id: int


@dataclass(slots=True)
class _Revoke:
    user: str


@dataclass(slots=True)
class _Publish:
    """A message or a change from the server API (``RoomActor.submit``); its ``ts`` is set
    when the room accepts it."""

    draft: AnyDraft
    reply: asyncio.Future[Appended]


@dataclass(slots=True)
class _Ban:
    """Close ``user``'s sessions with 4004 (the ban itself is in the engine)."""

    user: str
    reason: str


@dataclass(slots=True)
class _Read:
    """``user``'s read marker moved to ``seq`` on another process: tell their sessions here."""

    user: str
    seq: int


_Moderation = _Publish | _Ban | _Read


@dataclass(slots=True)
class _Drain:
    code: CloseCode
    reason: str


@dataclass(slots=True)
class _Frame:
    session_id: int
    frame: ClientFrame
    received_at: float


@dataclass(frozen=True, slots=True)
class RoomCounts:
    """What a room holds now (``RoomActor.counts``): ``sessions``, this process's connections
    to it; ``members``, the users present on any process (as of the last sync); ``seq``, the
    newest message delivered."""

    room: str
    sessions: int
    members: int
    seq: int


class RoomLifecycle(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"  # closing its sessions; refuses joins
    STOPPED = "stopped"


class Inbox:
    """A room's inbox: bounded client frames, control commands, and what other processes did.

    Frames beyond ``limit`` are refused (``put_frame`` returns False; the sender is told ``busy``).
    Control commands (join, leave, drain) are never refused: each connection sends at most one
    join and one leave, so their number is bounded by the connection limit. Remote batches beyond
    ``limit`` are dropped and ``repair`` is set: the actor then reads the log instead.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.frames: deque[_Frame] = deque()
        self.control: deque[_Join | _Leave | _Drain | _Revoke | _Moderation] = deque()
        self.remote: deque[list[WireMessage]] = deque()
        self.repair = False  # remote batches were dropped, or the feed was interrupted
        self.presence = False  # another process's members changed
        self._waiter: asyncio.Future[None] | None = None  # only while the actor waits

    def put_remote(self, messages: list[WireMessage]) -> None:
        if len(self.remote) >= self.limit:
            self.repair = True
        else:
            self.remote.append(messages)
        self._wake()

    def flag(self, *, repair: bool = False, presence: bool = False) -> None:
        self.repair |= repair
        self.presence |= presence
        self._wake()

    def put_frame(self, item: _Frame) -> bool:
        if len(self.frames) >= self.limit:
            return False
        self.frames.append(item)
        self._wake()
        return True

    def put_control(self, item: _Join | _Leave | _Drain | _Revoke | _Moderation) -> None:
        self.control.append(item)
        self._wake()

    def __bool__(self) -> bool:
        return bool(self.frames or self.control or self.remote or self.repair or self.presence)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Return when something is queued or after ``timeout`` seconds."""
        if self:
            return
        # One future and one timer handle per wait. ``asyncio.timeout`` around an ``Event``
        # allocated three more objects per wait and cancelled through the task; with a
        # thousand rooms each waking for every message and every tick, those short-lived
        # objects were a visible part of a message's cost and of every GC pass.
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, self._wake)  # cancelled below before a next wait
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


class RoomActor:
    """One room. Create with the registry (``rooms.registry.RoomRegistry``), not directly."""

    def __init__(
        self, room: str, config: RoomConfig, engine: Engine, *,
        observer: RoomObserver | None = None,
        on_exit: Callable[[RoomActor], None] | None = None,
        state_factory: Callable[..., RoomState] = RoomState,
        on_stored: Stored | None = None,
    ) -> None:
        self.room = room
        self._on_stored = on_stored
        self.config = config
        self.lifecycle = RoomLifecycle.STARTING
        self._engine = engine
        self._observer = observer or NullObserver()
        self._on_exit = on_exit
        self._state_factory = state_factory
        self._inbox = Inbox(config.inbox_limit)
        self._sessions: dict[int, Session] = {}
        self._state: RoomState | None = None
        self._failure: RoomError = RoomStopped(f"room {room} stopped")
        self._rules = config.rules
        # Read markers members moved, waiting for ``_write_reads`` (at most one per member).
        self._reads: dict[str, int] = {}
        self._reads_waiting: asyncio.Future[None] | None = None
        # Storage outage: the batch being retried, since when, and the next attempt.
        self._retry: list[AnyDraft] | None = None
        # Adaptive on the embedded engine; a fixed wait on a shared one (see BatchPacer).
        self._pacer = BatchPacer(config.batch_cost_factor, config.batch_delay,
                                 floor=config.batch_delay if engine.shared else 0.0)
        self._outage_since: float | None = None
        self._next_attempt = 0.0
        self._backoff = 0.0
        # Server-API publishes waiting for their seq, by ticket (bounded by ``inbox_limit``).
        self._publishing: dict[int, asyncio.Future[Appended]] = {}
        self._tickets = itertools.count(1)
        # Bans against joins racing them: a join's ban check happens before it reaches the
        # inbox (in the caller, so the room never waits for it), and a ban can be decided in
        # between. Each ban the room carries out bumps ``_bans_applied``; ``_banned_at`` keeps,
        # per user, that count at their latest ban; ``_checking`` counts the joins by the count
        # at which their check began. A join admitted later than a ban of its user that came
        # after its check began is sent back to check again. Entries older than every join in
        # flight are dropped, so both stay as small as the bans of the last moment.
        self._bans_applied = 0
        self._banned_at: dict[str, int] = {}
        self._checking: dict[int, int] = {}

    # -- the handle callers use -------------------------------------------------------------

    async def join(self, session: Session, *, after: int | None, expires_at: float,
                   epoch: str | None = None) -> JoinPlan:
        """Admit ``session``; returns what it must send first (welcome, replay). ``after`` and
        ``epoch``: what the client saw last (``RoomState.join``).

        Raises ``RoomFull``, ``RoomStopped``, ``Banned`` or ``StoreError`` (storage
        unavailable). Whatever
        happens, the caller must later call ``leave_nowait(session.id)`` (it is a no-op for a
        session that never joined).
        """
        if self.lifecycle in (RoomLifecycle.DRAINING, RoomLifecycle.STOPPED):
            raise RoomStopped(f"room {self.room} is stopping")
        while True:
            checked = self._bans_applied
            self._checking[checked] = self._checking.get(checked, 0) + 1
            try:
                await self.check_ban(session.user)
                unread = await self._engine.unread(self.room, session.user,
                                                   scan=self.config.unread_scan)
                # Read your writes across processes: whatever was acked anywhere before this
                # join is in its welcome, though its pub/sub message may still be on the way.
                top = await self._engine.top(self.room) if self._engine.shared else 0
                reply: asyncio.Future[JoinPlan] = asyncio.get_running_loop().create_future()
                self._inbox.put_control(_Join(session, after, expires_at, reply, checked,
                                              epoch, unread, top))
                return await reply
            except _BanRaced:
                continue  # banned while being checked: the stored ban answers this time
            finally:
                left = self._checking.pop(checked) - 1
                if left:
                    self._checking[checked] = left

    async def publish(self, user: str, name: str, client_id: str | None,
                      text: str) -> Appended:
        """``submit`` a plain message (no reply, no mentions)."""
        return await self.submit(Draft(user, name, client_id, text, 0))

    async def submit(self, draft: AnyDraft) -> Appended:
        """Store a message or a change from the server API (not from a member's socket) and
        deliver it like a member's: same seq allocation, the log's rules for changes and
        replies, dedup by ``(user, id)``, durability. ``draft.ts`` is ignored: the room
        stamps it when it takes it. Returns once it is stored and delivered to this
        process's members, or refused by the log's rules (``Appended.refused``), or found a
        no-op (``Appended.noop``: a reaction that changes nothing).

        Raises ``RoomStopped``, ``RoomBusy`` (too many submissions waiting: retry shortly),
        ``Unstorable`` (a text the store cannot hold) or ``StoreError`` (storage
        unavailable: not stored; retry with the same id).
        """
        if self.lifecycle in (RoomLifecycle.DRAINING, RoomLifecycle.STOPPED):
            raise RoomStopped(f"room {self.room} is stopping")
        waiting = len(self._publishing) + sum(isinstance(c, _Publish)
                                              for c in self._inbox.control)
        if waiting >= self.config.inbox_limit:
            raise RoomBusy(f"room {self.room} is busy; retry shortly")
        reply: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._inbox.put_control(_Publish(draft, reply))
        return await reply

    async def check_ban(self, user: str) -> None:
        """Raise ``Banned`` if ``user`` is banned from this room now (``StoreError`` if the
        engine cannot tell)."""
        ban = await self._engine.banned(self.room, user)
        if ban is not None:
            raise Banned(user, ban.until, ban.reason)

    def ban_nowait(self, user: str, reason: str) -> None:
        """Close every session of ``user`` with 4004 (banned); the ban is already stored."""
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self._inbox.put_control(_Ban(user, reason))

    def presence(self) -> list[dict[str, str]]:
        """Everyone in the room as this process knows it (its members, then other processes'
        as of the last sync). Changes nothing."""
        return self._state.members() if self._state is not None else []

    def leave_nowait(self, session_id: int) -> None:
        """The session's socket is gone. Never fails."""
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self._inbox.put_control(_Leave(session_id))

    def frame_nowait(self, session_id: int, frame: ClientFrame) -> bool:
        """Hand a client frame to the room. False when the inbox is full (tell the client busy)."""
        if self.lifecycle is RoomLifecycle.STOPPED:
            return True  # its sessions are being closed; the frame has nowhere to go
        return self._inbox.put_frame(_Frame(session_id, frame, time.monotonic()))

    def revoke_nowait(self, user: str) -> None:
        """Close every session of ``user`` with 4003 (their access was revoked)."""
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self._inbox.put_control(_Revoke(user))

    def drain_nowait(self, code: CloseCode, reason: str) -> None:
        """Close every session with ``code``, refuse joins, store what is pending, then stop."""
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self.lifecycle = RoomLifecycle.DRAINING
            self._inbox.put_control(_Drain(code, reason))

    def counts(self) -> RoomCounts:
        """The room's counts, typed (``statistics()`` is the free-form view). Changes nothing."""
        state = self._state
        if state is None:  # not loaded yet
            return RoomCounts(self.room, 0, 0, 0)
        return RoomCounts(self.room, state.session_count, len(state.members()),
                          state.delivered_seq)

    def statistics(self) -> dict[str, object]:
        stats: dict[str, object] = {"room": self.room, "lifecycle": self.lifecycle.value,
                                    "inbox": len(self._inbox.frames)}
        if self._state is not None:
            stats.update(self._state.statistics())
        return stats

    # -- rooms.engine.RoomListener: called by the engine, never blocks ----------------------

    def remote_messages(self, messages: list[WireMessage]) -> None:
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self._inbox.put_remote(messages)

    def remote_presence(self) -> None:
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self._inbox.flag(presence=True)

    def resync(self) -> None:
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self._inbox.flag(repair=True, presence=True)

    def remote_banned(self, user: str, reason: str) -> None:
        self.ban_nowait(user, reason)

    def remote_read(self, user: str, seq: int) -> None:
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self._inbox.put_control(_Read(user, seq))

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        """The actor's body; the registry runs it as a task and awaits it. Never raises
        ``Exception`` (a crash is contained here); cancellation propagates."""
        crashed = False
        engine = self._engine
        try:
            # Subscribe before loading: whatever is published from now on reaches us, and
            # anything published in between shows up as a gap, repaired from the log.
            engine.subscribe(self.room, self)
            try:
                async with asyncio.timeout(self.config.store_timeout):
                    snapshot = await engine.load(self.room, self.config.dedup_window)
            except (StoreError, TimeoutError) as exc:
                failure = self._store_error("load", exc)
                log.warning("room %s: cannot load: %s", self.room, failure)
                self._failure = failure
                return
            self._state = self._state_factory(self.room, self.config, snapshot)
            if self.lifecycle is RoomLifecycle.STARTING:
                self.lifecycle = RoomLifecycle.RUNNING
            self._observer.room_started(self.room)
            async with asyncio.TaskGroup() as tasks:
                writer = tasks.create_task(self._write_reads(), name=f"room-{self.room}-reads")
                try:
                    await self._loop(self._state)
                finally:
                    writer.cancel()
        except Exception:
            crashed = True
            log.exception("room %s crashed; closing its sessions with 1011", self.room)
            for session in self._sessions.values():
                # abort: no tick will ever check this room's sends again
                session.abort(CloseCode.INTERNAL_ERROR, "room restarting")
                self._observer.session_closed(CloseCode.INTERNAL_ERROR)
        finally:
            self.lifecycle = RoomLifecycle.STOPPED
            engine.unsubscribe(self.room, self)
            self._fail_pending_joins()
            self._sessions.clear()
            if self._on_exit is not None:
                self._on_exit(self)
            self._observer.room_stopped(self.room, crashed)

    async def _loop(self, state: RoomState) -> None:
        cfg = self.config
        shared = self._engine.shared
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + cfg.tick_interval
        next_sync = loop.time() if shared else float("inf")
        idle_since: float | None = loop.time()
        gap_since: float | None = None
        last_arrival = float("-inf")
        inbox = self._inbox
        pacer = self._pacer
        while True:
            wake = min(next_tick, next_sync)
            if self._retry is not None:
                wake = min(wake, self._next_attempt)
            if gap_since is not None:
                wake = min(wake, gap_since + cfg.gap_repair_delay)
            await inbox.wait(max(0.0, wake - loop.time()))
            arrived = bool(inbox.frames or inbox.remote)
            if arrived and len(inbox.frames) < cfg.max_batch:
                # Busy: let a burst gather, since every batch costs one frame per member and
                # one commit; how long depends on what this room's broadcasts cost (see
                # BatchPacer). A quiet room does not wait: its message goes out at once (what
                # arrives while that commit is in flight forms the next batch by itself).
                pause = pacer.wait(loop.time() - last_arrival)
                if pause:
                    await asyncio.sleep(pause)
            if arrived:
                last_arrival = loop.time()
            now = loop.time()
            wall_ms = int(time.time() * 1000)
            effects: list[Effect] = []
            drain: _Drain | None = None
            # Sessions whose socket is gone: they leave after the frames below, which they sent
            # before it went (a read marker, a message sent just before the page closed).
            leaving: list[int] = []
            if shared and any(isinstance(c, _Join) and max(c.after or 0, c.top)
                              > state.delivered_seq for c in inbox.control):
                # A join after a message was stored on another process that this one has not
                # delivered yet (its pub/sub message is on the way): catch up first (what
                # arrived, then the log). The welcome then has everything acked before the
                # join; and a client resuming here with that seq as its `after` is not taken
                # for a reset (a replay from the start: duplicates).
                while inbox.remote:
                    self._deliver(state, state.feed(inbox.remote.popleft()), wall_ms)
                behind_ok = await self._sync(state, wall_ms, full=True, markers=inbox.repair)
            else:
                behind_ok = True
            while inbox.control:
                cmd = inbox.control.popleft()
                if isinstance(cmd, _Join):
                    if not behind_ok and cmd.after is not None and \
                            cmd.after > state.delivered_seq:
                        # Could not catch up (storage unreachable): its `after` would look like
                        # a reset. Refuse (503 unavailable); the client retries and resumes.
                        if not cmd.reply.done():
                            cmd.reply.set_exception(StoreError(
                                "storage unavailable: cannot resume here yet"))
                        continue
                    effects += self._admit(state, cmd, now, wall_ms)
                elif isinstance(cmd, _Leave):
                    leaving.append(cmd.session_id)
                elif isinstance(cmd, _Revoke):
                    effects += state.evict_user(cmd.user, CloseCode.REVOKED, "access revoked",
                                                wall_ms)
                elif isinstance(cmd, _Publish | _Ban | _Read):
                    effects += self._moderate(state, cmd, wall_ms)
                else:
                    drain = cmd
            self._forget_old_bans()
            frames = inbox.frames
            count = min(len(frames), cfg.max_batch)
            oldest = frames[0].received_at if count else 0.0
            refuse = None if self._outage_since is None else (
                "storage is unavailable; resend after retry_after seconds")
            for _ in range(count):
                item = frames.popleft()
                effects += state.receive(item.session_id, item.frame, now, wall_ms,
                                         refuse=refuse)
            if count:
                self._observer.frames_received(count)
            for session_id in leaving:
                if self._sessions.pop(session_id, None) is not None:
                    effects += state.leave(session_id, wall_ms)
            self._deliver(state, effects, wall_ms)
            # Other processes' messages after the joins (a session admitted above replays up
            # to the `delivered_seq` it was admitted at, and gets these live) and after the
            # frames (a duplicate is acked only once its original was delivered). Held until
            # this process's own batch is stored, so members get both in one frame.
            while inbox.remote:
                state.hold(inbox.remote.popleft())

            if await self._store(state, now, wall_ms) and count:
                self._observer.broadcast_latency(time.monotonic() - oldest)
            if state.reads:
                self._queue_reads(state.take_reads())
            if state.moderation:
                # After the batch: the room's messages never wait for a moderator's request.
                await self._carry_out(state, wall_ms)
            # A gap usually closes by itself: this process's batch was stored just after
            # another's whose pub/sub message is still in flight. Read it from the log only if
            # it is still open after gap_repair_delay (pub/sub lost it).
            if state.gap() is None:
                gap_since = None
            elif gap_since is None:
                gap_since = now
            gap_due = gap_since is not None and now - gap_since >= cfg.gap_repair_delay
            due = (inbox.repair or inbox.presence or state.presence_changed
                   or now >= next_sync or gap_due)
            if shared and due and await self._sync(state, wall_ms,
                                                   full=inbox.repair or now >= next_sync,
                                                   markers=inbox.repair):
                next_sync = now + cfg.sync_interval
                if state.gap() is None:
                    gap_since = None
            elif not shared and gap_due:
                # One process: entries appended outside this actor (an erasure) come through
                # the engine's listener, in order; should one be missed, the log has it.
                gap = state.gap()
                if gap is not None:
                    try:
                        await self._repair(state, *gap, wall_ms)
                    except StoreError as exc:
                        self._storage_failed(state, now, wall_ms, exc)
                if state.gap() is None:
                    gap_since = None

            ticked = now >= next_tick
            if ticked:
                next_tick = now + cfg.tick_interval
                mono = time.monotonic()
                for session in self._sessions.values():
                    progress = session.progress_at
                    if progress is not None:
                        # A replay still moving is alive, though its pongs wait behind it.
                        state.touch(session.id, now - (mono - progress))
                for session_id in state.overdue(now):
                    # Silent, but still reading what was sent (its pongs are queued behind
                    # it): alive. A stopped client acks nothing and is evicted.
                    overdue = self._sessions.get(session_id)
                    if overdue is not None and overdue.reading():
                        state.touch(session_id, now)
                self._deliver(state, state.tick(now, wall_ms), wall_ms)
                self._abort_stalled(state, wall_ms)
                if self._all_quiet():
                    # Nothing to watch but deadlines (no send, queue or replay in progress):
                    # sleep until the next one instead of every tick_interval. An idle room of
                    # 10 wakes a few times per ping interval instead of 25 (with a thousand
                    # rooms, most of a server's idle CPU).
                    next_tick = max(next_tick, min(state.next_due(), now + cfg.ping_interval))
            elif not self._all_quiet():
                # Woken for anything else (frames, joins, other processes' messages, a sync) and
                # left a session with something to watch (a join or replay under way, a queued
                # or stuck send): back to the usual cadence, so it is watched within
                # tick_interval. While every session stays quiet (each message written straight
                # to an idle socket) the deadlines set at the last tick still hold, so a room
                # that gets a message now and then does not tick every second: 1,000 rooms of 10
                # at 848 msg/s made ~850 ticks/s, now none (CPU: within the bench's noise;
                # bench/profiles/2026-11-26-small-rooms.md, section 14).
                next_tick = min(next_tick, now + cfg.tick_interval)

            if self._outage_since is not None and now - self._outage_since >= \
                    cfg.store_outage_timeout:
                log.warning("room %s: storage unavailable for %.0fs; closing its sessions with "
                            "1013", self.room, now - self._outage_since)
                state.abandon()
                self._retry = None
                self._close_all(state, CloseCode.TRY_AGAIN_LATER, "storage unavailable",
                                wall_ms)
                self._failure = StoreError("storage unavailable")
                return

            if drain is not None:
                self._close_all(state, drain.code, drain.reason, wall_ms)
                # Frames still queued come from sessions just closed: their messages were never
                # acked, so their clients resend them after reconnecting.
                await self._withdraw(state)
                return
            if self._sessions or inbox or self._retry is not None:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= cfg.room_idle_ttl:
                # No await between this check and leaving the registry: no join can slip in.
                log.debug("room %s idle for %.0fs; stopping", self.room, now - idle_since)
                self.lifecycle = RoomLifecycle.STOPPED
                return

    def _all_quiet(self) -> bool:
        """The room has sessions and each is quiet (``Session.quiet``): its tick has nothing
        to watch but the deadlines in ``RoomState.next_due``."""
        return bool(self._sessions) and all(s.quiet() for s in self._sessions.values())

    async def _store(self, state: RoomState, now: float, wall_ms: int) -> bool:
        """Append what the room accepted (or retry the batch an outage left); deliver what is
        contiguous: the batch and what ``state`` holds (other processes' messages), in one
        broadcast. True when a batch was stored."""
        if self._retry is not None:
            batch = self._retry if now >= self._next_attempt else []
        else:
            batch = state.take_pending()
        if not batch:
            self._deliver(state, state.feed(()), wall_ms)
            return False
        cfg = self.config
        resets = 0
        while True:
            try:
                # The append's own deadline: a store that hangs (a stopped or partitioned Redis)
                # must not hold the room (and every frame and join behind it) for longer.
                async with asyncio.timeout(cfg.store_timeout):
                    results = await self._engine.append(
                        self.room, batch, retention=cfg.history_retention,
                        dedup_window=cfg.dedup_window, epoch=state.epoch,
                        floor=state.delivered_seq, rules=self._rules)
                break
            except LogReset as exc:
                # The log went backwards (the store lost data) and now goes on after what
                # this room delivered, under a new epoch: members come back for a fresh
                # history, and the batch is stored after it. (Twice in a row: another process
                # moves it too; more is no reset but a fault, retried like one.)
                resets += 1
                self._log_reset(state, exc.epoch, exc.top, wall_ms)
                if resets > MAX_RESETS:
                    self._deliver(state, state.feed(()), wall_ms)
                    self._retry = batch
                    self._storage_failed(state, now, wall_ms, StoreError(str(exc)))
                    return False
            except Unstorable as exc:
                # Some drafts can never be stored (and nothing was): their senders are told,
                # the rest go again at once. Each round drops one draft at least.
                batch, refused = state.reject(batch, exc)
                log.warning("room %s: %d message(s) refused by the store: %s", self.room,
                            len(exc.indexes), exc.reason)
                self._deliver(state, refused, wall_ms)
                if not batch:
                    self._retry = None
                    self._deliver(state, state.feed(()), wall_ms)
                    return False
            except (StoreError, TimeoutError) as exc:
                self._deliver(state, state.feed(()), wall_ms)
                self._retry = batch
                self._storage_failed(state, now, wall_ms, self._store_error("append", exc))
                return False
        self._retry = None
        self._storage_back(now)
        started = time.perf_counter()
        self._deliver(state, state.committed(batch, results), wall_ms)
        if self._on_stored is not None:
            try:
                self._on_stored(self.room, batch, results)
            except Exception:  # the gateway's bug must not stop the room: it is logged
                log.exception("room %s: the stored-entries hook failed", self.room)
        # What this batch cost the room, for the pacer: its fan-out. (The embedded engine's
        # append is mostly a disk flush waited for off the event loop: time, not CPU.)
        self._pacer.observe(time.perf_counter() - started)
        return True

    def _queue_reads(self, reads: dict[str, int]) -> None:
        """Hand moved read markers to ``_write_reads`` (a newer one replaces one not written
        yet: at most one per member waits)."""
        for user, seq in reads.items():
            if seq > self._reads.get(user, 0):
                self._reads[user] = seq
        waiting = self._reads_waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def _write_reads(self) -> None:
        """Store the read markers members move (``Engine.mark_read``, which tells other
        processes), off the room's loop: a marker is a hint, and a busy room's members move
        theirs with every few messages. Runs as long as the room; a marker that fails to be
        written is tried again after ``READ_RETRY`` seconds (a newer one replaces it)."""
        while True:
            if not self._reads:
                self._reads_waiting = asyncio.get_running_loop().create_future()
                try:
                    await self._reads_waiting
                finally:
                    self._reads_waiting = None
            reads, self._reads = self._reads, {}
            failed = False
            for user, seq in reads.items():
                try:
                    async with asyncio.timeout(self.config.store_timeout):
                        await self._engine.mark_read(self.room, user, seq)
                except (StoreError, Unstorable, TimeoutError) as exc:
                    log.debug("room %s: read marker of %s not stored: %s", self.room, user,
                              exc)
                    if not isinstance(exc, Unstorable) and seq > self._reads.get(user, 0):
                        self._reads[user] = seq
                        failed = True
            if failed:
                await asyncio.sleep(READ_RETRY)

    async def _carry_out(self, state: RoomState, wall_ms: int) -> None:
        """Moderators' bans accepted in this wake-up, one engine call each, awaited here like
        ``_store``'s append: what arrives meanwhile forms the next batch. They are rare (each
        costs its sender a rate-limit token), so doing them in order is enough."""
        for request in state.take_moderation():
            try:
                outcome = await self._perform(request)
            except StoreError as exc:
                log.warning("room %s: moderation failed: %s", self.room, exc)
                outcome = ModerationOutcome.UNAVAILABLE
            except Unstorable as exc:
                log.warning("room %s: moderation refused by the store: %s", self.room, exc)
                outcome = ModerationOutcome.UNSTORABLE
            if outcome is ModerationOutcome.DONE:
                self._ban_applied(request.frame.user)
            self._deliver(state, state.moderated(request, outcome, wall_ms), wall_ms)

    async def _perform(self, request: Moderation) -> ModerationOutcome:
        """Carry out one ban through the engine. Raises ``StoreError``."""
        frame = request.frame
        await self._engine.ban(self.room, Ban(frame.user, request.until, frame.reason))
        return ModerationOutcome.DONE

    async def _sync(self, state: RoomState, wall_ms: int, *, full: bool,
                    markers: bool = False) -> bool:
        """Publish presence, learn others', and make sure nothing stored was missed: fill a gap,
        or catch up with the log's top; ``markers``: also the read markers of the members here
        (after (re)subscribing, pub/sub may have lost moves of theirs). True when it reached the
        engine."""
        cfg = self.config
        inbox = self._inbox
        now = asyncio.get_running_loop().time()
        try:
            if inbox.presence or state.presence_changed or full:
                inbox.presence = False
                state.presence_changed = False
                result = await self._engine.sync(self.room, state.local_members(),
                                                 cfg.presence_ttl, floor=state.delivered_seq)
                if result.epoch is not None and result.epoch != state.epoch:
                    self._log_reset(state, result.epoch, result.top, wall_ms)
                self._deliver(state, state.synced(result.others, wall_ms), wall_ms)
                # Bans whose announcement pub/sub lost: caught up here. (Entries, deletes
                # among them, are caught up below: the log's top.)
                for user, reason in result.banned:
                    self.ban_nowait(user, reason)
                if state.behind(result.top):
                    await self._repair(state, state.delivered_seq, result.top, wall_ms)
                if markers:
                    # A marker moved on another process between a join here (which read it)
                    # and the subscription that would have told us: read them again.
                    for user in state.local_members():
                        unread = await self._engine.unread(self.room, user, scan=0)
                        self._deliver(state, state.remote_read(user, unread.read), wall_ms)
                inbox.repair = False
                if self._retry is None:
                    self._storage_back(now)  # reachable again: accept messages again
            gap = state.gap()
            if gap is not None:
                await self._repair(state, *gap, wall_ms)
        except StoreError as exc:
            state.presence_changed = True  # publish again once it works
            self._storage_failed(state, now, wall_ms, exc)
            return False
        return True

    async def _repair(self, state: RoomState, after: int, upto: int, wall_ms: int) -> None:
        """Read ``after < seq <= upto`` from the log and deliver it (pub/sub lost it)."""
        while after < upto:
            page = await self._engine.read(self.room, after, upto, self.config.history_page)
            if not page:
                # Pruned from the log before we got to it: nothing left to deliver there.
                self._deliver(state, state.skip(upto), wall_ms)
                return
            if page[0].seq > after + 1:
                self._deliver(state, state.skip(page[0].seq - 1), wall_ms)
            self._deliver(state, state.feed(page), wall_ms)
            after = page[-1].seq
        log.debug("room %s: repaired up to seq %d from the log", self.room, upto)

    def _log_reset(self, state: RoomState, epoch: str, top: int, wall_ms: int) -> None:
        """The room's log is not the one ``state`` knew: close every session for a fresh
        history (``RoomState.reset``)."""
        log.warning("room %s: its stored history went backwards or was replaced (epoch %s -> "
                    "%s, delivered %d, log top %d); closing its %d sessions with 1012 for a "
                    "fresh history", self.room, state.epoch, epoch, state.delivered_seq, top,
                    len(self._sessions))
        self._deliver(state, state.reset(epoch, top, wall_ms), wall_ms)

    def _store_error(self, what: str, exc: StoreError | TimeoutError) -> StoreError:
        """``exc`` as the ``StoreError`` it stands for (a ``TimeoutError`` is the actor's own
        deadline, ``store_timeout``, passing)."""
        if isinstance(exc, StoreError):
            return exc
        return StoreError(f"{what}: no answer from storage within {self.config.store_timeout}s")

    def _storage_failed(self, state: RoomState, now: float, wall_ms: int,
                        exc: StoreError) -> None:
        self._backoff = min(max(self._backoff * 2, 0.1), 2.0)
        self._next_attempt = now + self._backoff
        if self._outage_since is None:
            self._outage_since = now
            log.warning("room %s: storage failed (%s); retrying", self.room, exc)
            self._deliver(state, [Broadcast(protocol.error(
                ErrorCode.UNAVAILABLE, "storage is unavailable; messages are not accepted "
                "until it is back", retry_after=1.0))], wall_ms)

    def _storage_back(self, now: float) -> None:
        if self._outage_since is not None:
            log.info("room %s: storage is back after %.1fs", self.room, now - self._outage_since)
        self._outage_since = None
        self._backoff = 0.0

    def _close_all(self, state: RoomState, code: CloseCode, reason: str, wall_ms: int) -> None:
        for session_id in list(self._sessions):
            self._deliver(state, state.evict(session_id, code, reason, wall_ms), wall_ms)

    async def _withdraw(self, state: RoomState) -> None:
        """Take this process's members out of the shared presence (best effort: they expire
        by themselves otherwise)."""
        if not self._engine.shared:
            return
        try:
            async with asyncio.timeout(self.config.close_timeout):
                await self._engine.sync(self.room, {}, self.config.presence_ttl,
                                        floor=state.delivered_seq)
        except (StoreError, TimeoutError):
            pass

    def _admit(self, state: RoomState, cmd: _Join, now: float, wall_ms: int) -> list[Effect]:
        if cmd.reply.done():  # the caller gave up (disconnected) before we got to it
            return []
        if self.lifecycle is not RoomLifecycle.RUNNING:
            cmd.reply.set_exception(RoomStopped(f"room {self.room} is stopping"))
            return []
        session = cmd.session
        if self._banned_at.get(session.user, -1) > cmd.checked:
            cmd.reply.set_exception(_BanRaced())  # checked before that ban: check again
            return []
        try:
            plan, effects = state.join(
                session.id, session.user, session.name, after=cmd.after,
                expires_at=now + (cmd.expires_at - wall_ms / 1000), now=now, wall_ms=wall_ms,
                moderator=session.moderator, epoch=cmd.epoch, unread=cmd.unread,
            )
        except Exception as exc:  # RoomFull, or a join that cannot be served: the caller's
            cmd.reply.set_exception(exc)  # problem, not the room's (the join left no state)
            return []
        self._sessions[session.id] = session
        cmd.reply.set_result(plan)
        return effects

    def _ban_applied(self, user: str) -> None:
        """``user`` is banned (stored) and their sessions here are closing: no join of theirs
        checked before now gets in (``_admit``)."""
        self._bans_applied += 1
        self._banned_at[user] = self._bans_applied

    def _forget_old_bans(self) -> None:
        """Drop what no join in flight can race any more (see ``__init__``)."""
        if self._banned_at:
            oldest = min(self._checking, default=self._bans_applied)
            self._banned_at = {u: n for u, n in self._banned_at.items() if n > oldest}

    def _moderate(self, state: RoomState, cmd: _Moderation, wall_ms: int) -> list[Effect]:
        """Commands from outside the room's sessions: a submission (server API) joins the
        pending batch; a ban closes the user's sessions; another process's read marker is
        told to the user's sessions here."""
        if isinstance(cmd, _Ban):
            self._ban_applied(cmd.user)
            return state.evict_user(cmd.user, CloseCode.BANNED, "banned", wall_ms)
        if isinstance(cmd, _Read):
            return state.remote_read(cmd.user, cmd.seq)
        if cmd.reply.done():
            return []
        if self._outage_since is not None:
            cmd.reply.set_exception(StoreError("storage is unavailable"))
            return []
        ticket = next(self._tickets)
        answer = state.publish(ticket, dataclasses.replace(cmd.draft, ts=wall_ms))
        if answer is not None:
            cmd.reply.set_result(answer)
        else:
            self._publishing[ticket] = cmd.reply
        return []

    def _answer_published(self, state: RoomState) -> None:
        for ticket, result in state.published:
            reply = self._publishing.pop(ticket, None)
            if reply is not None and not reply.done():
                if isinstance(result, Unstorable):
                    reply.set_exception(result)
                else:
                    reply.set_result(result)
        state.published.clear()

    def _deliver(self, state: RoomState, effects: list[Effect], wall_ms: int) -> None:
        """Put effects into outboxes. Never awaits; overflowing sessions are closed with 4009."""
        if state.published:
            self._answer_published(state)
        overflow: list[int] = []
        delivered = 0
        index, end = 0, len(effects)
        while index < end:
            effect = effects[index]
            index += 1
            if isinstance(effect, Broadcast):
                payload, exclude, count = effect.payload, effect.exclude, effect.count
                # The sends right after a broadcast (the acks of the messages in it) go in the
                # same frame as the broadcast to their session: in a room of 10 that is one
                # socket write in eleven saved per message. Same order per session as before.
                riders: dict[int, list[str]] | None = None
                while index < end:
                    rider = effects[index]
                    if not isinstance(rider, Send) or rider.session == exclude:
                        break
                    if riders is None:
                        riders = {}
                    riders.setdefault(rider.session, []).append(rider.payload)
                    index += 1
                for session in self._sessions.values():
                    if session.id == exclude:
                        continue
                    extra = riders.get(session.id) if riders else None
                    if extra is None:
                        accepted = session.offer(payload, count)
                    else:
                        accepted = session.offer("\n".join((payload, *extra)),
                                                 count + len(extra))
                    if accepted:
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
        for reply in self._publishing.values():
            if not reply.done():
                reply.set_exception(self._failure)
        self._publishing.clear()
        while self._inbox.control:
            cmd = self._inbox.control.popleft()
            if isinstance(cmd, _Join | _Publish) and not cmd.reply.done():
                cmd.reply.set_exception(self._failure)
        self._inbox.frames.clear()
        self._inbox.remote.clear()

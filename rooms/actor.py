"""RoomActor: the one task that owns a room (in this process).

Callers talk to it only through its inbox: ``join`` and ``submit`` (asks: await the actor's
answer), ``leave_nowait``, ``frame_nowait`` and the moderation tell ``ban_nowait``. The actor
wakes when something arrives or a tick is due, handles up to ``max_batch`` frames, stores the
messages and changes they produced in one engine append (the log checks the changes against
their targets' current state), then delivers the results to the sessions' outboxes without
awaiting any client.

A quiet room on an engine of one process (embedded, memory) does the same for a member's
frame without waking its task (``direct_frames``): while the task is parked in its wait with
nothing queued, ``frame_nowait`` applies the frame to the room's state at once, the frames of
that loop turn are stored as one batch with ``Engine.append_soon`` (the embedded engine's
writer commits it with other rooms' of the same turn), and the completion callback delivers
it. The room stays the only owner of its state: the task, woken meanwhile, first waits for
that batch to land; a frame arriving while it is in flight, or in a burst, goes through the
task (which batches). A failure goes to the task (it appends the batch again, awaited, with
every outcome handled), and so does a crash (1011, as below).

Read markers members move are written by a task of the actor's own (``rooms.markers``), so the
room never waits for them.

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

The actor is the composition of its parts, each in a module of its own: the ``Inbox``
(``rooms.inbox``: what arrives, and the one wait), ``RoomState`` (``rooms.state``: the rules,
pure), the ``Fanout`` (``rooms.fanout``: effects into the sessions' outboxes), the ``Schedule``
(``rooms.schedule``: batching pauses, ticks, syncs, gap repair, outage retries and timeout,
idle stop; pure) and the ``MarkerWriter`` (``rooms.markers``: read markers, stored off the
room's loop). Time comes from an injected ``Clock`` (``rooms.clock``), so a test steps it.
What is left here is the order of one wake-up (``_loop``) and the calls to the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rooms import protocol
from rooms.batching import BatchPacer
from rooms.cancelled import raise_if_cancelled
from rooms.clock import Clock, LoopClock, Timer, sleep
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
from rooms.fanout import Fanout
from rooms.inbox import (
    BanApplied,
    Drain,
    InboundFrame,
    Inbox,
    JoinRequest,
    Leave,
    Moderation,
    Publish,
    RemoteRead,
    Revoke,
)
from rooms.markers import MarkerWriter
from rooms.messages import AnyDraft, Appended, Draft, WireMessage
from rooms.observer import NullObserver, RoomObserver
from rooms.protocol import ClientFrame, CloseCode, ErrorCode
from rooms.schedule import Schedule
from rooms.session import Session
from rooms.state import (
    Broadcast,
    Effect,
    JoinPlan,
    ModerationOutcome,
    RoomState,
)
from rooms.state import (
    Moderation as ModerationRequest,
)

log = logging.getLogger("roomchat.room")

MAX_RESETS = 2
"""``LogReset``s one append may meet in a row before it counts as a storage failure (each
reset takes the log's new epoch and top, so a second is another process moving it too)."""


Stored = Callable[[str, Sequence[AnyDraft], Sequence[Appended]], None]
"""Told ``(room, batch, results)`` after each append of the room's own drafts (members' and
the server API's), on the room's loop: it must not block (queue the work, return). What the
gateway uses to attach a message's files once its seq is known, and to remove the files of
deleted and pruned messages (``gateway.attachments``): the room never touches files."""


@dataclass(slots=True, eq=False)
class _Direct:
    """The batch of the frames handled where they arrived in one loop turn
    (``RoomActor.frame_nowait``): when the first arrived (``time.monotonic()``); once
    ``submitted`` at the end of the turn, its drafts and the timer of its ``store_timeout``."""

    received: float
    submitted: bool = False
    batch: list[AnyDraft] = dataclasses.field(default_factory=list)
    timer: Timer | None = None


class _BanRaced(Exception):
    """The answer to a join whose ban check began before the room carried out a ban of its
    user: ``join`` checks again (the ban is stored by then) instead of admitting it."""


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


class RoomActor:
    """One room. Create with the registry (``rooms.registry.RoomRegistry``), not directly."""

    def __init__(
        self, room: str, config: RoomConfig, engine: Engine, *,
        observer: RoomObserver | None = None,
        on_exit: Callable[[RoomActor], None] | None = None,
        state_factory: Callable[..., RoomState] = RoomState,
        on_stored: Stored | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``clock``: the time the room runs on (``rooms.clock``; default the event loop's)."""
        self.room = room
        self._on_stored = on_stored
        self.config = config
        self.lifecycle = RoomLifecycle.STARTING
        self._engine = engine
        self._observer = observer or NullObserver()
        self._on_exit = on_exit
        self._state_factory = state_factory
        self._clock: Clock = clock if clock is not None else LoopClock()
        self._inbox = Inbox(config.inbox_limit, self._clock)
        self._fanout = Fanout(room, self._observer, config.presence_delay)
        self._sessions = self._fanout.sessions  # the fan-out's: admitted and not yet closed
        self._markers = MarkerWriter(room, engine, self._clock, config.store_timeout)
        self._state: RoomState | None = None
        self._failure: RoomError = RoomStopped(f"room {room} stopped")
        # Set once the room's load is over (or never happened): joins that arrive while it
        # runs wait for it, and then find the room's bans and read markers in the engine's
        # memory (the embedded engine reads them with the snapshot) instead of reading them.
        self._loaded = asyncio.Event()
        self._rules = config.rules
        # Storage outage: the batch being retried (the schedule knows since when, and when next).
        self._retry: list[AnyDraft] | None = None
        # Adaptive on the embedded engine; a fixed wait on a shared one (see BatchPacer).
        self._pacer = BatchPacer(config.batch_cost_factor, config.batch_delay,
                                 floor=config.batch_delay if engine.shared else 0.0)
        self._schedule: Schedule | None = None  # made when the room has loaded (``run``)
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
        # Frames handled where they arrive (``frame_nowait``): only while the task is parked
        # in its inbox's wait with nothing to do (``_parked``), and one batch of theirs in
        # flight at most (``_direct``): the task waits for it to land before anything else,
        # so the room's state is never changed under an await of the task's. A crash of that
        # path is raised by the task (``_crash``): the room's usual supervision.
        self._direct_on = config.direct_frames and not engine.shared
        self._parked = False
        self._direct: _Direct | None = None
        self._direct_waiter: asyncio.Future[None] | None = None
        self._crash: Exception | None = None
        self._direct_frames = 0  # frames handled where they arrived (a statistic)

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
        if not self._loaded.is_set():
            await self._loaded.wait()
            if self._state is None:  # the load failed: what the pending joins get
                raise self._failure
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
                self._inbox.put_control(JoinRequest(session, after, expires_at, reply, checked,
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
        waiting = len(self._publishing) + sum(isinstance(c, Publish)
                                              for c in self._inbox.control)
        if waiting >= self.config.inbox_limit:
            raise RoomBusy(f"room {self.room} is busy; retry shortly")
        reply: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._inbox.put_control(Publish(draft, reply))
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
            self._inbox.put_control(BanApplied(user, reason))

    def presence(self) -> list[dict[str, str]]:
        """Everyone in the room as this process knows it (its members, then other processes'
        as of the last sync). Changes nothing."""
        return self._state.members() if self._state is not None else []

    def leave_nowait(self, session_id: int) -> None:
        """The session's socket is gone. Never fails."""
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self._inbox.put_control(Leave(session_id))

    def frame_nowait(self, session_id: int, frame: ClientFrame) -> bool:
        """Hand a client frame to the room. False when the inbox is full (tell the client busy).

        A quiet room (its task parked with nothing queued, no batch in flight, storage
        working, no burst gathering) handles the frame here and now (``_handle_now``) instead
        of waking its task, and so do the frames after it in the same loop turn: one batch,
        stored at the end of the turn. Otherwise the frame waits in the inbox for the task."""
        if self.lifecycle is RoomLifecycle.STOPPED:
            return True  # its sessions are being closed; the frame has nowhere to go
        direct = self._direct
        if (self._parked and self._direct_on and not self._inbox
                and (direct is None or not direct.submitted)):
            state, schedule = self._state, self._schedule
            if (state is not None and schedule is not None and self._retry is None
                    and not schedule.outage and self._crash is None
                    and self.lifecycle is RoomLifecycle.RUNNING):
                now = self._clock.now()
                if direct is not None or not schedule.pause(now):
                    self._handle_now(state, schedule, session_id, frame, now)
                    return True
        return self._inbox.put_frame(InboundFrame(session_id, frame, time.monotonic()))

    def revoke_nowait(self, user: str) -> None:
        """Close every session of ``user`` with 4003 (their access was revoked)."""
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self._inbox.put_control(Revoke(user))

    def drain_nowait(self, code: CloseCode, reason: str) -> None:
        """Close every session with ``code``, refuse joins, store what is pending, then stop."""
        if self.lifecycle is not RoomLifecycle.STOPPED:
            self.lifecycle = RoomLifecycle.DRAINING
            self._inbox.put_control(Drain(code, reason))

    def counts(self) -> RoomCounts:
        """The room's counts, typed (``statistics()`` is the free-form view). Changes nothing."""
        state = self._state
        if state is None:  # not loaded yet
            return RoomCounts(self.room, 0, 0, 0)
        return RoomCounts(self.room, state.session_count, len(state.members()),
                          state.delivered_seq)

    def statistics(self) -> dict[str, object]:
        stats: dict[str, object] = {"room": self.room, "lifecycle": self.lifecycle.value,
                                    "inbox": len(self._inbox.frames),
                                    "direct_frames": self._direct_frames}
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
            self._inbox.put_control(RemoteRead(user, seq))

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
            self._loaded.set()
            self._observer.room_started(self.room)
            async with asyncio.TaskGroup() as tasks:
                writer = tasks.create_task(self._markers.run(), name=f"room-{self.room}-reads")
                try:
                    await self._loop(self._state)
                finally:
                    writer.cancel()
        except Exception:
            crashed = True
            log.exception("room %s crashed; closing its sessions with 1011", self.room)
            # abort: no tick will ever check this room's sends again
            self._fanout.abort_all(CloseCode.INTERNAL_ERROR, "room restarting")
        finally:
            self.lifecycle = RoomLifecycle.STOPPED
            self._loaded.set()  # joins waiting for a load that failed: they raise _failure
            self._inbox.cancel_timer()
            if self._direct is not None and self._direct.timer is not None:
                self._direct.timer.cancel()
            engine.unsubscribe(self.room, self)
            self._fail_pending_joins()
            self._sessions.clear()
            if self._on_exit is not None:
                self._on_exit(self)
            self._observer.room_stopped(self.room, crashed)

    async def _loop(self, state: RoomState) -> None:
        """Wake-ups until the room stops: wait for the inbox or the next deadline, then, in
        this order: joins and commands, members' frames, leaves, the delivery of what they
        produced, the append (or the retry of an outage's batch) and its delivery with other
        processes' entries, read markers, moderators' bans, sync and gap repair, the tick,
        then the outage timeout, a drain and the idle stop. Returns when the room stops."""
        cfg = self.config
        shared = self._engine.shared
        clock = self._clock
        schedule = self._schedule = Schedule(cfg, self._pacer, shared=shared, now=clock.now())
        inbox = self._inbox
        fanout = self._fanout
        me = asyncio.current_task()
        while True:
            raise_if_cancelled(me)  # a stop that a call above lost (rooms.cancelled)
            # (Joins' presence events wait for company until fanout.flush_at: Fanout.)
            self._parked = True  # frames may be handled where they arrive (frame_nowait)
            try:
                await inbox.wait_until(min(schedule.wake_at(self._retry is not None),
                                           fanout.flush_at))
            finally:
                self._parked = False
            if self._direct is not None:
                await self._direct_landed()
            if self._crash is not None:
                raise self._crash
            arrived = bool(inbox.frames or inbox.remote)
            if arrived and len(inbox.frames) < cfg.max_batch:
                # Busy: let a burst gather, since every batch costs one frame per member and
                # one commit; how long depends on what this room's broadcasts cost (see
                # BatchPacer). A quiet room does not wait: its message goes out at once (what
                # arrives while that commit is in flight forms the next batch by itself).
                pause = schedule.pause(clock.now())
                if pause:
                    await sleep(clock, pause)
            if arrived:
                schedule.arrived(clock.now())
            now = clock.now()
            wall_ms = clock.wall_ms()
            if fanout.flush_at <= now:
                fanout.flush()
            effects: list[Effect] = []
            drain: Drain | None = None
            # Sessions whose socket is gone: they leave after the frames below, which they sent
            # before it went (a read marker, a message sent just before the page closed).
            leaving: list[int] = []
            if shared and any(isinstance(c, JoinRequest) and max(c.after or 0, c.top)
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
                if isinstance(cmd, JoinRequest):
                    if not behind_ok and cmd.after is not None and \
                            cmd.after > state.delivered_seq:
                        # Could not catch up (storage unreachable): its `after` would look like
                        # a reset. Refuse (503 unavailable); the client retries and resumes.
                        if not cmd.reply.done():
                            cmd.reply.set_exception(StoreError(
                                "storage unavailable: cannot resume here yet"))
                        continue
                    effects += self._admit(state, cmd, now, wall_ms)
                elif isinstance(cmd, Leave):
                    leaving.append(cmd.session_id)
                elif isinstance(cmd, Revoke):
                    effects += state.evict_user(cmd.user, CloseCode.REVOKED, "access revoked",
                                                wall_ms)
                elif isinstance(cmd, Publish | BanApplied | RemoteRead):
                    effects += self._moderate(state, cmd, wall_ms)
                else:
                    drain = cmd
            self._forget_old_bans()
            frames = inbox.frames
            count = min(len(frames), cfg.max_batch)
            oldest = frames[0].received_at if count else 0.0
            refuse = None if not schedule.outage else (
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
            fanout.hold_lazy(now)  # the joins' presence events above, if any
            # Other processes' messages after the joins (a session admitted above replays up
            # to the `delivered_seq` it was admitted at, and gets these live) and after the
            # frames (a duplicate is acked only once its original was delivered). Held until
            # this process's own batch is stored, so members get both in one frame.
            while inbox.remote:
                state.hold(inbox.remote.popleft())

            if await self._store(state, now, wall_ms) and count:
                self._observer.broadcast_latency(time.monotonic() - oldest)
            if state.reads:
                self._markers.queue(state.take_reads())
            if state.moderation:
                # After the batch: the room's messages never wait for a moderator's request.
                await self._carry_out(state, wall_ms)
            # A gap usually closes by itself: this process's batch was stored just after
            # another's whose pub/sub message is still in flight. Read it from the log only if
            # it is still open after gap_repair_delay (pub/sub lost it).
            gap_due = schedule.gap_due(now, state.gap() is not None)
            due = (inbox.repair or inbox.presence or state.presence_changed
                   or schedule.sync_due(now) or gap_due)
            if shared and due and await self._sync(state, wall_ms,
                                                   full=inbox.repair or schedule.sync_due(now),
                                                   markers=inbox.repair):
                schedule.synced(now)
                if state.gap() is None:
                    schedule.gap_closed()
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
                    schedule.gap_closed()

            if schedule.tick_due(now):
                self._tick(state, now, wall_ms)
                if fanout.all_quiet():
                    # Nothing to watch but deadlines (no send, queue or replay in progress).
                    schedule.quiet_until(now, state.next_due())
            elif not fanout.all_quiet():
                schedule.watch(now)

            if schedule.outage_over(now):
                log.warning("room %s: storage unavailable for %.0fs; closing its sessions with "
                            "1013", self.room, cfg.store_outage_timeout)
                state.abandon()
                self._retry = None
                fanout.close_all(state, CloseCode.TRY_AGAIN_LATER, "storage unavailable",
                                 wall_ms)
                self._failure = StoreError("storage unavailable")
                return

            if drain is not None:
                fanout.close_all(state, drain.code, drain.reason, wall_ms)
                # Frames still queued come from sessions just closed: their messages were never
                # acked, so their clients resend them after reconnecting.
                await self._withdraw(state)
                return
            if schedule.idle(now, bool(self._sessions or inbox or self._retry is not None)):
                # No await between this check and leaving the registry: no join can slip in.
                log.debug("room %s idle for %.0fs; stopping", self.room, cfg.room_idle_ttl)
                self.lifecycle = RoomLifecycle.STOPPED
                return

    def _tick(self, state: RoomState, now: float, wall_ms: int) -> None:
        """Housekeeping: heartbeats (pings, evicting silent sessions) and the send watchdog."""
        mono = time.monotonic()
        for session in self._sessions.values():
            progress = session.progress_at
            if progress is not None:
                # A replay still moving is alive, though its pongs wait behind it (the session
                # measures on the real monotonic clock: carried over to the room's).
                state.touch(session.id, now - (mono - progress))
        for session_id in state.overdue(now):
            # Silent, but still reading what was sent (its pongs are queued behind it): alive.
            # A stopped client acks nothing and is evicted.
            overdue = self._sessions.get(session_id)
            if overdue is not None and overdue.reading():
                state.touch(session_id, now)
        self._deliver(state, state.tick(now, wall_ms), wall_ms)
        self._fanout.abort_stalled(state, wall_ms)

    async def _store(self, state: RoomState, now: float, wall_ms: int) -> bool:
        """Append what the room accepted (or retry the batch an outage left); deliver what is
        contiguous: the batch and what ``state`` holds (other processes' messages), in one
        broadcast. True when a batch was stored."""
        retrying = self._retry is not None
        if self._retry is not None:
            batch = self._retry if self._scheduled().retry_due(now) else []
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
        self._deliver_stored(state, batch, results, wall_ms)
        if retrying and state.pending:
            # Accepted while the batch handed back (``_landed``) was stored again: no wake
            # would come for them before the next deadline.
            await self._store(state, now, wall_ms)
        return True

    def _deliver_stored(self, state: RoomState, batch: list[AnyDraft],
                        results: list[Appended], wall_ms: int) -> None:
        """``batch`` is stored with ``results``: deliver it (``RoomState.committed``), tell the
        stored-entries hook, and give the pacer what the fan-out cost."""
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

    # -- frames handled where they arrive (``frame_nowait``) ----------------------------------

    def _handle_now(self, state: RoomState, schedule: Schedule, session_id: int,
                    frame: ClientFrame, now: float) -> None:
        """The task's handling of one frame (``_loop``), done in the caller while the task is
        parked: the frame applied to the room's state, its effects delivered, read markers
        queued, and what it added to the log stored at the end of the loop turn with the
        turn's other frames (``_submit``; ``_landed`` delivers it). A ban to carry out needs
        awaits: the task is poked for it. An exception crashes the room as one of the task's
        does."""
        try:
            wall_ms = self._clock.wall_ms()
            schedule.arrived(now)
            self._direct_frames += 1
            effects = state.receive(session_id, frame, now, wall_ms)
            self._observer.frames_received(1)
            self._deliver(state, effects, wall_ms)
            if state.reads:
                self._markers.queue(state.take_reads())
            if state.pending and self._direct is None:
                direct = self._direct = _Direct(time.monotonic())
                asyncio.get_running_loop().call_soon(self._submit, direct)
            if state.moderation:
                self._inbox.poke()
            if effects:  # else no outbox changed: the last delivery's watch still holds
                self._watch(schedule, now)
        except Exception as exc:
            self._crashed(exc)

    def _submit(self, direct: _Direct) -> None:
        """At the end of the loop turn: store what the turn's frames added to the log (one
        batch; the embedded engine's writer groups it with other rooms' of the same turn)."""
        if self._direct is not direct:
            return
        state = self._state
        if self.lifecycle is RoomLifecycle.STOPPED or state is None:
            self._release(direct)
            return
        cfg = self.config
        try:
            direct.batch = state.take_pending()
            direct.submitted = True
            started = self._engine.append_soon(
                self.room, direct.batch, retention=cfg.history_retention,
                dedup_window=cfg.dedup_window, epoch=state.epoch, floor=state.delivered_seq,
                rules=self._rules, done=functools.partial(self._landed, direct))
        except Exception as exc:
            self._release(direct)
            self._crashed(exc)
            return
        if not started:
            self._hand_back(direct)
        elif self._direct is direct:  # in flight (the memory engine answered at once)
            direct.timer = self._clock.call_at(self._clock.now() + cfg.store_timeout,
                                               functools.partial(self._hand_back, direct))

    def _landed(self, direct: _Direct, results: list[Appended] | None,
                error: BaseException | None) -> bool:
        """``direct``'s outcome (``rooms.engine.AppendDone``): stored, it is delivered here
        as ``_store`` delivers a batch; failed, it is handed back to the task, whose
        ``_store`` appends it again with every failure handled. False when the batch was
        handed back already (its deadline passed): the task's append takes this outcome."""
        if self._direct is not direct:
            return False
        self._release(direct)
        if self.lifecycle is RoomLifecycle.STOPPED:
            return True  # nobody is acked: clients resend after reconnecting (dedup by id)
        if results is None or error is not None:
            self._retry = direct.batch
            self._inbox.poke()
            return True
        state = self._state
        assert state is not None
        try:
            now, wall_ms = self._clock.now(), self._clock.wall_ms()
            self._deliver_stored(state, direct.batch, results, wall_ms)
            self._observer.broadcast_latency(time.monotonic() - direct.received)
            self._watch(self._scheduled(), now)
        except Exception as exc:
            self._crashed(exc)
        return True

    def _hand_back(self, direct: _Direct) -> None:
        """``direct`` was not started, or its ``store_timeout`` passed: the task appends it
        again (``_retry``; an engine's write still landing answers that append)."""
        if self._direct is direct:
            self._release(direct)
            self._retry = direct.batch
            self._inbox.poke()

    def _release(self, direct: _Direct) -> None:
        self._direct = None
        if direct.timer is not None:
            direct.timer.cancel()
        waiter = self._direct_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _direct_landed(self) -> None:
        """Wait for the batch in flight from a frame handled where it arrived."""
        waiter = self._direct_waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._direct_waiter = None

    def _watch(self, schedule: Schedule, now: float) -> None:
        """As the task does after a wake: a session left with something to watch (a send
        under way) is watched within ``tick_interval`` (the deadline the task waits for moves
        sooner)."""
        if not self._fanout.all_quiet():
            schedule.watch(now)
            self._inbox.sooner(min(schedule.wake_at(False), self._fanout.flush_at))

    def _crashed(self, exc: Exception) -> None:
        """A crash of a frame's handling here: the task raises it (``run``: 1011 for every
        session, the room forgotten); meanwhile frames go to the inbox."""
        if self._crash is None:
            self._crash = exc
        self._inbox.poke()

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

    async def _perform(self, request: ModerationRequest) -> ModerationOutcome:
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
        now = self._clock.now()
        top = 0
        # Taken before the awaits below: a resync asked for while they run (a subscription
        # confirmed meanwhile) must lead to another sync, not be cleared by this one.
        repair, inbox.repair = inbox.repair, False
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
                top = result.top
                if markers:
                    # A marker moved on another process between a join here (which read it)
                    # and the subscription that would have told us: read them again.
                    for user in state.local_members():
                        unread = await self._engine.unread(self.room, user, scan=0)
                        self._deliver(state, state.remote_read(user, unread.read), wall_ms)
                if self._retry is None:
                    self._storage_back(now)  # reachable again: accept messages again
            # Every gap, then the rest up to the log's top: a message held behind a gap is no
            # sign that pub/sub carried what came after it (before a subscription is live it
            # carries nothing, and the resync that follows is this sync).
            while (gap := state.gap()) is not None:
                await self._repair(state, *gap, wall_ms)
            if state.behind(top):
                await self._repair(state, state.delivered_seq, top, wall_ms)
        except StoreError as exc:
            state.presence_changed = True  # publish again once it works
            inbox.repair |= repair
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
        if self._scheduled().storage_failed(now):
            log.warning("room %s: storage failed (%s); retrying", self.room, exc)
            self._deliver(state, [Broadcast(protocol.error(
                ErrorCode.UNAVAILABLE, "storage is unavailable; messages are not accepted "
                "until it is back", retry_after=1.0))], wall_ms)

    def _storage_back(self, now: float) -> None:
        lasted = self._scheduled().storage_back(now)
        if lasted is not None:
            log.info("room %s: storage is back after %.1fs", self.room, lasted)

    def _scheduled(self) -> Schedule:
        """The room's schedule (made when ``_loop`` starts, before any store call of it)."""
        schedule = self._schedule
        assert schedule is not None
        return schedule

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

    def _admit(self, state: RoomState, cmd: JoinRequest, now: float, wall_ms: int) -> list[Effect]:
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

    def _moderate(self, state: RoomState, cmd: Moderation, wall_ms: int) -> list[Effect]:
        """Commands from outside the room's sessions: a submission (server API) joins the
        pending batch; a ban closes the user's sessions; another process's read marker is
        told to the user's sessions here."""
        if isinstance(cmd, BanApplied):
            self._ban_applied(cmd.user)
            return state.evict_user(cmd.user, CloseCode.BANNED, "banned", wall_ms)
        if isinstance(cmd, RemoteRead):
            return state.remote_read(cmd.user, cmd.seq)
        if cmd.reply.done():
            return []
        if self._scheduled().outage:
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
        """Answer the server API's submissions that were stored, then put ``effects`` into
        outboxes (``Fanout.deliver``). Never awaits."""
        if state.published:
            self._answer_published(state)
        self._fanout.deliver(state, effects, wall_ms)

    def _fail_pending_joins(self) -> None:
        for reply in self._publishing.values():
            if not reply.done():
                reply.set_exception(self._failure)
        self._publishing.clear()
        while self._inbox.control:
            cmd = self._inbox.control.popleft()
            if isinstance(cmd, JoinRequest | Publish) and not cmd.reply.done():
                cmd.reply.set_exception(self._failure)
        self._inbox.frames.clear()
        self._inbox.remote.clear()

"""RoomState: everything a room knows, and the rules it follows. Pure: no I/O, no clock, no tasks.

The actor (``rooms.actor``) feeds it events with the current time and carries out what it returns:

- ``join`` / ``leave`` / ``receive`` / ``tick`` return a list of effects (``Send``, ``Broadcast``,
  ``Close``) for the actor to deliver, in order.
- Accepted messages are ``Draft``s without a seq: they wait in ``pending`` until the actor has
  stored them through the engine, which allocates their seqs; the actor then calls
  ``committed(results)``. Nothing is broadcast before it is stored.
- Messages reach members strictly in seq order, with no gap and no duplicate, whichever process
  stored them: the room's own (``committed``) and other processes' (``feed``) go through one
  ordering buffer; ``gap()`` tells the actor which range to read from the log when a seq is
  missing (pub/sub is at-most-once), ``behind(top)`` when the log is ahead of what was delivered.
- Presence is the union of this process's members and ``others`` (``synced``), announced to this
  process's sessions as it changes.
- Changes to messages (``edit``, ``delete``, ``react`` frames) are drafts like messages
  (``ChangeDraft``): the same pending batch, rate limit, dedup by ``(user, id)``, ack once
  delivered. The log checks them against their target's current state when it appends them
  (``rooms.changes``): a refused one is answered with an ``error``, a reaction that changes
  nothing with an ``ack`` saying ``noop``; the others are entries of the log, delivered to
  every member in seq order with the messages.
- Read markers (``read`` frames): monotonic per member; the actor stores them (``reads``) and
  the member's other sessions are told, here and (through the engine) on other processes.
- Bans from the page (``ban`` frames): ``receive`` applies the rules (the sender moderates the
  room, pays rate-limit tokens like any frame, cannot ban themself) and queues what passes in
  ``moderation``; the actor carries each out through the engine and hands the outcome to
  ``moderated``, which says what members and the moderator get.

Times: ``now`` is a monotonic clock in seconds (rate limits, heartbeats, token expiry deadlines);
``wall_ms`` is the Unix time in milliseconds (message and presence timestamps).
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rooms import protocol
from rooms.config import RoomConfig
from rooms.errors import RoomFull, Unstorable
from rooms.messages import (
    Action,
    AnyDraft,
    Appended,
    ChangeDraft,
    Delivered,
    Draft,
    Refusal,
    RoomSnapshot,
    StoredChange,
    StoredMessage,
    Unread,
)
from rooms.protocol import (
    BanUser,
    ClientFrame,
    CloseCode,
    DeleteMessage,
    EditMessage,
    ErrorCode,
    FrameError,
    MarkRead,
    Pong,
    SendMessage,
    Typing,
)
from rooms.ratelimit import TokenBucket


@dataclass(frozen=True, slots=True)
class Send:
    """Deliver ``payload`` to one session."""

    session: int
    payload: str


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Deliver ``payload`` (``count`` objects joined by ``\n``) to every session of the room
    except ``exclude``. ``lazy``: it may wait (up to ``presence_delay``) to go out in one frame
    with what follows it, never after anything that follows it."""

    payload: str
    exclude: int | None = None
    count: int = 1
    lazy: bool = False


@dataclass(frozen=True, slots=True)
class Close:
    """Close one session with ``code``. The session is already out of the room's state.

    ``flush``: send what is already queued for it first (false for slow consumers, whose queue is
    the problem).
    """

    session: int
    code: CloseCode
    reason: str
    flush: bool = True


Effect = Send | Broadcast | Close


@dataclass(frozen=True, slots=True)
class JoinPlan:
    """What a new session receives before live traffic: ``welcome``, then history read from
    the store, oldest first: a resume's log entries with ``replay_after < seq <=
    replay_upto`` (``Engine.read``), and for a join that is not a recovered resume (then
    ``replay_after`` is ``replay_upto``: nothing of the raw log) the newest ``fresh``
    messages up to ``replay_upto`` in their current state (``Engine.history``)."""

    welcome: str
    replay_after: int
    replay_upto: int
    recovered: bool
    fresh: int = 0
    ends: bool = False
    """The welcome is a room's: the session adds where the replay ends (``replay_upto``) to it
    (``protocol.with_replay_upto``) once it has read that end."""


@dataclass(frozen=True, slots=True)
class Moderation:
    """A moderator's ``ban`` that passed the room's rules: the actor carries it out through the
    engine, then passes the outcome to ``RoomState.moderated``."""

    session: int
    frame: BanUser
    until: float | None = None
    """A ban's end in Unix seconds (``minutes`` resolved at acceptance); ``None``: until lifted."""


class ModerationOutcome(enum.Enum):
    """What the engine did with a ``Moderation``."""

    DONE = "done"
    UNAVAILABLE = "unavailable"  # the engine failed (StoreError): nothing is known to be done
    UNSTORABLE = "unstorable"  # the engine cannot store what the frame holds: nothing done


@dataclass(slots=True)
class _Session:
    user: str
    name: str
    bucket: TokenBucket
    last_seen: float
    expires_at: float
    moderator: bool = False
    strikes: int = 0
    invalid: int = 0


@dataclass(slots=True)
class _Member:
    name: str
    connections: int = 1
    read: int = 0  # their read marker in the room, as far as this process knows


@dataclass(slots=True)
class _PendingAck:
    session: int
    client_id: str | None
    seq: int
    duplicate: bool
    noop: bool = False


@dataclass(slots=True)
class _Waiting:
    """A draft in ``pending`` or in flight: who to ack once the engine gives it a seq."""

    session: int
    client_id: str | None
    retries: list[int] = field(default_factory=list)  # sessions that resent the same id meanwhile


@dataclass(slots=True)
class RoomState:
    """One room. Only its actor may call these methods."""

    room: str
    config: RoomConfig
    snapshot: RoomSnapshot = field(default_factory=RoomSnapshot)
    delivered_seq: int = 0
    """Highest seq broadcast to this process's sessions; every lower stored seq was too, in
    order. What ``welcome.seq`` says and where a joining session's replay ends."""
    oldest_seq: int = 1
    epoch: str = ""
    """The room's log's epoch, as the engine last said (``welcome.epoch``)."""
    resume_floor: int = 0
    """A resume from before this seq is not recovered: the log went backwards under it."""
    pending: list[AnyDraft] = field(default_factory=list)
    """Accepted, not yet stored; the actor takes them with ``take_pending``."""
    presence_changed: bool = False
    """This process's member list changed since the actor last published it (``synced``)."""
    published: list[tuple[int, Appended | Unstorable]] = field(default_factory=list)
    """Answers to ``publish``: ``(ticket, result)`` once the message was delivered here, or the
    error refusing it for good (``reject``); the actor takes them."""
    moderation: list[Moderation] = field(default_factory=list)
    """Moderators' bans accepted by ``receive``, for the actor to carry out (it takes them
    with ``take_moderation`` every wake-up, so they are bounded by ``max_batch``)."""
    reads: dict[str, int] = field(default_factory=dict)
    """Read markers moved by this process's members (user -> seq), for the actor to store
    (``Engine.mark_read``); it takes them every wake-up (at most one per member)."""
    _sessions: dict[int, _Session] = field(default_factory=dict)
    _members: dict[str, _Member] = field(default_factory=dict)
    _others: dict[str, str] = field(default_factory=dict)  # members on other processes
    _dedup: OrderedDict[tuple[str, str], int] = field(default_factory=OrderedDict)
    _waiting: list[_Waiting] = field(default_factory=list)  # aligned with ``pending``
    _inflight: list[_Waiting] = field(default_factory=list)  # aligned with the taken batch
    _inflight_ids: dict[tuple[str, str], _Waiting] = field(default_factory=dict)
    _acks: list[_PendingAck] = field(default_factory=list)  # stored, not yet delivered here
    _buffer: dict[int, Delivered] = field(default_factory=dict)  # stored, beyond a gap
    _typing_at: dict[str, float] = field(default_factory=dict)  # member -> last typing relayed
    _next_ping: float | None = None

    def __post_init__(self) -> None:
        self.delivered_seq = self.snapshot.last_seq
        self.oldest_seq = self.snapshot.oldest_seq
        self.epoch = self.snapshot.epoch
        self.resume_floor = self.snapshot.resume_floor
        for user, client_id, seq in self.snapshot.recent_ids:
            self._remember(user, client_id, seq)

    # -- queries ----------------------------------------------------------------------------

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def members(self) -> list[dict[str, str]]:
        """Everyone in the room, wherever connected: this process's members first."""
        out = [{"user": user, "name": m.name} for user, m in self._members.items()]
        out += [{"user": user, "name": name} for user, name in self._others.items()
                if user not in self._members]
        return out

    def local_members(self) -> dict[str, str]:
        """Members connected to this process (user -> name): what the engine publishes."""
        return {user: m.name for user, m in self._members.items()}

    def has_session(self, session: int) -> bool:
        return session in self._sessions

    def gap(self) -> tuple[int, int] | None:
        """``(after, upto)``: stored seqs missing before the ones waiting in the buffer; the
        actor reads them from the log and ``feed``s them (or ``skip``s if the log lost them)."""
        if not self._buffer:
            return None
        return self.delivered_seq, min(self._buffer) - 1

    def behind(self, top: int) -> bool:
        """Whether the log holds messages (up to ``top``) that nothing here is waiting for."""
        # (A batch of ours waiting for a retry does not count: if it was stored after all, the
        # read delivers it and ``committed`` later finds it delivered; its acks follow then.)
        return top > self.delivered_seq and not self._buffer

    # -- events -----------------------------------------------------------------------------

    def join(
        self, session: int, user: str, name: str, *, after: int | None, expires_at: float,
        now: float, wall_ms: int, moderator: bool = False, epoch: str | None = None,
        unread: Unread | None = None,
    ) -> tuple[JoinPlan, list[Effect]]:
        """Admit a session (``moderator``: it may delete others' messages and ban users here;
        its welcome says so). A resume (``after``, and the ``epoch`` of the welcome it saw,
        when it says) is recovered when every entry after it is stored, in this epoch: its
        replay is those entries; else the replay is a fresh history (the newest
        ``history_on_join`` messages, in their current state). ``unread``: the user's read
        marker and counts (``Engine.unread``), for the welcome. Raises ``RoomFull`` at
        ``max_room_connections``.

        All or nothing: everything that can fail (serialising the welcome and the presence
        event) happens before the state changes, so a failed join leaves nothing behind.
        """
        if len(self._sessions) >= self.config.max_room_connections:
            raise RoomFull(f"room {self.room} is full")
        if session in self._sessions:
            raise ValueError(f"session {session} already joined")
        cfg = self.config
        member = self._members.get(user)
        announce = member is None and user not in self._others
        members = self.members()
        if announce:
            members.append({"user": user, "name": name})
        upto = self.delivered_seq
        recovered = after is not None and self.resume_floor <= after <= upto and (
            epoch is None or epoch == self.epoch) and after >= self.oldest_seq - 1
        unread = unread or Unread()
        read = max(unread.read, member.read if member is not None else 0)
        welcome = protocol.welcome(self.room, user, name, upto, members, recovered,
                                   moderator=moderator, epoch=self.epoch, read=read,
                                   unread=unread.unread, mentions=unread.mentions,
                                   capped=unread.capped, max_files=cfg.max_files_per_message)
        effects: list[Effect] = []
        if announce:
            effects.append(Broadcast(protocol.presence("join", user, name, wall_ms), session,
                                     lazy=True))

        # Nothing below can fail.
        self._sessions[session] = _Session(
            user=user, name=name, bucket=TokenBucket(cfg.rate_per_sec, cfg.rate_burst, now),
            last_seen=now, expires_at=expires_at, moderator=moderator,
        )
        if self._next_ping is None:
            self._next_ping = now + cfg.ping_interval
        if member is None:
            self._members[user] = _Member(name=name, read=read)
            self.presence_changed = True
        else:
            member.connections += 1
            member.read = read
        if recovered:
            assert after is not None
            return JoinPlan(welcome, after, upto, True, ends=True), effects
        # Nothing of the raw log (replay_after = upto): only the newest messages, if any.
        return JoinPlan(welcome, upto, upto, False, fresh=cfg.history_on_join,
                        ends=True), effects

    def leave(self, session: int, wall_ms: int) -> list[Effect]:
        """Forget a session (its socket is gone or being closed). Unknown sessions are ignored."""
        info = self._sessions.pop(session, None)
        if info is None:
            return []
        member = self._members[info.user]
        member.connections -= 1
        if member.connections > 0:
            return []
        del self._members[info.user]
        self._typing_at.pop(info.user, None)
        self.presence_changed = True
        if info.user in self._others:
            return []  # still connected elsewhere: still a member
        return [Broadcast(protocol.presence("leave", info.user, member.name, wall_ms))]

    def evict(self, session: int, code: CloseCode, reason: str, wall_ms: int,
              *, flush: bool = True) -> list[Effect]:
        """Remove a session and close it with ``code``."""
        if session not in self._sessions:
            return []
        return [Close(session, code, reason, flush), *self.leave(session, wall_ms)]

    def evict_user(self, user: str, code: CloseCode, reason: str, wall_ms: int) -> list[Effect]:
        """Close every session of ``user`` (their access was revoked)."""
        effects: list[Effect] = []
        for session in [s for s, info in self._sessions.items() if info.user == user]:
            effects += self.evict(session, code, reason, wall_ms)
        return effects

    def overdue(self, now: float) -> list[int]:
        """Sessions silent for more than half the heartbeat deadline: the actor checks whether
        their sockets are still being read (and ``touch``es them if so) before ``tick``."""
        limit = (self.config.ping_interval + self.config.ping_timeout) / 2
        return [s for s, info in self._sessions.items() if now - info.last_seen > limit]

    def touch(self, session: int, now: float) -> None:
        """The session's socket is making progress (a long replay): it is not a zombie."""
        info = self._sessions.get(session)
        if info is not None:
            info.last_seen = max(info.last_seen, now)

    def receive(
        self, session: int, frame: ClientFrame, now: float, wall_ms: int,
        *, refuse: str | None = None,
    ) -> list[Effect]:
        """Handle one client frame. ``refuse``: storage is unavailable; answer a message, a
        change or a ban with an ``unavailable`` error (saying this) instead of accepting it."""
        info = self._sessions.get(session)
        if info is None:
            return []  # already evicted; frames still in flight are dropped
        info.last_seen = now
        cfg = self.config
        # Every frame costs tokens, whatever it is (a flood of pongs, invalid frames or resent
        # duplicates is still a flood); a pong costs a fraction.
        # A typing or read frame costs what a pong does, and is dropped without a word when
        # over the rate (it is only a hint, and the client did not ask for an answer).
        light = isinstance(frame, (Pong, Typing, MarkRead))
        retry_after = info.bucket.take(now, cfg.pong_cost if light else 1.0)
        if retry_after > 0:
            info.strikes += 1
            effects: list[Effect] = []
            if not isinstance(frame, (Pong, Typing, MarkRead)):
                effects.append(Send(session, protocol.error(
                    ErrorCode.RATE_LIMITED, "too many messages; resend after retry_after seconds",
                    client_id=frame.id, retry_after=retry_after)))
            if info.strikes >= cfg.rate_abuse_strikes:
                effects += self.evict(session, CloseCode.RATE_ABUSE, "rate limit abuse", wall_ms)
            return effects
        info.strikes = 0
        if isinstance(frame, Pong):
            return []
        if isinstance(frame, Typing):
            return self._typing(session, info.user, info.name, now)
        if isinstance(frame, MarkRead):
            return self._mark_read(session, info.user, frame.seq)
        if isinstance(frame, FrameError):
            info.invalid += 1
            reply = Send(session, protocol.error(frame.code, frame.message, client_id=frame.id))
            if info.invalid >= cfg.max_invalid_frames:
                return [reply, *self.evict(session, CloseCode.POLICY_VIOLATION,
                                           "too many invalid frames", wall_ms)]
            return [reply]
        if isinstance(frame, BanUser):
            return self._moderation_rules(session, info, frame, wall_ms, refuse)

        if frame.id is not None:
            key = (info.user, frame.id)
            seq = self._dedup.get(key)
            if seq is not None:
                if seq <= self.delivered_seq:
                    return [Send(session, protocol.ack(frame.id, seq, duplicate=True))]
                # Stored, not yet delivered here: ack once it is.
                self._acks.append(_PendingAck(session, frame.id, seq, duplicate=True))
                return []
            waiting = self._inflight_ids.get(key)
            if waiting is not None:  # the original is being stored: ack it with the same seq
                waiting.retries.append(session)
                return []

        if refuse is not None:
            return [Send(session, protocol.error(ErrorCode.UNAVAILABLE, refuse,
                                                 client_id=frame.id, retry_after=1.0))]
        draft: AnyDraft
        if isinstance(frame, SendMessage):
            if len(frame.files) != len(frame.file_ids):
                # Files the gateway did not resolve: never stored unchecked (a bug upstream).
                return [Send(session, protocol.error(
                    ErrorCode.FILE_NOT_FOUND, "the files of this message could not be "
                    "checked; it was not sent", client_id=frame.id))]
            draft = Draft(info.user, info.name, frame.id, frame.text, wall_ms, frame.reply_to,
                          frame.mentions, frame.files)
            target = frame.reply_to
        elif isinstance(frame, EditMessage):
            draft = ChangeDraft(info.user, info.name, frame.id, wall_ms, Action.EDIT,
                                frame.seq, text=frame.text)
            target = frame.seq
        elif isinstance(frame, DeleteMessage):
            draft = ChangeDraft(info.user, info.name, frame.id, wall_ms, Action.DELETE,
                                frame.seq, moderator=info.moderator)
            target = frame.seq
        else:
            draft = ChangeDraft(info.user, info.name, frame.id, wall_ms, Action.REACT,
                                frame.seq, emoji=frame.emoji, on=frame.on)
            target = frame.seq
        if target is not None and not self._stored(target):
            # Never delivered here, or pruned: the log would say the same.
            return [Send(session, protocol.error(
                ErrorCode.NOT_FOUND, refusal_text(Refusal.NOT_FOUND, draft, self.config),
                client_id=frame.id))]
        self.pending.append(draft)
        waiting = _Waiting(session, frame.id)
        self._waiting.append(waiting)
        if frame.id is not None:
            self._inflight_ids[(info.user, frame.id)] = waiting
        return []

    def _stored(self, seq: int) -> bool:
        """Whether ``seq`` may be a stored entry of the room (delivered, not pruned)."""
        return self.oldest_seq <= seq <= self.delivered_seq

    def _mark_read(self, session: int, user: str, seq: int) -> list[Effect]:
        """``user`` read the room up to ``seq`` (capped at what was delivered here): a marker
        that moves forward is stored (``reads``) and told to their other sessions here."""
        member = self._members.get(user)
        seq = min(seq, self.delivered_seq)
        if member is None or seq <= member.read:
            return []
        member.read = seq
        self.reads[user] = seq
        payload = protocol.read(seq)
        return [Send(other, payload) for other, info in self._sessions.items()
                if info.user == user and other != session]

    def remote_read(self, user: str, seq: int) -> list[Effect]:
        """``user``'s read marker moved to ``seq`` on another process: their sessions here are
        told (once: a marker never moves back)."""
        member = self._members.get(user)
        if member is None or seq <= member.read:
            return []
        member.read = seq
        payload = protocol.read(seq)
        return [Send(other, payload) for other, info in self._sessions.items()
                if info.user == user]

    def take_reads(self) -> dict[str, int]:
        """The read markers moved since the last call, for the actor to store."""
        taken, self.reads = self.reads, {}
        return taken

    def _moderation_rules(self, session: int, info: _Session, frame: BanUser,
                          wall_ms: int, refuse: str | None) -> list[Effect]:
        """Accept a ban into ``moderation``, or refuse it with an ``error``."""
        def error(code: ErrorCode, message: str, retry_after: float | None = None) -> list[Effect]:
            return [Send(session, protocol.error(code, message, client_id=frame.id,
                                                 retry_after=retry_after))]

        if not info.moderator:
            return error(ErrorCode.FORBIDDEN, "only a moderator of this room may ban users")
        if refuse is not None:
            return error(ErrorCode.UNAVAILABLE, refuse, 1.0)
        if frame.user == info.user:
            return error(ErrorCode.SELF_BAN, "you cannot ban yourself")
        now_s = wall_ms / 1000
        until = frame.until if frame.minutes is None else now_s + frame.minutes * 60
        if until is not None and until <= now_s:
            return error(ErrorCode.INVALID_MESSAGE, "until is in the past")
        self.moderation.append(Moderation(session, frame, until))
        return []

    def take_moderation(self) -> list[Moderation]:
        """The accepted bans, oldest first, for the actor to carry out; it then calls
        ``moderated`` with each one's outcome."""
        taken, self.moderation = self.moderation, []
        return taken

    def moderated(self, request: Moderation, outcome: ModerationOutcome,
                  wall_ms: int) -> list[Effect]:
        """What follows the engine's ``outcome`` of ``request``: a ban closes the user's
        sessions here with 4004 (other processes hear of it from the engine); the moderator
        gets ``moderated``, or an ``error`` saying why not."""
        frame, session = request.frame, request.session

        def error(code: ErrorCode, message: str, retry_after: float | None = None) -> list[Effect]:
            return [Send(session, protocol.error(code, message, client_id=frame.id,
                                                 retry_after=retry_after))]

        if outcome is ModerationOutcome.UNAVAILABLE:
            return error(ErrorCode.UNAVAILABLE, "storage is unavailable; nothing was changed: "
                         "try again after retry_after seconds", 1.0)
        if outcome is ModerationOutcome.UNSTORABLE:
            return error(ErrorCode.INVALID_MESSAGE, "this cannot be stored (a text that is not "
                         "valid Unicode); nothing was changed")
        return [*self.evict_user(frame.user, CloseCode.BANNED, "banned", wall_ms),
                Send(session, protocol.moderated_ban(frame.user, request.until, frame.reason,
                                                     frame.id))]

    def _typing(self, session: int, user: str, name: str, now: float) -> list[Effect]:
        """Relay "``user`` is typing" to everyone else in the room, at most once per
        ``TYPING_INTERVAL`` per user (whatever their number of sockets). Ephemeral: this
        process's sessions only (the engine carries stored messages, not this)."""
        last = self._typing_at.get(user)
        if last is not None and now - last < protocol.TYPING_INTERVAL:
            return []
        self._typing_at[user] = now
        return [Broadcast(protocol.typing(user, name), exclude=session)]

    def publish(self, ticket: int, draft: AnyDraft) -> Appended | None:
        """Accept a message or a change from outside any session (the server API; ``ticket``
        > 0 names the caller): the same dedup by ``(user, id)`` and the same pending/commit
        path as a socket frame, so members get it in seq order. Returns the answer at once for
        a duplicate already stored; otherwise ``None``, and ``(ticket, Appended)`` appears in
        ``published`` once the entry is stored and delivered here (or refused by the log, or
        found a no-op)."""
        if draft.id is not None:
            key = (draft.user, draft.id)
            seq = self._dedup.get(key)
            if seq is not None:
                return Appended(seq, duplicate=True)
            waiting = self._inflight_ids.get(key)
            if waiting is not None:  # the original is being stored: answer with its seq
                waiting.retries.append(-ticket)
                return None
        self.pending.append(draft)
        waiting = _Waiting(-ticket, draft.id)  # negative: never a session
        self._waiting.append(waiting)
        if draft.id is not None:
            self._inflight_ids[(draft.user, draft.id)] = waiting
        return None

    def take_pending(self) -> list[AnyDraft]:
        """Hand the accepted drafts to the actor for storing; then call ``committed`` with the
        engine's answer (or ``abandon`` if it never comes). One batch at a time."""
        if self._inflight:
            raise RuntimeError("a batch is already being stored")
        batch, self.pending = self.pending, []
        self._inflight, self._waiting = self._waiting, []
        return batch

    def committed(self, batch: list[AnyDraft], results: list[Appended]) -> list[Effect]:
        """``batch`` (from ``take_pending``) is durably stored with these results: deliver what
        is now contiguous, ack the senders once their entry has been delivered here; a draft
        the log refused is answered with its ``error`` at once, a no-op reaction acked once
        the change it found was delivered."""
        if len(results) != len(batch) or len(batch) != len(self._inflight):
            raise ValueError("results do not match the batch in flight")
        fresh: list[Delivered] = []
        refusals: list[Effect] = []
        for draft, result, waiting in zip(batch, results, self._inflight, strict=True):
            if draft.id is not None:
                self._inflight_ids.pop((draft.user, draft.id), None)
                if result.refused is None and not result.noop:
                    self._remember(draft.user, draft.id, result.seq)
            if result.refused is not None:
                refusals += self._refuse(draft, result.refused, waiting)
                continue
            self._acks.append(_PendingAck(waiting.session, waiting.client_id, result.seq,
                                          result.duplicate, result.noop))
            self._acks.extend(_PendingAck(s, waiting.client_id, result.seq, True, result.noop)
                              for s in waiting.retries)
            if not (result.duplicate or result.noop):
                fresh.append(result.entry if result.entry is not None
                             else draft.stored(self.room, result.seq))
        self._inflight = []
        # The refusals first: a sender learns of them in the order it sent its frames, before
        # the acks of what it sent after them in the same batch.
        return refusals + self.feed(fresh)

    def _refuse(self, draft: AnyDraft, refusal: Refusal, waiting: _Waiting) -> list[Effect]:
        """The log refused ``draft``: its senders get the ``error`` (a server-API caller the
        ``Appended`` saying so, through ``published``)."""
        effects: list[Effect] = []
        payload = protocol.error(ErrorCode(refusal.value),
                                 refusal_text(refusal, draft, self.config),
                                 client_id=waiting.client_id)
        for session in (waiting.session, *waiting.retries):
            if session < 0:
                self.published.append((-session, Appended(0, refused=refusal)))
            elif session in self._sessions:
                effects.append(Send(session, payload))
        return effects

    def reject(self, batch: list[AnyDraft],
               error: Unstorable) -> tuple[list[AnyDraft], list[Effect]]:
        """The engine refused the drafts of ``batch`` (the batch in flight) at
        ``error.indexes`` for good, storing nothing. Their senders are told (an
        ``invalid_message`` error with their id; a server-API caller gets ``error`` through
        ``published``); returns the rest of the batch, still in flight, for the actor to append
        again (``committed`` then takes it), and the errors to deliver.

        Raises ``ValueError`` when the indexes do not name drafts of the batch (nothing
        changes)."""
        bad = set(error.indexes)
        if not bad or not bad <= set(range(len(batch))) or len(batch) != len(self._inflight):
            raise ValueError("the refused drafts are not in the batch in flight")
        effects: list[Effect] = []
        kept: list[AnyDraft] = []
        waiting_kept: list[_Waiting] = []
        for index, (draft, waiting) in enumerate(zip(batch, self._inflight, strict=True)):
            if index not in bad:
                kept.append(draft)
                waiting_kept.append(waiting)
                continue
            if draft.id is not None:
                self._inflight_ids.pop((draft.user, draft.id), None)
            for session in (waiting.session, *waiting.retries):
                if session < 0:
                    self.published.append((-session, error))
                elif session in self._sessions:
                    effects.append(Send(session, protocol.error(
                        ErrorCode.INVALID_MESSAGE, "this message cannot be stored (its text is "
                        "not valid Unicode); it was not sent", client_id=waiting.client_id)))
        self._inflight = waiting_kept
        return kept, effects

    def reset(self, epoch: str, top: int, wall_ms: int) -> list[Effect]:
        """The room's log is not the one this state knew (``rooms.errors.LogReset``, or a
        sync that names another epoch): it went backwards (the store lost data) and goes on
        after ``top`` under ``epoch``. What members were sent may be missing from it, so each
        session is closed with 1012 to come back for a fresh history (its resume names the
        old epoch: not recovered), and a resume from before ``top`` is not recovered either.
        The room's ids are forgotten (the store's were lost: a resent message is stored
        again, not acked as a duplicate of one that is gone). The batch in flight stays in
        flight: the actor appends it again, under ``epoch``."""
        effects: list[Effect] = []
        for session in list(self._sessions):
            effects += self.evict(session, CloseCode.SERVICE_RESTART, "room history reset",
                                  wall_ms)
        self.epoch = epoch
        if top > self.delivered_seq:
            self.delivered_seq = top
            for seq in [s for s in self._buffer if s <= top]:
                del self._buffer[seq]
        self.resume_floor = max(self.resume_floor, self.delivered_seq)
        self._dedup.clear()
        return effects + self._advance()

    def abandon(self) -> None:
        """The batch in flight will never be acked (storage gave up): its senders resend after
        they reconnect, deduplicated by id if it was stored after all."""
        gone = {id(w) for w in self._inflight}
        self._inflight_ids = {k: w for k, w in self._inflight_ids.items() if id(w) not in gone}
        self._inflight = []

    def feed(self, messages: Sequence[Delivered]) -> list[Effect]:
        """Stored messages (this room's or another process's, any order, repeats allowed):
        broadcast every one that is now contiguous with what was delivered, in seq order."""
        self.hold(messages)
        return self._advance()

    def hold(self, messages: Sequence[Delivered]) -> None:
        """Take stored messages as ``feed`` does, but broadcast them only with what the next
        ``feed`` or ``committed`` delivers: one broadcast (one frame per member) for both
        instead of two. Their ids count for deduplication at once."""
        for m in messages:
            if m.seq > self.delivered_seq and m.seq not in self._buffer:
                self._buffer[m.seq] = m
                if isinstance(m, StoredMessage | StoredChange) and m.id is not None:
                    # (Another process's ids are deduplicated by the engine itself.)
                    self._remember(m.user, m.id, m.seq)

    def skip(self, upto: int) -> list[Effect]:
        """Seqs up to ``upto`` are gone from the log (pruned): deliver from after them."""
        if upto > self.delivered_seq:
            self.delivered_seq = upto
            for seq in [s for s in self._buffer if s <= upto]:
                del self._buffer[seq]
        return self._advance()

    def synced(self, others: dict[str, str], wall_ms: int) -> list[Effect]:
        """The engine's view of members connected elsewhere: announce who came and went."""
        effects: list[Effect] = []
        for user, name in others.items():
            if user not in self._others and user not in self._members:
                effects.append(Broadcast(protocol.presence("join", user, name, wall_ms)))
        for user, name in self._others.items():
            if user not in others and user not in self._members:
                effects.append(Broadcast(protocol.presence("leave", user, name, wall_ms)))
        self._others = dict(others)
        return effects

    def next_due(self) -> float:
        """The earliest time (on the clock ``tick`` is given) at which ``tick`` has something to
        do: a token expiring, a heartbeat deadline passing, the next ping. Infinity when nothing
        is scheduled."""
        silence = self._longest_silence
        due = math.inf if self._next_ping is None else self._next_ping
        for info in self._sessions.values():
            due = min(due, info.expires_at, info.last_seen + silence)
        return due

    @property
    def _longest_silence(self) -> float:
        """How long a connection may send nothing (not even a pong) before ``tick`` evicts it."""
        return self.config.ping_interval + self.config.ping_timeout

    def tick(self, now: float, wall_ms: int) -> list[Effect]:
        """Housekeeping: expired tokens (4001), silent connections (4010), heartbeat pings."""
        effects: list[Effect] = []
        silence = self._longest_silence
        for session, info in list(self._sessions.items()):
            if now >= info.expires_at:
                effects += self.evict(session, CloseCode.TOKEN_EXPIRED, "token expired", wall_ms)
            elif now - info.last_seen > silence:
                effects += self.evict(session, CloseCode.HEARTBEAT_TIMEOUT,
                                      "heartbeat timeout", wall_ms)
        if self._next_ping is not None and now >= self._next_ping:
            self._next_ping = now + self.config.ping_interval
            if self._sessions:
                effects.append(Broadcast(protocol.ping(wall_ms)))
        return effects

    def statistics(self) -> dict[str, Any]:
        return {"room": self.room, "sessions": len(self._sessions),
                "members": len(self._members), "others": len(self._others),
                "seq": self.delivered_seq, "pending": len(self.pending),
                "buffered": len(self._buffer)}

    # -- internals --------------------------------------------------------------------------

    def _advance(self) -> list[Effect]:
        ready: list[Delivered] = []
        buffer = self._buffer
        while buffer:
            message = buffer.pop(self.delivered_seq + 1, None)
            if message is None:
                break
            ready.append(message)
            self.delivered_seq = message.seq
        effects: list[Effect] = []
        if ready:
            effects.append(Broadcast(protocol.join_frame([m.to_wire() for m in ready]),
                                     count=len(ready)))
            retention = self.config.history_retention
            if retention:
                self.oldest_seq = max(self.oldest_seq, self.delivered_seq - retention + 1)
        if self._acks:
            delivered = self.delivered_seq
            ready_acks = [a for a in self._acks if a.seq <= delivered]
            if ready_acks:
                self._acks = [a for a in self._acks if a.seq > delivered]
                effects.extend(
                    Send(a.session, protocol.ack(a.client_id, a.seq, duplicate=a.duplicate,
                                                 noop=a.noop))
                    for a in ready_acks if a.session in self._sessions)
                self.published.extend((-a.session, Appended(a.seq, a.duplicate, noop=a.noop))
                                      for a in ready_acks if a.session < 0)
        return effects

    def _remember(self, user: str, client_id: str, seq: int) -> None:
        if self.config.dedup_window == 0:
            return
        self._dedup[(user, client_id)] = seq
        while len(self._dedup) > self.config.dedup_window:
            self._dedup.popitem(last=False)


def refusal_text(refusal: Refusal, draft: AnyDraft, config: RoomConfig) -> str:
    """The sentence for people that goes with ``refusal`` of ``draft`` (an ``error``'s
    ``message``)."""
    if isinstance(draft, Draft):
        seq, what = draft.reply_to or 0, "answered"
    else:
        seq, what = draft.target, {Action.EDIT: "edited", Action.DELETE: "deleted",
                                   Action.REACT: "reacted to"}[draft.action]
    if refusal is Refusal.NOT_FOUND:
        return f"no message {seq} is stored in this room (never, or no longer): it cannot be " \
               f"{what}"
    if refusal is Refusal.ALREADY_DELETED:
        if isinstance(draft, ChangeDraft) and draft.action is Action.DELETE:
            return f"message {seq} is already deleted"
        return f"message {seq} is deleted: it cannot be {what}"
    if refusal is Refusal.FORBIDDEN:
        if isinstance(draft, ChangeDraft) and draft.action is Action.DELETE:
            return "only its author or a moderator of this room may delete a message"
        return "only its author may edit a message"
    if refusal is Refusal.EDIT_WINDOW_PASSED:
        return f"message {seq} can no longer be edited: edits are allowed for " \
               f"{config.edit_window:g} s after sending"
    return f"message {seq} has {config.max_reactions} different reactions already: add to " \
           "one of them"

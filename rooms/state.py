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
- Moderation from the page (``delete`` and ``ban`` frames): ``receive`` applies the rules (the
  sender moderates the room, pays rate-limit tokens like any frame, cannot ban themself, names a
  message the room has delivered) and queues what passes in ``moderation``; the actor carries
  each out through the engine and hands the outcome to ``moderated``, which says what members
  and the moderator get.

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
from rooms.protocol import (
    BanUser,
    ClientFrame,
    CloseCode,
    DeleteMessage,
    ErrorCode,
    FrameError,
    Pong,
    Typing,
)
from rooms.ratelimit import TokenBucket


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One chat message as stored and broadcast. A deleted one (tombstone) keeps its seq,
    user, name, id and ts, with ``text`` empty; its wire form adds ``"deleted": true``."""

    room: str
    seq: int
    user: str
    name: str
    id: str | None
    text: str
    ts: int

    @property
    def deleted(self) -> bool:
        """A moderator's tombstone: a message's text is never empty otherwise."""
        return not self.text

    def to_wire(self) -> str:
        obj = {"type": "message", "room": self.room, "seq": self.seq, "id": self.id,
               "user": self.user, "name": self.name, "text": self.text, "ts": self.ts}
        if not self.text:
            obj["deleted"] = True
        return protocol.dumps(obj)


@dataclass(frozen=True, slots=True)
class WireMessage:
    """A stored message known by its seq and its wire form only: another process's, as the
    engine's live feed carries it (serialised once, where it was stored)."""

    seq: int
    wire: str

    def to_wire(self) -> str:
        return self.wire


Delivered = StoredMessage | WireMessage


@dataclass(frozen=True, slots=True)
class Draft:
    """An accepted message not yet stored: the engine gives it its seq."""

    user: str
    name: str
    id: str | None
    text: str
    ts: int

    def stored(self, room: str, seq: int) -> StoredMessage:
        return StoredMessage(room, seq, self.user, self.name, self.id, self.text, self.ts)


@dataclass(frozen=True, slots=True)
class Appended:
    """What the engine did with one draft: its seq, and whether it was stored before (a retried
    ``(user, id)``; then ``seq`` is the original's)."""

    seq: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    """What the store knows of a room when its actor starts."""

    last_seq: int = 0
    oldest_seq: int = 1  # lowest seq still stored; last_seq + 1 when nothing is stored
    recent_ids: tuple[tuple[str, str, int], ...] = ()  # (user, client id, seq), oldest first
    """Empty when the engine deduplicates itself (Redis): the room's map is then only a cache."""
    epoch: str = ""
    """The log's epoch (docs/protocol.md, "Epochs"): one unbroken life of the room's log."""
    resume_floor: int = 0
    """Seqs up to this one may be missing from the log (it went backwards and was moved past
    them: ``rooms.errors.LogReset``): a resume from before it is not recovered."""


@dataclass(frozen=True, slots=True)
class Send:
    """Deliver ``payload`` to one session."""

    session: int
    payload: str


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Deliver ``payload`` (``count`` objects joined by ``\n``) to every session of the room
    except ``exclude``."""

    payload: str
    exclude: int | None = None
    count: int = 1


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
    """What a new session receives before live traffic: ``welcome``, then stored messages with
    ``replay_after < seq <= replay_upto`` (read from the store, oldest first)."""

    welcome: str
    replay_after: int
    replay_upto: int
    recovered: bool


@dataclass(frozen=True, slots=True)
class Moderation:
    """A moderator's ``delete`` or ``ban`` that passed the room's rules: the actor carries it
    out through the engine, then passes the outcome to ``RoomState.moderated``."""

    session: int
    frame: DeleteMessage | BanUser
    until: float | None = None
    """A ban's end in Unix seconds (``minutes`` resolved at acceptance); ``None``: until lifted."""


class ModerationOutcome(enum.Enum):
    """What the engine did with a ``Moderation``."""

    DONE = "done"
    NOT_FOUND = "not_found"  # delete: no message with that seq is stored
    ALREADY_DELETED = "already_deleted"  # delete: it is a tombstone already
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



@dataclass(slots=True)
class _PendingAck:
    session: int
    client_id: str | None
    seq: int
    duplicate: bool


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
    pending: list[Draft] = field(default_factory=list)
    """Accepted, not yet stored; the actor takes them with ``take_pending``."""
    presence_changed: bool = False
    """This process's member list changed since the actor last published it (``synced``)."""
    published: list[tuple[int, Appended | Unstorable]] = field(default_factory=list)
    """Answers to ``publish``: ``(ticket, result)`` once the message was delivered here, or the
    error refusing it for good (``reject``); the actor takes them."""
    moderation: list[Moderation] = field(default_factory=list)
    """Moderators' requests accepted by ``receive``, for the actor to carry out (it takes them
    with ``take_moderation`` every wake-up, so they are bounded by ``max_batch``)."""
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
    # Tombstones members were told of (None: not tracked yet; see ``tombstones_changed``).
    _tombstoned: set[int] | None = None
    _tombstone_count: int | None = None

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
    ) -> tuple[JoinPlan, list[Effect]]:
        """Admit a session (``moderator``: it may delete messages and ban users here; its
        welcome says so). A resume (``after``, and the ``epoch`` of the welcome it saw, when
        it says) is recovered when every message after it is stored, in this epoch; else the
        replay is a fresh history. Raises ``RoomFull`` at ``max_room_connections``.

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
        fresh_after = max(0, upto - cfg.history_on_join)
        if after is None or after > upto or after < self.resume_floor or (
                epoch is not None and epoch != self.epoch):
            replay_after, recovered = fresh_after, False  # the client's view is stale
        elif after >= self.oldest_seq - 1:
            replay_after, recovered = after, True
        else:
            replay_after, recovered = self.oldest_seq - 1, False
        welcome = protocol.welcome(self.room, user, name, upto, members, recovered,
                                   moderator=moderator, epoch=self.epoch)
        effects: list[Effect] = []
        if announce:
            effects.append(Broadcast(protocol.presence("join", user, name, wall_ms), session))

        # Nothing below can fail.
        self._sessions[session] = _Session(
            user=user, name=name, bucket=TokenBucket(cfg.rate_per_sec, cfg.rate_burst, now),
            last_seen=now, expires_at=expires_at, moderator=moderator,
        )
        if self._next_ping is None:
            self._next_ping = now + cfg.ping_interval
        if member is None:
            self._members[user] = _Member(name=name)
            self.presence_changed = True
        else:
            member.connections += 1
        return JoinPlan(welcome, replay_after, upto, recovered), effects

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
        """Handle one client frame. ``refuse``: storage is unavailable; answer a message (or a
        moderation frame) with an ``unavailable`` error (saying this) instead of accepting it."""
        info = self._sessions.get(session)
        if info is None:
            return []  # already evicted; frames still in flight are dropped
        info.last_seen = now
        cfg = self.config
        # Every frame costs tokens, whatever it is (a flood of pongs, invalid frames or resent
        # duplicates is still a flood); a pong costs a fraction.
        # A typing frame costs what a pong does, and is dropped without a word when over the rate
        # (it is only a hint, and the client did not ask for an answer).
        light = isinstance(frame, (Pong, Typing))
        retry_after = info.bucket.take(now, cfg.pong_cost if light else 1.0)
        if retry_after > 0:
            info.strikes += 1
            effects: list[Effect] = []
            if not isinstance(frame, (Pong, Typing)):
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
        if isinstance(frame, FrameError):
            info.invalid += 1
            reply = Send(session, protocol.error(frame.code, frame.message, client_id=frame.id))
            if info.invalid >= cfg.max_invalid_frames:
                return [reply, *self.evict(session, CloseCode.POLICY_VIOLATION,
                                           "too many invalid frames", wall_ms)]
            return [reply]
        if isinstance(frame, DeleteMessage | BanUser):
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

        self.pending.append(Draft(info.user, info.name, frame.id, frame.text, wall_ms))
        waiting = _Waiting(session, frame.id)
        self._waiting.append(waiting)
        if frame.id is not None:
            self._inflight_ids[(info.user, frame.id)] = waiting
        return []

    def _moderation_rules(self, session: int, info: _Session, frame: DeleteMessage | BanUser,
                          wall_ms: int, refuse: str | None) -> list[Effect]:
        """Accept a moderation frame into ``moderation``, or refuse it with an ``error``."""
        def error(code: ErrorCode, message: str, retry_after: float | None = None) -> list[Effect]:
            return [Send(session, protocol.error(code, message, client_id=frame.id,
                                                 retry_after=retry_after))]

        if not info.moderator:
            return error(ErrorCode.FORBIDDEN, "only a moderator of this room may delete messages "
                         "or ban users")
        if refuse is not None:
            return error(ErrorCode.UNAVAILABLE, refuse, 1.0)
        if isinstance(frame, DeleteMessage):
            if not self.oldest_seq <= frame.seq <= self.delivered_seq:
                return error(ErrorCode.NOT_FOUND, f"no message {frame.seq} is stored in this room")
            self.moderation.append(Moderation(session, frame))
            return []
        if frame.user == info.user:
            return error(ErrorCode.SELF_BAN, "you cannot ban yourself")
        now_s = wall_ms / 1000
        until = frame.until if frame.minutes is None else now_s + frame.minutes * 60
        if until is not None and until <= now_s:
            return error(ErrorCode.INVALID_MESSAGE, "until is in the past")
        self.moderation.append(Moderation(session, frame, until))
        return []

    def take_moderation(self) -> list[Moderation]:
        """The accepted moderation requests, oldest first, for the actor to carry out; it then
        calls ``moderated`` with each one's outcome."""
        taken, self.moderation = self.moderation, []
        return taken

    def moderated(self, request: Moderation, outcome: ModerationOutcome,
                  wall_ms: int) -> list[Effect]:
        """What follows the engine's ``outcome`` of ``request``: a delete is announced to every
        member, a ban closes the user's sessions here with 4004 (other processes hear of both
        from the engine); the moderator gets ``moderated``, or an ``error`` saying why not."""
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
        if isinstance(frame, DeleteMessage):
            if outcome is ModerationOutcome.NOT_FOUND:
                return error(ErrorCode.NOT_FOUND, f"no message {frame.seq} is stored in this room")
            if outcome is ModerationOutcome.ALREADY_DELETED:
                return error(ErrorCode.ALREADY_DELETED, f"message {frame.seq} is already deleted")
            return [*self.deleted(frame.seq),
                    Send(session, protocol.moderated_delete(frame.seq, frame.id))]
        return [*self.evict_user(frame.user, CloseCode.BANNED, "banned", wall_ms),
                Send(session, protocol.moderated_ban(frame.user, request.until, frame.reason,
                                                     frame.id))]

    def deleted(self, seq: int) -> list[Effect]:
        """Message ``seq`` became a tombstone: every member is told, once."""
        if self._tombstoned is not None:
            if seq in self._tombstoned:
                return []
            self._tombstoned.add(seq)
        return [Broadcast(protocol.deleted(seq))]

    def tombstones_changed(self, count: int) -> bool:
        """Whether the room's tombstone count (``RoomSync.tombstones``) differs from the one
        last given to ``reconcile_tombstones``: then the actor reads the tombstones."""
        return count != self._tombstone_count

    def reconcile_tombstones(self, seqs: list[int]) -> list[Effect]:
        """The room's tombstones as the engine holds them: tell members of the ones they were
        not told of (an announcement pub/sub lost). The first call only takes note: members
        joined since the room started, and their replay carried the tombstones then."""
        first = self._tombstoned is None
        known = self._tombstoned or set()
        self._tombstoned = set(seqs)
        self._tombstone_count = len(seqs)
        if first:
            return []
        return [Broadcast(protocol.deleted(seq)) for seq in seqs
                if seq not in known and seq <= self.delivered_seq]

    def _typing(self, session: int, user: str, name: str, now: float) -> list[Effect]:
        """Relay "``user`` is typing" to everyone else in the room, at most once per
        ``TYPING_INTERVAL`` per user (whatever their number of sockets). Ephemeral: this
        process's sessions only (the engine carries stored messages, not this)."""
        last = self._typing_at.get(user)
        if last is not None and now - last < protocol.TYPING_INTERVAL:
            return []
        self._typing_at[user] = now
        return [Broadcast(protocol.typing(user, name), exclude=session)]

    def publish(self, ticket: int, draft: Draft) -> Appended | None:
        """Accept a message from outside any session (the server API; ``ticket`` > 0 names the
        caller): the same dedup by ``(user, id)`` and the same pending/commit path as a socket
        message, so members get it in seq order. Returns the answer at once for a duplicate
        already stored; otherwise ``None``, and ``(ticket, Appended)`` appears in ``published``
        once the message is stored and delivered here."""
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

    def take_pending(self) -> list[Draft]:
        """Hand the accepted drafts to the actor for storing; then call ``committed`` with the
        engine's answer (or ``abandon`` if it never comes). One batch at a time."""
        if self._inflight:
            raise RuntimeError("a batch is already being stored")
        batch, self.pending = self.pending, []
        self._inflight, self._waiting = self._waiting, []
        return batch

    def committed(self, batch: list[Draft], results: list[Appended]) -> list[Effect]:
        """``batch`` (from ``take_pending``) is durably stored with these seqs: deliver what is
        now contiguous, ack the senders once their message has been delivered here."""
        if len(results) != len(batch) or len(batch) != len(self._inflight):
            raise ValueError("results do not match the batch in flight")
        fresh: list[StoredMessage] = []
        for draft, result, waiting in zip(batch, results, self._inflight, strict=True):
            if draft.id is not None:
                self._inflight_ids.pop((draft.user, draft.id), None)
                self._remember(draft.user, draft.id, result.seq)
            self._acks.append(_PendingAck(waiting.session, waiting.client_id, result.seq,
                                          result.duplicate))
            self._acks.extend(_PendingAck(s, waiting.client_id, result.seq, True)
                              for s in waiting.retries)
            if not result.duplicate:
                fresh.append(draft.stored(self.room, result.seq))
        self._inflight = []
        return self.feed(fresh)

    def reject(self, batch: list[Draft], error: Unstorable) -> tuple[list[Draft], list[Effect]]:
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
        kept: list[Draft] = []
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
        self._tombstoned = self._tombstone_count = None
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
                if isinstance(m, StoredMessage) and m.id is not None:
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
                    Send(a.session, protocol.ack(a.client_id, a.seq, duplicate=a.duplicate))
                    for a in ready_acks if a.session in self._sessions)
                self.published.extend((-a.session, Appended(a.seq, a.duplicate))
                                      for a in ready_acks if a.session < 0)
        return effects

    def _remember(self, user: str, client_id: str, seq: int) -> None:
        if self.config.dedup_window == 0:
            return
        self._dedup[(user, client_id)] = seq
        while len(self._dedup) > self.config.dedup_window:
            self._dedup.popitem(last=False)

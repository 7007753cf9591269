"""RoomState: everything a room knows, and the rules it follows. Pure: no I/O, no clock, no tasks.

The actor (``rooms.actor``) feeds it events with the current time and carries out what it returns:

- ``join`` / ``leave`` / ``receive`` / ``tick`` return a list of effects (``Send``, ``Broadcast``,
  ``Close``) for the actor to deliver, in order.
- Accepted messages wait in ``pending`` until the actor has stored them durably; the actor then
  calls ``committed(batch)``, which returns the broadcasts and acks. Nothing is broadcast before
  it is stored.

Times: ``now`` is a monotonic clock in seconds (rate limits, heartbeats, token expiry deadlines);
``wall_ms`` is the Unix time in milliseconds (message and presence timestamps).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from rooms import protocol
from rooms.config import RoomConfig
from rooms.errors import RoomFull
from rooms.protocol import CloseCode, ErrorCode, FrameError, Pong, SendMessage
from rooms.ratelimit import TokenBucket


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One chat message as stored and broadcast."""

    room: str
    seq: int
    user: str
    name: str
    id: str | None
    text: str
    ts: int

    def to_wire(self) -> str:
        return protocol.dumps({"type": "message", "room": self.room, "seq": self.seq,
                               "id": self.id, "user": self.user, "name": self.name,
                               "text": self.text, "ts": self.ts})


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    """What the store knows of a room when its actor starts."""

    last_seq: int = 0
    oldest_seq: int = 1  # lowest seq still stored; last_seq + 1 when nothing is stored
    recent_ids: tuple[tuple[str, str, int], ...] = ()  # (user, client id, seq), oldest first


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


@dataclass(slots=True)
class _Session:
    user: str
    name: str
    bucket: TokenBucket
    last_seen: float
    expires_at: float
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
class RoomState:
    """One room. Only its actor may call these methods."""

    room: str
    config: RoomConfig
    snapshot: RoomSnapshot = field(default_factory=RoomSnapshot)
    delivered_seq: int = 0
    """Highest seq stored and broadcast; what ``welcome.seq`` says."""
    next_seq: int = 1
    oldest_seq: int = 1
    pending: list[StoredMessage] = field(default_factory=list)
    """Accepted, not yet stored; the actor takes them with ``take_pending``."""
    _sessions: dict[int, _Session] = field(default_factory=dict)
    _members: dict[str, _Member] = field(default_factory=dict)
    _dedup: OrderedDict[tuple[str, str], int] = field(default_factory=OrderedDict)
    _acks: list[_PendingAck] = field(default_factory=list)
    _next_ping: float | None = None

    def __post_init__(self) -> None:
        self.delivered_seq = self.snapshot.last_seq
        self.next_seq = self.snapshot.last_seq + 1
        self.oldest_seq = self.snapshot.oldest_seq
        for user, client_id, seq in self.snapshot.recent_ids:
            self._remember(user, client_id, seq)

    # -- queries ----------------------------------------------------------------------------

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def members(self) -> list[dict[str, str]]:
        return [{"user": user, "name": m.name} for user, m in self._members.items()]

    def has_session(self, session: int) -> bool:
        return session in self._sessions

    # -- events -----------------------------------------------------------------------------

    def join(
        self, session: int, user: str, name: str, *, after: int | None, expires_at: float,
        now: float, wall_ms: int,
    ) -> tuple[JoinPlan, list[Effect]]:
        """Admit a session. Raises ``RoomFull`` at ``max_room_connections``."""
        if len(self._sessions) >= self.config.max_room_connections:
            raise RoomFull(f"room {self.room} is full")
        if session in self._sessions:
            raise ValueError(f"session {session} already joined")
        cfg = self.config
        self._sessions[session] = _Session(
            user=user, name=name, bucket=TokenBucket(cfg.rate_per_sec, cfg.rate_burst, now),
            last_seen=now, expires_at=expires_at,
        )
        if self._next_ping is None:
            self._next_ping = now + cfg.ping_interval
        effects: list[Effect] = []
        member = self._members.get(user)
        if member is None:
            self._members[user] = _Member(name=name)
            effects.append(Broadcast(protocol.presence("join", user, name, wall_ms), session))
        else:
            member.connections += 1

        upto = self.delivered_seq
        fresh_after = max(0, upto - cfg.history_on_join)
        if after is None or after > upto:
            replay_after, recovered = fresh_after, False
        elif after >= self.oldest_seq - 1:
            replay_after, recovered = after, True
        else:
            replay_after, recovered = self.oldest_seq - 1, False
        welcome = protocol.welcome(self.room, user, name, upto, self.members(), recovered)
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
        return [Broadcast(protocol.presence("leave", info.user, member.name, wall_ms))]

    def evict(self, session: int, code: CloseCode, reason: str, wall_ms: int,
              *, flush: bool = True) -> list[Effect]:
        """Remove a session and close it with ``code``."""
        if session not in self._sessions:
            return []
        return [Close(session, code, reason, flush), *self.leave(session, wall_ms)]

    def receive(
        self, session: int, frame: SendMessage | Pong | FrameError, now: float, wall_ms: int
    ) -> list[Effect]:
        """Handle one client frame."""
        info = self._sessions.get(session)
        if info is None:
            return []  # already evicted; frames still in flight are dropped
        info.last_seen = now
        cfg = self.config
        if isinstance(frame, Pong):
            return []
        if isinstance(frame, FrameError):
            info.invalid += 1
            reply = Send(session, protocol.error(frame.code, frame.message, client_id=frame.id))
            if info.invalid >= cfg.max_invalid_frames:
                return [reply, *self.evict(session, CloseCode.POLICY_VIOLATION,
                                           "too many invalid frames", wall_ms)]
            return [reply]

        if frame.id is not None:
            seq = self._dedup.get((info.user, frame.id))
            if seq is not None:
                if seq <= self.delivered_seq:
                    return [Send(session, protocol.ack(frame.id, seq, duplicate=True))]
                # The original is still waiting to be stored: ack once it is.
                self._acks.append(_PendingAck(session, frame.id, seq, duplicate=True))
                return []

        retry_after = info.bucket.take(now)
        if retry_after > 0:
            info.strikes += 1
            reply = Send(session, protocol.error(
                ErrorCode.RATE_LIMITED, "too many messages; resend after retry_after seconds",
                client_id=frame.id, retry_after=retry_after))
            if info.strikes >= cfg.rate_abuse_strikes:
                return [reply, *self.evict(session, CloseCode.RATE_ABUSE,
                                           "rate limit abuse", wall_ms)]
            return [reply]
        info.strikes = 0

        seq = self.next_seq
        self.next_seq += 1
        self.pending.append(StoredMessage(self.room, seq, info.user, info.name, frame.id,
                                          frame.text, wall_ms))
        self._acks.append(_PendingAck(session, frame.id, seq, duplicate=False))
        if frame.id is not None:
            self._remember(info.user, frame.id, seq)
        return []

    def take_pending(self) -> list[StoredMessage]:
        """Hand the accepted messages to the actor for storing; call ``committed`` after."""
        batch, self.pending = self.pending, []
        return batch

    def committed(self, batch: list[StoredMessage]) -> list[Effect]:
        """``batch`` (from ``take_pending``) is durably stored: broadcast it and ack the senders.

        The whole batch is one broadcast, so each member's outbox takes it as one entry.
        """
        effects: list[Effect] = []
        if batch:
            effects.append(Broadcast(protocol.join_frame([m.to_wire() for m in batch]),
                                     count=len(batch)))
            self.delivered_seq = batch[-1].seq
            retention = self.config.history_retention
            if retention:
                self.oldest_seq = max(self.oldest_seq, self.delivered_seq - retention + 1)
        ready = [a for a in self._acks if a.seq <= self.delivered_seq]
        self._acks = [a for a in self._acks if a.seq > self.delivered_seq]
        effects.extend(Send(a.session, protocol.ack(a.client_id, a.seq, duplicate=a.duplicate))
                       for a in ready if a.session in self._sessions)
        return effects

    def tick(self, now: float, wall_ms: int) -> list[Effect]:
        """Housekeeping: expired tokens (4001), silent connections (4010), heartbeat pings."""
        effects: list[Effect] = []
        deadline = self.config.ping_interval + self.config.ping_timeout
        for session, info in list(self._sessions.items()):
            if now >= info.expires_at:
                effects += self.evict(session, CloseCode.TOKEN_EXPIRED, "token expired", wall_ms)
            elif now - info.last_seen > deadline:
                effects += self.evict(session, CloseCode.HEARTBEAT_TIMEOUT,
                                      "heartbeat timeout", wall_ms)
        if self._next_ping is not None and now >= self._next_ping:
            self._next_ping = now + self.config.ping_interval
            if self._sessions:
                effects.append(Broadcast(protocol.ping(wall_ms)))
        return effects

    def statistics(self) -> dict[str, Any]:
        return {"room": self.room, "sessions": len(self._sessions),
                "members": len(self._members), "seq": self.delivered_seq,
                "pending": len(self.pending)}

    # -- internals --------------------------------------------------------------------------

    def _remember(self, user: str, client_id: str, seq: int) -> None:
        if self.config.dedup_window == 0:
            return
        self._dedup[(user, client_id)] = seq
        while len(self._dedup) > self.config.dedup_window:
            self._dedup.popitem(last=False)

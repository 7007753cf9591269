"""A room's fan-out: delivers the effects ``RoomState`` returns to its sessions' outboxes.

``Fanout`` owns the room's sessions on this process (``sessions``: admitted, not yet closed).
It never awaits: each session's writer (``rooms.session``) does the sending, so one slow
client never stalls the room. A session whose outbox is full is closed with 4009 (slow
consumer; it resumes from history), as is one whose writer has been stuck in one send for
``send_timeout`` (``abort_stalled``, from the room's tick).

A broadcast's payload is encoded and framed once for all its members (``SharedFrame``): each
member then costs one socket write (issue 22, item 3), the shape of
``websockets.broadcast()``; a member with riders (its acks) gets a frame of its own.

A lazy broadcast (a join's presence event) is queued without waking the members' writers:
``flush`` sends what waited, due ``presence_delay`` after the first of them
(``flush_at``), or sooner with the next broadcast or send that is not lazy. A burst of joins
then costs each member one frame instead of one per join, and nothing is reordered.
"""

from __future__ import annotations

import logging
import math
import time

from rooms.observer import RoomObserver
from rooms.protocol import CloseCode
from rooms.session import Session, SharedFrame
from rooms.state import Broadcast, Close, Effect, RoomState, Send

log = logging.getLogger("roomchat.room")


class Fanout:
    """The sessions of one room on this process, and the delivery of its effects to them."""

    def __init__(self, room: str, observer: RoomObserver, presence_delay: float = 0.0) -> None:
        """``presence_delay``: how long a lazy broadcast may wait (0: it does not)."""
        self.room = room
        self.sessions: dict[int, Session] = {}
        self._observer = observer
        self._delay = presence_delay
        # Sessions holding lazily queued objects, and when they are due (inf: none waits).
        self._waiting: set[int] = set()
        self.flush_at = math.inf

    def flush(self) -> None:
        """Send what lazy broadcasts queued (due at ``flush_at``)."""
        sessions = self.sessions
        for session_id in self._waiting:
            session = sessions.get(session_id)
            if session is not None:
                session.flush()
        self._waiting.clear()
        self.flush_at = math.inf

    def hold_lazy(self, now: float) -> None:
        """Start the wait of what ``deliver`` just queued lazily: due ``presence_delay`` after
        ``now`` unless an earlier one is pending (the caller flushes at ``flush_at``)."""
        if self._waiting and self.flush_at == math.inf:
            self.flush_at = now + self._delay

    def deliver(self, state: RoomState, effects: list[Effect], wall_ms: int) -> None:
        """Put ``effects`` into outboxes, in order. Never awaits; overflowing sessions are
        closed with 4009 (``state`` evicts them, and that is delivered too)."""
        overflow: list[int] = []
        delivered = 0
        sessions = self.sessions
        index, end = 0, len(effects)
        while index < end:
            effect = effects[index]
            index += 1
            if isinstance(effect, Broadcast):
                payload, exclude, count = effect.payload, effect.exclude, effect.count
                if effect.lazy and self._delay > 0:
                    delivered += count * self._offer_lazy(payload, exclude, count, overflow)
                    continue
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
                # One per broadcast: the members' transports encode and frame the payload once
                # between them, and each costs one socket write.
                shared = SharedFrame(payload)
                for session in sessions.values():
                    if session.id == exclude:
                        continue
                    extra = riders.get(session.id) if riders else None
                    if extra is None:
                        accepted = session.offer(payload, count, shared)
                    else:
                        accepted = session.offer("\n".join((payload, *extra)),
                                                 count + len(extra))
                    if accepted:
                        delivered += count
                    else:
                        overflow.append(session.id)
            elif isinstance(effect, Send):
                target = sessions.get(effect.session)
                if target is not None and not target.offer(effect.payload):
                    overflow.append(effect.session)
            elif isinstance(effect, Close):
                closing = sessions.pop(effect.session, None)
                if closing is not None:
                    closing.close_nowait(effect.code, effect.reason, flush=effect.flush)
                    self._observer.session_closed(effect.code)
        if delivered:
            self._observer.messages_delivered(delivered)
        for session_id in overflow:
            if session_id in sessions:
                log.info("room %s: session %s is too slow; closing with 4009", self.room,
                         session_id)
                self.deliver(state, state.evict(session_id, CloseCode.SLOW_CONSUMER,
                                                "slow consumer", wall_ms, flush=False), wall_ms)

    def _offer_lazy(self, payload: str, exclude: int | None, count: int,
                    overflow: list[int]) -> int:
        """Queue a lazy broadcast for every session but ``exclude``; how many took it.
        (A session that gets something else meanwhile sends this ahead of it: its flush then
        finds nothing left.)"""
        waiting = self._waiting
        took = 0
        for session in self.sessions.values():
            if session.id == exclude:
                continue
            if session.offer(payload, count, lazy=True):
                waiting.add(session.id)
                took += 1
            else:
                overflow.append(session.id)
        return took

    def close_all(self, state: RoomState, code: CloseCode, reason: str, wall_ms: int) -> None:
        """Close every session with ``code`` (after what is queued for it)."""
        for session_id in list(self.sessions):
            self.deliver(state, state.evict(session_id, code, reason, wall_ms), wall_ms)

    def abort_stalled(self, state: RoomState, wall_ms: int) -> None:
        """Close sessions whose writer has been stuck in one send for ``send_timeout`` (a
        socket's own clock: ``time.monotonic()``)."""
        mono = time.monotonic()
        for session in [s for s in self.sessions.values() if s.stalled(mono)]:
            log.info("room %s: session %s stalled in a send; closing with 4009", self.room,
                     session.id)
            self.deliver(state, state.evict(session.id, CloseCode.SLOW_CONSUMER,
                                            "slow consumer", wall_ms, flush=False), wall_ms)
            session.abort(CloseCode.SLOW_CONSUMER, "slow consumer")

    def all_quiet(self) -> bool:
        """The room has sessions and each is quiet (``Session.quiet``): its tick has nothing
        to watch but the deadlines in ``RoomState.next_due``."""
        return bool(self.sessions) and all(s.quiet() for s in self.sessions.values())

    def abort_all(self, code: CloseCode, reason: str) -> None:
        """The room crashed: drop every session at once (no tick will watch their sends)."""
        for session in self.sessions.values():
            session.abort(code, reason)
            self._observer.session_closed(code)
        self.sessions.clear()

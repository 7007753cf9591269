"""A room's inbox: what callers, sockets and other processes hand the room's actor, and the one
place the actor waits for it.

Three lanes, each with its own bound and its own answer when full:

- **frames** from members' sockets (``InboundFrame``), at most ``limit``: beyond it
  ``put_frame`` returns False and the gateway tells the sender ``busy``;
- **control** commands (``Control``: a join, a leave, a drain, a revocation, the moderation
  tells), never refused: each connection sends at most one join and one leave, so their
  number is bounded by the connection limit, and the server API's submissions are bounded by
  ``RoomActor.submit`` (``RoomBusy``);
- **remote** batches of other processes' entries, at most ``limit``: beyond it they are dropped
  and ``repair`` is set, so the actor reads the log instead (pub/sub is at-most-once anyway).

Plus two flags the engine raises (``repair``: the live feed was interrupted; ``presence``:
another process's members changed). No I/O; the clock is injected (``rooms.clock``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from rooms.clock import Clock, Timer
from rooms.messages import AnyDraft, Appended, Unread, WireMessage
from rooms.protocol import ClientFrame, CloseCode
from rooms.session import Session
from rooms.state import JoinPlan


@dataclass(slots=True)
class JoinRequest:
    """``RoomActor.join``: admit ``session`` and answer ``reply``."""

    session: Session
    after: int | None
    expires_at: float  # Unix time (seconds)
    reply: asyncio.Future[JoinPlan]
    checked: int  # the room's count of bans carried out when the user's ban check began
    epoch: str | None  # of the welcome the client resumes from, if it said
    unread: Unread  # the user's read marker and counts, read before the join
    top: int  # the log's top when the join was asked for (shared engines; else 0)


@dataclass(slots=True)
class Leave:
    """The session's socket is gone."""

    session_id: int


@dataclass(slots=True)
class Revoke:
    """Close ``user``'s sessions with 4003 (their access was revoked)."""

    user: str


@dataclass(slots=True)
class Publish:
    """A message or a change from the server API (``RoomActor.submit``); its ``ts`` is set
    when the room accepts it."""

    draft: AnyDraft
    reply: asyncio.Future[Appended]


@dataclass(slots=True)
class BanApplied:
    """Close ``user``'s sessions with 4004 (the ban itself is in the engine)."""

    user: str
    reason: str


@dataclass(slots=True)
class RemoteRead:
    """``user``'s read marker moved to ``seq`` on another process: tell their sessions here."""

    user: str
    seq: int


Moderation = Publish | BanApplied | RemoteRead
"""Commands from outside the room's sessions (``RoomActor._moderate``)."""


@dataclass(slots=True)
class Drain:
    """Close every session with ``code``, store what is pending, stop."""

    code: CloseCode
    reason: str


Control = JoinRequest | Leave | Drain | Revoke | Moderation


@dataclass(slots=True)
class InboundFrame:
    """A member's frame; ``received_at``: ``time.monotonic()`` when it arrived (for the
    latency figure, not the schedule)."""

    session_id: int
    frame: ClientFrame
    received_at: float


class Inbox:
    """A room's inbox (see the module docstring). ``put_*`` and ``flag`` never block; only
    the room's actor calls ``wait_until`` and takes from the lanes."""

    def __init__(self, limit: int, clock: Clock) -> None:
        self.limit = limit
        self.frames: deque[InboundFrame] = deque()
        self.control: deque[Control] = deque()
        self.remote: deque[list[WireMessage]] = deque()
        self.repair = False  # remote batches were dropped, or the feed was interrupted
        self.presence = False  # another process's members changed
        self._clock = clock
        self._waiter: asyncio.Future[None] | None = None  # only while the actor waits
        # The deadline's timer outlives a wait: a room woken by a frame usually waits again for
        # the same deadline (its next tick), so the timer armed for it is kept instead of one
        # being cancelled and allocated per wake (issue 22, item 4). Re-armed only when the
        # deadline changes; ``_timer_at`` is the deadline it is armed for.
        self._timer: Timer | None = None
        self._timer_at = 0.0

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

    def put_frame(self, item: InboundFrame) -> bool:
        """Queue a member's frame; False when ``limit`` frames wait already (nothing queued)."""
        if len(self.frames) >= self.limit:
            return False
        self.frames.append(item)
        self._wake()
        return True

    def put_control(self, item: Control) -> None:
        self.control.append(item)
        self._wake()

    def poke(self) -> None:
        """Wake the actor with nothing queued (the room has work of its own: a batch handed
        back, a moderation request, a crash to raise)."""
        self._wake()

    def sooner(self, deadline: float) -> None:
        """Move the armed deadline to ``deadline`` if that is earlier (the room changed while
        its actor waits: a send to watch sooner than the tick it waits for)."""
        if self._timer is not None and deadline < self._timer_at:
            self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._clock.call_at(deadline, self._deadline)

    def __bool__(self) -> bool:
        return bool(self.frames or self.control or self.remote or self.repair or self.presence)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _deadline(self) -> None:
        self._timer = None
        self._wake()

    def cancel_timer(self) -> None:
        """Drop the deadline's timer (the room stops: nothing will wait again)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def wait_until(self, deadline: float) -> None:
        """Return when something is queued or once the clock reaches ``deadline``.

        The timer for ``deadline`` stays armed after a wake by a put, for the next wait; a
        wait for another deadline replaces it. Call ``cancel_timer`` when no wait will follow.
        """
        if self:
            return
        # One future per wait, and a timer only when the deadline moved. ``asyncio.timeout``
        # around an ``Event`` allocated three more objects per wait and cancelled through the
        # task; with a thousand rooms each waking for every message and every tick, those
        # short-lived objects were a visible part of a message's cost and of every GC pass.
        if self._timer is None or self._timer_at != deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._clock.call_at(deadline, self._deadline)
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

"""When a room's actor does what: its deadlines and pacing, as plain data. Pure: no clock, no
I/O; the actor passes ``now`` (``rooms.clock``) in and acts on the answers.

One ``Schedule`` per room holds:

- the **batching** pause (``pause``/``arrived``: ``rooms.batching.BatchPacer`` decides how long
  a busy room lets a burst gather);
- the housekeeping **tick** (``tick_due``, then ``quiet_until`` or ``watch``): heartbeats, the
  send watchdog; a room whose sessions are all quiet sleeps until its next heartbeat deadline
  instead of ticking every ``tick_interval``;
- the **sync** with a shared engine (``sync_due``/``synced``) every ``sync_interval``;
- **gap repair** (``gap_due``): a gap in the seqs delivered is read from the log only once it
  has stayed open ``gap_repair_delay`` (it usually closes by itself: pub/sub in flight);
- the **storage outage** (``storage_failed``/``storage_back``/``retry_due``/``outage_over``):
  retries with backoff, and the room gives up after ``store_outage_timeout``;
- the **idle stop** (``idle``): a room with no session and nothing queued stops after
  ``room_idle_ttl``.

``wake_at`` is the earliest of these deadlines: what the actor waits for when its inbox is
empty.
"""

from __future__ import annotations

from rooms.batching import BatchPacer
from rooms.config import RoomConfig

RETRY_FIRST = 0.1
"""Seconds before the first retry of a failed append (doubling per failure)."""
RETRY_MAX = 2.0
"""Longest wait between two retries during a storage outage."""


class Schedule:
    """A room's deadlines (see the module docstring). Every method takes ``now`` on the
    clock's monotonic scale."""

    __slots__ = ("backoff", "config", "gap_since", "idle_since", "last_arrival", "next_attempt",
                 "next_sync", "next_tick", "outage_since", "pacer", "shared")

    def __init__(self, config: RoomConfig, pacer: BatchPacer, *, shared: bool,
                 now: float) -> None:
        self.config = config
        self.pacer = pacer
        self.shared = shared
        self.next_tick = now + config.tick_interval
        self.next_sync = now if shared else float("inf")  # a shared room syncs at once
        self.idle_since: float | None = now
        self.gap_since: float | None = None
        self.last_arrival = float("-inf")
        self.outage_since: float | None = None
        self.next_attempt = 0.0
        self.backoff = 0.0

    def wake_at(self, retrying: bool) -> float:
        """The next deadline: tick, sync, a retry (while ``retrying`` a batch), gap repair,
        the end of a storage outage's patience."""
        wake = min(self.next_tick, self._held(self.next_sync))
        if retrying:
            wake = min(wake, self.next_attempt)
        if self.gap_since is not None:
            wake = min(wake, self._held(self.gap_since + self.config.gap_repair_delay))
        if self.outage_since is not None:
            # Otherwise the 1013 waited for the next wake-up after the timeout: the next retry
            # (up to RETRY_MAX later), or with no batch to retry the next tick (a quiet room's
            # comes at its next heartbeat deadline: up to ping_interval later).
            wake = min(wake, self.outage_since + self.config.store_outage_timeout)
        return wake

    def _held(self, deadline: float) -> float:
        """During an outage a store call (a sync, a gap's read) waits for the next attempt:
        otherwise a deadline already past, with storage failing at once, was due again at
        every turn of the loop (a Redis refusing connections spun every room at full CPU)."""
        return deadline if self.outage_since is None else max(deadline, self.next_attempt)

    # -- batching -----------------------------------------------------------------------------

    def pause(self, now: float) -> float:
        """Seconds to let a burst gather before handling what arrived (0: a quiet room)."""
        return self.pacer.wait(now - self.last_arrival)

    def arrived(self, now: float) -> None:
        """Frames or other processes' entries were taken at ``now``."""
        self.last_arrival = now

    # -- tick ---------------------------------------------------------------------------------

    def tick_due(self, now: float) -> bool:
        """Whether the housekeeping tick is due; if so the next one is ``tick_interval`` on."""
        if now < self.next_tick:
            return False
        self.next_tick = now + self.config.tick_interval
        return True

    def quiet_until(self, now: float, next_due: float) -> None:
        """After a tick, every session quiet: nothing to watch but deadlines (``next_due``,
        ``RoomState.next_due``), so sleep until the next one (at most ``ping_interval``)
        instead of every ``tick_interval``. An idle room of 10 wakes a few times per ping
        interval instead of 25 (with a thousand rooms, most of a server's idle CPU)."""
        self.next_tick = max(self.next_tick, min(next_due, now + self.config.ping_interval))

    def watch(self, now: float) -> None:
        """Woken for anything else and left a session with something to watch (a join or a
        replay under way, a queued or stuck send): tick within ``tick_interval``. While every
        session stays quiet the deadlines set at the last tick still hold, so a room that gets
        a message now and then does not tick every second (1,000 rooms of 10 at 848 msg/s made
        ~850 ticks/s, now none: bench/profiles/2026-11-26-small-rooms.md, section 14)."""
        self.next_tick = min(self.next_tick, now + self.config.tick_interval)

    # -- sync and gap repair ------------------------------------------------------------------

    def sync_due(self, now: float) -> bool:
        """Whether the periodic sync with a shared engine is due (during an outage: no sooner
        than the next attempt)."""
        return now >= self._held(self.next_sync)

    def synced(self, now: float) -> None:
        self.next_sync = now + self.config.sync_interval

    def gap_due(self, now: float, open_gap: bool) -> bool:
        """Whether a gap in the seqs delivered (``open_gap``: there is one now) has stayed open
        ``gap_repair_delay``: then read it from the log."""
        if not open_gap:
            self.gap_since = None
            return False
        if self.gap_since is None:
            self.gap_since = now
        return (now - self.gap_since >= self.config.gap_repair_delay
                and (self.outage_since is None or now >= self.next_attempt))

    def gap_closed(self) -> None:
        self.gap_since = None

    # -- storage outage -----------------------------------------------------------------------

    @property
    def outage(self) -> bool:
        """Storage failed and has not worked since."""
        return self.outage_since is not None

    def storage_failed(self, now: float) -> bool:
        """A store call failed: the next retry backs off. True when this starts an outage."""
        self.backoff = min(max(self.backoff * 2, RETRY_FIRST), RETRY_MAX)
        self.next_attempt = now + self.backoff
        if self.outage_since is not None:
            return False
        self.outage_since = now
        return True

    def storage_back(self, now: float) -> float | None:
        """A store call worked: the outage (if any) is over. Returns how long it lasted."""
        lasted = None if self.outage_since is None else now - self.outage_since
        self.outage_since = None
        self.backoff = 0.0
        return lasted

    def retry_due(self, now: float) -> bool:
        """Whether the batch an outage left may be tried again."""
        return now >= self.next_attempt

    def outage_over(self, now: float) -> bool:
        """Whether storage has been failing ``store_outage_timeout``: the room gives up."""
        return (self.outage_since is not None
                and now - self.outage_since >= self.config.store_outage_timeout)

    # -- idle stop ----------------------------------------------------------------------------

    def idle(self, now: float, busy: bool) -> bool:
        """Whether the room should stop: nothing ``busy`` (no session, nothing queued or being
        retried) for ``room_idle_ttl``."""
        if busy:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
        elif now - self.idle_since >= self.config.room_idle_ttl:
            return True
        return False

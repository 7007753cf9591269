"""Keeps the GC off long-lived connection state: freeze after connects, thaw after churn."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("roomchat.gc")

Action = Literal["freeze", "thaw"]


@dataclass(frozen=True, slots=True)
class Counts:
    """Connections opened and closed since the process started, and open now."""

    opened: int
    closed: int
    open: int


class FreezePolicy:
    """When to freeze and when to thaw (pure: counts in, a decision out).

    A connection leaves tens of GC-tracked objects behind it for as long as it lives (streams,
    protocol state, tasks, the room's session). CPython's collector rescans every one of them
    in each collection of the generation they have reached: after 10,000 connects, a gen 1
    collection stopped the event loop for 230-330 ms, and a full one for ~0.5 s, while there
    was nothing to free. ``gc.freeze()`` moves everything alive into a permanent generation
    that no collection scans, at no cost of its own; so each ``burst`` connects since the last
    freeze, freeze.

    Frozen objects are still freed by reference counting when they die; only reference
    cycles among them are never collected. Those are what the connections that close leave
    behind, so once closes since the last thaw reach ``thaw_share`` of the connections open at
    the last freeze (and at least ``thaw_share`` of a ``burst``), thaw: unfreeze, collect
    everything once (one full pause, which the default collector would have taken sooner and
    more often), and freeze what survived. Since ``gateway.hypercorn_ext.wsfixes`` and
    ``FrameWriter.detach`` break the cycles a closed connection used to leave, a thaw finds
    little to free: it remains as the safety net for cycles made elsewhere.

    ``burst`` 0 turns the policy off.
    """

    __slots__ = ("_closed_mark", "_opened_mark", "_population", "burst", "thaw_share")

    def __init__(self, burst: int, thaw_share: float) -> None:
        if burst < 0 or thaw_share <= 0:
            raise ValueError("burst must not be negative and thaw_share must be positive")
        self.burst = burst
        self.thaw_share = thaw_share
        self._opened_mark = 0  # opened at the last freeze (or thaw)
        self._closed_mark = 0  # closed at the last thaw
        self._population = 0  # open at the last freeze: what the frozen state mostly is

    def step(self, counts: Counts) -> Action | None:
        """What to do now, given ``counts``; the caller does it before the next step."""
        if not self.burst:
            return None
        # Never for fewer closes than a share of a burst: after a thaw of a small population,
        # every few closes would thaw again, and each thaw scans everything alive.
        if self._population and (counts.closed - self._closed_mark
                                 >= self.thaw_share * max(self._population, self.burst)):
            self._opened_mark = counts.opened
            self._closed_mark = counts.closed
            self._population = counts.open
            return "thaw"
        if counts.opened - self._opened_mark >= self.burst:
            self._opened_mark = counts.opened
            self._population = max(self._population, counts.open)
            return "freeze"
        return None


class GcSteward:
    """Applies a :class:`FreezePolicy` to this process's collector every ``interval`` s.

    Only for a process that is a server and nothing else (``roomchat serve``): freezing is
    process-wide, so an embedding program's own objects would be frozen too.
    """

    def __init__(self, policy: FreezePolicy, counts: Callable[[], Counts],
                 interval: float = 0.5) -> None:
        """``counts``: the gateway's connection counts."""
        self.policy = policy
        self._counts = counts
        self._interval = interval
        self._acted = False

    def frozen(self) -> int:
        """Objects frozen, 0 before this steward's first freeze (a metric, read when scraped).

        Counting them walks every frozen object (~13 ms for 665,000 here): that is why a freeze
        does not count them. At one freeze per ``burst`` connects it was two walks per freeze,
        ~8% of a handshake's CPU in a py-spy profile of the bench's handshakes
        (bench/reports/2026-12-07-handshakes.md)."""
        return gc.get_freeze_count() if self._acted else 0

    def apply(self, action: Action) -> None:
        self._acted = True
        if action == "freeze":
            gc.freeze()  # O(1): the permanent generation takes the young ones' lists whole
            log.debug("gc: froze the objects alive")
        else:
            started = time.perf_counter()
            gc.unfreeze()
            freed = gc.collect()
            gc.freeze()
            # A thaw is rare and has just walked everything anyway: the count is worth it here.
            log.info("gc: thawed after connection churn: one full collection freed %d objects "
                     "in %.0f ms; %d frozen again", freed,
                     (time.perf_counter() - started) * 1000, gc.get_freeze_count())

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            action = self.policy.step(self._counts())
            if action is not None:
                self.apply(action)

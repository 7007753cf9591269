"""The time a room runs on, injected: ``Clock``, the event loop's (``LoopClock``), and one that
moves only when a test says so (``SteppedClock``).

A room's schedule (batching pauses, ticks, heartbeat deadlines, syncs, gap repair, idle stop,
the storage outage's retries and timeout, read-marker retries) reads ``now()`` and waits with
``call_at``; nothing in ``rooms`` that schedules calls ``loop.time()``, ``time.time()`` or
``asyncio.sleep`` itself. With a ``SteppedClock`` a test steps through ping timeouts, idle
TTLs and outage timeouts in microseconds of real time, in an order it chooses.

What still reads the real clocks, on purpose: a session's send watchdog and replay progress
(``rooms.session``: they measure a socket, in ``time.monotonic()``), the latency and cost
figures (``broadcast_latency``, the batch pacer's measured fan-out cost: CPU, not schedule),
and the engines' own I/O deadlines (``asyncio.timeout`` around a store call: a real store
takes real time).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A callback scheduled with ``Clock.call_at``."""

    def cancel(self) -> None:
        """Drop it if it has not run (harmless afterwards)."""


class Clock(Protocol):
    """Monotonic time for deadlines, wall time for timestamps, and one way to wait."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences and deadlines mean anything)."""
        ...

    def wall_ms(self) -> int:
        """Unix time in milliseconds (what messages are stamped with)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the event loop once ``now() >= when`` (soon, if it already is).
        It must not block or raise."""
        ...


async def sleep(clock: Clock, seconds: float) -> None:
    """Wait ``seconds`` on ``clock`` (cancellable; the timer is dropped then)."""
    await sleep_until(clock, clock.now() + seconds)


async def sleep_until(clock: Clock, when: float) -> None:
    """Wait until ``clock.now() >= when`` (cancellable; the timer is dropped then)."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = clock.call_at(when, wake)
    try:
        await waiter
    finally:
        timer.cancel()


class LoopClock:
    """The running event loop's clock (``loop.time()``, ``loop.call_at``) and ``time.time()``.
    Binds to the loop it is first used on."""

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bound(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def now(self) -> float:
        return self._bound().time()

    def wall_ms(self) -> int:
        return int(time.time() * 1000)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return self._bound().call_at(when, callback)


class _SteppedTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SteppedClock:
    """A clock that stands still until ``advance`` moves it: for tests that step time instead
    of sleeping. Wall time moves with it, from ``wall_ms`` at the start.

    Timers due at or before ``now()`` when scheduled run soon on the event loop (as the loop's
    own would); the others run inside ``advance``, in deadline order, each seeing ``now()`` at
    its own deadline. After ``advance`` the woken tasks have not run yet: await something (a
    few ``asyncio.sleep(0)``) to let them."""

    def __init__(self, start: float = 1_000.0, wall_ms: int = 1_750_000_000_000) -> None:
        self._now = start
        self._start = start
        self._wall = wall_ms
        self._timers: list[tuple[float, int, _SteppedTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def wall_ms(self) -> int:
        return self._wall + round((self._now - self._start) * 1000)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = _SteppedTimer(when, callback)
        if when <= self._now:
            asyncio.get_running_loop().call_soon(self._fire, timer)
        else:
            heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    @staticmethod
    def _fire(timer: _SteppedTimer) -> None:
        if not timer.cancelled:
            timer.cancelled = True
            timer.callback()

    def advance(self, seconds: float) -> None:
        """Move time forward ``seconds`` (not negative), running each timer that comes due."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        end = self._now + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            self._fire(timer)
        self._now = end

    def next_deadline(self) -> float | None:
        """The earliest pending timer's deadline (None: nothing waits on this clock)."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

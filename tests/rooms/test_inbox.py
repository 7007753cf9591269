"""Inbox.wait_until: wakes on anything queued, or when the clock reaches the deadline; leaves no
waiter behind, and one timer per deadline (kept across wakes, dropped by ``cancel_timer``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from rooms.clock import LoopClock, SteppedClock, Timer
from rooms.inbox import InboundFrame, Inbox
from rooms.protocol import Pong


async def test_wait_returns_at_once_when_something_is_queued() -> None:
    clock = SteppedClock()
    inbox = Inbox(limit=4, clock=clock)
    inbox.flag(presence=True)
    await asyncio.wait_for(inbox.wait_until(clock.now() + 60), 5)
    assert clock.next_deadline() is None  # no timer was armed


def _remote(inbox: Inbox) -> None:
    inbox.put_remote([])


def _repair(inbox: Inbox) -> None:
    inbox.flag(repair=True)


def _presence(inbox: Inbox) -> None:
    inbox.flag(presence=True)


async def test_wait_wakes_on_each_kind_of_arrival() -> None:
    for put in (_remote, _repair, _presence):
        clock = SteppedClock()
        inbox = Inbox(limit=4, clock=clock)
        waiting = asyncio.create_task(inbox.wait_until(clock.now() + 60))
        await asyncio.sleep(0)
        assert not waiting.done() and clock.next_deadline() == clock.now() + 60
        put(inbox)
        await asyncio.wait_for(waiting, 5)
        # The deadline's timer stays for the next wait (issue 22, item 4) until cancelled.
        assert inbox._waiter is None and clock.next_deadline() == clock.now() + 60
        inbox.cancel_timer()
        assert clock.next_deadline() is None


async def test_wait_ends_when_the_clock_reaches_the_deadline() -> None:
    clock = SteppedClock()
    inbox = Inbox(limit=4, clock=clock)
    waiting = asyncio.create_task(inbox.wait_until(clock.now() + 30))
    await asyncio.sleep(0)
    clock.advance(29.999)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()
    clock.advance(0.001)
    await asyncio.wait_for(waiting, 5)
    assert not inbox and inbox._waiter is None


async def test_wait_times_out_on_the_loops_clock() -> None:
    clock = LoopClock()
    inbox = Inbox(limit=4, clock=clock)
    started = clock.now()
    await asyncio.wait_for(inbox.wait_until(started + 0.02), 5)
    assert clock.now() - started >= 0.015
    assert not inbox and inbox._waiter is None


async def test_frames_beyond_the_limit_are_refused() -> None:
    inbox = Inbox(limit=2, clock=SteppedClock())
    frame = Pong()
    assert inbox.put_frame(InboundFrame(1, frame, 0.0))
    assert inbox.put_frame(InboundFrame(1, frame, 0.0))
    assert not inbox.put_frame(InboundFrame(1, frame, 0.0))
    assert len(inbox.frames) == 2


async def test_a_cancelled_wait_propagates_and_cleans_up() -> None:
    clock = SteppedClock()
    inbox = Inbox(limit=4, clock=clock)
    waiting = asyncio.create_task(inbox.wait_until(clock.now() + 60))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert inbox._waiter is None
    inbox.cancel_timer()  # what the actor does when it stops
    assert clock.next_deadline() is None
    inbox.flag(repair=True)  # a later arrival with nobody waiting is harmless
    assert inbox


class _CountingClock(SteppedClock):
    def __init__(self) -> None:
        super().__init__()
        self.armed = 0

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        self.armed += 1
        return super().call_at(when, callback)


async def test_wakes_for_the_same_deadline_arm_one_timer() -> None:
    """A room woken by every frame waits again for the same tick: no timer per wake."""
    clock = _CountingClock()
    inbox = Inbox(limit=4, clock=clock)
    deadline = clock.now() + 30
    for _ in range(5):
        waiting = asyncio.create_task(inbox.wait_until(deadline))
        await asyncio.sleep(0)
        inbox.put_frame(InboundFrame(1, Pong(), 0.0))
        await asyncio.wait_for(waiting, 5)
        inbox.frames.clear()
    assert clock.armed == 1
    # The kept timer still ends a later wait for that deadline.
    waiting = asyncio.create_task(inbox.wait_until(deadline))
    await asyncio.sleep(0)
    clock.advance(30)
    await asyncio.wait_for(waiting, 5)
    assert clock.armed == 1 and clock.next_deadline() is None


async def test_a_moved_deadline_replaces_the_timer() -> None:
    """A wait for a later deadline is not ended by the earlier deadline's timer."""
    clock = _CountingClock()
    inbox = Inbox(limit=4, clock=clock)
    waiting = asyncio.create_task(inbox.wait_until(clock.now() + 10))
    await asyncio.sleep(0)
    inbox.flag(presence=True)
    await asyncio.wait_for(waiting, 5)
    inbox.presence = False
    waiting = asyncio.create_task(inbox.wait_until(clock.now() + 20))
    await asyncio.sleep(0)
    clock.advance(15)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done() and clock.armed == 2
    clock.advance(5)
    await asyncio.wait_for(waiting, 5)

"""Inbox.wait_until: wakes on anything queued, or when the clock reaches the deadline; leaves no
waiter and no timer behind."""

from __future__ import annotations

import asyncio

import pytest

from rooms.clock import LoopClock, SteppedClock
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
        assert inbox._waiter is None and clock.next_deadline() is None


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
    assert inbox._waiter is None and clock.next_deadline() is None
    inbox.flag(repair=True)  # a later arrival with nobody waiting is harmless
    assert inbox

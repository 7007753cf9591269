"""Inbox.wait: wakes on anything queued, or after its timeout; leaves no waiter behind."""

from __future__ import annotations

import asyncio

import pytest

from rooms.actor import Inbox


async def test_wait_returns_at_once_when_something_is_queued() -> None:
    inbox = Inbox(limit=4)
    inbox.flag(presence=True)
    await asyncio.wait_for(inbox.wait(60), 5)


def _remote(inbox: Inbox) -> None:
    inbox.put_remote([])


def _repair(inbox: Inbox) -> None:
    inbox.flag(repair=True)


def _presence(inbox: Inbox) -> None:
    inbox.flag(presence=True)


async def test_wait_wakes_on_each_kind_of_arrival() -> None:
    for put in (_remote, _repair, _presence):
        inbox = Inbox(limit=4)
        waiting = asyncio.create_task(inbox.wait(60))
        await asyncio.sleep(0)
        assert not waiting.done()
        put(inbox)
        await asyncio.wait_for(waiting, 5)
        assert inbox._waiter is None


async def test_wait_times_out_quietly() -> None:
    inbox = Inbox(limit=4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(inbox.wait(0.02), 5)
    assert loop.time() - started >= 0.015
    assert not inbox and inbox._waiter is None


async def test_a_cancelled_wait_propagates_and_cleans_up() -> None:
    inbox = Inbox(limit=4)
    waiting = asyncio.create_task(inbox.wait(60))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert inbox._waiter is None
    inbox.flag(repair=True)  # a later arrival with nobody waiting is harmless
    assert inbox

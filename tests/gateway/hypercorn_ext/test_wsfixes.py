"""The lean app queue Hypercorn gets from ``gateway.hypercorn_ext.wsfixes``: asyncio.Queue's
contract for ``put``/``get`` (bounded, FIFO, cancellable without losing items or wake-ups)."""

from __future__ import annotations

import asyncio

from gateway.hypercorn_ext.wsfixes import AppQueue, LeanEvent


async def test_items_come_out_in_order_and_put_waits_while_full() -> None:
    queue: AppQueue[int] = AppQueue(2)
    await queue.put(1)
    await queue.put(2)
    third = asyncio.create_task(queue.put(3))
    await asyncio.sleep(0)
    assert not third.done() and queue.qsize() == 2  # full: the producer waits
    assert await queue.get() == 1
    await third
    assert [await queue.get(), await queue.get()] == [2, 3]


async def test_get_waits_until_an_item_arrives() -> None:
    queue: AppQueue[str] = AppQueue(10)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await queue.put("x")
    assert await getter == "x"


async def test_an_unbounded_queue_never_waits_to_put() -> None:
    queue: AppQueue[int] = AppQueue(0)
    for i in range(100):
        await queue.put(i)
    assert queue.qsize() == 100


async def test_a_cancelled_getter_loses_no_item() -> None:
    queue: AppQueue[str] = AppQueue(10)
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    await queue.put("x")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs: `second` gets the item
    assert await second == "x"
    assert first.cancelled()


async def test_a_cancelled_producer_passes_its_turn_on() -> None:
    queue: AppQueue[int] = AppQueue(1)
    await queue.put(0)
    first = asyncio.create_task(queue.put(1))
    second = asyncio.create_task(queue.put(2))
    await asyncio.sleep(0)
    assert await queue.get() == 0  # wakes `first`...
    first.cancel()  # ...which gives its slot to `second`
    await second
    assert await queue.get() == 2 and queue.qsize() == 0


async def test_lean_event_wakes_every_waiter_and_stays_set_until_cleared() -> None:
    event = LeanEvent()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    cancelled = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters) and not event.is_set()
    cancelled.cancel()  # a waiter that leaves is forgotten
    await asyncio.sleep(0)
    await event.set()
    await asyncio.gather(*waiters)
    assert event.is_set()
    await event.wait()  # set: returns at once
    await event.clear()
    late = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not late.done()
    await event.set()
    await late

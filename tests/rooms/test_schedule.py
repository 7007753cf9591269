"""The room's schedule, pure: deadlines in, decisions out; no clock, no loop."""

from __future__ import annotations

from rooms.batching import BatchPacer
from rooms.config import RoomConfig
from rooms.schedule import RETRY_FIRST, RETRY_MAX, Schedule

CFG = RoomConfig(tick_interval=1.0, sync_interval=5.0, gap_repair_delay=0.25,
                 store_outage_timeout=15.0, room_idle_ttl=30.0, ping_interval=25.0)


def schedule(shared: bool = False, now: float = 100.0) -> Schedule:
    return Schedule(CFG, BatchPacer(2.0, 0.005), shared=shared, now=now)


def test_a_shared_room_syncs_at_once_and_then_every_sync_interval() -> None:
    s = schedule(shared=True)
    assert s.sync_due(100.0) and s.wake_at(False) == 100.0
    s.synced(100.0)
    assert not s.sync_due(104.9) and s.sync_due(105.0)
    assert not schedule().sync_due(1e12)  # one process: never


def test_ticks_come_every_interval_or_at_the_next_deadline_when_all_is_quiet() -> None:
    s = schedule()
    assert not s.tick_due(100.5) and s.tick_due(101.0)
    assert s.next_tick == 102.0
    s.quiet_until(101.0, next_due=120.0)  # quiet: sleep until the heartbeat deadline
    assert s.wake_at(False) == 120.0
    s.watch(103.0)  # something to watch again: back within tick_interval
    assert s.wake_at(False) == 104.0
    s.quiet_until(104.0, next_due=1e9)  # at most a ping interval
    assert s.next_tick == 129.0


def test_a_gap_is_due_once_it_stayed_open_for_the_delay() -> None:
    s = schedule()
    assert not s.gap_due(100.0, True) and s.wake_at(False) == 100.25
    assert not s.gap_due(100.125, True) and s.gap_due(100.25, True)
    assert not s.gap_due(100.5, False) and s.gap_since is None


def test_an_outage_backs_off_and_ends_at_its_timeout() -> None:
    s = schedule()
    assert s.storage_failed(100.0)  # starts the outage
    assert s.next_attempt == 100.0 + RETRY_FIRST and not s.retry_due(100.05)
    waits = []
    for n in range(8):
        assert not s.storage_failed(101.0 + n)
        waits.append(s.backoff)
    assert waits[-1] == RETRY_MAX and waits == sorted(waits)
    # Woken at the timeout itself even when no retry or tick comes sooner.
    s.quiet_until(101.0, next_due=1e9)
    assert s.wake_at(False) == 115.0 and not s.outage_over(114.9) and s.outage_over(115.0)
    assert s.storage_back(110.0) == 10.0 and not s.outage and s.storage_back(111.0) is None


def test_a_room_stops_after_its_idle_ttl_without_anything_busy() -> None:
    s = schedule()
    assert not s.idle(100.0, busy=True)
    assert not s.idle(101.0, busy=False)  # idle from here
    assert not s.idle(130.9, busy=False) and s.idle(131.0, busy=False)
    assert not s.idle(132.0, busy=True) and not s.idle(133.0, busy=False)  # starts again


def test_during_an_outage_a_due_sync_or_gap_waits_for_the_next_attempt() -> None:
    """A deadline already past stays due while storage fails at once: without the backoff it
    was due again at every turn of the loop."""
    s = schedule(shared=True)
    s.synced(100.0)
    s.quiet_until(100.0, next_due=1e9)  # no tick before 125
    assert s.gap_due(100.0, True) is False
    assert s.sync_due(105.0) and s.gap_due(105.0, True)
    s.storage_failed(105.0)  # the sync (or the gap's read) failed: retry in RETRY_FIRST
    assert not s.sync_due(105.0) and not s.gap_due(105.0, True)
    assert s.wake_at(False) == 105.0 + RETRY_FIRST
    assert s.sync_due(105.0 + RETRY_FIRST) and s.gap_due(105.0 + RETRY_FIRST, True)
    s.storage_back(105.2)
    assert s.sync_due(105.2) and s.wake_at(False) == 100.25  # the gap's own deadline again

"""BatchPacer: a busy room's wait follows what its broadcasts cost; a quiet room never waits."""

from __future__ import annotations

import pytest

from rooms.batching import BatchPacer
from rooms.config import RoomConfig


def test_a_room_that_never_broadcast_does_not_wait() -> None:
    assert BatchPacer(factor=3, ceiling=0.005).wait(since_previous=0.0) == 0.0


def test_a_busy_room_waits_factor_times_its_broadcast_cost() -> None:
    pacer = BatchPacer(factor=3, ceiling=0.005, smoothing=1.0)
    pacer.observe(0.001)  # a room of ~100: one broadcast took 1 ms
    assert pacer.wait(since_previous=0.0005) == pytest.approx(0.003)
    pacer.observe(0.0001)  # a room of ~10
    assert pacer.wait(since_previous=0.0001) == pytest.approx(0.0003)


def test_a_quiet_room_sends_at_once() -> None:
    pacer = BatchPacer(factor=3, ceiling=0.005, smoothing=1.0)
    pacer.observe(0.001)
    # The previous message came longer ago than the wait would be: nothing to gather.
    assert pacer.wait(since_previous=0.003) == 0.0
    assert pacer.wait(since_previous=float("inf")) == 0.0


def test_the_wait_is_capped_at_the_ceiling() -> None:
    pacer = BatchPacer(factor=3, ceiling=0.005, smoothing=1.0)
    pacer.observe(0.1)  # a huge room, or a slow machine
    assert pacer.wait(since_previous=0.001) == 0.005
    assert BatchPacer(factor=3, ceiling=0.0, smoothing=1.0).wait(0.0) == 0.0


def test_factor_zero_never_waits() -> None:
    pacer = BatchPacer(factor=0, ceiling=0.005, smoothing=1.0)
    pacer.observe(0.01)
    assert pacer.wait(since_previous=0.0) == 0.0


def test_the_cost_is_a_moving_average() -> None:
    pacer = BatchPacer(factor=1, ceiling=1.0, smoothing=0.5)
    pacer.observe(0.004)
    pacer.observe(0.0)  # one cheap broadcast halves the estimate, it does not reset it
    assert pacer.cost == pytest.approx(0.001)
    pacer.observe(-1.0)  # a clock step backwards counts as free, not as negative
    assert pacer.cost == pytest.approx(0.0005)


@pytest.mark.parametrize("kwargs", [{"factor": -1, "ceiling": 0.005},
                                    {"factor": 1, "ceiling": -0.1},
                                    {"factor": 1, "ceiling": 0.1, "smoothing": 0.0},
                                    {"factor": 1, "ceiling": 0.1, "smoothing": 1.5},
                                    {"factor": 1, "ceiling": 0.1, "floor": -1.0}])
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BatchPacer(**kwargs)


def test_config_refuses_a_negative_factor_and_takes_zero() -> None:
    with pytest.raises(ValueError, match="batch_cost_factor"):
        RoomConfig(batch_cost_factor=-1)
    assert RoomConfig(batch_cost_factor=0).batch_cost_factor == 0


def test_a_floor_equal_to_the_ceiling_is_a_fixed_wait_for_a_busy_room() -> None:
    # What a room on a shared engine asks for: the cost it can measure is not all it causes.
    pacer = BatchPacer(factor=2, ceiling=0.005, smoothing=1.0, floor=0.005)
    assert pacer.wait(since_previous=0.001) == 0.005  # before any batch was measured too
    pacer.observe(0.0001)
    assert pacer.wait(since_previous=0.001) == 0.005
    assert pacer.wait(since_previous=0.01) == 0.0  # a quiet room still sends at once
    assert BatchPacer(factor=2, ceiling=0.001, floor=0.005).floor == 0.001

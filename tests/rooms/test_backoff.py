"""rooms.backoff: the one backoff of the server's retry loops, pure (a fixed ``random``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway import client, supervisor
from gateway.limits import RETRY_HINT_MAX, ConnectionRate
from rooms.backoff import backoff_delay, jittered
from rooms.engines import redis_feed


def fixed(x: float) -> Callable[[], float]:
    return lambda: x


def test_the_delay_doubles_from_base_to_cap() -> None:
    assert [backoff_delay(a, base=0.5, cap=30.0) for a in range(8)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delay(10**6, base=0.5, cap=30.0) == 30.0  # no overflow, however long
    assert backoff_delay(0, base=0.0, cap=0.0) == 0.0


@pytest.mark.parametrize(("jitter", "lowest", "highest"), [
    (0.0, 4.0, 4.0), (0.5, 2.0, 4.0), (1.0, 0.0, 4.0)])
def test_jitter_draws_that_share_of_the_delay(jitter: float, lowest: float,
                                              highest: float) -> None:
    assert backoff_delay(3, base=0.5, cap=30.0, jitter=jitter, random=fixed(0.0)) == lowest
    assert backoff_delay(3, base=0.5, cap=30.0, jitter=jitter, random=fixed(1.0)) == highest
    assert backoff_delay(3, base=0.5, cap=30.0, jitter=jitter,
                         random=fixed(0.5)) == (lowest + highest) / 2


def test_jittered_is_a_point_of_the_window() -> None:
    assert [jittered(2.0, 3.0, fixed(r)) for r in (0.0, 0.5, 1.0)] == [2.0, 3.5, 5.0]


@pytest.mark.parametrize("kwargs", [
    {"attempt": -1}, {"base": -0.1}, {"cap": 0.4}, {"jitter": -0.1}, {"jitter": 1.1},
    {"jitter": 0.5, "random": None}])
def test_impossible_arguments_are_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"attempt": 0, "base": 0.5, "cap": 30.0, "jitter": 0.0,
                               "random": fixed(0.5), **kwargs}
    with pytest.raises(ValueError):
        backoff_delay(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("r", [0.0, 0.25, 0.999999])
@pytest.mark.parametrize("max_backoff", [30.0, 2.0, 600.0])
def test_the_bot_client_s_own_copy_is_the_same_backoff(r: float, max_backoff: float) -> None:
    """gateway/client.py writes the arithmetic out (it imports nothing of the server's): the
    same delays as the helper, 0.5 s doubling, equal jitter."""
    for attempt in range(14):
        assert client.reconnect_delay(attempt, max_backoff, fixed(r)) == pytest.approx(
            backoff_delay(attempt, base=client.RECONNECT_BASE, cap=max_backoff, jitter=0.5,
                          random=fixed(r)), rel=1e-12)


def test_the_call_sites_keep_their_schedules() -> None:
    # Redis pub/sub reconnect: 0.1 s doubling to 5 s, no jitter (as before the helper).
    assert [backoff_delay(a, base=redis_feed.RECONNECT_MIN, cap=redis_feed.RECONNECT_MAX)
            for a in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    # Worker restarts: 0.5 s doubling to 30 s.
    assert [backoff_delay(a, base=supervisor.MIN_BACKOFF, cap=supervisor.MAX_BACKOFF)
            for a in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    # A refused connection's hint: the bucket's wait plus a point of the backlog's spread.
    rate = ConnectionRate(rate=1.0, burst=1, random=fixed(0.5))
    assert rate.take(100.0) == 0.0
    assert rate.take(100.0) == pytest.approx(1.0 + 0.5 * 1.0)
    assert ConnectionRate(rate=0.001, burst=1, random=fixed(1.0)).take(0.0) == 0.0
    starved = ConnectionRate(rate=0.001, burst=1, random=fixed(1.0))
    starved.take(0.0)
    assert starved.take(0.0) == RETRY_HINT_MAX

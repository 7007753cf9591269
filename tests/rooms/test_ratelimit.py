from __future__ import annotations

import pytest

from rooms.ratelimit import BytePace, TokenBucket


def test_burst_then_refill_with_injected_clock() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.25) == pytest.approx(0.25)
    assert bucket.take(100.5) == 0.0
    assert bucket.take(100.5) == pytest.approx(0.5)


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert [bucket.take(1000.0) for _ in range(3)][2] > 0


def test_clock_going_backwards_does_not_mint_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) > 0


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0, now=0)


def test_byte_pace_lets_a_burst_through_then_its_rate() -> None:
    pace = BytePace(rate=1000.0, burst=500)
    assert pace.delay(500, now=10.0) == 0.0  # the burst, at once
    assert pace.delay(250, now=10.0) == pytest.approx(0.25)  # then 1000 bytes a second
    # Waited as told: the next bytes are charged from where the last ones ended.
    assert pace.delay(500, now=10.25) == pytest.approx(0.5)
    # Idle long enough, the burst is back; idle longer, it is not more than the burst.
    assert pace.delay(500, now=100.0) == 0.0
    assert pace.delay(1, now=100.0) == pytest.approx(0.001)


def test_byte_pace_is_shared_in_order() -> None:
    """Two takers on one pace: the second waits behind what the first was charged."""
    pace = BytePace(rate=100.0, burst=1)
    assert pace.delay(100, now=0.0) == pytest.approx(0.99)
    assert pace.delay(100, now=0.0) == pytest.approx(1.99)


def test_byte_pace_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        BytePace(rate=0, burst=1)
    with pytest.raises(ValueError):
        BytePace(rate=1, burst=0)

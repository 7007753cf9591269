"""Token bucket with an injected clock. Pure: pass ``now`` (seconds, monotonic)."""

from __future__ import annotations


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; one message costs one token.

    Ours rather than a library's (limits, aiolimiter): ~30 lines, pure with ``now`` passed in
    (tests step time; the room takes it once per batch), fractional costs (pongs), and the
    wait returned as a Retry-After hint; the libraries read their own clock or sleep."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens. Returns 0.0 on success, else the seconds until they are
        available (nothing is taken then)."""
        elapsed = max(0.0, now - self._stamp)
        self._stamp = max(self._stamp, now)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        if self._tokens >= cost:
            self._tokens -= cost
            return 0.0
        return (cost - self._tokens) / self.rate

    def full(self, now: float) -> bool:
        """Whether the bucket holds ``burst`` tokens at ``now``: it is then indistinguishable
        from a new one, and a keeper of many buckets may forget it. Changes nothing."""
        elapsed = max(0.0, now - self._stamp)
        return self._tokens + elapsed * self.rate >= self.burst


class BytePace:
    """Lets ``rate`` bytes a second through on average, ``burst`` at once: the generic cell
    rate algorithm over bytes. Pure: pass ``now`` (seconds, monotonic).

    Unlike ``TokenBucket`` nothing is refused: ``delay`` charges the bytes at once and says how
    long their taker must wait before taking more, so several takers sharing one pace are
    served in the order they came, and the average stays at ``rate`` whatever the sizes."""

    __slots__ = ("_due", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._due = 0.0  # when the bytes charged so far would all have passed at ``rate``

    def delay(self, size: int, now: float) -> float:
        """Charge ``size`` bytes; the seconds to wait before the next ones (0.0: none)."""
        self._due = max(self._due, now) + size / self.rate
        return max(0.0, self._due - now - self.burst / self.rate)

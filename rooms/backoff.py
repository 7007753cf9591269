"""Retry delays: exponential backoff and jitter, pure (``random`` passed in, nothing sleeps).

Every retry loop of the server takes its delays from here: the Redis engine's pub/sub
reconnect, the supervisor's worker restarts, and the jittered retry hint of a refused
connection (``gateway.limits``). The page has the same two functions in ``static/backoff.js``;
``gateway/client.py`` keeps its own line of arithmetic so it stays one file a bot can copy, and
``tests/rooms/test_backoff.py`` pins it to ``backoff_delay``.

In ``rooms`` so that the engines and the gateway can both use it (rooms imports no gateway).
"""

from __future__ import annotations

from collections.abc import Callable


def jittered(low: float, span: float, random: Callable[[], float]) -> float:
    """A point of ``[low, low + span]`` drawn with ``random()`` (uniform in [0, 1), e.g.
    ``random.random``): what spreads clients that failed together over a window instead of
    bringing them back at the same instant."""
    return low + span * random()


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float = 0.0,
                  random: Callable[[], float] | None = None) -> float:
    """The wait before retry number ``attempt`` (0 for the first retry): ``base`` doubling per
    attempt up to ``cap``, of which the share ``jitter`` is drawn with ``random()``.

    ``jitter`` 0: exactly the doubling (one retrier, a deterministic schedule); 0.5: from half
    of it to all of it ("equal jitter"); 1: from 0 to all of it ("full jitter", AWS's
    architecture blog: retriers that failed together spread over the whole window). ``random``
    is needed when ``jitter`` is not 0. Raises ``ValueError`` for a negative ``attempt`` or
    ``base``, a ``cap`` below ``base``, or ``jitter`` outside [0, 1].
    """
    if attempt < 0 or base < 0 or cap < base or not 0.0 <= jitter <= 1.0:
        raise ValueError("backoff needs attempt >= 0, 0 <= base <= cap and jitter in [0, 1]")
    # 2**attempt overflows a float past ~1024 doublings; the cap is reached long before.
    ceiling = min(cap, base * 2.0 ** min(attempt, 1023))
    if jitter == 0.0:
        return ceiling
    if random is None:
        raise ValueError("a jittered backoff needs random")
    return jittered(ceiling * (1.0 - jitter), ceiling * jitter, random)

"""How long a busy room waits to gather a batch, scaled to what its broadcasts cost (pure)."""

from __future__ import annotations


class BatchPacer:
    """Chooses the wait before a room handles what arrived in its inbox.

    Every batch costs one frame per member (a socket write each) however many messages it
    holds, so gathering a burst into one batch saves CPU in proportion to the room's fan-out
    cost, while every wait is latency its members feel. The pacer therefore waits ``factor``
    times what one batch recently cost (a moving average of measured fan-outs), never more
    than ``ceiling``, and only while the room is busy: the previous message came less than
    that wait ago. A quiet room never waits. A room of 10 fans out in about 0.1 ms and hardly
    waits (less than a millisecond rounds to one turn of the event loop, which still picks up
    what the sockets hold); a room of 100 takes about 1 ms and waits two; at saturation the
    room is behind anyway and its batches form while the previous commit is in flight.

    On a shared engine the actor asks for a fixed wait instead (``floor`` equal to
    ``ceiling``): there a batch also costs a script in Redis and a pub/sub message parsed by
    every other process serving the room, which this process cannot measure.

    No clock and no I/O: the actor measures and passes the numbers in.
    """

    __slots__ = ("ceiling", "cost", "factor", "floor", "smoothing")

    def __init__(self, factor: float, ceiling: float, smoothing: float = 0.2,
                 floor: float = 0.0) -> None:
        """``factor``: the wait as a multiple of one batch's cost (0: never wait);
        ``ceiling``: the longest wait in seconds; ``smoothing``: weight of the newest sample;
        ``floor``: the shortest wait of a busy room (``floor == ceiling``: a fixed wait)."""
        if factor < 0 or ceiling < 0 or floor < 0 or not 0 < smoothing <= 1:
            raise ValueError("factor, ceiling and floor must not be negative; "
                             "0 < smoothing <= 1")
        self.factor = factor
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.smoothing = smoothing
        self.cost = 0.0  # seconds one batch cost, smoothed

    def observe(self, seconds: float) -> None:
        """One batch cost ``seconds`` (see the class docstring for what counts)."""
        self.cost += self.smoothing * (max(0.0, seconds) - self.cost)

    def wait(self, since_previous: float) -> float:
        """Seconds to wait before handling what arrived, given the seconds between this
        arrival and the previous one: 0 for a quiet room."""
        wait = min(self.ceiling, max(self.floor, self.factor * self.cost))
        return wait if since_previous < wait else 0.0

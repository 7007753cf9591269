"""``SearchSlots``: the bound on searches one process runs or queues at once.

A search runs in the store's search threads; without a bound, requests from many addresses
(each within its own rate) would queue there without limit. Refusing at the bound answers the
client at once, with a ``Retry-After``, instead of queuing it behind work it cannot see.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.errors import Rejection


class SearchSlots:
    """At most ``most`` holders at a time; ``take()`` beyond that raises 503 ``search_busy``."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.busy = 0

    @contextmanager
    def take(self) -> Iterator[None]:
        """Hold one slot for the ``with`` block. Raises ``Rejection(503, "search_busy")``
        (``Retry-After: 1``) when all are held; the slot is given back however the block ends."""
        if self.busy >= self.most:
            raise Rejection(503, "search_busy",
                            f"{self.most} searches are running on this server; retry in a second",
                            retry_after=1.0)
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1

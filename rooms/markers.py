"""A room's read-marker writer: stores the read markers its members move, off the room's loop.

A marker is a hint, and a busy room's members move theirs with every few messages: the room
hands them over (``queue``, never blocks) and goes on; ``run``, a task of the room's own,
writes them through ``Engine.mark_read`` (which tells other processes). At most one marker per
member waits (a newer one replaces it), so the queue is bounded by the room's members. One the
store refuses for now is tried again ``READ_RETRY`` seconds later on the room's clock (a newer
one replaces it); one it can never store (``Unstorable``) is dropped.
"""

from __future__ import annotations

import asyncio
import logging

from rooms.cancelled import raise_if_cancelled
from rooms.clock import Clock, sleep
from rooms.engine import Engine
from rooms.errors import StoreError, Unstorable

log = logging.getLogger("roomchat.room")

READ_RETRY = 1.0
"""Seconds before read markers that storage refused are written again."""


class MarkerWriter:
    """The read markers of one room waiting to be stored, and the task that stores them."""

    def __init__(self, room: str, engine: Engine, clock: Clock, store_timeout: float) -> None:
        self.room = room
        self._engine = engine
        self._clock = clock
        self._store_timeout = store_timeout
        self._reads: dict[str, int] = {}  # user -> seq: at most one per member
        self._waiting: asyncio.Future[None] | None = None  # only while ``run`` is idle

    def queue(self, reads: dict[str, int]) -> None:
        """Hand moved markers over (a newer one replaces one not written yet). Never blocks."""
        for user, seq in reads.items():
            if seq > self._reads.get(user, 0):
                self._reads[user] = seq
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    @property
    def pending(self) -> dict[str, int]:
        """The markers not written yet (a copy)."""
        return dict(self._reads)

    async def run(self) -> None:
        """Write markers as they come, for as long as the room runs (cancel it to stop)."""
        while True:
            raise_if_cancelled()  # a stop that mark_read lost (rooms.cancelled)
            if not self._reads:
                self._waiting = asyncio.get_running_loop().create_future()
                try:
                    await self._waiting
                finally:
                    self._waiting = None
            reads, self._reads = self._reads, {}
            failed = False
            for user, seq in reads.items():
                try:
                    async with asyncio.timeout(self._store_timeout):
                        await self._engine.mark_read(self.room, user, seq)
                except (StoreError, Unstorable, TimeoutError) as exc:
                    log.debug("room %s: read marker of %s not stored: %s", self.room, user,
                              exc)
                    if not isinstance(exc, Unstorable) and seq > self._reads.get(user, 0):
                        self._reads[user] = seq
                        failed = True
            if failed:
                await sleep(self._clock, READ_RETRY)

"""What the engine tests share (tests/rooms/test_engine.py, the cluster's integration
tests): drafts to append, and a listener that records what an engine's feed delivers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rooms.messages import Draft, WireMessage
from tests.support import SLOW


def drafts(count: int, user: str = "u", ids: bool = True, start: int = 0) -> list[Draft]:
    return [Draft(user, user.upper(), f"id{i}" if ids else None, f"t{i}", 1000 + i)
            for i in range(start, start + count)]



class Listener:
    def __init__(self) -> None:
        self.messages: list[WireMessage] = []
        self.presence = 0
        self.resyncs = 0
        self.banned: list[tuple[str, str]] = []
        self.reads: list[tuple[str, int]] = []
        self.arrived = asyncio.Event()
        self.confirmed = asyncio.Event()

    def remote_messages(self, messages: list[WireMessage]) -> None:
        self.messages += messages
        self.arrived.set()

    def remote_presence(self) -> None:
        self.presence += 1
        self.arrived.set()

    def resync(self) -> None:
        self.resyncs += 1
        self.confirmed.set()

    async def subscribed(self, timeout: float = 5.0) -> None:
        """Until the feed confirmed the subscription: its first resync, after which whatever
        is published reaches this listener (a fixed sleep of 0.2 s was not enough at load 5:
        fresh-clone run 50)."""
        async with asyncio.timeout(timeout * SLOW):
            await self.confirmed.wait()

    def remote_read(self, user: str, seq: int) -> None:
        self.reads.append((user, seq))
        self.arrived.set()

    def remote_banned(self, user: str, reason: str) -> None:
        self.banned.append((user, reason))
        self.arrived.set()


async def wait_for(arrived: asyncio.Event, predicate: Callable[[], bool],
                   timeout: float = 5.0) -> None:
    """Until ``predicate()`` holds, checked each time ``arrived`` is set."""
    async with asyncio.timeout(timeout):
        while not predicate():
            arrived.clear()
            await arrived.wait()

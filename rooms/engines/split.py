"""``SplitEngine``: an ``Engine`` made of a ``Log`` and a ``Bus`` (docs/design/log-and-bus.md),
and ``LocalBus``, the bus of a process that serves its rooms alone.

The log stores and decides (seqs, dedup, the rules of changes, epochs); the bus carries notices
between processes, at most once. ``SplitEngine`` calls the log, then tells the bus what the log
did, after the log's commit: a notice is never sent for what was not stored, and one lost (a
process killed between the two) is repaired by the receivers as any lost pub/sub message is
(gap reads, ``sync``). Rooms see one ``Engine``, as with the fused engines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from rooms.engine import AppendDone, Ban, Bus, ErasedObserver, Log, RoomListener, RoomSync
from rooms.messages import (
    DEFAULT_RULES,
    Action,
    AnyDraft,
    Appended,
    Entry,
    LogRules,
    RoomSnapshot,
    StoredChange,
    StoredMessage,
    Unread,
    WireMessage,
)
from rooms.search import Place, RoomsPage, SearchPage


class LocalBus:
    """The bus of one process: nobody else to tell, nobody else's presence. What it does carry
    is the feed of entries appended in this process outside a room's actor (an erasure) to that
    room's actor (``feed``). Implements ``rooms.engine.Bus``; never blocks, never raises."""

    shared = False

    def __init__(self, node: str) -> None:
        self.node = node
        self._listeners: dict[str, RoomListener] = {}  # room -> its actor here

    @property
    def healthy(self) -> bool:
        return True

    def subscribe(self, room: str, listener: RoomListener) -> None:
        self._listeners[room] = listener

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        if self._listeners.get(room) is listener:
            del self._listeners[room]

    def feed(self, room: str, messages: list[WireMessage]) -> None:
        listener = self._listeners.get(room)
        if listener is not None and messages:
            listener.remote_messages(messages)

    def entries(self, room: str, messages: list[WireMessage]) -> None:
        """No other process: nothing to tell."""

    def read_moved(self, room: str, user: str, seq: int) -> None:
        """No other process: the room tells its own sessions."""

    def banned(self, room: str, user: str, reason: str) -> None:
        """No other process: the caller carries the ban out in this one."""

    async def presence(self, room: str, members: dict[str, str], ttl: float) -> dict[str, str]:
        return {}

    async def others(self, room: str) -> dict[str, str]:
        return {}

    async def close(self) -> None:
        self._listeners.clear()


def _wires(entries: Sequence[Entry | WireMessage]) -> list[WireMessage]:
    return [e if isinstance(e, WireMessage) else WireMessage(e.seq, e.to_wire())
            for e in entries]


class SplitEngine:
    """``SplitEngine(log, bus)``; implements ``rooms.engine.Engine``. Owns both: ``close``
    closes the bus, then the log."""

    def __init__(self, log: Log, bus: Bus) -> None:
        self.log = log
        self.bus = bus
        self.node = bus.node
        self.shared = bus.shared
        """Shared when the bus is: a log alone cannot tell another process's rooms anything."""

    @property
    def healthy(self) -> bool:
        return self.log.healthy and self.bus.healthy

    async def load(self, room: str, dedup_window: int) -> RoomSnapshot:
        return await self.log.load(room, dedup_window)

    def append_soon(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                    dedup_window: int, epoch: str | None, floor: int, rules: LogRules,
                    done: AppendDone) -> bool:
        """As ``Engine.append_soon``: not on a shared engine (its rooms' appends are awaited,
        between syncs with other processes)."""
        return False

    async def append(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                     dedup_window: int = 0, epoch: str | None = None, floor: int = 0,
                     rules: LogRules = DEFAULT_RULES) -> list[Appended]:
        results = await self.log.append(room, drafts, retention=retention,
                                        dedup_window=dedup_window, epoch=epoch, floor=floor,
                                        rules=rules)
        stored = [r.entry for r in results if r.entry is not None]
        if stored:
            self.bus.entries(room, _wires(stored))
        return results

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[Entry]:
        return await self.log.read(room, after, upto, limit)

    async def history(self, room: str, *, after: int = 0, before: int, limit: int,
                      newest: bool = False) -> list[StoredMessage]:
        return await self.log.history(room, after=after, before=before, limit=limit,
                                      newest=newest)

    async def search(self, room: str, query: str, *, before: int | None,
                     limit: int) -> SearchPage:
        return await self.log.search(room, query, before=before, limit=limit)

    async def search_all(self, query: str, *, before: Place | None, limit: int,
                         most: int) -> RoomsPage:
        return await self.log.search_all(query, before=before, limit=limit, most=most)

    async def unread(self, room: str, user: str, *, scan: int) -> Unread:
        return await self.log.unread(room, user, scan=scan)

    async def mark_read(self, room: str, user: str, seq: int) -> int:
        marker, moved = await self.log.mark_read(room, user, seq)
        if moved:
            self.bus.read_moved(room, user, marker)
        return marker

    async def markers(self, user: str) -> dict[str, int]:
        return await self.log.markers(user)

    async def sync(self, room: str, members: dict[str, str], ttl: float, *,
                   floor: int = 0) -> RoomSync:
        """The log's state and the bus's presence, asked at the same time. With a bus of one
        process no ban is asked about: every ban reaches the room directly."""
        if not self.bus.shared:
            state = await self.log.state(room, floor, ())
            return RoomSync(top=state.top, others={}, epoch=state.epoch)
        presence = asyncio.ensure_future(self.bus.presence(room, members, ttl))
        try:
            state = await self.log.state(room, floor, members)
            others = await presence
        finally:
            if not presence.done():  # the log failed (or we were cancelled): not left behind
                presence.cancel()
                await asyncio.gather(presence, return_exceptions=True)
        return RoomSync(top=state.top, others=others, banned=state.banned, epoch=state.epoch)

    def subscribe(self, room: str, listener: RoomListener) -> None:
        self.bus.subscribe(room, listener)

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        self.bus.unsubscribe(room, listener)

    async def stash(self, key: str, value: bytes, ttl: float) -> None:
        await self.log.stash(key, value, ttl)

    async def take(self, key: str) -> bytes | None:
        return await self.log.take(key)

    async def revoke(self, user: str, at: float) -> None:
        await self.log.revoke(user, at)

    async def revocations(self, since: float) -> list[tuple[str, float]]:
        return await self.log.revocations(since)

    async def erase(self, user: str,
                    erased: ErasedObserver | None = None) -> dict[str, list[int]]:
        def step(room: str, entries: list[StoredChange]) -> None:
            wires = _wires(entries)
            self.bus.feed(room, wires)  # this process's room: appended outside its actor
            self.bus.entries(room, wires)
            deleted = [e.target for e in entries if e.action is Action.DELETE]
            if erased is not None and deleted:
                erased(room, deleted)

        return await self.log.erase(user, step)

    async def ban(self, room: str, ban: Ban) -> None:
        await self.log.ban(room, ban)
        self.bus.banned(room, ban.user, ban.reason)

    async def unban(self, room: str, user: str) -> bool:
        return await self.log.unban(room, user)

    async def banned(self, room: str, user: str) -> Ban | None:
        return await self.log.banned(room, user)

    async def top(self, room: str) -> int:
        return await self.log.top(room)

    async def presence(self, room: str) -> dict[str, str]:
        return await self.bus.others(room)

    # -- moving between engines (gateway/importer.py) ---------------------------------------

    async def rooms(self) -> list[str]:
        return await self.log.rooms()

    async def log_epoch(self, room: str) -> str | None:
        return await self.log.log_epoch(room)

    async def importable(self, room: str) -> bool:
        return await self.log.importable(room)

    async def import_entries(self, room: str, entries: Sequence[Entry], *, top: int,
                             epoch: str | None = None, dedup_window: int = 0,
                             progress: Callable[[int], object] | None = None) -> bool:
        return await self.log.import_entries(room, entries, top=top, epoch=epoch,
                                             dedup_window=dedup_window, progress=progress)

    async def close(self) -> None:
        try:
            await self.bus.close()
        finally:
            await self.log.close()

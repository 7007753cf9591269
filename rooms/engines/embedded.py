"""``EmbeddedEngine``: the default engine, for one process: SQLite, and nothing to share.

Seqs are allocated by the store's one writer thread, which also checks each change against its
target's current state in the same transaction (``rooms.engines.sqlite``): a room's actor and
an erasure may append to the same room. With one process and one actor per room, the room's
own dedup map (loaded from the log) is authoritative. Running a second process on the same
database is refused by the CLI (``--workers`` needs a shared engine).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rooms.engine import (
    AppendDone,
    Ban,
    CommitObserver,
    ErasedObserver,
    RoomListener,
    RoomSync,
)
from rooms.engines.split import LocalBus
from rooms.engines.sqlite import SqliteStore
from rooms.errors import LogReset, StoreError
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

# Rooms whose bans are kept in memory (least recently asked for are dropped first): one join
# asks once per connection, and a SQLite read handed to a thread was ~8% of a handshake's CPU.
BAN_CACHE_ROOMS = 10_000
# Rooms whose read markers are kept in memory, likewise (least recently asked for dropped first).
MARKER_CACHE_ROOMS = 10_000


class EmbeddedEngine:
    """``await EmbeddedEngine.open(path)``; implements ``rooms.engine.Engine``."""

    shared = False

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.node = f"embedded-{os.getpid()}"
        self._last: dict[str, int] = {}
        # room -> its bans in force when loaded (expiry is checked when read). Authoritative:
        # bans are written only through this engine, by the one process on this database.
        self._bans: OrderedDict[str, dict[str, Ban]] = OrderedDict()
        self._ban_writes = 0  # bumped by every ban/unban: a load that raced one is not kept
        # room -> (_ban_writes when it started, its result): the load in flight, which every
        # join arriving meanwhile awaits instead of reading too. Members of a room come back
        # together (a reconnect storm, the handshake bench: 10 at once), and each used to miss
        # the cache and read for itself. At most one entry per room, removed when it ends.
        self._ban_loads: dict[str, tuple[int, asyncio.Future[dict[str, Ban]]]] = {}
        # room -> the append whose outcome its caller has not received (being written, or its
        # caller stopped waiting: a deadline); ``close`` waits for them. At most one per room,
        # taken by the room's next append or load.
        self._writes: dict[str, _Write] = {}
        self._bus = LocalBus(self.node)  # room -> its actor here (erasures feed it)
        self._markers: OrderedDict[str, dict[str, int]] = OrderedDict()  # room -> user -> seq
        self._marker_writes = 0  # bumped by every mark_read: a load that raced one is not kept

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "FULL",
                   on_commit: CommitObserver | None = None,
                   search_index: bool = True) -> EmbeddedEngine:
        """As ``SqliteStore.open`` (``search_index``: keep the search index, or drop it)."""
        return cls(await SqliteStore.open(Path(path), synchronous=synchronous,
                                          on_commit=on_commit, search_index=search_index))

    @property
    def healthy(self) -> bool:
        return True

    async def load(self, room: str, dedup_window: int) -> RoomSnapshot:
        await self._settle(room)  # a write still landing would move the room's last seq
        bans_at, markers_at = self._ban_writes, self._marker_writes
        snapshot, bans, markers = await self.store.load_room(room, dedup_window)
        self._last[room] = snapshot.last_seq
        # The room's first joins ask for these next: read in the same hand-off and kept by
        # ``_load_bans``' and ``_room_markers``' rule (not when a write raced the read), they
        # cost those joins no read of their own.
        if bans_at == self._ban_writes and room not in self._bans:
            self._bans[room] = {u: Ban(u, until, reason) for u, (until, reason) in bans.items()}
            if len(self._bans) > BAN_CACHE_ROOMS:
                self._bans.popitem(last=False)
        if markers_at == self._marker_writes and room not in self._markers:
            self._markers[room] = markers
            if len(self._markers) > MARKER_CACHE_ROOMS:
                self._markers.popitem(last=False)
        return snapshot

    async def append(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                     dedup_window: int = 0, epoch: str | None = None, floor: int = 0,
                     rules: LogRules = DEFAULT_RULES) -> list[Appended]:
        """As ``Engine.append`` (the seqs are allocated, and changes checked, by the store's
        writer thread: any caller may append). Safe to cancel (a caller's deadline) and then
        call again with the same drafts: the write goes on, and the next call waits for it
        and answers with its results instead of storing the drafts twice (the room's dedup
        map learns of them only from the answer). The log cannot go backwards under this
        one process: ``floor`` is never above what it stored."""
        if epoch is not None and epoch != self.store.epoch:
            raise LogReset(self.store.epoch, self._last.get(room, 0))
        batch = list(drafts)
        if not batch:
            return []
        if room in self._writes:  # its caller stopped waiting: it decides what comes next
            earlier = await self._settle(room)
            if earlier is not None and earlier.drafts == batch:
                return earlier.results
        pending = _Write(batch)
        written = self.store.submit(room, batch, retention, rules,
                                    functools.partial(self._landed, room, pending))
        # Kept until its caller has the outcome: if it is cancelled instead (even with the
        # write just done) the room's next append or load takes it.
        self._writes[room] = pending
        await written
        self._writes.pop(room, None)  # (a failure raised above: ``_landed`` took it then)
        return pending.results

    def append_soon(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                    dedup_window: int, epoch: str | None, floor: int, rules: LogRules,
                    done: AppendDone) -> bool:
        """As ``Engine.append_soon``: the store's writer thread groups it with the appends of
        the same turn, as ``append``. A caller that stopped waiting (``done`` answers False)
        leaves the write for its next ``append`` of the same drafts to take, as a cancelled
        ``append`` does. False while an earlier write of the room is still to be taken."""
        if room in self._writes:
            return False
        if epoch is not None and epoch != self.store.epoch:
            done(None, LogReset(self.store.epoch, self._last.get(room, 0)))
            return True
        batch = list(drafts)
        if not batch:
            done([], None)
            return True
        pending = _Write(batch)

        def landed(results: list[Appended] | None, error: BaseException | None) -> None:
            self._landed(room, pending, results, error)
            if done(results, error) and self._writes.get(room) is pending:
                del self._writes[room]

        try:
            # Nobody awaits the future: cancelled, it keeps an error from being reported as
            # never retrieved (the write goes on, and ``landed`` is told all the same).
            self.store.submit(room, batch, retention, rules, landed).cancel()
        except StoreError as exc:
            done(None, exc)
            return True
        self._writes[room] = pending
        return True

    def _landed(self, room: str, pending: _Write, results: list[Appended] | None,
                error: BaseException | None) -> None:
        """The store's answer for ``pending``, awaited or not."""
        pending.landed = True
        pending.failed = error is not None
        if results is not None:
            pending.results = results
            self._stored(room, results)
        elif self._writes.get(room) is pending:
            del self._writes[room]  # nothing stored: nothing for a next call to take
        if pending.waiter is not None and not pending.waiter.done():
            pending.waiter.set_result(None)

    def _stored(self, room: str, results: list[Appended]) -> None:
        """The room's log grew: its top moves to the highest seq stored."""
        top = max((r.seq for r in results if r.entry is not None), default=0)
        if top > self._last.get(room, 0):
            self._last[room] = top

    async def _settle(self, room: str) -> _Write | None:
        """Wait for the room's write whose caller stopped waiting, if any, and take it: the
        write if it was stored, None if it failed (nothing stored) or there was none.
        Cancelling this wait leaves the write in place for the next call."""
        pending = self._writes.get(room)
        if pending is None:
            return None
        if not pending.landed:
            pending.waiter = asyncio.get_running_loop().create_future()
            await pending.waiter
        if self._writes.get(room) is pending:
            del self._writes[room]
        return None if pending.failed else pending

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[Entry]:
        return await self.store.read(room, after, upto, limit)

    async def history(self, room: str, *, after: int = 0, before: int, limit: int,
                      newest: bool = False) -> list[StoredMessage]:
        return await self.store.history(room, after=after, before=before, limit=limit,
                                        newest=newest)

    async def search(self, room: str, query: str, *, before: int | None,
                     limit: int) -> SearchPage:
        return await self.store.search(room, query, before=before, limit=limit)

    async def search_all(self, query: str, *, before: Place | None, limit: int,
                         most: int) -> RoomsPage:
        return await self.store.search_all(query, before=before, limit=limit, most=most)

    async def unread(self, room: str, user: str, *, scan: int) -> Unread:
        # Every join asks: the room's markers are kept in memory (this one process writes
        # them all), so a user without one costs no read at all.
        read = (await self._room_markers(room)).get(user, 0)
        if not read or scan <= 0:
            return Unread(read)
        return await self.store.unread_after(room, user, read, scan)

    async def mark_read(self, room: str, user: str, seq: int) -> int:
        # One process: the room tells its own sessions; nobody else to tell.
        self._marker_writes += 1
        marker = await self.store.mark_read(room, user, seq)
        cached = self._markers.get(room)
        if cached is not None and marker > cached.get(user, 0):
            cached[user] = marker
        return marker

    async def _room_markers(self, room: str) -> dict[str, int]:
        """The room's read markers, from memory or read once (and kept unless a marker was
        written meanwhile: then the next join reads again)."""
        markers = self._markers.get(room)
        if markers is not None:
            self._markers.move_to_end(room)
            return markers
        writes = self._marker_writes
        markers = await self.store.room_markers(room)
        if writes == self._marker_writes:
            self._markers[room] = markers
            if len(self._markers) > MARKER_CACHE_ROOMS:
                self._markers.popitem(last=False)
        return markers

    async def markers(self, user: str) -> dict[str, int]:
        return await self.store.markers(user)

    async def sync(self, room: str, members: dict[str, str], ttl: float, *,
                   floor: int = 0) -> RoomSync:
        return RoomSync(top=self._last.get(room, 0), others={}, epoch=self.store.epoch)

    def subscribe(self, room: str, listener: RoomListener) -> None:
        # Nothing else serves the room, but an erasure appends outside its actor: it hears of
        # those entries through here.
        self._bus.subscribe(room, listener)

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        self._bus.unsubscribe(room, listener)

    async def stash(self, key: str, value: bytes, ttl: float) -> None:
        await self.store.stash(key, value, ttl)

    async def take(self, key: str) -> bytes | None:
        return await self.store.take(key)

    async def revoke(self, user: str, at: float) -> None:
        await self.store.revoke(user, at)

    async def revocations(self, since: float) -> list[tuple[str, float]]:
        return await self.store.revocations(since)

    async def erase(self, user: str,
                    erased: ErasedObserver | None = None) -> dict[str, list[int]]:
        def step(room: str, entries: list[StoredChange]) -> None:
            self._last[room] = max(self._last.get(room, 0), entries[-1].seq)
            self._bus.feed(room, [WireMessage(e.seq, e.to_wire()) for e in entries])
            deleted = [e.target for e in entries if e.action is Action.DELETE]
            if erased is not None and deleted:
                erased(room, deleted)

        return await self.store.erase(user, step)

    async def ban(self, room: str, ban: Ban) -> None:
        # Forgotten before the write as well as after it: a join checked while the write is
        # under way must not be answered from the bans cached before it (it reads them, and
        # a read that began before the write ends is not cached).
        self._forget_bans(room)
        try:
            await self.store.ban(room, ban.user, ban.until, ban.reason)
        finally:
            self._forget_bans(room)

    async def unban(self, room: str, user: str) -> bool:
        self._forget_bans(room)
        try:
            return await self.store.unban(room, user)
        finally:
            self._forget_bans(room)

    async def banned(self, room: str, user: str) -> Ban | None:
        bans = self._bans.get(room)
        if bans is None:
            bans = await self._load_bans(room)
        else:
            self._bans.move_to_end(room)
        ban = bans.get(user)
        if ban is None or (ban.until is not None and ban.until <= time.time()):
            return None
        return ban

    async def _load_bans(self, room: str) -> dict[str, Ban]:
        """The room's bans, read once however many joins ask at the same time. A join waits
        only for a read that started after the last ban write it could have missed."""
        while True:
            writes = self._ban_writes
            loading = self._ban_loads.get(room)
            if loading is None or loading[0] != writes:
                break
            try:
                # Shielded: a waiter cancelled (its client left) leaves the read to the others.
                return await asyncio.shield(loading[1])
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not loading[1].cancelled() or (task is not None and task.cancelling()):
                    raise
                # The reader failed or was cancelled itself: read ourselves (next turn).
        future: asyncio.Future[dict[str, Ban]] = asyncio.get_running_loop().create_future()
        self._ban_loads[room] = (writes, future)
        try:
            rows = await self.store.bans(room)
            bans = {u: Ban(u, until, reason) for u, (until, reason) in rows.items()}
            if writes == self._ban_writes:
                self._bans[room] = bans
                if len(self._bans) > BAN_CACHE_ROOMS:
                    self._bans.popitem(last=False)
            future.set_result(bans)
            return bans
        finally:
            # On failure the waiters are cancelled and each reads for itself: one error is not
            # handed to joins that might succeed, and no exception is left unretrieved.
            future.cancel()
            if self._ban_loads.get(room) == (writes, future):
                del self._ban_loads[room]

    def _forget_bans(self, room: str) -> None:
        self._ban_writes += 1
        self._bans.pop(room, None)

    async def top(self, room: str) -> int:
        # The store's, not ``load``: that one resets the room's seq counter.
        return max(self._last.get(room, 0), (await self.store.load(room, 0)).last_seq)

    async def presence(self, room: str) -> dict[str, str]:
        return {}

    # -- moving between engines (gateway/importer.py): as ``SqliteStore``'s ----------------

    async def rooms(self) -> list[str]:
        return await self.store.rooms()

    async def log_epoch(self, room: str) -> str | None:
        """The epoch of ``room``'s log: the database's (one for every room)."""
        return self.store.epoch

    async def importable(self, room: str) -> bool:
        return await self.store.importable(room)

    async def import_entries(self, room: str, entries: Sequence[Entry], *, top: int,
                             epoch: str | None = None, dedup_window: int = 0,
                             progress: Callable[[int], object] | None = None) -> bool:
        """``SqliteStore.import_entries`` (``top`` and ``dedup_window`` need nothing here:
        the top is the highest row's seq, and the room loads its ids from the rows)."""
        return await self.store.import_entries(room, entries, epoch=epoch, progress=progress)

    async def close(self) -> None:
        await self.store.close()  # finishes the writes queued: each is told it landed soon
        for room in list(self._writes):
            await self._settle(room)


@dataclass(slots=True)
class _Write:
    """An append handed to the store: its drafts, and their results once the store has answered
    (``landed``)."""

    drafts: list[AnyDraft]
    results: list[Appended] = field(default_factory=list)
    landed: bool = False
    failed: bool = False
    waiter: asyncio.Future[None] | None = None  # a ``_settle`` waiting for it to land

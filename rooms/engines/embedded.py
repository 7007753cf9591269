"""``EmbeddedEngine``: the default engine, for one process: SQLite, and nothing to share.

Seqs are allocated here from each room's last stored seq (loaded when its actor starts): with
one process and one actor per room there is one writer per room, so a counter is enough, and
the room's own dedup map (loaded from the log) is authoritative. Running a second process on
the same database is refused by the CLI (``--workers`` needs a shared engine).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from rooms.engine import Ban, CommitObserver, ErasedObserver, RoomListener, RoomSync
from rooms.errors import LogReset, RoomError, StoreError
from rooms.state import Appended, Draft, RoomSnapshot, StoredMessage
from rooms.store import SqliteStore

# Rooms whose bans are kept in memory (least recently asked for are dropped first): one join
# asks once per connection, and a SQLite read handed to a thread was ~8% of a handshake's CPU.
BAN_CACHE_ROOMS = 10_000


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
        # room -> (the drafts, the task writing them) of an append whose outcome its caller
        # has not received (it is running, or its caller stopped waiting: a deadline). Owned
        # here (``close`` awaits them); at most one per room, taken by the room's next append
        # or load.
        self._writes: dict[str, tuple[list[Draft], asyncio.Task[list[Appended]]]] = {}

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "FULL",
                   on_commit: CommitObserver | None = None) -> EmbeddedEngine:
        return cls(await SqliteStore.open(Path(path), synchronous=synchronous,
                                          on_commit=on_commit))

    @property
    def healthy(self) -> bool:
        return True

    async def load(self, room: str, dedup_window: int) -> RoomSnapshot:
        await self._settle(room)  # a write still landing would move the room's last seq
        snapshot = await self.store.load(room, dedup_window)
        self._last[room] = snapshot.last_seq
        return snapshot

    async def append(self, room: str, drafts: Sequence[Draft], *, retention: int,
                     dedup_window: int = 0, epoch: str | None = None,
                     floor: int = 0) -> list[Appended]:
        """As ``Engine.append``. Safe to cancel (a caller's deadline) and then call again
        with the same drafts: the write goes on, and the next call waits for it and answers
        with its seqs instead of storing the drafts twice (the room's dedup map learns of
        them only from the answer). The log cannot go backwards under this one process:
        ``floor`` is never above the room's seq counter."""
        if room not in self._last:
            raise StoreError(f"room {room} was not loaded")
        if epoch is not None and epoch != self.store.epoch:
            raise LogReset(self.store.epoch, self._last[room])
        batch = list(drafts)
        earlier = await self._settle(room)
        if earlier is not None and earlier[0] == batch:
            return earlier[1]
        first = self._last[room] + 1
        messages = [d.stored(room, first + i) for i, d in enumerate(batch)]
        task = asyncio.create_task(self._write(room, messages, retention),
                                   name=f"store-append:{room}")
        task.add_done_callback(_retrieve)
        self._writes[room] = (batch, task)
        # Forgotten only once the caller has its outcome: if it is cancelled instead (even
        # with the write just done) the write stays for the room's next append or load.
        try:
            results = await asyncio.shield(task)
        except RoomError:
            self._taken(room, task)
            raise
        self._taken(room, task)
        return results

    def _taken(self, room: str, task: asyncio.Task[list[Appended]]) -> None:
        pending = self._writes.get(room)
        if pending is not None and pending[1] is task:
            del self._writes[room]

    async def _write(self, room: str, messages: list[StoredMessage],
                     retention: int) -> list[Appended]:
        await self.store.append(messages, retention)
        # Only after the commit: a failed append leaves the counter where the log is.
        self._last[room] = messages[-1].seq
        return [Appended(m.seq) for m in messages]

    async def _settle(self, room: str) -> tuple[list[Draft], list[Appended]] | None:
        """Wait for the room's write whose caller stopped waiting, if any, and take it: its
        drafts and seqs if it was stored, None if it failed (nothing stored) or there was
        none. Cancelling this wait leaves the write in place for the next call."""
        pending = self._writes.get(room)
        if pending is None:
            return None
        drafts, task = pending
        try:
            results = await asyncio.shield(task)
        except RoomError:  # it failed: nothing of it was stored
            self._taken(room, task)
            return None
        self._taken(room, task)
        return drafts, results

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[StoredMessage]:
        return await self.store.read(room, after, upto, limit)

    async def sync(self, room: str, members: dict[str, str], ttl: float, *,
                   floor: int = 0) -> RoomSync:
        return RoomSync(top=self._last.get(room, 0), others={}, epoch=self.store.epoch)

    def subscribe(self, room: str, listener: RoomListener) -> None:
        pass

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        pass

    async def stash(self, key: str, value: bytes, ttl: float) -> None:
        await self.store.stash(key, value, ttl)

    async def take(self, key: str) -> bytes | None:
        return await self.store.take(key)

    async def revoke(self, user: str, at: float) -> None:
        await self.store.revoke(user, at)

    async def revocations(self, since: float) -> list[tuple[str, float]]:
        return await self.store.revocations(since)

    async def delete(self, room: str, seq: int) -> bool:
        return await self.store.delete(room, seq)

    async def erase(self, user: str,
                    erased: ErasedObserver | None = None) -> dict[str, list[int]]:
        return await self.store.erase(user, erased)

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

    async def tombstones(self, room: str) -> list[int]:
        return await self.store.tombstones(room)

    async def top(self, room: str) -> int:
        # The store's, not ``load``: that one resets the room's seq counter.
        return max(self._last.get(room, 0), (await self.store.load(room, 0)).last_seq)

    async def presence(self, room: str) -> dict[str, str]:
        return {}

    async def close(self) -> None:
        await self.store.close()  # finishes the writes queued: every task below ends
        writing = [task for _, task in self._writes.values()]
        self._writes.clear()
        if writing:
            await asyncio.wait(writing)


def _retrieve(task: asyncio.Task[list[Appended]]) -> None:
    """Mark a write's failure as seen: the caller that would have seen it may have stopped
    waiting, and whoever takes the write next reads it again."""
    if not task.cancelled():
        task.exception()

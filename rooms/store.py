"""The embedded engine's durable log: ``SqliteStore``, and the interface it implements.

``SqliteStore`` keeps one database (WAL) for all rooms. Writes go through one writer thread that
commits every append pending at that moment in one transaction (group commit): under load, many
rooms' batches share one fsync, so storing does not cap throughput. Reads run on a small pool of
reader threads with their own connections (WAL readers never block the writer).
"""

from __future__ import annotations

import asyncio
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from rooms import engine as contract
from rooms.engine import CommitObserver, ErasedObserver
from rooms.errors import StoreError, Unstorable
from rooms.state import RoomSnapshot, StoredMessage

_T = TypeVar("_T")

class MessageStore(Protocol):
    """A durable log of already-sequenced messages (``rooms.engines.embedded`` allocates the
    seqs). Every method may raise ``StoreError``."""

    async def load(self, room: str, dedup_window: int) -> RoomSnapshot:
        """The room's latest seq, lowest stored seq and its last ``dedup_window`` client ids."""
        ...

    async def append(self, messages: Sequence[StoredMessage], retention: int) -> None:
        """Store ``messages`` durably (all or none); keep at most ``retention`` per room (0: all).

        Returns only once they survive a crash of this process. Raises ``Unstorable`` (naming
        the messages that can never be stored; nothing was) or ``StoreError``.
        """
        ...

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[StoredMessage]:
        """Stored messages with ``after < seq <= upto``, oldest first, at most ``limit``."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release resources. Further calls raise ``StoreError``."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    user TEXT NOT NULL,
    name TEXT NOT NULL,
    client_id TEXT,
    text TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stash (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS revocations (
    user TEXT PRIMARY KEY,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS revocations_at ON revocations (at);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bans (
    room TEXT NOT NULL,
    user TEXT NOT NULL,
    until REAL,
    reason TEXT NOT NULL,
    PRIMARY KEY (room, user)
) WITHOUT ROWID;
"""
_INSERT = "INSERT INTO messages (room, seq, user, name, client_id, text, ts) VALUES (?,?,?,?,?,?,?)"
_DATA_ERRORS = (ValueError, OverflowError, TypeError, sqlite3.InterfaceError,
                sqlite3.ProgrammingError, sqlite3.DataError)
"""What binding a message's values raises when one cannot be stored: a lone surrogate in a text
(``UnicodeEncodeError``, a ``ValueError``), an integer beyond 64 bits, a value of no SQL type.
The message's own fault: retrying never helps."""


def _row(m: StoredMessage) -> tuple[str, int, str, str, str | None, str, int]:
    return (m.room, m.seq, m.user, m.name, m.id, m.text, m.ts)


@dataclass(slots=True)
class _Append:
    messages: Sequence[StoredMessage]
    retention: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    landed: Landed | None = None


@dataclass(slots=True)
class _Erase:
    """Tombstone ``rows`` (room, seq) if they are ``user``'s and not tombstones yet; the future
    gets those it changed."""

    user: str
    rows: list[tuple[str, int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[tuple[str, int]]]


Landed = Callable[[BaseException | None], None]
"""Called on the event loop with an append's outcome (None: stored), even when nobody awaits it
any more."""


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None,
             landed: Landed | None = None) -> None:
    if landed is not None:
        landed(error)
    if future.done():  # the awaiting room was cancelled; the write happened anyway
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class SqliteStore:
    """The embedded engine: ``SqliteStore.open(path)``; ``synchronous`` is SQLite's pragma.

    ``FULL`` (default) survives power loss; ``NORMAL`` survives a crash of the process only.
    """

    def __init__(self, path: Path, synchronous: str, on_commit: CommitObserver | None) -> None:
        self.path = path
        self._synchronous = synchronous
        self._on_commit = on_commit
        # Unbounded by type, bounded by use: each room actor awaits its append before the next,
        # and each erasure its step, so at most one item per loaded room or running erasure is
        # ever queued.
        self._writes: queue.SimpleQueue[_Append | _Erase | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="roomchat-store-writer",
                                        daemon=True)
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="roomchat-store-read")
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        self._pruned: dict[str, int] = {}  # writer thread only: room -> seq pruned up to
        self.epoch = ""
        """The epoch of every room's log in this database (docs/protocol.md, "Epochs"): made
        when the database is, replaced by ``new_epoch`` when a backup is restored."""

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL",
                   on_commit: CommitObserver | None = None) -> SqliteStore:
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        store = cls(path, synchronous.upper(), on_commit)
        await asyncio.to_thread(store._open_writer)
        store._writer.start()
        return store

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    def _open_writer(self) -> None:
        # Private from the start: the directory 0700, the database 0600 (SQLite gives its -wal
        # and -shm files the database file's mode), never readable in between.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        conn = self._connect()
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(_SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)",
                     (secrets.token_hex(8),))
        (self.epoch,) = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        self._conn = conn

    # -- writes -----------------------------------------------------------------------------

    async def append(self, messages: Sequence[StoredMessage], retention: int) -> None:
        if messages:
            await self.submit(messages, retention)

    def submit(self, messages: Sequence[StoredMessage], retention: int,
               landed: Landed | None = None) -> asyncio.Future[None]:
        """``append`` without the wait: queue ``messages`` for the writer thread and return the
        future it resolves once they are durable (or with the error ``append`` would raise).
        Cancelling the future does not stop the write; ``landed`` is told its outcome all the
        same, just before the future. Raises ``StoreError`` when closed."""
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._writes.put(_Append(messages, retention, loop, future, landed))
        return future

    def _write_loop(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            first = self._writes.get()
            if first is None:
                break
            batch = [first]
            stop = False
            while True:  # take everything already queued: one transaction for all of it
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit(conn, batch)
            if stop:
                break
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Append | _Erase]) -> None:
        """One transaction for every write in ``batch``; each in its own savepoint, so a failing
        one fails alone, not its neighbours' rooms: ``Unstorable`` when some of its messages
        cannot be encoded (found row by row), ``StoreError`` for anything else (say, a seq
        written by another process)."""
        started = time.perf_counter()
        count = 0
        errors: list[BaseException | None] = [None] * len(batch)
        results: list[Any] = [None] * len(batch)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for index, item in enumerate(batch):
                    conn.execute("SAVEPOINT item")
                    try:
                        if isinstance(item, _Erase):
                            results[index] = self._tombstone(conn, item)
                        else:
                            conn.executemany(_INSERT, [_row(m) for m in item.messages])
                            self._prune(conn, item)
                    except _DATA_ERRORS as exc:
                        conn.execute("ROLLBACK TO item")
                        errors[index] = self._unstorable(conn, item, exc)
                    except sqlite3.Error as exc:
                        conn.execute("ROLLBACK TO item")
                        errors[index] = StoreError(f"write failed: {exc}")
                    else:
                        if isinstance(item, _Append):
                            count += len(item.messages)
                    conn.execute("RELEASE item")
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            errors = [StoreError(f"commit failed: {exc}")] * len(batch)
            count = 0
        # Report before resolving: whoever awaited the append may look at the numbers at once.
        if count and self._on_commit is not None:
            self._on_commit(time.perf_counter() - started, count)
        for item, result, error in zip(batch, results, errors, strict=True):
            item.loop.call_soon_threadsafe(_resolve, item.future, result, error,
                                           item.landed if isinstance(item, _Append) else None)

    @staticmethod
    def _unstorable(conn: sqlite3.Connection, item: _Append | _Erase,
                    exc: Exception) -> StoreError | Unstorable:
        """Which of ``item``'s messages cannot be written (``exc`` came from one of them): each
        is tried alone in a savepoint that is rolled back. Runs only after a failure, inside the
        item's savepoint (already rolled back)."""
        bad: list[int] = []
        if isinstance(item, _Append):
            for position, message in enumerate(item.messages):
                conn.execute("SAVEPOINT probe")
                try:
                    conn.execute(_INSERT, _row(message))
                except _DATA_ERRORS:
                    bad.append(position)
                except sqlite3.Error:
                    pass  # not a data error (a conflict): not this message's fault
                finally:
                    conn.execute("ROLLBACK TO probe")
                    conn.execute("RELEASE probe")
        if not bad:  # not one message's fault after all: an ordinary failure of the write
            return StoreError(f"write failed: {exc!r}")
        return Unstorable(bad, f"cannot be stored: {exc}")

    @staticmethod
    def _tombstone(conn: sqlite3.Connection, item: _Erase) -> list[tuple[str, int]]:
        """Re-checked row by row: a row a moderator's delete got first is not counted twice."""
        changed = []
        # secure_delete zeroes the freed bytes of each rewritten row (and its overflow pages):
        # the text leaves the database's pages, not only its rows.
        conn.execute("PRAGMA secure_delete = ON")
        try:
            for room, seq in item.rows:
                if conn.execute("UPDATE messages SET text = '' WHERE room = ? AND seq = ? AND "
                                "user = ? AND text != ''", (room, seq, item.user)).rowcount:
                    changed.append((room, seq))
        finally:
            conn.execute("PRAGMA secure_delete = OFF")
        return changed

    def _prune(self, conn: sqlite3.Connection, item: _Append) -> None:
        """Keep ``retention`` messages per room, deleting in steps of ~1% of it: a DELETE per
        commit was a visible part of small commits."""
        if not item.retention:
            return
        last = item.messages[-1]
        cutoff = last.seq - item.retention
        step = max(1, item.retention // 100)
        if cutoff >= self._pruned.get(last.room, 0) + step:
            conn.execute("DELETE FROM messages WHERE room = ? AND seq <= ?", (last.room, cutoff))
            self._pruned[last.room] = cutoff

    # -- reads ------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._conns_lock:
                self._read_conns.append(conn)
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, lambda: fn(self._reader()))
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc
        except (ValueError, OverflowError) as exc:  # a value SQLite cannot take: the caller's
            raise Unstorable((), f"cannot be stored: {exc}") from exc

    async def load(self, room: str, dedup_window: int) -> RoomSnapshot:
        def query(conn: sqlite3.Connection) -> RoomSnapshot:
            row = conn.execute("SELECT max(seq), min(seq) FROM messages WHERE room = ?",
                               (room,)).fetchone()
            last = row[0] or 0
            oldest = row[1] or last + 1
            ids: list[tuple[str, str, int]] = []
            if dedup_window:
                ids = conn.execute(
                    "SELECT user, client_id, seq FROM messages WHERE room = ? AND seq > ? "
                    "AND client_id IS NOT NULL ORDER BY seq", (room, last - dedup_window),
                ).fetchall()
            return RoomSnapshot(last_seq=last, oldest_seq=oldest, recent_ids=tuple(ids),
                                epoch=self.epoch)

        return await self._run(query)

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[StoredMessage]:
        def query(conn: sqlite3.Connection) -> list[StoredMessage]:
            rows = conn.execute(
                "SELECT seq, user, name, client_id, text, ts FROM messages "
                "WHERE room = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (room, after, upto, limit),
            ).fetchall()
            return [StoredMessage(room, *row) for row in rows]

        return await self._run(query)

    # -- small keyed records: single-use tickets, revocations -------------------------------
    # Rare and tiny next to messages: written from the reader pool in autocommit (WAL lets them
    # interleave with the writer thread's transactions; busy_timeout covers the overlap).

    async def stash(self, key: str, value: bytes, ttl: float) -> None:
        now = time.time()

        def query(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM stash WHERE expires <= ?", (now,))
            conn.execute("INSERT OR REPLACE INTO stash (key, value, expires) VALUES (?,?,?)",
                         (key, value, now + ttl))

        await self._run(query)

    async def take(self, key: str) -> bytes | None:
        def query(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("DELETE FROM stash WHERE key = ? RETURNING value, expires",
                               (key,)).fetchone()
            return bytes(row[0]) if row is not None and row[1] > time.time() else None

        return await self._run(query)

    async def revoke(self, user: str, at: float) -> None:
        await self._run(lambda conn: conn.execute(
            "INSERT INTO revocations (user, at) VALUES (?, ?) "
            "ON CONFLICT (user) DO UPDATE SET at = max(at, excluded.at)", (user, at)))

    async def revocations(self, since: float) -> list[tuple[str, float]]:
        return await self._run(lambda conn: [
            (str(user), float(at)) for user, at in conn.execute(
                "SELECT user, at FROM revocations WHERE at > ? ORDER BY at", (since,))])

    # -- moderation: tombstones and bans (rare; written like the records above) ---------------

    async def delete(self, room: str, seq: int) -> bool:
        """Make message ``seq`` a tombstone: its text becomes empty (a message's text never is
        otherwise), everything else stays. False when it is not stored."""
        def query(conn: sqlite3.Connection) -> bool:
            return conn.execute("UPDATE messages SET text = '' WHERE room = ? AND seq = ?",
                                (room, seq)).rowcount > 0

        return await self._run(query)

    async def erase(self, user: str,
                    erased: ErasedObserver | None = None) -> dict[str, list[int]]:
        """Make every stored message of ``user`` a tombstone (``rooms.engine.Engine.erase``):
        each step is one of the writer thread's transactions, so the rooms' appends, which
        share that thread, wait for one step at most (~20 ms here; 1.4 s for 142,000 messages
        in one transaction)."""
        if self._closed:
            raise StoreError("store is closed")
        # Found by a scan of a read snapshot (WAL: the writer is not held up by it; an index on
        # user would cost every append for a rare request), tombstoned by the writer thread.
        found: list[tuple[str, int]] = await self._run(lambda conn: [
            (str(room), int(seq)) for room, seq in conn.execute(
                "SELECT room, seq FROM messages WHERE user = ? AND text != '' "
                "ORDER BY room, seq", (user,))])
        rooms: dict[str, list[int]] = {}
        for room, seq in found:
            rooms.setdefault(room, []).append(seq)
        done: dict[str, list[int]] = {}
        loop = asyncio.get_running_loop()
        step = contract.ERASE_STEP
        # Round robin: one step in each room per round, one pause per round (it is for each
        # room's members; rooms need not wait for each other).
        for start in range(0, max(map(len, rooms.values()), default=0), step):
            told = False
            for room, seqs in rooms.items():
                if start >= len(seqs):
                    continue
                if self._closed:  # the writer thread is gone: nothing would answer
                    raise StoreError("store is closed")
                future: asyncio.Future[list[tuple[str, int]]] = loop.create_future()
                self._writes.put(_Erase(user, [(room, seq) for seq in seqs[start:start + step]],
                                        loop, future))
                changed = [seq for _, seq in await future]
                if changed:
                    done.setdefault(room, []).extend(changed)
                    if erased is not None:
                        erased(room, changed)
                    told = told or start + step < len(seqs)
            if told:
                await asyncio.sleep(contract.ERASE_PAUSE)
        if done:
            # The WAL still holds the pages as they were when the text was written: copy the
            # new ones into the database and empty it. Best effort: while a read is running it
            # stops short (SQLITE_BUSY), and later checkpoints overwrite those pages.
            await self._run(lambda conn: conn.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
        return done

    async def ban(self, room: str, user: str, until: float | None, reason: str) -> None:
        await self._run(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO bans (room, user, until, reason) VALUES (?,?,?,?)",
            (room, user, until, reason)))

    async def unban(self, room: str, user: str) -> bool:
        now = time.time()
        return await self._run(lambda conn: conn.execute(
            "DELETE FROM bans WHERE room = ? AND user = ? AND (until IS NULL OR until > ?)",
            (room, user, now)).rowcount > 0)

    async def tombstones(self, room: str) -> list[int]:
        """The seqs of ``room``'s tombstones (messages whose text is empty), ascending."""
        return await self._run(lambda conn: [int(seq) for (seq,) in conn.execute(
            "SELECT seq FROM messages WHERE room = ? AND text = '' ORDER BY seq", (room,))])

    async def bans(self, room: str) -> dict[str, tuple[float | None, str]]:
        """Every ban from ``room`` in force now: ``user -> (until, reason)``."""
        now = time.time()
        return dict(await self._run(lambda conn: [
            (str(user), (until, str(reason))) for user, until, reason in conn.execute(
                "SELECT user, until, reason FROM bans WHERE room = ? "
                "AND (until IS NULL OR until > ?)", (room, now))]))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writes.put(None)
        await asyncio.to_thread(self._writer.join)
        self._readers.shutdown(wait=True)
        with self._conns_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()


def new_epoch(path: Path) -> str:
    """Give the (closed) database at ``path`` a new epoch and return it. For a restored backup:
    its logs are behind what clients of the server it replaces have seen, so their resumes
    must not be taken as recovered (docs/protocol.md, "Epochs"). Raises ``sqlite3.Error``."""
    epoch = secrets.token_hex(8)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(_SCHEMA)  # a backup of a version before epochs has no meta table
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
    finally:
        conn.close()
    return epoch


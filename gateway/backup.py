"""Operating the stored data from the command line: ``export`` a room's log as NDJSON,
``backup`` the embedded store while the server runs (SQLite's online backup API), ``restore``
a backup into a stopped server's data directory. docs/operations.md is the manual.

A room's log holds messages and changes to them (edits, deletes, reactions: docs/protocol.md);
an export carries both, and a backup is the whole database: the log, read markers, bans,
revocations and dedup ids come back with a restore."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway import importer
from gateway.config import Config
from rooms.engine import is_shared_url
from rooms.engines import open_engine
from rooms.engines.sqlite import MESSAGE, new_epoch
from rooms.messages import StoredMessage

EXPORT_PAGE = 1000
MAX_SEQ = 2**53
BACKUP_PAGES = 1024  # pages copied per step: the server's writer waits at most one step


@dataclass(frozen=True, slots=True)
class Exported:
    """What ``export`` wrote: ``messages`` (in their current state) and ``changes``, of
    ``rooms`` rooms."""

    messages: int = 0
    changes: int = 0
    rooms: int = 0


async def export(config: Config, rooms: list[str] | None, after: int,
                 write: Callable[[str], object],
                 advance: Callable[[int], object] | None = None,
                 total: Callable[[int], object] | None = None) -> Exported:
    """Write a section (gateway/importer.py: a header line, the entries, an end line) for each
    of ``rooms`` (None: every room with a log), with every stored entry of the room's log with
    ``seq > after``, oldest first, one wire object per line, as a resume after ``after``
    replays them: each message in its current state (tombstones included) and each change
    entry (edits, deletes, reactions) as stored, so replaying the lines in order, or keeping
    the messages alone, gives the room as it is; ``roomchat import`` writes it into another
    store at the same seqs. ``total(seqs)`` is told how many seqs the rooms span once their
    tops are read, ``advance(seqs)`` as they are written. Returns how many of each. Raises
    ``StoreError``, or ``ValueError`` for a memory:// store."""
    _refuse_memory(config, "export")
    engine = await open_engine(config.resolved_store_url, **config.engine_options())
    messages = changes = 0
    try:
        if rooms is None:
            rooms = await engine.rooms()  # type: ignore[attr-defined]
        tops = {room: await engine.top(room) for room in rooms}
        if total is not None:
            total(sum(max(0, top - after) for top in tops.values()))
        for room in rooms:
            epoch = await engine.log_epoch(room)  # type: ignore[attr-defined]
            write(importer.header_line(room, after, epoch, tops[room]))
            last, count = after, 0
            while True:
                # A page can come back short of ``EXPORT_PAGE`` with more after it (the seqs of
                # changes pruned or removed with their message are gaps): only empty is the end.
                page = await engine.read(room, last, MAX_SEQ, EXPORT_PAGE)
                if not page:
                    break
                for entry in page:
                    write(entry.to_wire() + "\n")
                    if isinstance(entry, StoredMessage):
                        messages += 1
                    else:
                        changes += 1
                if advance is not None:
                    advance(max(0, min(page[-1].seq, tops[room]) - max(last, after)))
                last = page[-1].seq
                count += len(page)
            write(importer.end_line(room, last, count))
        return Exported(messages, changes, len(rooms))
    finally:
        await engine.close()


def _refuse_shared(config: Config, what: str) -> None:
    _refuse_memory(config, what)
    if is_shared_url(config.resolved_store_url):
        raise ValueError(f"{what} copies the embedded SQLite store; this server uses Redis: "
                         "back it up with Redis's own AOF/RDB (docs/operations.md)")


def _refuse_memory(config: Config, what: str) -> None:
    if config.resolved_store_url.startswith("memory://"):
        raise ValueError(f"{what}: the store is memory://, whose messages live only inside the "
                         "running server (nothing to copy, lost when it stops)")


@dataclass(frozen=True, slots=True)
class Contents:
    """What a roomchat database holds (``check``)."""

    messages: int
    changes: int
    """Edits, deletes and reactions: entries of the rooms' logs that are not messages."""
    markers: int
    """Read markers, one per (user, room)."""

    def __str__(self) -> str:
        def count(n: int, noun: str) -> str:
            return f"{n} {noun}{'' if n == 1 else 's'}"

        return (f"{count(self.messages, 'message')}, {count(self.changes, 'change')} and "
                f"{count(self.markers, 'read marker')}")


def check(path: Path) -> Contents:
    """Open ``path`` read-only as a roomchat database and verify it; what it holds. A database
    of a version before changes and read markers has none of them (the engine adds their
    columns and table when it opens it). Raises ``ValueError`` when it is not a sound roomchat
    database."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (result,) = conn.execute("PRAGMA integrity_check").fetchone()
            if result != "ok":
                raise ValueError(f"{path} is damaged: {result}")
            (entries,) = conn.execute("SELECT count(*) FROM messages").fetchone()
            columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
            messages = entries
            if "kind" in columns:
                (messages,) = conn.execute("SELECT count(*) FROM messages WHERE kind = ?",
                                           (MESSAGE,)).fetchone()
            markers = 0
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                            "name = 'reads'").fetchone():
                (markers,) = conn.execute("SELECT count(*) FROM reads").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ValueError(f"{path} is not a roomchat database: {exc}") from None
    return Contents(int(messages), int(entries) - int(messages), int(markers))


def backup(config: Config, target: Path,
           advance: Callable[[int], object] | None = None,
           total: Callable[[int], object] | None = None) -> Contents:
    """A consistent copy of the embedded store in ``target`` (a new file, mode 0600), taken
    while the server may be writing (SQLite's online backup API: a snapshot of one moment):
    every table, so the rooms' logs (messages and changes), read markers, bans, revocations
    and dedup ids. ``total(pages)`` and ``advance(pages)`` follow the copy. Returns what it
    copied. Raises ``ValueError``."""
    _refuse_shared(config, "backup")
    source_path = config.db_path
    if not source_path.is_file():
        raise ValueError(f"no database at {source_path} (wrong --data-dir?)")
    if target.exists():
        raise ValueError(f"{target} exists; give a new file")
    partial = target.with_name(target.name + ".partial")
    os.close(os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
    try:
        source = sqlite3.connect(source_path)  # reads only; WAL needs a normal open
        dest = sqlite3.connect(partial)
        try:
            source.execute("PRAGMA busy_timeout = 5000")
            done = 0

            def step(_status: int, remaining: int, pages: int) -> None:
                nonlocal done
                if total is not None and not done:
                    total(pages)
                if advance is not None:
                    advance(pages - remaining - done)
                done = pages - remaining

            source.backup(dest, pages=BACKUP_PAGES, progress=step)
            dest.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            dest.close()
            source.close()
        count = check(partial)
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)
    return count


def restore(config: Config, source: Path, *, force: bool = False,
            advance: Callable[[int], object] | None = None) -> Contents:
    """Put the backup ``source`` in place of the embedded store (the server must be stopped).
    Checks it first; refuses to replace an existing database without ``force``. Returns what
    it restored; ``advance(bytes)`` follows the copy. Raises ``ValueError``."""
    _refuse_shared(config, "restore")
    count = check(source)
    target = config.db_path
    if target.exists() and not force:
        raise ValueError(f"{target} exists: stop the server, then restore with --force "
                         "(its current data is replaced)")
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".restoring")
    fd = os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, source.open("rb") as src:
        while chunk := src.read(1 << 20):
            out.write(chunk)
            if advance is not None:
                advance(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    # Its rooms' logs are behind what clients of the replaced database have seen: a new
    # epoch tells their resumes so (docs/protocol.md, "Epochs").
    try:
        new_epoch(partial, config.search_index)  # the index as the server will keep it
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise ValueError(f"{source} cannot be restored: {exc}") from None
    # The old database's WAL belongs to the old file: it must not be replayed into this one.
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    partial.replace(target)
    return count

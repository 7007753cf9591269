"""Operating the stored data from the command line: ``export`` a room's history as NDJSON,
``backup`` the embedded store while the server runs (SQLite's online backup API), ``restore``
a backup into a stopped server's data directory. docs/operations.md is the manual."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from gateway.config import Config
from rooms.engine import is_shared_url, open_engine
from rooms.store import new_epoch

EXPORT_PAGE = 1000
MAX_SEQ = 2**53
BACKUP_PAGES = 1024  # pages copied per step: the server's writer waits at most one step


async def export(config: Config, room: str, after: int, write: Callable[[str], object]) -> int:
    """Write every stored message of ``room`` with ``seq > after``, oldest first, one wire
    object per line (tombstones included). Returns how many. Raises ``StoreError``."""
    engine = await open_engine(config.resolved_store_url)
    count = 0
    try:
        while True:
            page = await engine.read(room, after, MAX_SEQ, EXPORT_PAGE)
            for message in page:
                write(message.to_wire() + "\n")
            count += len(page)
            if len(page) < EXPORT_PAGE:
                return count
            after = page[-1].seq
    finally:
        await engine.close()


def _refuse_shared(config: Config, what: str) -> None:
    if is_shared_url(config.resolved_store_url):
        raise ValueError(f"{what} copies the embedded SQLite store; this server uses Redis: "
                         "back it up with Redis's own AOF/RDB (docs/operations.md)")


def check(path: Path) -> int:
    """Open ``path`` read-only as a roomchat database and verify it; the number of stored
    messages. Raises ``ValueError`` when it is not a sound roomchat database."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (result,) = conn.execute("PRAGMA integrity_check").fetchone()
            if result != "ok":
                raise ValueError(f"{path} is damaged: {result}")
            (count,) = conn.execute("SELECT count(*) FROM messages").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ValueError(f"{path} is not a roomchat database: {exc}") from None
    return int(count)


def backup(config: Config, target: Path) -> int:
    """A consistent copy of the embedded store in ``target`` (a new file, mode 0600), taken
    while the server may be writing (SQLite's online backup API: a snapshot of one moment).
    Returns the number of messages copied. Raises ``ValueError``."""
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
            source.backup(dest, pages=BACKUP_PAGES)
            dest.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            dest.close()
            source.close()
        count = check(partial)
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)
    return count


def restore(config: Config, source: Path, *, force: bool = False) -> int:
    """Put the backup ``source`` in place of the embedded store (the server must be stopped).
    Checks it first; refuses to replace an existing database without ``force``. Returns the
    number of messages restored. Raises ``ValueError``."""
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
        out.flush()
        os.fsync(out.fileno())
    # Its rooms' logs are behind what clients of the replaced database have seen: a new
    # epoch tells their resumes so (docs/protocol.md, "Epochs").
    try:
        new_epoch(partial)
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise ValueError(f"{source} cannot be restored: {exc}") from None
    # The old database's WAL belongs to the old file: it must not be replayed into this one.
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    partial.replace(target)
    return count

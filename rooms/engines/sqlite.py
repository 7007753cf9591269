"""The embedded engine's durable log: ``SqliteStore``.

``SqliteStore`` keeps one database (WAL) for all rooms. Writes go through one writer thread that
commits every append pending at that moment in one transaction (group commit): under load, many
rooms' batches share one fsync, so storing does not cap throughput. Reads run on a small pool of
reader threads with their own connections (WAL readers never block the writer).

A room's log is its rows of ``messages`` (``kind``: a message, or a change to one; seqs are
allocated here, by the writer thread, so any caller may append). A message row also holds the
message's **current state** (text after the last edit, ``edited``, ``reactions``, or its
tombstone), updated in the transaction that appends each change (``rooms.changes``): a page of
history reads message rows only and costs what a page of plain messages does. Read markers live
in ``reads``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
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
from typing import Any, TypeVar

import orjson

from rooms import changes
from rooms import engine as contract
from rooms.attachments import files_from_json, files_to_json
from rooms.engine import CommitObserver
from rooms.errors import (
    RoomNotEmpty,
    SearchTooBroad,
    SearchUnsupported,
    StoreError,
    Unstorable,
)
from rooms.messages import (
    DEFAULT_RULES,
    Action,
    AnyDraft,
    Appended,
    ChangeDraft,
    DeletedBy,
    Draft,
    Entry,
    LogRules,
    Reaction,
    Refusal,
    Reply,
    RoomSnapshot,
    StoredChange,
    StoredMessage,
    Unread,
    unencodable,
)
from rooms.search import (
    SEARCH_SWITCHED_OFF,
    Found,
    Place,
    RoomsPage,
    SearchPage,
    fragments,
    fts5_query,
    parse_query,
    unmarked,
)

_T = TypeVar("_T")

log = logging.getLogger("roomchat.store")

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
CREATE TABLE IF NOT EXISTS reads (
    room TEXT NOT NULL,
    user TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (room, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reads_by_user ON reads (user);
"""
_COLUMNS = (
    ("kind", "INTEGER NOT NULL DEFAULT 0"),  # MESSAGE, or the change's kind
    ("target", "INTEGER"),  # changes: the message they change; replies: the one they answer
    ("reply", "TEXT"),  # messages: [seq, user, name, excerpt] of the message answered
    ("mentions", "TEXT"),  # messages: ["user", ...]
    ("edited", "INTEGER"),  # messages: ts of the last edit
    ("reactions", "TEXT"),  # messages: [["emoji", ["user", ...]], ...]
    ("changed", "INTEGER"),  # messages: seq of the last change
    ("detail", "TEXT"),  # delete: who (author, moderator); react: the emoji
    ("files", "TEXT"),  # messages: [{"id","name","size","type",...}, ...] (rooms.attachments)
)
"""Columns added after the first version: a database made before them gets them on open
(``ALTER TABLE ... ADD COLUMN`` rewrites nothing: old rows read the defaults)."""
_INDEXES = """
CREATE INDEX IF NOT EXISTS changes_by_target ON messages (room, target) WHERE target IS NOT NULL;
"""
"""Changes and replies by the message they change or answer: retention prunes a pruned
message's changes, and a delete empties its edits' texts and its replies' excerpts. Partial:
other messages are not in it."""

MESSAGE, EDIT, DELETE, REACT_ON, REACT_OFF = range(5)
"""``kind`` of a row."""
_KINDS = {Action.EDIT: EDIT, Action.DELETE: DELETE}

_INSERT = ("INSERT INTO messages (room, seq, user, name, client_id, text, ts, kind, target, "
           "reply, mentions, detail, files) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)")
_MESSAGE_COLUMNS = ("seq, user, name, client_id, text, ts, reply, mentions, edited, reactions, "
                    "files")
_ENTRY_COLUMNS = f"{_MESSAGE_COLUMNS}, kind, target, detail"
_UPDATE = ("UPDATE messages SET text = ?, edited = ?, reactions = ?, reply = ?, mentions = ?, "
           "files = ?, changed = ? WHERE room = ? AND seq = ?")
_LIVE = "(text != '' OR files IS NOT NULL)"
"""A message row that is not a tombstone (a message's text is empty only when it has files)."""
_DATA_ERRORS = (ValueError, OverflowError, TypeError, sqlite3.InterfaceError,
                sqlite3.ProgrammingError, sqlite3.DataError)
"""What binding a row's values raises when one cannot be stored: a lone surrogate in a text
(``UnicodeEncodeError``, a ``ValueError``), an integer beyond 64 bits, a value of no SQL type.
The draft's own fault: retrying never helps."""
_MAX_INT = 2**63 - 1

Row = tuple[Any, ...]
Erased = Callable[[str, list[StoredChange]], None]
"""Called on the event loop by ``SqliteStore.erase`` after each step with (room, the entries it
appended: delete entries, or the erased user's react-off entries)."""


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _message_row(m: StoredMessage) -> Row:
    reply = None if m.reply_to is None else _json(
        [m.reply_to.seq, m.reply_to.user, m.reply_to.name, m.reply_to.excerpt])
    return (m.room, m.seq, m.user, m.name, m.id, m.text, m.ts, MESSAGE,
            None if m.reply_to is None else m.reply_to.seq, reply,
            _json(m.mentions) if m.mentions else None, None, _files(m))


def _change_row(c: StoredChange) -> Row:
    detail: str | None
    if c.action is Action.REACT:
        kind, detail = (REACT_ON if c.on else REACT_OFF), c.emoji
    else:
        kind, detail = _KINDS[c.action], (c.by.value if c.by is not None else None)
    return (c.room, c.seq, c.user, c.name, c.id, c.text, c.ts, kind, c.target, None, None,
            detail, None)


_IMPORT = ("INSERT INTO messages (room, seq, user, name, client_id, text, ts, kind, target, "
           "reply, mentions, detail, files, edited, reactions, changed) "
           "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
IMPORT_STEP = 1000
"""Entries one transaction of ``SqliteStore.import_entries`` writes."""
IMPORTING = "importing:"
"""``meta`` key prefix (then the room) of an import under way (``SqliteStore.import_entries``)."""


def _imported_row(m: StoredMessage, changed: int | None) -> Row:
    """``m``'s row with its current state (``_IMPORT``'s columns); ``changed``: the seq of its
    last change entry."""
    reactions = _state(m)[0]
    return (*_message_row(m), m.edited, reactions, changed)


def _files(m: StoredMessage) -> str | None:
    return _json(files_to_json(m.files)) if m.files else None


def _state(m: StoredMessage) -> tuple[str | None, ...]:
    """The current-state columns of ``m``: reactions, reply, mentions, files (text and edited
    are plain)."""
    reactions = _json([[r.emoji, list(r.users)] for r in m.reactions]) if m.reactions else None
    reply = None if m.reply_to is None else _json(
        [m.reply_to.seq, m.reply_to.user, m.reply_to.name, m.reply_to.excerpt])
    return reactions, reply, _json(m.mentions) if m.mentions else None, _files(m)


def _message(room: str, row: Row) -> StoredMessage:
    """A message from the ``_MESSAGE_COLUMNS`` of its row."""
    seq, user, name, client_id, text, ts, reply, mentions, edited, reactions, files = row[:11]
    return StoredMessage(
        room, seq, user, name, client_id, text, ts,
        None if reply is None else Reply(*orjson.loads(reply)),
        () if mentions is None else tuple(orjson.loads(mentions)),
        edited,
        () if reactions is None else tuple(Reaction(emoji, tuple(users))
                                          for emoji, users in orjson.loads(reactions)),
        () if files is None else files_from_json(orjson.loads(files)) or ())


def _entry(room: str, row: Row) -> Entry:
    """A log entry from the ``_ENTRY_COLUMNS`` of its row."""
    kind = row[11]
    if kind == MESSAGE:
        return _message(room, row)
    seq, user, name, client_id, text, ts = row[:6]
    target, detail = row[12], row[13]
    if kind == EDIT:
        return StoredChange(room, seq, user, name, client_id, ts, Action.EDIT, target, text)
    if kind == DELETE:
        return StoredChange(room, seq, user, name, client_id, ts, Action.DELETE, target,
                            by=DeletedBy(detail or DeletedBy.MODERATOR))
    return StoredChange(room, seq, user, name, client_id, ts, Action.REACT, target,
                        emoji=detail or "", on=kind == REACT_ON)


def _migrate(conn: sqlite3.Connection, search_index: bool = True) -> None:
    """The schema, with the columns and indexes added since the first version, and the search
    index built or dropped as ``search_index`` says (``_migrate_search``)."""
    conn.executescript(_SCHEMA)
    have = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    for name, declaration in _COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE messages ADD COLUMN {name} {declaration}")
    conn.executescript(_INDEXES)
    _migrate_search(conn, search_index)


# -- the search index ---------------------------------------------------------------------------
# An FTS5 index of every message's current text (``message_search``), kept in step by triggers
# on ``messages``: whatever writes a message row (an append, an edit's or a delete's update,
# retention's prune, an erasure, a restore's migration) re-indexes it in the same transaction,
# and no code path can forget to. Only message rows (kind 0) with text are indexed: change
# entries (an edit's text, reactions) never are, nor tombstones.
#
# ``messages`` is a WITHOUT ROWID table keyed by (room, seq), and an FTS5 row needs an integer
# rowid: each room gets a number ``n`` (``search_rooms``), and a message's rowid is
# ``n << 40 | seq``. A room's messages are then one contiguous rowid range, in seq order, so a
# search of one room is a rowid range of the index read backwards (newest first, paged by seq)
# without a join or a second index per message. Bounds: 2^40 seqs per room, 2^23 rooms per
# database (a message beyond either is stored but not indexed).
#
# The index is "external content" (``content=``, over the view ``message_search_content``): it
# keeps tokens only, never a second copy of the text. FTS5 reads the view only to ``rebuild``
# (the migration below; docs/operations.md) and for ``integrity-check``; a search reads the
# rowids and the messages' rows, and marks the hits with a small in-memory FTS5 table of the
# page's texts (``_marks``), so highlights follow the very tokenizer that matched.
#
# Tokenizer: unicode61 with remove_diacritics 2: words of every script that separates words
# (Latin, Greek, Cyrillic, Arabic, Hebrew, Devanagari...), case folded, and Latin letters'
# accents (cafe finds Café; Greek's tonos is kept). Not trigram: its index is ~3x larger, it
# needs 3 characters to match anything, it finds "art" in "start", and on this SQLite (3.40)
# it cannot fold accents. The cost: scripts written
# without spaces (Chinese, Japanese, Thai) are indexed as whole runs of characters, found by
# the run or a prefix of it (docs/operations.md says so).

SEARCH_SEQ_BITS = 40
SEARCH_ROOMS_MAX = 1 << (63 - SEARCH_SEQ_BITS)
"""Rooms one database can index (their number ``n`` is below this)."""
SEARCH_SEQ_MAX = 1 << SEARCH_SEQ_BITS
"""Seqs a room can index (below this)."""
SEARCH_TOKENIZER = "unicode61 remove_diacritics 2"
SEARCH_THREADS = 2
"""Threads (each with its own connection) that run searches, apart from the store's readers."""
SEARCH_MERGE_PAGES = 256
"""Pages one step of ``SqliteStore.compact_search`` writes, about: ~1 MiB, a few ms."""
_IN_RANGE = f"n < {SEARCH_ROOMS_MAX}"


def _indexed(new: str) -> str:
    """SELECT of the index's (rowid, text) of row ``new`` (``new`` or ``old``) when indexable."""
    return (f"SELECT (n << {SEARCH_SEQ_BITS}) + {new}.seq, {new}.text FROM search_rooms "
            f"WHERE room = {new}.room AND {_IN_RANGE} AND {new}.text != '' "
            f"AND {new}.seq BETWEEN 1 AND {SEARCH_SEQ_MAX - 1}")


# No conflict clause in the triggers: an outer statement's OR REPLACE would override it, and
# replacing a room's row would renumber the room under its index.
_NEW_ROOM = ("INSERT INTO search_rooms (room) SELECT new.room WHERE NOT EXISTS "
             "(SELECT 1 FROM search_rooms WHERE room = new.room);")
_SEARCH_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS search_rooms (
    n INTEGER PRIMARY KEY,
    room TEXT NOT NULL UNIQUE
);
CREATE VIEW IF NOT EXISTS message_search_content (id, text) AS
    SELECT (r.n << {SEARCH_SEQ_BITS}) + m.seq, m.text FROM messages m
    JOIN search_rooms r ON r.room = m.room
    WHERE m.kind = {MESSAGE} AND m.text != '' AND r.{_IN_RANGE}
    AND m.seq BETWEEN 1 AND {SEARCH_SEQ_MAX - 1};
CREATE VIRTUAL TABLE IF NOT EXISTS message_search USING fts5(
    text, content='message_search_content', content_rowid='id', columnsize=0,
    tokenize='{SEARCH_TOKENIZER}');
CREATE TRIGGER IF NOT EXISTS message_search_insert AFTER INSERT ON messages
WHEN new.kind = {MESSAGE} BEGIN
    {_NEW_ROOM}
    INSERT INTO message_search (rowid, text) {_indexed("new")};
END;
CREATE TRIGGER IF NOT EXISTS message_search_update AFTER UPDATE OF text ON messages
WHEN old.kind = {MESSAGE} AND old.text IS NOT new.text BEGIN
    INSERT INTO message_search (message_search, rowid, text)
        SELECT 'delete', * FROM ({_indexed("old")});
    {_NEW_ROOM}
    INSERT INTO message_search (rowid, text) {_indexed("new")};
END;
CREATE TRIGGER IF NOT EXISTS message_search_delete AFTER DELETE ON messages
WHEN old.kind = {MESSAGE} BEGIN
    INSERT INTO message_search (message_search, rowid, text)
        SELECT 'delete', * FROM ({_indexed("old")});
END;
"""


_SEARCH_DROPS = (("trigger", "message_search_insert"), ("trigger", "message_search_update"),
                 ("trigger", "message_search_delete"), ("table", "message_search"),
                 ("view", "message_search_content"), ("table", "search_rooms"))
"""What ``_SEARCH_SCHEMA`` makes, as (type, name) rows of ``sqlite_master``, in the order to
drop them (the triggers name the others). FTS5's own ``message_search_*`` tables come and go
with ``message_search``."""
SEARCH_OBJECTS = frozenset(_SEARCH_DROPS)


def _search_objects(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    names = ", ".join(f"'{name}'" for _, name in SEARCH_OBJECTS)
    return {(str(kind), str(name)) for kind, name in conn.execute(
        f"SELECT type, name FROM sqlite_master WHERE name IN ({names})")}


def _migrate_search(conn: sqlite3.Connection, search_index: bool = True) -> None:
    """Make the search index what ``search_index`` says, all or nothing (one transaction).

    On: a database with the whole index (every object of ``SEARCH_OBJECTS``) is left as it is.
    Any other (made before search, its index dropped by ``search_index`` off, or only part of
    it left: a stale index is worse than none) gets it built: whatever was left is dropped,
    every room numbered, then FTS5's ``rebuild`` from the view (one scan of the messages, in
    the same transaction as the schema, so a crash half way leaves no half-built index).
    Logged at info with the time it took (6-12 s per million messages: docs/operations.md).

    Off: the triggers, the index (FTS5 drops its own tables with it), its view and
    ``search_rooms`` are dropped, so appends cost what they did before search. Nothing is lost
    that the messages do not hold: turning it on again rebuilds it from them."""
    if "text" not in {row[1] for row in conn.execute("PRAGMA table_info(messages)")}:
        return  # not a roomchat database (a test's stub table): nothing to index
    wanted = SEARCH_OBJECTS if search_index else frozenset()
    if _search_objects(conn) == wanted:
        return
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = _search_objects(conn)  # again, under the write lock
        if found == wanted:
            conn.execute("COMMIT")
            return
        for kind, name in _SEARCH_DROPS:
            if (kind, name) in found:
                conn.execute(f"DROP {kind.upper()} {name}")
        rooms = 0
        if search_index:
            for statement in _search_statements():
                conn.execute(statement)
            rooms = conn.execute(
                "INSERT INTO search_rooms (room) SELECT DISTINCT room FROM messages "
                "WHERE kind = ? ORDER BY room", (MESSAGE,)).rowcount
            conn.execute("INSERT INTO message_search (message_search) VALUES ('rebuild')")
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    if not search_index:
        log.info("search index dropped (ROOMCHAT_SEARCH_INDEX is off): searches answer 501; "
                 "turning it on rebuilds it at start")
    elif rooms:  # (a new database's empty index is no news)
        log.info("search index built from the stored messages of %d room%s in %.1f s "
                 "(the database had %s)", rooms, "" if rooms == 1 else "s",
                 time.perf_counter() - started, "part of one" if found else "none")


def _search_statements() -> list[str]:
    """``_SEARCH_SCHEMA`` as single statements (``executescript`` would commit the migration's
    transaction first)."""
    statements, current = [], ""
    for line in _SEARCH_SCHEMA.strip().splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


TAKEN_BACK = "erasure"
"""The ``text`` of a react-off row an erasure appended (a reaction row's text is otherwise
empty): a later erasure of the same user keeps it (clients that resumed past the reaction rows
it replaced need it), and a replay never shows it (a reaction has no text)."""

_Erasable = tuple[list[tuple[int, str]], dict[tuple[int, str], str], int]
"""What an erasure has to do in one room: its user's messages to delete (seq, name), the
reactions to take back (target, emoji) -> their name, and the last seq of their reaction
rows found (0: none)."""


def _erasable(conn: sqlite3.Connection, user: str) -> dict[str, _Erasable]:
    """Per room, what erasing ``user`` has to do there, from one scan of the log."""
    found: dict[str, _Erasable] = {}
    for room, seq, name, kind, target, emoji in conn.execute(
            "SELECT room, seq, name, kind, target, detail FROM messages WHERE user = ? AND "
            f"(kind = ? AND {_LIVE} OR kind IN (?, ?) AND text != ?) ORDER BY room, seq",
            (user, MESSAGE, REACT_ON, REACT_OFF, TAKEN_BACK)):
        deletes, pairs, _ = found.setdefault(room, ([], {}, 0))
        if kind == MESSAGE:
            deletes.append((seq, name))
        else:
            pairs[(target, emoji or "")] = name
            found[room] = (deletes, pairs, seq)
    return found


def _take_back(conn: sqlite3.Connection, room: str, user: str,
               pairs: list[tuple[int, str, str]], now: int) -> list[StoredChange]:
    """Append a react-off entry from ``user`` for each ``(target, emoji, name)`` of ``pairs``
    whose target is a message not deleted, whether or not the reaction is on now (the rows
    that said so are about to go: a client that saw the reaction put must see it taken back),
    and take the reaction off the target's current state; in one transaction. Returns the
    entries appended."""
    appended: list[StoredChange] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        (seq,) = conn.execute("SELECT max(seq) FROM messages WHERE room = ?",
                              (room,)).fetchone()
        seq = seq or 0
        for target, emoji, name in pairs:
            row = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = ? AND "
                               "seq = ? AND kind = ?", (room, target, MESSAGE)).fetchone()
            message = None if row is None else _message(room, row)
            if message is None or message.deleted:
                continue  # a tombstone has no reactions to take back
            seq += 1
            change = ChangeDraft(user, name, None, now, Action.REACT, target,
                                 emoji=emoji).stored(room, seq)
            conn.execute(_INSERT, (room, seq, user, name, None, TAKEN_BACK, now, REACT_OFF,
                                   target, None, None, emoji, None))
            after = changes.fold(message, change)
            conn.execute(_UPDATE, (after.text, after.edited, *_state(after), seq, room, target))
            appended.append(change)
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return appended


def _forget_reactions(conn: sqlite3.Connection, room: str, user: str, upto: int) -> None:
    """Remove ``user``'s reaction rows up to seq ``upto`` from ``room``'s log (their
    erasure's take-backs stay), zeroing their bytes: a replay no longer says what they reacted
    with. The room's top row stays whatever it is (the log's top is its seq counter: removing
    it would hand its seq out again); an erasure's take-backs come after the rows it removes,
    so that is one of them unless the user reacted again meanwhile."""
    conn.execute("PRAGMA secure_delete = ON")
    try:
        conn.execute("DELETE FROM messages WHERE room = ?1 AND user = ?2 AND kind IN (?3, ?4) "
                     "AND text != ?5 AND seq <= ?6 AND seq < (SELECT max(seq) FROM messages "
                     "WHERE room = ?1)", (room, user, REACT_ON, REACT_OFF, TAKEN_BACK, upto))
    finally:
        conn.execute("PRAGMA secure_delete = OFF")


@dataclass(slots=True)
class _Append:
    """Append ``drafts`` to ``room``'s log (``erase``: an erasure's deletes)."""

    room: str
    drafts: Sequence[AnyDraft]
    retention: int
    rules: LogRules
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Appended]]
    landed: Landed | None = None
    erase: bool = False


Landed = Callable[[list[Appended] | None, BaseException | None], None]
"""Called on the event loop with an append's outcome (its results, or the error), even when
nobody awaits it any more."""

_Outcome = tuple[_Append, list[Appended] | None, BaseException | None]


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None,
             landed: Landed | None = None) -> None:
    if landed is not None:
        landed(result, error)
    if future.done():  # the awaiting room was cancelled; the write happened anyway
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _resolve_all(outcomes: list[_Outcome], done: Callable[[int], None], groups: int) -> None:
    """Every append of one commit resolved, on their loop, in the order they were queued: one
    callback per commit, not one per room (each ``call_soon_threadsafe`` wakes the loop from
    the writer thread); then ``done(groups)``, the groups that commit wrote. A ``landed`` hook
    that raises is logged and fails only its own room's append: the others' outcomes still
    arrive."""
    try:
        _resolve_each(outcomes)
    finally:
        done(groups)


def _resolve_each(outcomes: list[_Outcome]) -> None:
    for item, result, error in outcomes:
        try:
            _resolve(item.future, result, error, item.landed)
        except Exception as exc:  # (a room's own hook: contained to that room)
            log.exception("room %s: the store's answer could not be delivered", item.room)
            if not item.future.done():
                item.future.set_exception(StoreError(f"answer not delivered: {exc!r}"))


class SqliteStore:
    """The embedded engine: ``SqliteStore.open(path)``; ``synchronous`` is SQLite's pragma.

    ``FULL`` (default) survives power loss; ``NORMAL`` survives a crash of the process only
    (docs/production.md, "Durability", has what each costs). Used from one event loop: the
    group commit's bookkeeping (``_gathered``, ``_in_flight``) lives on it.
    """

    def __init__(self, path: Path, synchronous: str, on_commit: CommitObserver | None,
                 search_index: bool = True) -> None:
        self.path = path
        self._synchronous = synchronous
        self.search_index = search_index
        """Whether this store keeps the search index (``open``'s argument)."""
        self._on_commit = on_commit
        # Unbounded by type, bounded by use: each room actor awaits its append before the next,
        # and each erasure its step, so at most one item per loaded room or running erasure is
        # ever queued. Each queue item is a group of appends handed over together.
        self._writes: queue.SimpleQueue[list[_Append] | None] = queue.SimpleQueue()
        # Group commit, loop side: an append submitted while the writer is idle goes to it at
        # once (a lone message waits for nothing); the others submitted in the same loop turn
        # gather here and go together at the end of it (``_hand_off``). One wake of the writer
        # per turn and one answer per commit, not one of each per room (each was a futex call
        # and a GIL hand-over: bench/reports/2026-12-07-message-path-2.md). The writer drains
        # every group queued when it finishes a commit, without waiting for the loop.
        self._gathered: list[_Append] = []
        self._in_flight = 0  # groups handed to the writer, not yet answered (loop thread)
        self._writer = threading.Thread(target=self._write_loop, name="roomchat-store-writer",
                                        daemon=True)
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="roomchat-store-read")
        # Searches run on threads of their own: a slow one (a prefix of a common stem over a
        # million messages: ~100-300 ms) never holds the readers joins and history pages need.
        self._searchers = ThreadPoolExecutor(max_workers=SEARCH_THREADS,
                                             thread_name_prefix="roomchat-store-search")
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
                   on_commit: CommitObserver | None = None,
                   search_index: bool = True) -> SqliteStore:
        """Open (or create) the database at ``path`` and start the writer thread.

        ``search_index`` (``ROOMCHAT_SEARCH_INDEX``): on, the search index is kept, and built
        first if the database lacks it (a database from before search, or from a time it was
        off: seconds per million messages, before this returns); off, it is dropped here and
        ``search`` raises ``SearchUnsupported``. Raises ``ValueError`` for a bad
        ``synchronous`` and ``sqlite3.Error`` when the database cannot be opened."""
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        store = cls(path, synchronous.upper(), on_commit, search_index)
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
        _migrate(conn, self.search_index)
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)",
                     (secrets.token_hex(8),))
        (self.epoch,) = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        self._conn = conn

    # -- writes -----------------------------------------------------------------------------

    async def append(self, room: str, drafts: Sequence[AnyDraft], retention: int,
                     rules: LogRules = DEFAULT_RULES) -> list[Appended]:
        """Append ``drafts`` to ``room``'s log (``rooms.engine.Engine.append``, without the
        dedup: the embedded engine's room deduplicates). Returns once they survive a crash
        of this process. Raises ``Unstorable`` (naming the drafts that can never be stored;
        nothing was) or ``StoreError``."""
        if not drafts:
            return []
        return await self.submit(room, drafts, retention, rules)

    def submit(self, room: str, drafts: Sequence[AnyDraft], retention: int,
               rules: LogRules = DEFAULT_RULES,
               landed: Landed | None = None) -> asyncio.Future[list[Appended]]:
        """``append`` without the wait: queue ``drafts`` for the writer thread and return the
        future it resolves once they are durable (or with the error ``append`` would raise).
        Cancelling the future does not stop the write; ``landed`` is told its outcome all the
        same, just before the future. Raises ``StoreError`` when closed."""
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Appended]] = loop.create_future()
        self._gather(_Append(room, drafts, retention, rules, loop, future, landed))
        return future

    def _gather(self, item: _Append) -> None:
        if not self._in_flight and not self._gathered:
            self._in_flight += 1
            self._writes.put([item])
            return
        if not self._gathered:
            # Runs after every callback already ready in this turn: the rooms woken by this
            # turn's frames submit first, and all go to the writer in one group.
            item.loop.call_soon(self._hand_off)
        self._gathered.append(item)

    def _hand_off(self) -> None:
        """Queue the appends gathered for the writer thread, as one group (on the event loop;
        also from ``close``, before the writer's stop marker)."""
        if self._gathered:
            group, self._gathered = self._gathered, []
            self._in_flight += 1
            self._writes.put(group)

    def _written(self, groups: int) -> None:
        """``groups`` groups were answered (on the loop): with none left, the writer is idle."""
        self._in_flight -= groups

    def _write_loop(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            first = self._writes.get()
            if first is None:
                break
            batch = list(first)
            groups = 1
            stop = False
            while True:  # take every group already queued: one transaction for all of it
                try:
                    group = self._writes.get_nowait()
                except queue.Empty:
                    break
                if group is None:
                    stop = True
                    break
                batch.extend(group)
                groups += 1
            self._commit(conn, batch, groups)
            if stop:
                break
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Append], groups: int) -> None:
        """One transaction for every append in ``batch``; each in its own savepoint, so a failing
        one fails alone, not its neighbours' rooms: ``Unstorable`` when some of its drafts
        cannot be encoded, ``StoreError`` for anything else."""
        started = time.perf_counter()
        count = 0
        errors: list[BaseException | None] = [None] * len(batch)
        results: list[list[Appended] | None] = [None] * len(batch)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for index, item in enumerate(batch):
                    conn.execute("SAVEPOINT item")
                    try:
                        results[index] = self._append(conn, item)
                    except _DATA_ERRORS as exc:
                        conn.execute("ROLLBACK TO item")
                        errors[index] = self._unstorable(item, exc)
                    except sqlite3.Error as exc:
                        conn.execute("ROLLBACK TO item")
                        errors[index] = StoreError(f"write failed: {exc}")
                    else:
                        count += sum(r.entry is not None for r in results[index] or ())
                    conn.execute("RELEASE item")
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            errors = [StoreError(f"commit failed: {exc}")] * len(batch)
            results = [None] * len(batch)
            count = 0
        # Report before resolving: whoever awaited the append may look at the numbers at once.
        if count and self._on_commit is not None:
            self._on_commit(time.perf_counter() - started, count)
        # One callback, resolving every room's append (all submitted on one loop: the one
        # ``_in_flight`` counts on).
        outcomes = list(zip(batch, results, errors, strict=True))
        try:
            batch[0].loop.call_soon_threadsafe(_resolve_all, outcomes, self._written, groups)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            log.warning("%d store answers dropped: their event loop is closed", len(outcomes))

    @staticmethod
    def _unstorable(item: _Append, exc: Exception) -> StoreError | Unstorable:
        """Which of ``item``'s drafts cannot be written (``exc`` came from one of them)."""
        bad = [position for position, draft in enumerate(item.drafts) if unencodable(draft)]
        if not bad:  # not one draft's fault after all: an ordinary failure of the write
            return StoreError(f"write failed: {exc!r}")
        return Unstorable(bad, f"cannot be stored: {exc}")

    def _append(self, conn: sqlite3.Connection, item: _Append) -> list[Appended]:
        """``item``'s drafts as entries of its room's log, seqs allocated after its top; each
        change (and reply) checked against its target's current state as the drafts before it
        left it, and applied to it (``rooms.changes``).

        The statements are per batch, not per draft: one read of the targets' current state,
        one ``executemany`` of every new row, one ``UPDATE`` per changed target (a change cost
        three statements of its own, twice what a message costs here)."""
        room = item.room
        (top,) = conn.execute("SELECT max(seq) FROM messages WHERE room = ?",
                              (room,)).fetchone()
        top = top or 0
        seq = top
        results: list[Appended] = []
        rows: list[Row] = []
        # Targets' current state and their last change's seq, as this batch leaves them.
        states = self._targets(conn, item)
        changed: dict[int, int] = {}  # target -> the seq of this batch's last change to it
        deleted: list[tuple[int, bool]] = []  # (target, had edits) deleted in this batch
        for draft in item.drafts:
            if isinstance(draft, Draft):
                reply = None
                if draft.reply_to is not None:
                    found = states.get(draft.reply_to)
                    answered = changes.reply(None if found is None else found[0], item.rules)
                    if isinstance(answered, Refusal):
                        results.append(Appended(0, refused=answered))
                        continue
                    reply = answered
                seq += 1
                message = draft.stored(room, seq, reply)
                rows.append(_message_row(message))
                states[seq] = (message, seq)  # a later draft of the batch may change it
                results.append(Appended(seq, entry=message))
                continue
            found = states.get(draft.target)
            if item.erase and found is not None and found[0].user != draft.user:
                results.append(Appended(0, refused=Refusal.FORBIDDEN))  # one user's only
                continue
            outcome = changes.apply(None if found is None else found[0], draft, item.rules)
            if outcome.refused is not None:
                results.append(Appended(0, refused=outcome.refused))
                continue
            if outcome.noop or outcome.message is None or found is None:
                results.append(Appended(found[1] if found else draft.target, noop=True))
                continue
            seq += 1
            change = draft.stored(room, seq, DeletedBy.MODERATOR if item.erase else outcome.by)
            rows.append(_change_row(change))
            states[draft.target] = (outcome.message, seq)
            changed[draft.target] = seq
            if draft.action is Action.DELETE:
                deleted.append((draft.target, found[0].edited is not None))
            results.append(Appended(seq, entry=change))
        if rows:
            conn.executemany(_INSERT, rows)
        if deleted:
            # The texts a delete removes (the message's, its edits', the excerpts quoting it)
            # leave the database's pages, not only its rows: secure_delete zeroes the bytes
            # that rewriting those rows frees.
            conn.execute("PRAGMA secure_delete = ON")
        try:
            if changed:
                conn.executemany(_UPDATE, [
                    (after.text, after.edited, *_state(after), last, room, target)
                    for target, last in changed.items() for after in (states[target][0],)])
            if deleted:
                self._deleted(conn, room, deleted)
        finally:
            if deleted:
                conn.execute("PRAGMA secure_delete = OFF")
        if item.retention and seq > top:
            self._prune(conn, room, seq, item.retention)
        return results

    @staticmethod
    def _targets(conn: sqlite3.Connection, item: _Append) -> dict[int, tuple[StoredMessage, int]]:
        """The current state of the stored messages ``item``'s changes and replies name, and
        the seq of each one's last change (its own when it never changed), in one read."""
        wanted = {d.target if isinstance(d, ChangeDraft) else d.reply_to for d in item.drafts
                  if isinstance(d, ChangeDraft) or d.reply_to is not None}
        seqs = [s for s in wanted if s is not None and 0 < s <= _MAX_INT]
        states: dict[int, tuple[StoredMessage, int]] = {}
        for start in range(0, len(seqs), 500):  # (SQLite's bound on variables is 32,766)
            chunk = seqs[start:start + 500]
            for row in conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS}, changed FROM messages WHERE room = ? AND "
                    f"kind = ? AND seq IN ({','.join('?' * len(chunk))})",
                    (item.room, MESSAGE, *chunk)):
                states[row[0]] = (_message(item.room, row), row[11] or row[0])
        return states

    @staticmethod
    def _deleted(conn: sqlite3.Connection, room: str, targets: list[tuple[int, bool]]) -> None:
        """The texts the deletes of ``targets`` remove, everywhere else they are: their edits'
        (when they had any) and the excerpts of the replies quoting them."""
        for target, edited in targets:
            if edited:
                conn.execute("UPDATE messages SET text = '' WHERE room = ? AND target = ? "
                             "AND kind = ?", (room, target, EDIT))
            conn.execute("UPDATE messages SET reply = json_set(reply, '$[3]', '') "
                         "WHERE room = ? AND target = ? AND kind = ? AND reply IS NOT NULL",
                         (room, target, MESSAGE))

    def _prune(self, conn: sqlite3.Connection, room: str, last: int, retention: int) -> None:
        """Keep ``retention`` entries per room, and no change of a message pruned, deleting in
        steps of ~1% of it: a DELETE per commit was a visible part of small commits."""
        cutoff = last - retention
        step = max(1, retention // 100)
        if cutoff >= self._pruned.get(room, 0) + step:
            conn.execute("DELETE FROM messages WHERE room = ? AND seq <= ?", (room, cutoff))
            conn.execute("DELETE FROM messages WHERE room = ? AND target IS NOT NULL AND "
                         "target <= ? AND kind != ?", (room, cutoff, MESSAGE))
            self._pruned[room] = cutoff

    # -- reads ------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._conns_lock:
                self._read_conns.append(conn)
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], _T],
                   executor: ThreadPoolExecutor | None = None) -> _T:
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor or self._readers,
                                              lambda: fn(self._reader()))
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc
        except (ValueError, OverflowError) as exc:  # a value SQLite cannot take: the caller's
            raise Unstorable((), f"cannot be stored: {exc}") from exc

    async def load(self, room: str, dedup_window: int) -> RoomSnapshot:
        return await self._run(lambda conn: self._snapshot(conn, room, dedup_window))

    async def load_room(self, room: str, dedup_window: int) -> tuple[
            RoomSnapshot, dict[str, tuple[float | None, str]], dict[str, int]]:
        """``load``, ``bans`` and ``room_markers`` of ``room`` in one hand-off to a reader
        thread: what a room's first joins would otherwise read in two more (each hand-off
        costs the event loop's thread a context switch or more on a busy core)."""
        now = time.time()

        def query(conn: sqlite3.Connection) -> tuple[
                RoomSnapshot, dict[str, tuple[float | None, str]], dict[str, int]]:
            return (self._snapshot(conn, room, dedup_window), _bans(conn, room, now),
                    _room_markers(conn, room))

        return await self._run(query)

    def _snapshot(self, conn: sqlite3.Connection, room: str, dedup_window: int) -> RoomSnapshot:
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

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[Entry]:
        """As ``rooms.engine.Engine.read``: messages are read in their current state (that is
        how they are stored), changes as stored (an edit of a deleted message has lost its
        text); a pruned message's changes are pruned with it."""
        def query(conn: sqlite3.Connection) -> list[Entry]:
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM messages "
                "WHERE room = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (room, after, min(upto, _MAX_INT), limit),
            ).fetchall()
            return [_entry(room, row) for row in rows]

        return await self._run(query)

    async def history(self, room: str, *, after: int = 0, before: int, limit: int,
                      newest: bool = False) -> list[StoredMessage]:
        """As ``rooms.engine.Engine.history``: message rows only, current state as stored."""
        order = "DESC" if newest else "ASC"

        def query(conn: sqlite3.Connection) -> list[StoredMessage]:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = ? AND kind = ? "
                f"AND seq > ? AND seq < ? ORDER BY seq {order} LIMIT ?",
                (room, MESSAGE, after, min(before, _MAX_INT), limit)).fetchall()
            if newest:
                rows.reverse()
            return [_message(room, row) for row in rows]

        return await self._run(query)

    async def search(self, room: str, query: str, *, before: int | None,
                     limit: int) -> SearchPage:
        """As ``rooms.engine.Engine.search``: the room's rowid range of ``message_search``,
        read backwards from ``before``; the messages' rows and the index are read in one
        snapshot, so a message deleted meanwhile is either found deleted (and left out) or not
        at all. Raises ``SearchUnsupported`` when the store keeps no index (opened with
        ``search_index`` off)."""
        if not self.search_index:
            raise SearchUnsupported(SEARCH_SWITCHED_OFF)
        terms = parse_query(query)
        upper = SEARCH_SEQ_MAX if before is None else min(before, SEARCH_SEQ_MAX)
        if not terms or limit <= 0 or upper <= 1:
            return SearchPage((), None)
        expression = fts5_query(terms)

        def query_(conn: sqlite3.Connection) -> SearchPage:
            conn.execute("BEGIN")  # one snapshot for the index and the rows
            try:
                found = conn.execute("SELECT n FROM search_rooms WHERE room = ?",
                                     (room,)).fetchone()
                if found is None or found[0] >= SEARCH_ROOMS_MAX:
                    return SearchPage((), None)
                base = found[0] << SEARCH_SEQ_BITS
                seqs = [rowid - base for (rowid,) in conn.execute(
                    "SELECT rowid FROM message_search WHERE message_search MATCH ? "
                    "AND rowid > ? AND rowid < ? ORDER BY rowid DESC LIMIT ?",
                    (expression, base, base + upper, limit))]
                rows = {row[0]: _message(room, row) for row in conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = ? AND kind = ? "
                    "AND seq IN (SELECT value FROM json_each(?))",
                    (room, MESSAGE, _json(seqs)))}
            finally:
                conn.execute("COMMIT")
            messages = [rows[seq] for seq in seqs if seq in rows and rows[seq].text]
            marked = _marks(conn, messages, expression)
            results = tuple(Found(m, marked.get(m.seq) or unmarked(m.text)) for m in messages)
            return SearchPage(results, seqs[-1] if len(seqs) == limit else None)

        return await self._run(query_, self._searchers)

    async def search_all(self, query: str, *, before: Place | None, limit: int,
                         most: int) -> RoomsPage:
        """As ``rooms.engine.Engine.search_all``: the index's matches in every room's range
        (at most ``most`` + 1 rowids: the doclist, no row read), then those matches' rows,
        ordered by ``Place`` (the rowid gives each its room's number and its seq), all in one
        snapshot. Raises ``SearchUnsupported`` when the store keeps no index."""
        if not self.search_index:
            raise SearchUnsupported(SEARCH_SWITCHED_OFF)
        terms = parse_query(query)
        if not terms or limit <= 0:
            return RoomsPage((), None)
        expression = fts5_query(terms)
        below = "" if before is None else "AND (m.ts, m.room, m.seq) < (?, ?, ?)"
        place = () if before is None else (before.ts, before.room, before.seq)

        def query_(conn: sqlite3.Connection) -> RoomsPage:
            conn.execute("BEGIN")  # one snapshot for the index and the rows
            try:
                ids = [rowid for (rowid,) in conn.execute(
                    "SELECT rowid FROM message_search WHERE message_search MATCH ? LIMIT ?",
                    (expression, most + 1))]
                if len(ids) > most:
                    raise SearchTooBroad(most)
                rows = conn.execute(
                    f"SELECT m.room, {_MESSAGE_COLUMNS} FROM json_each(?) j "
                    f"JOIN search_rooms r ON r.n = (j.value >> {SEARCH_SEQ_BITS}) "
                    "JOIN messages m ON m.room = r.room "
                    f"AND m.seq = (j.value & {SEARCH_SEQ_MAX - 1}) "
                    f"WHERE m.kind = {MESSAGE} AND m.text != '' {below} "
                    "ORDER BY m.ts DESC, m.room DESC, m.seq DESC LIMIT ?",
                    (_json(ids), *place, limit + 1)).fetchall()
            finally:
                conn.execute("COMMIT")
            messages = [_message(row[0], row[1:]) for row in rows[:limit]]
            marked: dict[tuple[str, int], tuple[tuple[str, bool], ...]] = {}
            for room in {m.room for m in messages}:  # _marks numbers a room's texts by seq
                found = _marks(conn, [m for m in messages if m.room == room], expression)
                marked.update(((room, seq), pieces) for seq, pieces in found.items())
            results = tuple(Found(m, marked.get((m.room, m.seq)) or unmarked(m.text))
                            for m in messages)
            more = len(rows) > limit
            return RoomsPage(results, Place.of(messages[-1]) if more else None)

        return await self._run(query_, self._searchers)

    async def room_markers(self, room: str) -> dict[str, int]:
        """Every read marker in ``room``: user -> seq."""
        return await self._run(lambda conn: _room_markers(conn, room))

    async def unread_after(self, room: str, user: str, read: int, scan: int) -> Unread:
        """``Engine.unread`` for a user whose marker is ``read`` (> 0)."""
        def query(conn: sqlite3.Connection) -> Unread:
            # Deleted messages are not looked at (Redis's stream no longer holds them).
            scanned, unread, mentions = conn.execute(
                "SELECT count(*), coalesce(sum(user != ?1), 0), "
                "coalesce(sum(user != ?1 AND mentions IS NOT NULL AND "
                "EXISTS (SELECT 1 FROM json_each(mentions) WHERE value = ?1)), 0) "
                "FROM (SELECT user, mentions FROM messages WHERE room = ?2 AND kind = ?3 "
                f"AND seq > ?4 AND {_LIVE} ORDER BY seq DESC LIMIT ?5)",
                (user, room, MESSAGE, read, scan)).fetchone()
            return Unread(read, unread, mentions, capped=scanned >= scan)

        return await self._run(query)

    async def mark_read(self, room: str, user: str, seq: int) -> int:
        def query(conn: sqlite3.Connection) -> int:
            (marker,) = conn.execute(
                "INSERT INTO reads (room, user, seq) VALUES (?, ?, ?) ON CONFLICT (room, user) "
                "DO UPDATE SET seq = max(seq, excluded.seq) RETURNING seq",
                (room, user, seq)).fetchone()
            return int(marker)

        return await self._run(query)

    async def markers(self, user: str) -> dict[str, int]:
        return dict(await self._run(lambda conn: [
            (str(room), int(seq)) for room, seq in conn.execute(
                "SELECT room, seq FROM reads WHERE user = ? ORDER BY room", (user,))]))

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

    # -- erasure requests ---------------------------------------------------------------------

    async def erase(self, user: str, erased: Erased | None = None,
                    rules: LogRules = DEFAULT_RULES) -> dict[str, list[int]]:
        """Delete every stored message of ``user`` and take back every reaction of theirs
        (``rooms.engine.Engine.erase``). Each step is one transaction appending up to
        ``ERASE_STEP`` entries to one room's log (delete entries through the writer thread,
        then react-off entries, ``_take_back``), so the rooms' appends wait for one step at
        most; ``erased(room, entries)`` follows each step that appended something. Then the
        user's reaction rows the take-backs replace leave the log (``_forget_reactions``)."""
        if self._closed:
            raise StoreError("store is closed")
        # Found by a scan of a read snapshot (WAL: the writer is not held up by it; an index on
        # user would cost every append for a rare request), changed by the writer thread, which
        # checks each again (a message deleted meanwhile is skipped, a reaction taken back
        # meanwhile is a no-op).
        found = await self._run(lambda conn: _erasable(conn, user))
        step = contract.ERASE_STEP
        # Per room, its steps in order: the erasure's deletes (appended through the writer
        # thread, checked as any delete), then the take-backs of its reactions.
        steps: dict[str, list[tuple[list[Any], bool]]] = {}
        for room, (deletes, pairs, _) in found.items():
            backs = [(target, emoji, name) for (target, emoji), name in pairs.items()]
            steps[room] = [(deletes[i:i + step], True) for i in range(0, len(deletes), step)]
            steps[room] += [(backs[i:i + step], False) for i in range(0, len(backs), step)]
        done: dict[str, list[int]] = {}
        loop = asyncio.get_running_loop()
        # Round robin: one step in each room per round, one pause per round (it is for each
        # room's members; rooms need not wait for each other).
        for index in range(max(map(len, steps.values()), default=0)):
            told = False
            for room, room_steps in steps.items():
                if index >= len(room_steps):
                    continue
                if self._closed:  # the writer thread is gone: nothing would answer
                    raise StoreError("store is closed")
                now = int(time.time() * 1000)
                work, deleting = room_steps[index]
                entries: list[StoredChange]
                if deleting:
                    drafts: list[AnyDraft] = [
                        ChangeDraft(user, name, None, now, Action.DELETE, seq, moderator=True)
                        for seq, name in work]
                    future: asyncio.Future[list[Appended]] = loop.create_future()
                    self._gather(_Append(room, drafts, 0, rules, loop, future, erase=True))
                    entries = [r.entry for r in await future
                               if isinstance(r.entry, StoredChange)]
                    done.setdefault(room, []).extend(e.target for e in entries)
                else:
                    entries = await self._run(functools.partial(
                        _take_back, room=room, user=user, pairs=work, now=now))
                if entries:
                    if erased is not None:
                        erased(room, entries)
                    told = told or index + 1 < len(room_steps)
            if told:
                await asyncio.sleep(contract.ERASE_PAUSE)
        forget = {room: last for room, (_, _, last) in found.items() if last}
        for room, last in forget.items():
            await self._run(functools.partial(_forget_reactions, room=room, user=user,
                                              upto=last))
        if done and self.search_index:
            await self.compact_search()  # the erased words leave the search index's pages
        if done or forget:
            # The WAL still holds the pages as they were when the text was written: copy the
            # new ones into the database and empty it. Best effort: while a read is running it
            # stops short (SQLITE_BUSY), and later checkpoints overwrite those pages.
            await self._run(lambda conn: conn.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
        return done

    async def compact_search(self, pages: int = SEARCH_MERGE_PAGES) -> int:
        """Merge the search index into one segment, in steps of about ``pages`` pages written
        (each its own short transaction: the writer thread's commits wait one step at most),
        with ``secure_delete`` on. Returns the steps taken.

        Why: FTS5 deletes a document by writing a delete marker in a new segment; the older
        segment keeps its tokens (the words, folded) until a merge reaches it. Queries never
        see them, but an erasure promises the words leave storage: after this they have. It
        rewrites the whole index (docs/operations.md has its cost), so erasure is when it runs,
        not every delete. Without an index (``search_index`` off) there is nothing to merge: 0."""
        if not self.search_index:
            return 0

        def merge(conn: sqlite3.Connection) -> int:
            conn.execute("PRAGMA secure_delete = ON")
            try:
                before = conn.total_changes
                conn.execute("INSERT INTO message_search (message_search, rank) "
                             "VALUES ('merge', ?)", (-pages,))
                return conn.total_changes - before
            finally:
                conn.execute("PRAGMA secure_delete = OFF")

        steps = 0
        # A change count of 2 or more means the step merged something (FTS5's documented
        # signal); less: the index is one segment, its delete markers applied.
        while await self._run(merge) >= 2:
            steps += 1
        return steps

    # -- bans (rare; written like the records above) -----------------------------------------

    async def ban(self, room: str, user: str, until: float | None, reason: str) -> None:
        await self._run(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO bans (room, user, until, reason) VALUES (?,?,?,?)",
            (room, user, until, reason)))

    async def unban(self, room: str, user: str) -> bool:
        now = time.time()
        return await self._run(lambda conn: conn.execute(
            "DELETE FROM bans WHERE room = ? AND user = ? AND (until IS NULL OR until > ?)",
            (room, user, now)).rowcount > 0)

    async def bans(self, room: str) -> dict[str, tuple[float | None, str]]:
        """Every ban from ``room`` in force now: ``user -> (until, reason)``."""
        now = time.time()
        return await self._run(lambda conn: _bans(conn, room, now))

    # -- moving between engines (gateway/importer.py) ---------------------------------------

    async def rooms(self) -> list[str]:
        """Every room with entries in its log, sorted (what ``export --all-rooms`` writes)."""
        return await self._run(lambda conn: [str(room) for (room,) in conn.execute(
            "SELECT DISTINCT room FROM messages ORDER BY room")])

    async def importable(self, room: str) -> bool:
        """Whether ``import_entries`` would take ``room``: its log is empty, or holds only what
        an import that did not finish left (removed when the import starts again)."""
        def query(conn: sqlite3.Connection) -> bool:
            return (conn.execute("SELECT 1 FROM meta WHERE key = ?",
                                 (IMPORTING + room,)).fetchone() is not None
                    or conn.execute("SELECT 1 FROM messages WHERE room = ? LIMIT 1",
                                    (room,)).fetchone() is None)

        return await self._run(query)

    async def import_entries(self, room: str, entries: Sequence[Entry], *,
                             epoch: str | None = None,
                             progress: Callable[[int], object] | None = None) -> bool:
        """Write ``entries`` (a room's log as ``read`` gives it, oldest first: messages in their
        current state, changes as stored) into the empty log of ``room`` **at their seqs**,
        without checking or applying the changes again: each message is stored as it is, so
        ``read`` and ``history`` give back exactly these entries. A new database (no entries in
        any room) takes ``epoch`` as its epoch (one per database: ``new_epoch``).

        In steps of ``IMPORT_STEP`` entries, each its own transaction (``progress(n)`` after
        each), between a marker set first and removed last: an import that stops half way
        (a crash) leaves the marker, and the next import of the room removes what it wrote
        and starts again. Stop the server first: its rooms would not know of the entries.
        Returns whether the room's epoch is now ``epoch``. Raises ``RoomNotEmpty`` (nothing
        written), ``StoreError``."""
        marker = IMPORTING + room

        def begin(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM meta WHERE key = ?", (marker,)).fetchone():
                    conn.execute("DELETE FROM messages WHERE room = ?", (room,))
                elif conn.execute("SELECT 1 FROM messages WHERE room = ? LIMIT 1",
                                  (room,)).fetchone():
                    raise RoomNotEmpty(f"room {room!r} already has entries")
                fresh = conn.execute("SELECT 1 FROM messages LIMIT 1").fetchone() is None
                if epoch and fresh:
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)",
                                 (epoch,))
                    self.epoch = epoch
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, '1')",
                             (marker,))
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise
            return self.epoch == epoch

        def write(conn: sqlite3.Connection, rows: list[Row]) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_IMPORT, rows)
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise

        kept = await self._run(begin)
        last_change: dict[int, int] = {}
        for entry in entries:
            if isinstance(entry, StoredChange):
                last_change[entry.target] = entry.seq
        for start in range(0, len(entries), IMPORT_STEP):
            step = entries[start:start + IMPORT_STEP]
            rows = [_imported_row(e, last_change.get(e.seq)) if isinstance(e, StoredMessage)
                    else (*_change_row(e), None, None, None) for e in step]
            await self._run(functools.partial(write, rows=rows))
            if progress is not None:
                progress(len(step))
        await self._run(lambda conn: conn.execute("DELETE FROM meta WHERE key = ?", (marker,)))
        return kept

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hand_off()  # this turn's appends are written before the writer stops
        self._writes.put(None)
        await asyncio.to_thread(self._writer.join)
        self._readers.shutdown(wait=True)
        self._searchers.shutdown(wait=True)
        with self._conns_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()


_MARKERS = tuple((chr(0xFDD0 + i), chr(0xFDD0 + i + 1)) for i in range(0, 32, 2))
"""Pairs of noncharacters that mark hits in ``highlight()``'s output: the first pair that
occurs in none of a page's texts is used."""


def _marks(conn: sqlite3.Connection,
           messages: list[StoredMessage],
           expression: str) -> dict[int, tuple[tuple[str, bool], ...]]:
    """Each message's text in fragments around the tokens ``expression`` matches: FTS5's own
    ``highlight()`` run over a temporary in-memory index of just these texts (the main index
    keeps no text to highlight), so the marks follow exactly the tokenizer that found them.
    A text holding every marker pair (made on purpose) is left unmarked."""
    if not messages:
        return {}
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.search_marks USING fts5("
                 f"text, tokenize='{SEARCH_TOKENIZER}')")
    conn.execute("DELETE FROM temp.search_marks")
    try:
        conn.executemany("INSERT INTO temp.search_marks (rowid, text) VALUES (?, ?)",
                         [(m.seq, m.text) for m in messages])
        marked: dict[int, tuple[tuple[str, bool], ...]] = {}
        pending = messages
        for start, end in _MARKERS:
            clear = [m.seq for m in pending if start not in m.text and end not in m.text]
            if clear:
                for seq, text in conn.execute(
                        "SELECT rowid, highlight(search_marks, 0, ?, ?) FROM temp.search_marks "
                        "WHERE search_marks MATCH ? AND rowid IN "
                        "(SELECT value FROM json_each(?))",
                        (start, end, expression, _json(clear))):
                    marked[seq] = fragments(text, start, end)
                pending = [m for m in pending if m.seq not in set(clear)]
            if not pending:
                break
        return marked
    finally:
        conn.execute("DELETE FROM temp.search_marks")


def new_epoch(path: Path, search_index: bool = True) -> str:
    """Give the (closed) database at ``path`` a new epoch and return it. For a restored backup:
    its logs are behind what clients of the server it replaces have seen, so their resumes
    must not be taken as recovered (docs/protocol.md, "Epochs"). The search index is built or
    dropped as ``search_index`` says (``SqliteStore.open``). Raises ``sqlite3.Error``."""
    epoch = secrets.token_hex(8)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _migrate(conn, search_index)  # a backup of an older version lacks tables and columns
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
    finally:
        conn.close()
    return epoch



def _bans(conn: sqlite3.Connection, room: str, now: float) -> dict[str, tuple[float | None, str]]:
    """``room``'s bans in force at ``now``: ``user -> (until, reason)``."""
    return {str(user): (until, str(reason)) for user, until, reason in conn.execute(
        "SELECT user, until, reason FROM bans WHERE room = ? AND (until IS NULL OR until > ?)",
        (room, now))}


def _room_markers(conn: sqlite3.Connection, room: str) -> dict[str, int]:
    """``room``'s read markers: user -> seq."""
    return {str(user): int(seq) for user, seq in conn.execute(
        "SELECT user, seq FROM reads WHERE room = ?", (room,))}

"""``PostgresLog``: a room's log, and everything durable around it, in PostgreSQL
(docs/design/log-and-bus.md, section 2). A ``rooms.engine.Log``: ``SplitEngine`` puts a bus
beside it.

Every append runs under a lock of the room's row in ``rooms`` (``FOR UPDATE``), in the one
transaction of the appends issued in the same loop turn (``_Appends``: group commit, each room's
work in a savepoint of its own), reads
the seq counter (``rooms.top``), the ids already stored and the targets' current state, applies
the log's rules in Python (``rooms.changes``: the same code as the embedded engine), and writes
the new rows, the targets' new state and the counter. Under READ COMMITTED every statement
after the lock sees what every earlier holder committed, so any number of processes may append
to one room: seqs stay consecutive and unique, and a retried ``(user, id)`` is answered as a
duplicate whichever process stored it (dedup is over the whole retained log: a unique index on
``(room, user_id, client_id)`` backs it).

Epochs are per room (``rooms.epoch``), as on Redis: a restore of an older backup leaves a room's
counter below what clients saw, and the first append or sync that says so (``floor``) moves the
room past it under a new epoch (``LogReset``).

Errors: what PostgreSQL or the network fails with becomes ``StoreError`` (the connection is
rolled back before it returns to the pool); a value PostgreSQL cannot hold (U+0000, a lone
surrogate, an integer beyond 64 bits) is ``Unstorable``, found before any SQL for appends.
Every call is bounded by ``timeout`` seconds (``RoomConfig.store_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from rooms import changes
from rooms import engine as contract
from rooms.attachments import files_from_json, files_to_json
from rooms.cancelled import raise_if_cancelled
from rooms.engine import Ban, CommitObserver, ErasedStep, LogState
from rooms.engines.postgres_schema import DEFAULT_LANGUAGE, migrate, use_language
from rooms.errors import LogReset, RoomNotEmpty, SearchTooBroad, StoreError, Unstorable
from rooms.messages import (
    DEFAULT_RULES,
    MAX_STORED_INT,
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
    Found,
    Place,
    RoomsPage,
    SearchPage,
    Term,
    fragments,
    parse_query,
    tsquery_sql,
    unmarked,
)

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

_T = TypeVar("_T")
log = logging.getLogger("roomchat.store")

MESSAGE, EDIT, DELETE, REACT_ON, REACT_OFF = range(5)
"""``entries.kind`` (the embedded engine's numbers)."""
_KINDS = {Action.EDIT: EDIT, Action.DELETE: DELETE}
TAKEN_BACK = "erasure"
"""The ``text`` of a react-off row an erasure appended (as in the SQLite store): a later
erasure of the same user keeps it."""
GROUP_MOST = 64
"""Appends one group transaction holds (``_Appends``); more issued in one loop turn wait for
the next turn's group. Each append of a group is a subtransaction (its SAVEPOINT) that takes an
xid (it locks and writes its room's row), and PostgreSQL caches at most 64 subxids per backend
(``PGPROC_MAX_CACHED_SUBXIDS``): past that every other session's snapshot is "suboverflowed" and
looks transactions up in ``pg_subtrans``, a known slow path. The group also holds its rooms'
row locks until it commits, so a bound keeps one slow room from holding back many others."""
IMPORT_STEP = 1000
"""Entries one transaction of ``import_entries`` writes."""
MIN_CONNECTIONS = 1
"""Connections the pool keeps open when idle."""
PROBE_IDLE = 5.0
"""Seconds without a call that reached PostgreSQL before the health probe (``SELECT 1``) runs:
``healthy`` turns false when PostgreSQL goes away even while no room writes."""
PROBE_UNHEALTHY = 1.0
"""Seconds between probes while the log is unhealthy: it turns healthy again by itself when
PostgreSQL is back (new rooms are refused meanwhile, so no call of theirs would find out)."""
STATEMENT_SHARE = 0.9
"""``statement_timeout`` is this share of the call's timeout: PostgreSQL gives up on a slow
statement first, and the connection comes back in a clean state (a call cancelled by the client
instead leaves its connection to be thrown away)."""
ASYNC_COMMIT = ("off", "local")
"""``synchronous_commit`` values that acknowledge a commit before it is on disk (``off``) or
before a synchronous standby has it (``local``): refused unless ``allow_async_commit``."""
HIGHLIGHT = "\ue000", "\ue001"
"""Private-use characters ``ts_headline`` marks hits with (a text holding one of them is given
``unmarked`` fragments: the marks would be ambiguous)."""
_HEADLINE_OPTIONS = (f'HighlightAll=true, StartSel="{HIGHLIGHT[0]}", '
                     f'StopSel="{HIGHLIGHT[1]}"')

_MESSAGE_COLUMNS = ("seq, user_id, name, client_id, text, ts, reply, mentions, edited, "
                    "reactions, files")
_ENTRY_COLUMNS = f"{_MESSAGE_COLUMNS}, kind, target, detail"
_LIVE = "(text <> '' OR files IS NOT NULL)"


def _insert_sql(config: str) -> str:
    """The INSERT of one entry row, its ``search`` column built with the text search
    configuration ``config`` (a ``postgres_schema.search_config`` name: an identifier)."""
    return ("INSERT INTO entries (room, seq, kind, user_id, name, client_id, text, ts, target, "
            "detail, reply, mentions, files, edited, reactions, changed, search) VALUES "
            "(%(room)s, %(seq)s, %(kind)s, %(user)s, %(name)s, %(client_id)s, %(text)s, "
            "%(ts)s, %(target)s, %(detail)s, %(reply)s::jsonb, %(mentions)s, %(files)s::jsonb, "
            f"%(edited)s, %(reactions)s::jsonb, %(changed)s, CASE WHEN %(kind)s = {MESSAGE} "
            f"AND %(text)s <> '' THEN to_tsvector('{config}', %(text)s) END)")


def _update_sql(config: str) -> str:
    """The UPDATE of a message row's current state, re-indexed with ``config``."""
    return ("UPDATE entries SET text = %(text)s, edited = %(edited)s, "
            "reactions = %(reactions)s::jsonb, reply = %(reply)s::jsonb, "
            "mentions = %(mentions)s, files = %(files)s::jsonb, changed = %(changed)s, "
            f"search = CASE WHEN %(text)s <> '' THEN to_tsvector('{config}', %(text)s) "
            "END WHERE room = %(room)s AND seq = %(seq)s")


Row = dict[str, Any]


def _new_epoch() -> str:
    return secrets.token_hex(8)


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _has_nul(draft: AnyDraft) -> bool:
    texts: list[str | None] = [draft.user, draft.name, draft.id, draft.text]
    texts += [*draft.mentions] if isinstance(draft, Draft) else [draft.emoji]
    return any(t is not None and "\0" in t for t in texts)


def _unstorable(draft: AnyDraft) -> bool:
    """What PostgreSQL cannot store: what no engine can (``unencodable``), and U+0000, which a
    ``text`` column refuses (``rooms.text`` refuses it at the front door for every engine)."""
    return unencodable(draft) or _has_nul(draft)


def _state_columns(m: StoredMessage) -> Row:
    """``m``'s current-state columns (what an update of a message row writes)."""
    return {
        "text": m.text, "edited": m.edited,
        "reactions": _json([[r.emoji, list(r.users)] for r in m.reactions])
        if m.reactions else None,
        "reply": None if m.reply_to is None else _json(
            [m.reply_to.seq, m.reply_to.user, m.reply_to.name, m.reply_to.excerpt]),
        "mentions": list(m.mentions) if m.mentions else None,
        "files": _json(files_to_json(m.files)) if m.files else None,
    }


def _message_row(m: StoredMessage, changed: int | None = None) -> Row:
    return {"room": m.room, "seq": m.seq, "kind": MESSAGE, "user": m.user, "name": m.name,
            "client_id": m.id, "ts": m.ts, "target": None if m.reply_to is None else
            m.reply_to.seq, "detail": None, "changed": changed, **_state_columns(m)}


def _change_row(c: StoredChange, text: str | None = None) -> Row:
    detail: str | None
    if c.action is Action.REACT:
        kind, detail = (REACT_ON if c.on else REACT_OFF), c.emoji
    else:
        kind, detail = _KINDS[c.action], (c.by.value if c.by is not None else None)
    return {"room": c.room, "seq": c.seq, "kind": kind, "user": c.user, "name": c.name,
            "client_id": c.id, "text": c.text if text is None else text, "ts": c.ts,
            "target": c.target, "detail": detail, "reply": None, "mentions": None,
            "files": None, "edited": None, "reactions": None, "changed": None}


def _message(room: str, row: Sequence[Any]) -> StoredMessage:
    """A message from the ``_MESSAGE_COLUMNS`` of its row (jsonb comes back parsed)."""
    seq, user, name, client_id, text, ts, reply, mentions, edited, reactions, files = row[:11]
    return StoredMessage(
        room, seq, user, name, client_id, text, ts,
        None if reply is None else Reply(*reply),
        () if mentions is None else tuple(mentions),
        edited,
        () if reactions is None else tuple(Reaction(emoji, tuple(users))
                                          for emoji, users in reactions),
        () if files is None else files_from_json(files) or ())


def _entry(room: str, row: Sequence[Any]) -> Entry:
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


@dataclass(frozen=True, slots=True)
class _Room:
    """A room's row, locked (``_lock``)."""

    top: int
    low: int
    epoch: str


def _shut_down(conn: AsyncConnection[Any], expired: list[bool]) -> None:
    """Shut ``conn``'s socket down (both ways), so that whatever waits on it fails at once;
    note it in ``expired``. A connection already closed is left alone."""
    expired.append(True)
    try:
        fd = conn.pgconn.socket
    except Exception:  # closed meanwhile (psycopg.OperationalError): nothing waits on it
        return
    # A duplicate of the descriptor: shutdown() acts on the socket all its descriptors share,
    # and closing the duplicate leaves psycopg's own descriptor to psycopg.
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


@asynccontextmanager
async def connection_within(
        pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]], timeout: float,
        expired: list[bool]) -> AsyncIterator[AsyncConnection[tuple[Any, ...]]]:
    """A connection of ``pool`` (waited for up to ``timeout``), whose socket is shut down once
    ``timeout`` seconds have passed since the call (``_shut_down``, noted in ``expired``):
    the deadline of the log's and the bus's calls. A timer rather than a cancellation:
    psycopg answers a cancelled query by asking the server to cancel it and waiting up to
    5 + 5 s for that, which a hung server or a lost network never grants; a socket shut down
    ends the wait at once (the pool then replaces the connection)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    timer: asyncio.TimerHandle | None = None
    try:
        async with pool.connection(timeout=timeout) as conn:
            timer = loop.call_at(deadline, _shut_down, conn, expired)
            yield conn
    finally:
        if timer is not None:
            timer.cancel()


@dataclass(frozen=True, slots=True)
class _Append:
    """One append's arguments (``PostgresLog.append``'s)."""

    room: str
    drafts: list[AnyDraft]
    retention: int
    rules: LogRules
    epoch: str | None
    floor: int


@dataclass(slots=True)
class _Pending:
    """One append waiting for its group, and its caller's future."""

    append: _Append
    future: asyncio.Future[list[Appended] | LogReset]

    @property
    def room(self) -> str:
        return self.append.room


@dataclass(slots=True)
class _Writes:
    """What one append writes (``PostgresLog._plan``), by ``PostgresLog._write`` alone or with
    the other rooms of its group: entry rows, message rows brought up to date, edits of deleted
    messages to blank, the retention cutoff when due, and the room's new counters."""

    room: str
    rows: list[Row]
    updates: list[Row]
    deleted: list[int]
    prune: int | None
    top: int
    low: int


class _Appends:
    """Runs the appends issued in one turn of the event loop, across rooms, as one transaction
    on one pooled connection: one commit (one fsync of PostgreSQL's WAL) for them all.

    ``submit`` queues an append and returns the future of its outcome; the first of a turn
    schedules the flush for the end of that turn (``call_soon``: the rooms woken in this turn
    submit first). A flush takes at most ``most`` appends (``GROUP_MOST``); the rest wait for
    the next turn's flush. Each flush is a task of its own, owned here (``close`` cancels and
    awaits them), so groups overlap on different connections of the pool, like the single
    appends they replace.

    A group of several rooms first goes in bulk (``PostgresLog._append_group``): a few
    statements for all its rooms (their rows locked in one, ``NOWAIT``; one dedup lookup, one
    INSERT of every entry, one counter UPDATE) instead of ~7 per room. Should any statement of
    it fail (a room locked by another group, a constraint, a value PostgreSQL refuses), the
    transaction is rolled back and the group goes again room by room as below, where each
    outcome is found for its own room.

    In a group, the rooms go in order of their names (stable: one room's appends keep the
    order they were issued in), so two groups, of this process or another, lock rooms' rows in
    the same order and never deadlock each other. Room by room, each room's work runs in a
    ``SAVEPOINT``
    (not in a group of one: the transaction is the room's alone): an error of a statement
    (a constraint, ``statement_timeout`` on a lock held elsewhere, a value PostgreSQL refuses)
    rolls back that room's work only and answers its caller alone (``Unstorable`` or
    ``StoreError``); a ``LogReset`` is an outcome like any other (its move past the floor is
    committed). Outcomes are handed out only once the commit returned; a failed commit, a lost
    connection or the group's deadline (``PostgresLog._conn``) answers every caller of the
    group with ``StoreError``. A caller cancelled before its room's turn in the group is left
    out (nothing of it stored); once its work started, it is committed or not with the group.

    Assumed, as on Redis: a room has at most one append in flight (the actor awaits each
    before the next), so the queue holds at most one entry per room with an actor here and
    needs no bound of its own, and no two groups in flight hold appends of one room (they
    would still be correct, serialized by the room's row lock, but in no set order).
    """

    def __init__(self, log: PostgresLog, most: int) -> None:
        self._log = log
        self._most = most
        self._queued: list[_Pending] = []
        self._flushes: set[asyncio.Task[None]] = set()
        # Statistics (tests and bench.storebench read them): groups begun, the appends they
        # ran, and the groups that went room by room after their bulk statements failed.
        self.groups = 0
        self.appends = 0
        self.fallbacks = 0

    def submit(self, append: _Append) -> asyncio.Future[list[Appended] | LogReset]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Appended] | LogReset] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.append(_Pending(append, future))
        return future

    def _flush(self) -> None:
        batch, self._queued = self._queued[:self._most], self._queued[self._most:]
        if self._queued:
            asyncio.get_running_loop().call_soon(self._flush)  # the next turn's group
        batch = [p for p in batch if not p.future.done()]
        if batch:
            task = asyncio.create_task(self._run(batch), name="postgres-appends")
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        """One transaction for ``batch``; every future of it is answered on every path."""
        import psycopg

        self.groups += 1
        self.appends += len(batch)
        batch.sort(key=lambda p: p.room)
        outcomes: list[tuple[_Pending, list[Appended] | LogReset | Exception]] = []
        appends = [p.append for p in batch]
        try:
            async with self._log._conn() as conn:
                if len(batch) == 1:
                    async with conn.pipeline():
                        outcomes.append((batch[0], await self._log._append_one(conn,
                                                                               appends[0])))
                elif len({a.room for a in appends}) < len(appends):
                    await self._contained(conn, batch, outcomes)  # not bulk: see _append_group
                else:
                    try:
                        async with conn.pipeline():
                            found = await self._log._append_group(conn, appends)
                        outcomes += zip(batch, found, strict=True)
                    except Exception as exc:
                        if conn.closed or conn.info.transaction_status not in (
                                psycopg.pq.TransactionStatus.INTRANS,
                                psycopg.pq.TransactionStatus.INERROR):
                            raise
                        if not isinstance(exc, (psycopg.Error, ValueError, OverflowError)):
                            # A bug of the bulk path: room by room still answers every caller.
                            log.exception("PostgreSQL log: a group failed in bulk")
                        await conn.rollback()
                        self.fallbacks += 1
                        await self._contained(conn, batch, outcomes)
        except asyncio.CancelledError:
            _fail(batch, StoreError("store is closed"))
            raise
        except (StoreError, Unstorable) as exc:  # the commit or the connection: every caller's
            _fail(batch, exc)
            return
        for pending, outcome in outcomes:
            if pending.future.done():
                continue
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)

    async def _contained(
            self, conn: AsyncConnection[tuple[Any, ...]], batch: list[_Pending],
            outcomes: list[tuple[_Pending, list[Appended] | LogReset | Exception]]) -> None:
        """Each append of ``batch`` in a savepoint of its own, its outcome added to
        ``outcomes``; a statement's error rolls back to the savepoint and is that append's
        outcome (``StoreError`` or ``Unstorable``). An error that leaves the connection
        unusable (lost, or the rollback itself failing) is raised: the group's.

        In pipeline mode statements go without waiting for their results until one is read:
        the pipeline is synced at the end of each room's work, so that an error is found in
        the room that caused it. After an error the pipeline is left (its exit drains what the
        server skipped) and the rollback and the next rooms go in a new one."""
        import psycopg

        done = 0
        while done < len(batch):
            pending = batch[done]
            try:
                async with conn.pipeline() as pipe:
                    for pending in batch[done:]:
                        if not pending.future.done():  # else: its caller stopped waiting
                            await conn.execute("SAVEPOINT room")
                            outcome = await self._log._append_one(conn, pending.append)
                            await conn.execute("RELEASE SAVEPOINT room")
                            await pipe.sync()
                            outcomes.append((pending, outcome))
                        done += 1
            except (psycopg.Error, ValueError, OverflowError) as exc:
                if conn.closed or conn.info.transaction_status not in (
                        psycopg.pq.TransactionStatus.INTRANS,
                        psycopg.pq.TransactionStatus.INERROR):
                    raise
                await conn.execute("ROLLBACK TO SAVEPOINT room")
                outcomes.append((pending, self._log._failure(exc)))
                done += 1

    async def close(self) -> None:
        """Cancel the groups in flight and wait for them; their callers get ``StoreError``."""
        _fail(self._queued, StoreError("store is closed"))
        self._queued = []
        for task in list(self._flushes):
            task.cancel()
        if self._flushes:
            await asyncio.wait(list(self._flushes))


def _fail(batch: list[_Pending], error: Exception) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)


class AsyncCommitRefused(StoreError):
    """The sessions' ``synchronous_commit`` acknowledges commits PostgreSQL could still lose,
    and ``ROOMCHAT_STORE_ALLOW_ASYNC_COMMIT`` is not set. ``str()`` is one line."""


class PostgresLog:
    """``await PostgresLog.open(url)``; implements ``rooms.engine.Log``. One pool of at most
    ``max_connections`` connections; the schema is migrated on open (``postgres_schema``)."""

    shared = True  # any process may append to any room: the log deduplicates and allocates

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]],
                 timeout: float, on_commit: CommitObserver | None, search_config: str, *,
                 probe_idle: float = PROBE_IDLE,
                 probe_unhealthy: float = PROBE_UNHEALTHY) -> None:
        self._pool = pool
        self._timeout = timeout
        self._on_commit = on_commit
        self._config = search_config
        self._insert = _insert_sql(search_config)
        self._update = _update_sql(search_config)
        self._healthy = True
        self._closed = False
        self._seen: dict[str, int] = {}  # room -> highest seq this process saw stored
        self._appends = _Appends(self, GROUP_MOST)
        self._answered = time.monotonic()  # when PostgreSQL last answered a call
        # Owned here: cancelled and awaited in close().
        self._prober = asyncio.create_task(self._probe(probe_idle, probe_unhealthy),
                                           name="postgres-probe")

    @classmethod
    async def open(cls, url: str, *, max_connections: int = 8, timeout: float = 5.0,
                   on_commit: CommitObserver | None = None,
                   search_language: str = DEFAULT_LANGUAGE, allow_async_commit: bool = False,
                   probe_idle: float = PROBE_IDLE,
                   probe_unhealthy: float = PROBE_UNHEALTHY) -> PostgresLog:
        """Connect, migrate the schema, and return the log. Raises ``StoreError`` (one line)
        when PostgreSQL cannot be reached, its schema is newer than this code
        (``SchemaTooNew``), ``search_language`` is not the language the database's search
        index was built in or not one PostgreSQL has (``SearchLanguageRefused``), or the
        sessions' ``synchronous_commit`` is ``off`` or ``local`` and ``allow_async_commit``
        is false (``AsyncCommitRefused``: an acknowledged message could be lost).

        ``probe_idle`` and ``probe_unhealthy``: seconds between health probes when no call
        answered lately and while unhealthy (``PROBE_IDLE``, ``PROBE_UNHEALTHY``)."""
        try:
            import psycopg
            from psycopg_pool import AsyncConnectionPool, PoolTimeout
        except ImportError:
            raise StoreError("the PostgreSQL log needs psycopg: "
                             "pip install 'roomchat[postgres]'") from None
        ms = max(1, int(timeout * 1000))
        settings = {"connect_timeout": max(1, int(timeout) + 1), "application_name": "roomchat",
                    "options": f"-c statement_timeout={max(1, int(ms * STATEMENT_SHARE))} "
                               f"-c idle_in_transaction_session_timeout={ms * 2}"}
        pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            url, min_size=min(MIN_CONNECTIONS, max_connections), max_size=max_connections,
            open=False, timeout=timeout, kwargs={"autocommit": False, **settings})
        try:
            async with asyncio.timeout(max(timeout, 1) * 3):
                # One connection of its own first: an unreachable server is one line with
                # libpq's reason (the pool would retry in the background and time out).
                async with await psycopg.AsyncConnection.connect(
                        url, autocommit=True, **settings) as conn:  # type: ignore[arg-type]
                    await migrate(conn)
                    config = await use_language(conn, search_language)
                    cursor = await conn.execute("SHOW synchronous_commit")
                    row = await cursor.fetchone()
                    commit = str(row[0]) if row is not None else "on"
                    if commit in ASYNC_COMMIT and not allow_async_commit:
                        raise AsyncCommitRefused(
                            f"PostgreSQL's synchronous_commit is {commit} for roomchat's "
                            "sessions: a message could be acknowledged and then lost; set it to "
                            "on (ALTER ROLE ... SET synchronous_commit = on), or "
                            "ROOMCHAT_STORE_ALLOW_ASYNC_COMMIT=1 to accept that")
                await pool.open(wait=True, timeout=max(timeout, 1) * 3)
        except StoreError:
            await pool.close()
            raise
        except (psycopg.Error, PoolTimeout, OSError, TimeoutError) as exc:
            await pool.close()
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise StoreError(f"cannot reach PostgreSQL: {detail}") from None
        return cls(pool, timeout, on_commit, config, probe_idle=probe_idle,
                   probe_unhealthy=probe_unhealthy)

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    async def _probe(self, idle: float, unhealthy: float) -> None:
        """Forever (until ``close``): ``SELECT 1`` every ``unhealthy`` seconds while the log is
        marked unhealthy, and after ``idle`` seconds in which no call reached PostgreSQL while
        healthy; the answer sets ``healthy`` (the readiness probe and new rooms read it)."""
        probed = 0.0
        while not self._closed:
            raise_if_cancelled()  # a stop that a call lost (rooms.cancelled)
            due = self._answered + idle if self._healthy else probed + unhealthy
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            probed = time.monotonic()
            was = self._healthy
            try:
                await self._rows("SELECT 1", ())
            except StoreError as exc:
                self._healthy = False  # a refusal (too long, pool exhausted) counts too
                if was:
                    log.warning("PostgreSQL does not answer the health probe: %s", exc)
            else:
                if not was:
                    log.info("PostgreSQL answers again")

    # -- the one way in ---------------------------------------------------------------------

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[AsyncConnection[tuple[Any, ...]]]:
        """A pooled connection in a transaction, committed when the block ends (rolled back
        if it raises), within ``timeout`` (``connection_within``); PostgreSQL's failures as
        ``StoreError``. A statement that is merely slow meets ``statement_timeout`` first
        (``STATEMENT_SHARE``), and its connection comes back clean."""
        import psycopg
        from psycopg_pool import PoolTimeout

        if self._closed:
            raise StoreError("store is closed")
        expired: list[bool] = []
        try:
            async with connection_within(self._pool, self._timeout, expired) as conn:
                yield conn
        except (psycopg.Error, ValueError, OverflowError, PoolTimeout, OSError) as exc:
            raise self._failure(exc, bool(expired)) from exc
        self._healthy = True
        self._answered = time.monotonic()

    def _failure(self, exc: Exception, expired: bool = False) -> StoreError | Unstorable:
        """What a call that failed with ``exc`` (psycopg's, the pool's, the socket's, or a value
        psycopg could not adapt) raises: ``Unstorable`` or ``StoreError``, one line. A lost
        connection marks the log unhealthy (the probe finds when it is back)."""
        import psycopg
        from psycopg_pool import PoolTimeout

        if isinstance(exc, (psycopg.DataError, ValueError, OverflowError)):
            return Unstorable((), f"cannot be stored: {exc}")
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return StoreError(f"PostgreSQL call took too long: {exc}")
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout,
                            OSError)):
            self._healthy = False
            if expired:
                return StoreError(f"PostgreSQL did not answer within {self._timeout} s")
        return StoreError(f"PostgreSQL failed: {exc}")

    async def _run(self, fn: Callable[[AsyncConnection[tuple[Any, ...]]], Awaitable[_T]]) -> _T:
        async with self._conn() as conn:
            return await fn(conn)

    async def _rows(self, sql: str,
                    params: Sequence[Any] | dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self._conn() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()

    # -- rooms' rows: the seq counter, the epoch --------------------------------------------

    async def _lock(self, conn: AsyncConnection[tuple[Any, ...]], room: str) -> _Room:
        """The room's row, created if missing, locked until the transaction ends."""
        await conn.execute("INSERT INTO rooms (room, epoch) VALUES (%s, %s) "
                           "ON CONFLICT (room) DO NOTHING", (room, _new_epoch()))
        cursor = await conn.execute("SELECT top, low, epoch FROM rooms WHERE room = %s "
                                    "FOR UPDATE", (room,))
        row = await cursor.fetchone()
        assert row is not None
        return _Room(int(row[0]), int(row[1]), str(row[2]))

    async def _behind(self, conn: AsyncConnection[tuple[Any, ...]], room: str,
                      found: _Room, floor: int) -> _Room:
        """``found`` moved past ``floor`` under a new epoch if its counter is below it (the
        log lost data: a restored backup), else ``found``; the caller commits."""
        if found.top >= floor:
            return found
        moved = _Room(floor, found.low, _new_epoch())
        await conn.execute("UPDATE rooms SET top = %s, epoch = %s WHERE room = %s",
                           (moved.top, moved.epoch, room))
        log.warning("room %r: its log in PostgreSQL ends at %d, below the %d seen stored: "
                    "it goes on after %d under a new epoch", room, found.top, floor, floor)
        return moved

    async def _current(self, conn: AsyncConnection[tuple[Any, ...]], room: str, found: _Room,
                       floor: int, epoch: str | None) -> _Room | LogReset:
        """The locked room an append goes on from, or the ``LogReset`` its caller gets: the
        log was behind ``floor`` (moved past it, ``_behind``) or its epoch is not ``epoch``."""
        now = await self._behind(conn, room, found, floor)
        if now is not found or (epoch is not None and epoch != now.epoch):
            return LogReset(now.epoch, now.top)
        return now

    def _saw(self, room: str, top: int) -> None:
        if top > self._seen.get(room, 0):
            self._seen[room] = top

    # -- appends ----------------------------------------------------------------------------

    async def load(self, room: str, dedup_window: int) -> RoomSnapshot:
        floor = self._seen.get(room, 0)

        async def query(conn: AsyncConnection[tuple[Any, ...]]) -> RoomSnapshot:
            found = await self._lock(conn, room)
            now = await self._behind(conn, room, found, floor)
            cursor = await conn.execute("SELECT min(seq) FROM entries WHERE room = %s", (room,))
            row = await cursor.fetchone()
            oldest = row[0] if row is not None and row[0] is not None else now.top + 1
            ids: list[tuple[str, str, int]] = []
            if dedup_window > 0:
                cursor = await conn.execute(
                    "SELECT user_id, client_id, seq FROM entries WHERE room = %s AND seq > %s "
                    "AND client_id IS NOT NULL ORDER BY seq", (room, now.top - dedup_window))
                ids = [(str(u), str(c), int(s)) for u, c, s in await cursor.fetchall()]
            return RoomSnapshot(last_seq=now.top, oldest_seq=int(oldest), recent_ids=tuple(ids),
                                epoch=now.epoch,
                                resume_floor=floor if now is not found else 0)

        snapshot = await self._run(query)
        self._saw(room, snapshot.last_seq)
        return snapshot

    async def append(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                     dedup_window: int = 0, epoch: str | None = None, floor: int = 0,
                     rules: LogRules = DEFAULT_RULES) -> list[Appended]:
        """As ``Engine.append``: under the room's row lock, in the transaction of the appends
        issued in the same loop turn (``_Appends``: one commit for them all, each room's work
        in a savepoint of its own, so that a failure is its room's alone). Dedup covers the
        whole retained log (at least the ``dedup_window`` the contract asks). Cancelling the
        call before it returns may or may not have stored the batch: appending it again is
        answered with duplicates if it was (drafts with ids). A room appends again only once
        this returned (the room actor awaits each append)."""
        batch = list(drafts)
        if not batch:
            return []
        bad = [index for index, draft in enumerate(batch) if _unstorable(draft)]
        if bad:
            raise Unstorable(bad, "cannot be stored: U+0000, a lone surrogate or an integer "
                             "beyond 64 bits")
        started = time.perf_counter()
        outcome = await self._appends.submit(_Append(room, batch, retention, rules, epoch, floor))
        if isinstance(outcome, LogReset):
            self._saw(room, outcome.top)
            raise outcome
        stored = [r for r in outcome if r.entry is not None]
        if stored:
            self._saw(room, max(r.seq for r in stored))
            if self._on_commit is not None:
                self._on_commit(time.perf_counter() - started, len(stored))
        return outcome

    async def _append_one(self, conn: AsyncConnection[tuple[Any, ...]],
                          a: _Append) -> list[Appended] | LogReset:
        return await self._append(conn, a.room, a.drafts, a.retention, a.rules, epoch=a.epoch,
                                  floor=a.floor)

    async def _append(self, conn: AsyncConnection[tuple[Any, ...]], room: str,
                      drafts: list[AnyDraft], retention: int, rules: LogRules, *,
                      epoch: str | None = None, floor: int = 0,
                      erase: bool = False) -> list[Appended] | LogReset:
        """The append's transaction (the caller commits). A ``LogReset`` is returned, not
        raised, so that the move past ``floor`` is committed before the caller raises it."""
        now = await self._current(conn, room, await self._lock(conn, room), floor, epoch)
        if isinstance(now, LogReset):
            return now
        # The ids already stored, and the targets' current state, read under the lock.
        known = await self._known(conn, [(room, drafts)])
        states = await self._targets(conn, [(room, drafts)])
        results, writes = self._plan(room, drafts, now, known, states.get(room, {}), retention,
                                     rules, erase)
        if writes is not None:
            await self._write(conn, [writes])
        return results

    async def _append_group(self, conn: AsyncConnection[tuple[Any, ...]],
                            appends: list[_Append]) -> list[list[Appended] | LogReset]:
        """``_append`` for several rooms (each once, in order of their names) in a few
        statements for them all: their rows locked in one (``NOWAIT``: a room locked by another
        group raises ``LockNotAvailable``, and ``_Appends`` goes room by room instead), one
        lookup of the ids already stored, one of the targets, then ``_write``. The outcomes are
        ``_append``'s, in ``appends``' order. Raises psycopg's errors (the transaction is then
        to be rolled back)."""
        rooms = [a.room for a in appends]
        await conn.execute("INSERT INTO rooms (room, epoch) SELECT * FROM unnest(%s::text[], "
                           "%s::text[]) ON CONFLICT (room) DO NOTHING",
                           (rooms, [_new_epoch() for _ in rooms]))
        cursor = await conn.execute("SELECT room, top, low, epoch FROM rooms WHERE room = "
                                    "ANY(%s) ORDER BY room FOR UPDATE NOWAIT", (rooms,))
        rows = {str(r): _Room(int(top), int(low), str(e))
                for r, top, low, e in await cursor.fetchall()}
        outcomes: list[list[Appended] | LogReset] = []
        live: list[tuple[int, _Append, _Room]] = []
        for a in appends:
            now = await self._current(conn, a.room, rows[a.room], a.floor, a.epoch)
            if isinstance(now, LogReset):
                outcomes.append(now)
                continue
            live.append((len(outcomes), a, now))
            outcomes.append([])
        batches = [(a.room, a.drafts) for _, a, _ in live]
        known = await self._known(conn, batches)
        states = await self._targets(conn, batches)
        writes: list[_Writes] = []
        for index, a, now in live:
            results, w = self._plan(a.room, a.drafts, now, known, states.get(a.room, {}),
                                    a.retention, a.rules, False)
            outcomes[index] = results
            if w is not None:
                writes.append(w)
        if writes:
            await self._write(conn, writes)
        return outcomes

    async def _known(self, conn: AsyncConnection[tuple[Any, ...]],
                     batches: list[tuple[str, list[AnyDraft]]]) -> dict[tuple[str, str, str], int]:
        """The seqs of the drafts' ids already stored, by ``(room, user, id)``."""
        keyed = [(room, d.user, d.id) for room, drafts in batches for d in drafts
                 if d.id is not None]
        if not keyed:
            return {}
        # LATERAL ... LIMIT 1: one index probe per id, in its room's partition only. A plain
        # join was planned as a hash join over every partition for several rooms, and for one
        # room (a partition not analyzed yet) as a scan of the user's whole history in the
        # room through entries_by_user: 2.9 ms a call over 32,000 entries, growing with it
        # (bench/reports/2026-12-08-postgres-bulk-group.md).
        cursor = await conn.execute(
            "SELECT k.r, k.u, k.c, e.seq FROM unnest(%s::text[], %s::text[], %s::text[]) "
            "AS k(r, u, c) CROSS JOIN LATERAL (SELECT seq FROM entries WHERE room = k.r "
            "AND user_id = k.u AND client_id = k.c LIMIT 1) e",
            ([r for r, _, _ in keyed], [u for _, u, _ in keyed], [c for _, _, c in keyed]))
        return {(r, u, c): int(seq) for r, u, c, seq in await cursor.fetchall()}

    async def _targets(self, conn: AsyncConnection[tuple[Any, ...]],
                       batches: list[tuple[str, list[AnyDraft]]],
                       ) -> dict[str, dict[int, tuple[StoredMessage, int]]]:
        """By room, the current state of the stored messages the drafts' changes and replies
        name, and the seq of each one's last change (its own when it never changed)."""
        wanted = [(room, s) for room, drafts in batches for s in {
            d.target if isinstance(d, ChangeDraft) else d.reply_to for d in drafts
            if isinstance(d, ChangeDraft) or d.reply_to is not None}
            if s is not None and 0 < s <= MAX_STORED_INT]
        if not wanted:
            return {}
        cursor = await conn.execute(  # LATERAL ... LIMIT 1: as in _known (a primary key probe)
            "SELECT e.*, k.r FROM unnest(%s::text[], %s::bigint[]) AS k(r, s) CROSS JOIN "
            f"LATERAL (SELECT {_MESSAGE_COLUMNS}, changed FROM entries WHERE room = k.r "
            f"AND seq = k.s AND kind = {MESSAGE} LIMIT 1) e",
            ([r for r, _ in wanted], [s for _, s in wanted]))
        found: dict[str, dict[int, tuple[StoredMessage, int]]] = {}
        for row in await cursor.fetchall():
            found.setdefault(row[12], {})[row[0]] = (_message(row[12], row), row[11] or row[0])
        return found

    def _plan(self, room: str, drafts: list[AnyDraft], now: _Room,
              known: dict[tuple[str, str, str], int],
              states: dict[int, tuple[StoredMessage, int]], retention: int, rules: LogRules,
              erase: bool) -> tuple[list[Appended], _Writes | None]:
        """What storing ``drafts`` after ``now`` answers, and what it writes (None: nothing);
        ``known`` and ``states`` as ``_known`` and ``_targets`` read them (``states`` is
        updated in place). Pure: no statement."""
        seq = now.top
        results: list[Appended] = []
        rows: list[Row] = []
        changed: dict[int, int] = {}
        deleted: list[int] = []
        for draft in drafts:
            if draft.id is not None:
                seen = known.get((room, draft.user, draft.id))
                if seen is not None:
                    results.append(Appended(seen, duplicate=True))
                    continue
            if isinstance(draft, Draft):
                reply = None
                if draft.reply_to is not None:
                    target = states.get(draft.reply_to)
                    answered = changes.reply(None if target is None else target[0], rules)
                    if isinstance(answered, Refusal):
                        results.append(Appended(0, refused=answered))
                        continue
                    reply = answered
                seq += 1
                message = draft.stored(room, seq, reply)
                rows.append(_message_row(message))
                states[seq] = (message, seq)
                results.append(Appended(seq, entry=message))
            else:
                target = states.get(draft.target)
                if erase and target is not None and target[0].user != draft.user:
                    results.append(Appended(0, refused=Refusal.FORBIDDEN))
                    continue
                outcome = changes.apply(None if target is None else target[0], draft, rules)
                if outcome.refused is not None:
                    results.append(Appended(0, refused=outcome.refused))
                    continue
                if outcome.noop or outcome.message is None or target is None:
                    results.append(Appended(target[1] if target else draft.target, noop=True))
                    continue
                seq += 1
                change = draft.stored(room, seq, DeletedBy.MODERATOR if erase else outcome.by)
                rows.append(_change_row(change))
                states[draft.target] = (outcome.message, seq)
                changed[draft.target] = seq
                if draft.action is Action.DELETE:
                    deleted.append(draft.target)
                results.append(Appended(seq, entry=change))
            if draft.id is not None:
                known[(room, draft.user, draft.id)] = seq  # a second one in the batch: a duplicate
        if not rows:
            return results, None
        # A message stored in this batch and changed by a later draft of it is written by the
        # INSERT with its first state: the UPDATE brings it up to date.
        updates = [{**_state_columns(states[target][0]), "changed": last, "room": room,
                    "seq": target} for target, last in changed.items()]
        cutoff = seq - retention
        # Pruned in steps of ~1% of the retention, as on SQLite: not a DELETE a batch.
        prune = cutoff if retention and cutoff >= now.low + max(1, retention // 100) else None
        return results, _Writes(room, rows, updates, deleted, prune, seq,
                                now.low if prune is None else prune)

    async def _write(self, conn: AsyncConnection[tuple[Any, ...]],
                     writes: list[_Writes]) -> None:
        """Carry out the writes of ``_plan``, of one room or several (under their locks)."""
        async with conn.cursor() as cursor:
            await cursor.executemany(self._insert, [r for w in writes for r in w.rows])
            updates = [u for w in writes for u in w.updates]
            if updates:
                await cursor.executemany(self._update, updates)
            for w in writes:
                if w.deleted:
                    await cursor.execute(
                        f"UPDATE entries SET text = '' WHERE room = %s AND kind = {EDIT} "
                        "AND target = ANY(%s) AND text <> ''", (w.room, w.deleted))
                    await cursor.execute(
                        "UPDATE entries SET reply = jsonb_set(reply, '{3}', '\"\"') WHERE "
                        f"room = %s AND kind = {MESSAGE} AND target = ANY(%s) AND reply IS "
                        "NOT NULL", (w.room, w.deleted))
                if w.prune is not None:
                    await cursor.execute("DELETE FROM entries WHERE room = %s AND seq <= %s",
                                         (w.room, w.prune))
                    await cursor.execute(f"DELETE FROM entries WHERE room = %s AND kind <> "
                                         f"{MESSAGE} AND target <= %s", (w.room, w.prune))
            if len(writes) == 1:
                await cursor.execute("UPDATE rooms SET top = %s, low = %s WHERE room = %s",
                                     (writes[0].top, writes[0].low, writes[0].room))
            else:
                await cursor.execute(
                    "UPDATE rooms SET top = x.top, low = x.low FROM unnest(%s::text[], "
                    "%s::bigint[], %s::bigint[]) AS x(room, top, low) WHERE rooms.room = x.room",
                    ([w.room for w in writes], [w.top for w in writes],
                     [w.low for w in writes]))

    # -- reads ------------------------------------------------------------------------------

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[Entry]:
        if limit <= 0:
            return []
        rows = await self._rows(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE room = %s AND seq > %s AND seq <= %s "
            "ORDER BY seq LIMIT %s", (room, after, min(upto, MAX_STORED_INT), limit))
        return [_entry(room, row) for row in rows]

    async def history(self, room: str, *, after: int = 0, before: int, limit: int,
                      newest: bool = False) -> list[StoredMessage]:
        if limit <= 0:
            return []
        order = "DESC" if newest else "ASC"
        rows = await self._rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM entries WHERE room = %s AND kind = {MESSAGE} "
            f"AND seq > %s AND seq < %s ORDER BY seq {order} LIMIT %s",
            (room, after, min(before, MAX_STORED_INT), limit))
        if newest:
            rows.reverse()
        return [_message(room, row) for row in rows]

    async def search(self, room: str, query: str, *, before: int | None,
                     limit: int) -> SearchPage:
        """As ``rooms.engine.Engine.search``: the room's messages whose ``search`` column
        matches every term (``rooms.search.tsquery_sql``: nothing of ``query`` is ``tsquery``
        syntax), newest first, below ``before``; ``limit + 1`` rows are read, the last only to
        know whether an older page exists. The hits are marked by ``ts_headline`` with the same
        configuration, in the same statement (one snapshot: a message deleted meanwhile is
        found deleted, or not at all)."""
        terms = parse_query(query)
        upper = MAX_STORED_INT if before is None else min(before, MAX_STORED_INT)
        if not terms or limit <= 0 or upper <= 1:
            return SearchPage((), None)
        rows = await self._rows(*self.search_statement(room, terms, upper, limit + 1))
        more = len(rows) > limit
        results = []
        for row in rows[:limit]:
            message = _message(room, row)
            clear = HIGHLIGHT[0] not in message.text and HIGHLIGHT[1] not in message.text
            results.append(Found(message, fragments(row[11], *HIGHLIGHT) if clear
                                 else unmarked(message.text)))
        return SearchPage(tuple(results), results[-1].message.seq if more else None)

    def search_statement(self, room: str, terms: list[Term], before: int,
                         rows: int) -> tuple[str, dict[str, Any]]:
        """``search``'s SQL and parameters: at most ``rows`` messages of ``room`` below
        ``before`` matching every one of ``terms``, newest first, with their texts marked."""
        expression, params = tsquery_sql(terms)
        # The page's rows first (CTE), then ts_headline on those only: it re-parses each text.
        return (f"WITH hits AS MATERIALIZED (SELECT {_MESSAGE_COLUMNS} FROM entries "
                f"WHERE room = %(room)s AND kind = {MESSAGE} AND search @@ ({expression}) "
                "AND seq < %(before)s ORDER BY seq DESC LIMIT %(rows)s) "
                f"SELECT hits.*, ts_headline(%(config)s::regconfig, text, ({expression}), "
                "%(options)s) FROM hits ORDER BY seq DESC",
                {**params, "room": room, "before": before, "rows": rows,
                 "config": self._config, "options": _HEADLINE_OPTIONS})

    async def search_all(self, query: str, *, before: Place | None, limit: int,
                         most: int) -> RoomsPage:
        """As ``rooms.engine.Engine.search_all``, in one statement (one snapshot): the GIN
        index's matches among every partition's messages, at most ``most`` + 1 (their room,
        seq and ts only), counted; the page of them in ``Place`` order (rooms compared in the
        "C" collation, the cursor's, whatever the database's is); then those rows, marked by
        ``ts_headline`` as ``search`` marks them."""
        terms = parse_query(query)
        if not terms or limit <= 0:
            return RoomsPage((), None)
        rows = await self._rows(*self.search_all_statement(terms, before, limit + 1, most))
        if rows and rows[0][0] > most:
            raise SearchTooBroad(most)
        found = [row[1:] for row in rows if row[1] is not None]
        results = []
        for row in found[:limit]:
            message = _message(row[0], row[1:])
            clear = HIGHLIGHT[0] not in message.text and HIGHLIGHT[1] not in message.text
            results.append(Found(message, fragments(row[12], *HIGHLIGHT) if clear
                                 else unmarked(message.text)))
        more = len(found) > limit
        return RoomsPage(tuple(results), Place.of(results[-1].message) if more else None)

    def search_all_statement(self, terms: list[Term], before: Place | None, rows: int,
                             most: int) -> tuple[str, dict[str, Any]]:
        """``search_all``'s SQL and parameters. Its rows: the number of matches read (at most
        ``most`` + 1), then room, the ``_MESSAGE_COLUMNS`` and the marked text of at most
        ``rows`` results; one row of NULLs after the count when none is below ``before``."""
        expression, params = tsquery_sql(terms)
        below = ("" if before is None else
                 'WHERE (ts, room COLLATE "C", seq) < (%(ts)s, %(room)s, %(seq)s)')
        columns = ", ".join(f"e.{name.strip()}" for name in _MESSAGE_COLUMNS.split(","))
        return (f"WITH matched AS MATERIALIZED (SELECT room, seq, ts FROM entries "
                f"WHERE kind = {MESSAGE} AND search @@ ({expression}) LIMIT %(most)s), "
                f"page AS MATERIALIZED (SELECT room, seq, ts FROM matched {below} "
                'ORDER BY ts DESC, room COLLATE "C" DESC, seq DESC LIMIT %(rows)s) '
                f"SELECT (SELECT count(*) FROM matched), e.room, {columns}, "
                f"ts_headline(%(config)s::regconfig, e.text, ({expression}), %(options)s) "
                "FROM (SELECT 1) AS one LEFT JOIN page p ON true "
                "LEFT JOIN entries e ON e.room = p.room AND e.seq = p.seq "
                'ORDER BY p.ts DESC, p.room COLLATE "C" DESC, p.seq DESC',
                {**params, "most": most + 1, "rows": rows, "config": self._config,
                 "options": _HEADLINE_OPTIONS,
                 **({} if before is None else
                    {"ts": before.ts, "room": before.room, "seq": before.seq})})

    async def top(self, room: str) -> int:
        rows = await self._rows("SELECT top FROM rooms WHERE room = %s", (room,))
        top = int(rows[0][0]) if rows else 0
        self._saw(room, top)
        return top

    async def state(self, room: str, floor: int, members: Iterable[str]) -> LogState:
        users = list(members)
        now = time.time()

        async def query(conn: AsyncConnection[tuple[Any, ...]]) -> LogState:
            cursor = await conn.execute("SELECT top, low, epoch FROM rooms WHERE room = %s",
                                        (room,))
            row = await cursor.fetchone()
            if row is None or int(row[0]) < floor:  # absent, or behind: under the lock
                found = await self._lock(conn, room)
                current = await self._behind(conn, room, found, floor)
            else:
                current = _Room(int(row[0]), int(row[1]), str(row[2]))
            banned: tuple[tuple[str, str], ...] = ()
            if users:
                cursor = await conn.execute(
                    "SELECT user_id, reason FROM bans WHERE room = %s AND user_id = ANY(%s) "
                    "AND (until IS NULL OR until > %s) ORDER BY user_id", (room, users, now))
                banned = tuple((str(u), str(r)) for u, r in await cursor.fetchall())
            return LogState(current.top, current.epoch, banned)

        state = await self._run(query)
        self._saw(room, state.top)
        return state

    async def unread(self, room: str, user: str, *, scan: int) -> Unread:
        async def query(conn: AsyncConnection[tuple[Any, ...]]) -> Unread:
            cursor = await conn.execute("SELECT seq FROM reads WHERE room = %s AND user_id = %s",
                                        (room, user))
            row = await cursor.fetchone()
            read = int(row[0]) if row is not None else 0
            if not read or scan <= 0:
                return Unread(read)
            cursor = await conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE user_id <> %(u)s), "
                "count(*) FILTER (WHERE user_id <> %(u)s AND %(u)s = ANY(mentions)) "
                "FROM (SELECT user_id, mentions FROM entries WHERE room = %(r)s "
                f"AND kind = {MESSAGE} AND seq > %(read)s AND {_LIVE} "
                "ORDER BY seq DESC LIMIT %(scan)s) AS recent",
                {"u": user, "r": room, "read": read, "scan": scan})
            counted = await cursor.fetchone()
            assert counted is not None
            scanned, unread, mentions = (int(n) for n in counted)
            return Unread(read, unread, mentions, capped=scanned >= scan)

        return await self._run(query)

    # -- markers, bans, tickets, revocations ------------------------------------------------

    async def mark_read(self, room: str, user: str, seq: int) -> tuple[int, bool]:
        async def query(conn: AsyncConnection[tuple[Any, ...]]) -> tuple[int, bool]:
            cursor = await conn.execute(
                "INSERT INTO reads (room, user_id, seq) VALUES (%s, %s, %s) "
                "ON CONFLICT (room, user_id) DO UPDATE SET seq = EXCLUDED.seq "
                "WHERE reads.seq < EXCLUDED.seq RETURNING seq", (room, user, seq))
            row = await cursor.fetchone()
            if row is not None:
                return int(row[0]), True
            cursor = await conn.execute("SELECT seq FROM reads WHERE room = %s AND user_id = %s",
                                        (room, user))
            row = await cursor.fetchone()
            return (int(row[0]) if row is not None else seq), False

        return await self._run(query)

    async def markers(self, user: str) -> dict[str, int]:
        rows = await self._rows("SELECT room, seq FROM reads WHERE user_id = %s ORDER BY room",
                                (user,))
        return {str(room): int(seq) for room, seq in rows}

    async def ban(self, room: str, ban: Ban) -> None:
        await self._rows(
            "INSERT INTO bans (room, user_id, until, reason) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (room, user_id) DO UPDATE SET until = EXCLUDED.until, "
            "reason = EXCLUDED.reason RETURNING 1", (room, ban.user, ban.until, ban.reason))

    async def unban(self, room: str, user: str) -> bool:
        return bool(await self._rows(
            "DELETE FROM bans WHERE room = %s AND user_id = %s AND (until IS NULL OR until > %s)"
            " RETURNING 1", (room, user, time.time())))

    async def banned(self, room: str, user: str) -> Ban | None:
        # No cache: other processes write bans.
        rows = await self._rows(
            "SELECT until, reason FROM bans WHERE room = %s AND user_id = %s "
            "AND (until IS NULL OR until > %s)", (room, user, time.time()))
        return Ban(user, rows[0][0], str(rows[0][1])) if rows else None

    async def stash(self, key: str, value: bytes, ttl: float) -> None:
        now = time.time()

        async def query(conn: AsyncConnection[tuple[Any, ...]]) -> None:
            # Expired tickets go a bounded handful at a time: the table stays small by use.
            await conn.execute("DELETE FROM stash WHERE ctid = ANY(ARRAY(SELECT ctid FROM stash "
                               "WHERE expires <= %s LIMIT 100))", (now,))
            await conn.execute("INSERT INTO stash (key, value, expires) VALUES (%s, %s, %s) "
                               "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, "
                               "expires = EXCLUDED.expires", (key, value, now + ttl))

        await self._run(query)

    async def take(self, key: str) -> bytes | None:
        # The row lock makes exactly one of concurrent takers get it, in any process.
        rows = await self._rows("DELETE FROM stash WHERE key = %s RETURNING value, expires",
                                (key,))
        return bytes(rows[0][0]) if rows and rows[0][1] > time.time() else None

    async def revoke(self, user: str, at: float) -> None:
        await self._rows(
            "INSERT INTO revocations (user_id, at) VALUES (%s, %s) ON CONFLICT (user_id) "
            "DO UPDATE SET at = GREATEST(revocations.at, EXCLUDED.at) RETURNING 1", (user, at))

    async def revocations(self, since: float) -> list[tuple[str, float]]:
        rows = await self._rows("SELECT user_id, at FROM revocations WHERE at > %s ORDER BY at",
                                (since,))
        return [(str(user), float(at)) for user, at in rows]

    # -- erasure ------------------------------------------------------------------------------

    async def erase(self, user: str, step: ErasedStep) -> dict[str, list[int]]:
        """As ``Engine.erase`` (the SQLite store's steps: ``rooms.engines.sqlite``): the user's
        rooms found through ``entries_by_user``; per room, its deletes appended through the
        append's own transaction (rules, lock, seqs), then the take-backs of their reactions,
        in steps of ``ERASE_STEP`` entries, round robin with ``ERASE_PAUSE`` between rounds;
        then their earlier reaction rows leave the log. Last, ``VACUUM`` of the partitions
        touched: the old row versions holding the texts leave the heap and the indexes
        (their bytes may stay in free space until reused: docs/design/log-and-bus.md,
        section 4)."""
        rows = await self._rows(
            "SELECT room, seq, name, kind, target, detail FROM entries WHERE user_id = %s AND "
            f"(kind = {MESSAGE} AND {_LIVE} OR kind IN ({REACT_ON}, {REACT_OFF}) "
            "AND text <> %s) ORDER BY room, seq", (user, TAKEN_BACK))
        found: dict[str, tuple[list[tuple[int, str]], dict[tuple[int, str], str], int]] = {}
        for room, seq, name, kind, target, emoji in rows:
            deletes, pairs, _ = found.setdefault(room, ([], {}, 0))
            if kind == MESSAGE:
                deletes.append((seq, name))
            else:
                pairs[(target, emoji or "")] = name
                found[room] = (deletes, pairs, seq)
        size = contract.ERASE_STEP
        steps: dict[str, list[tuple[list[Any], bool]]] = {}
        for room, (deletes, pairs, _) in found.items():
            backs = [(target, emoji, name) for (target, emoji), name in pairs.items()]
            steps[room] = [(deletes[i:i + size], True) for i in range(0, len(deletes), size)]
            steps[room] += [(backs[i:i + size], False) for i in range(0, len(backs), size)]
        done: dict[str, list[int]] = {}
        for index in range(max(map(len, steps.values()), default=0)):
            told = False
            for room, room_steps in steps.items():
                if index >= len(room_steps):
                    continue
                now = int(time.time() * 1000)
                work, deleting = room_steps[index]
                entries: list[StoredChange]
                if deleting:
                    drafts: list[AnyDraft] = [
                        ChangeDraft(user, name, None, now, Action.DELETE, seq, moderator=True)
                        for seq, name in work]
                    results = await self._run(functools.partial(
                        self._append, room=room, drafts=drafts, retention=0,
                        rules=DEFAULT_RULES, erase=True))
                    assert not isinstance(results, LogReset)  # no epoch nor floor given
                    entries = [r.entry for r in results if isinstance(r.entry, StoredChange)]
                    done.setdefault(room, []).extend(e.target for e in entries)
                else:
                    entries = await self._run(functools.partial(
                        self._take_back, room=room, user=user, pairs=work, now=now))
                if entries:
                    self._saw(room, entries[-1].seq)
                    step(room, entries)
                    told = told or index + 1 < len(room_steps)
            if told:
                await asyncio.sleep(contract.ERASE_PAUSE)
        for room, (_, _, last) in found.items():
            if last:
                await self._rows(
                    f"DELETE FROM entries WHERE room = %(r)s AND user_id = %(u)s AND kind IN "
                    f"({REACT_ON}, {REACT_OFF}) AND text <> %(t)s AND seq <= %(last)s AND "
                    "seq < (SELECT top FROM rooms WHERE room = %(r)s) RETURNING 1",
                    {"r": room, "u": user, "t": TAKEN_BACK, "last": last})
        if found:
            await self._vacuum(list(found))
        return done

    async def _take_back(self, conn: AsyncConnection[tuple[Any, ...]], room: str, user: str,
                         pairs: list[tuple[int, str, str]], now: int) -> list[StoredChange]:
        """A react-off entry from ``user`` for each ``(target, emoji, name)`` whose target is
        a message not deleted (whether or not the reaction is on now: the rows that said so
        are about to go), the reaction taken off the target; in the caller's transaction,
        under the room's lock."""
        found = await self._lock(conn, room)
        states = (await self._targets(conn, [(room, [
            ChangeDraft(user, name, None, now, Action.REACT, target, emoji=emoji)
            for target, emoji, name in pairs])])).get(room, {})
        seq = found.top
        appended: list[StoredChange] = []
        rows: list[Row] = []
        updates: dict[int, tuple[StoredMessage, int]] = {}
        for target, emoji, name in pairs:
            state = states.get(target)
            if state is None or state[0].deleted:
                continue  # a tombstone has no reactions to take back
            seq += 1
            change = ChangeDraft(user, name, None, now, Action.REACT, target,
                                 emoji=emoji).stored(room, seq)
            rows.append(_change_row(change, TAKEN_BACK))
            states[target] = updates[target] = (changes.fold(state[0], change), seq)
            appended.append(change)
        if rows:
            async with conn.cursor() as cursor:
                await cursor.executemany(self._insert, rows)
                await cursor.executemany(self._update, [
                    {**_state_columns(message), "changed": last, "room": room, "seq": target}
                    for target, (message, last) in updates.items()])
                await cursor.execute("UPDATE rooms SET top = %s WHERE room = %s", (seq, room))
        return appended

    async def _vacuum(self, rooms: list[str]) -> None:
        """``VACUUM`` the partitions holding ``rooms`` (outside a transaction: its own
        connection in autocommit). Best effort: a failure is logged, the erasure stands."""
        import psycopg

        try:
            async with self._conn() as conn:
                cursor = await conn.execute(
                    "SELECT DISTINCT tableoid::regclass::text FROM entries WHERE room = ANY(%s)",
                    (rooms,))
                partitions = [str(name) for (name,) in await cursor.fetchall()]
                await conn.commit()
                await conn.set_autocommit(True)
                try:
                    for name in partitions:
                        await conn.execute(psycopg.sql.SQL(
                            "VACUUM (INDEX_CLEANUP ON) {}").format(psycopg.sql.Identifier(name)))
                finally:
                    await conn.set_autocommit(False)
        except StoreError as exc:
            log.warning("erasure: VACUUM of the rooms' partitions failed (%s); the erased "
                        "texts are unreachable, their old row versions go at the next "
                        "autovacuum", exc)

    async def compact(self, rooms: Iterable[str]) -> list[str]:
        """After an erasure: ``VACUUM FULL`` of the partitions of ``entries`` holding ``rooms``
        (each rewritten: the old row versions' bytes, in the heap, its TOAST table and its
        indexes, leave the files), then ``CHECKPOINT`` (the old files are unlinked) and
        ``pg_switch_wal()`` (the WAL segment being written, which holds the erased texts, is
        closed so that later checkpoints recycle it). Returns the partitions rewritten.

        A maintenance step (docs/design/log-and-bus.md, section 4): each partition is locked
        while it is rewritten (~1/16 of the data), so appends to its rooms wait, and it is not
        bounded by the store timeout (its own connection, no ``statement_timeout``). Needs a
        role that may run ``CHECKPOINT`` (PostgreSQL 15: superuser or ``pg_checkpoint``).
        Raises ``StoreError``."""
        import psycopg
        from psycopg import sql

        wanted = sorted(set(rooms))
        if not wanted:
            return []
        url = self._pool.conninfo
        assert isinstance(url, str)  # open() gives the pool the URL itself
        try:
            async with await psycopg.AsyncConnection.connect(
                    url, autocommit=True, application_name="roomchat",
                    options="-c statement_timeout=0") as conn:
                cursor = await conn.execute(
                    "SELECT DISTINCT tableoid::regclass::text FROM entries WHERE room = ANY(%s) "
                    "ORDER BY 1", (wanted,))
                partitions = [str(name) for (name,) in await cursor.fetchall()]
                for name in partitions:
                    await conn.execute(sql.SQL("VACUUM FULL {}").format(sql.Identifier(name)))
                await conn.execute("CHECKPOINT")
                await conn.execute("SELECT pg_switch_wal()")
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL failed to compact: {exc}") from exc
        return partitions

    # -- moving between engines ---------------------------------------------------------------

    async def rooms(self) -> list[str]:
        rows = await self._rows("SELECT room FROM rooms WHERE EXISTS (SELECT 1 FROM entries e "
                                "WHERE e.room = rooms.room) ORDER BY room", ())
        return [str(room) for (room,) in rows]

    async def log_epoch(self, room: str) -> str | None:
        rows = await self._rows("SELECT epoch FROM rooms WHERE room = %s", (room,))
        return str(rows[0][0]) if rows else None

    async def importable(self, room: str) -> bool:
        """Whether ``import_entries`` would take ``room``: nothing stored and its counter at 0,
        or only what an import that did not finish left."""
        rows = await self._rows(
            "SELECT EXISTS (SELECT 1 FROM imports WHERE room = %(r)s) OR ("
            "NOT EXISTS (SELECT 1 FROM entries WHERE room = %(r)s) AND "
            "coalesce((SELECT top FROM rooms WHERE room = %(r)s), 0) = 0)", {"r": room})
        return bool(rows[0][0])

    async def import_entries(self, room: str, entries: Sequence[Entry], *, top: int,
                             epoch: str | None = None, dedup_window: int = 0,
                             progress: Callable[[int], object] | None = None) -> bool:
        """Write ``entries`` (a room's log as ``read`` gives it, oldest first) into the empty
        log of ``room`` at their seqs, as they are (no rule checked again), in steps of
        ``IMPORT_STEP`` entries a transaction (``progress(n)`` after each), between an
        ``imports`` row written first and removed last with the room's counter (``top``)
        and epoch (``epoch``, or a new one): an import that stops half way is found by
        ``importable`` and redone. Epochs are per room here, so the room always keeps its
        export's: returns True when ``epoch`` was given. Stop the server first. Raises
        ``RoomNotEmpty`` (nothing written), ``Unstorable`` (U+0000 in a text: nothing more
        written; the room stays importable), ``StoreError``."""
        last_change: dict[int, int] = {}
        for entry in entries:
            if isinstance(entry, StoredChange):
                last_change[entry.target] = entry.seq

        async def begin(conn: AsyncConnection[tuple[Any, ...]]) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (room,))
            cursor = await conn.execute("SELECT 1 FROM imports WHERE room = %s", (room,))
            if await cursor.fetchone() is not None:
                await conn.execute("DELETE FROM entries WHERE room = %s", (room,))
            else:
                cursor = await conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM entries WHERE room = %(r)s) OR "
                    "coalesce((SELECT top FROM rooms WHERE room = %(r)s), 0) > 0", {"r": room})
                row = await cursor.fetchone()
                if row is not None and row[0]:
                    raise RoomNotEmpty(f"room {room!r} already has entries")
                await conn.execute("INSERT INTO imports (room) VALUES (%s)", (room,))

        async def write(conn: AsyncConnection[tuple[Any, ...]], rows: list[Row]) -> None:
            async with conn.cursor() as cursor:
                await cursor.executemany(self._insert, rows)

        async def end(conn: AsyncConnection[tuple[Any, ...]]) -> None:
            kept = epoch or _new_epoch()
            await conn.execute("INSERT INTO rooms (room, top, epoch) VALUES (%s, %s, %s) "
                               "ON CONFLICT (room) DO UPDATE SET top = EXCLUDED.top, low = 0, "
                               "epoch = EXCLUDED.epoch", (room, top, kept))
            await conn.execute("DELETE FROM imports WHERE room = %s", (room,))

        await self._run(begin)
        for start in range(0, len(entries), IMPORT_STEP):
            chunk = entries[start:start + IMPORT_STEP]
            rows = [_message_row(e, last_change.get(e.seq)) if isinstance(e, StoredMessage)
                    else _change_row(e) for e in chunk]
            await self._run(functools.partial(write, rows=rows))
            if progress is not None:
                progress(len(chunk))
        top = max(top, *(e.seq for e in entries[-1:]), 0)
        await self._run(end)
        self._saw(room, top)
        return epoch is not None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._prober.cancel()
        try:
            await self._appends.close()
            await asyncio.wait([self._prober])  # its end; a cancellation of close() goes on up
        finally:
            await self._pool.close()


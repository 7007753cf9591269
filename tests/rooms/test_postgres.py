"""What is the PostgreSQL log's own (the engine contract runs on it in test_engine.py): its
versioned schema, many processes appending to one room, values PostgreSQL cannot hold, and the
start-up refusals. A real PostgreSQL, one per test session (tests/postgres_server.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import psycopg
import pytest

from rooms.engine import Engine
from rooms.engines import POSTGRES_MAX_CONNECTIONS, open_engine
from rooms.engines.postgres import GROUP_MOST, AsyncCommitRefused, PostgresLog
from rooms.engines.postgres_schema import (
    LATEST,
    MIGRATIONS,
    SchemaTooNew,
    SearchLanguageRefused,
    migrate,
    version,
)
from rooms.engines.split import SplitEngine
from rooms.errors import LogReset, StoreError, Unstorable
from rooms.messages import Action, Appended, ChangeDraft, Draft, Refusal
from tests.postgres_server import PostgresServer
from tests.support import REPO, SECRET, SLOW, free_port, until

TABLES = {"schema_version", "meta", "rooms", "entries", "reads", "bans", "stash", "revocations",
          "imports"}


@pytest.fixture
def empty_url(postgres_cluster: PostgresServer) -> Iterator[str]:
    """A database with nothing in it (not even roomchat's schema)."""
    with postgres_cluster.fresh() as url:
        yield url


async def tables(url: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {str(name) for (name,) in await cursor.fetchall()}


async def test_the_schema_is_applied_from_empty_once(empty_url: str) -> None:
    """Every step from an empty database, each in its own transaction; opening again (or two
    processes at once, under the advisory lock) applies nothing more."""
    assert await tables(empty_url) == set()
    async with await psycopg.AsyncConnection.connect(empty_url, autocommit=True) as conn:
        assert await version(conn) == 0
        assert await migrate(conn) == [number for number, _ in MIGRATIONS]
        assert await version(conn) == LATEST
        assert await migrate(conn) == []
    found = await tables(empty_url)
    assert found >= TABLES
    assert {f"entries_p{i}" for i in range(16)} <= found
    # Two processes starting together: one applies, the other finds it done.
    async with await psycopg.AsyncConnection.connect(empty_url, autocommit=True) as a, \
            await psycopg.AsyncConnection.connect(empty_url, autocommit=True) as b:
        assert list(await asyncio.gather(migrate(a), migrate(b))) == [[], []]


async def test_two_processes_migrating_an_empty_database_together_apply_it_once(
        empty_url: str) -> None:
    a, b = await asyncio.gather(PostgresLog.open(empty_url), PostgresLog.open(empty_url))
    try:
        async with await psycopg.AsyncConnection.connect(empty_url) as conn:
            cursor = await conn.execute("SELECT count(*) FROM schema_version")
            assert await cursor.fetchone() == (1,)
            assert await version(conn) == LATEST
    finally:
        await a.close()
        await b.close()


async def test_a_failing_step_leaves_nothing(empty_url: str) -> None:
    broken = (*MIGRATIONS, (LATEST + 1, "CREATE TABLE half (x int); SELECT no_such_function()"))
    async with await psycopg.AsyncConnection.connect(empty_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedFunction):
            await migrate(conn, broken)
        assert await version(conn) == LATEST  # the steps before it stay
    assert "half" not in await tables(empty_url)


async def test_a_newer_schema_is_refused_in_one_line(postgres_url: str, tmp_path: Path) -> None:
    """A database migrated by a newer roomchat: opening refuses with one line naming both
    versions, and ``roomchat serve`` exits 2 with it (no traceback), changing nothing."""
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("UPDATE schema_version SET version = %s", (LATEST + 1,))
    with pytest.raises(SchemaTooNew) as refused:
        await PostgresLog.open(postgres_url)
    assert str(refused.value) == (
        f"the PostgreSQL database's schema is version {LATEST + 1}; this roomchat knows up to "
        f"{LATEST}: upgrade roomchat (or point ROOMCHAT_STORE_URL at another database)")
    done = serve_check(tmp_path, postgres_url)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"schema is version {LATEST + 1}; this roomchat knows up to {LATEST}" in done.stderr
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        assert await version(conn) == LATEST + 1


def serve_check(tmp: Path, url: str, *args: str,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_")}
    environ.update(PYTHONPATH=str(REPO), ROOMCHAT_JWT_SECRET=SECRET, ROOMCHAT_STORE_URL=url,
                   **(env or {}))
    return subprocess.run([sys.executable, "-m", "gateway", "serve", "--check", "--bind",
                           f"127.0.0.1:{free_port()}", *args], cwd=tmp, capture_output=True,
                          text=True, timeout=60, env=environ, check=False)


def test_serve_checks_postgres_and_refuses_workers_without_a_bus(postgres_url: str,
                                                                 tmp_path: Path) -> None:
    done = serve_check(tmp_path, postgres_url)
    assert (done.returncode, done.stderr) == (0, "")
    assert "ready to serve" in done.stdout and "postgresql://" in done.stdout
    done = serve_check(tmp_path, postgres_url, "--workers", "2")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and "run one worker" in done.stderr
    assert "ROOMCHAT_BUS_URL" in done.stderr
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    done = serve_check(tmp_path, unreachable)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and "cannot reach PostgreSQL" in done.stderr


async def test_engines_on_one_database_append_to_one_room_without_gaps(
        postgres_url: str) -> None:
    """Two processes' engines (and several rooms' worth of concurrent calls each) appending to
    one room: seqs 1..N, each once, in the order each caller sent; a retried id answered as a
    duplicate by the other engine."""
    a, b = await open_engine(postgres_url), await open_engine(postgres_url)
    try:
        async def writer(engine: Engine, who: str) -> list[int]:
            seqs: list[int] = []
            for i in range(20):
                batch = [Draft(who, who, f"{who}{i}-{j}", f"{who} {i} {j}", i) for j in range(3)]
                seqs += [r.seq for r in await engine.append(
                    "shared", batch, retention=0, dedup_window=100)]
            return seqs

        got = await asyncio.gather(writer(a, "ann"), writer(b, "bob"), writer(a, "cy"),
                                   writer(b, "dee"))
        every = sorted(s for seqs in got for s in seqs)
        assert every == list(range(1, 241))
        assert all(seqs == sorted(seqs) for seqs in got)
        assert await a.top("shared") == await b.top("shared") == 240
        log = await b.read("shared", 0, 1000, 1000)
        assert [e.seq for e in log] == every
        again = await b.append("shared", [Draft("ann", "ann", "ann0-1", "ann 0 1", 0)],
                               retention=0, dedup_window=100)
        assert again == [Appended(got[0][1], duplicate=True)]
    finally:
        await a.close()
        await b.close()


async def test_u0000_is_unstorable_and_fails_its_append_alone(postgres_url: str) -> None:
    """PostgreSQL's ``text`` cannot hold U+0000 (``rooms.text`` refuses it at the front door):
    a draft with it is ``Unstorable`` by its index before any SQL, nothing of its batch is
    stored, and a ban reason with it is ``Unstorable`` too."""
    from rooms.engine import Ban

    engine = await open_engine(postgres_url)
    try:
        batch = [Draft("u", "U", "a", "fine", 1), Draft("u", "U", "b", "nul \x00 here", 2),
                 Draft("u", "N\x00", "c", "fine", 3)]
        with pytest.raises(Unstorable) as refused:
            await engine.append("r", batch, retention=0, dedup_window=10)
        assert refused.value.indexes == (1, 2)
        assert await engine.top("r") == 0
        assert await engine.append("r", batch[:1], retention=0, dedup_window=10) == [
            Appended(1)]
        with pytest.raises(Unstorable):
            await engine.ban("r", Ban("eve", None, "spam\x00"))
        assert await engine.banned("r", "eve") is None
    finally:
        await engine.close()


# -- the search language ----------------------------------------------------------------------

async def test_the_search_language_is_fixed_by_the_first_start(postgres_url: str,
                                                               tmp_path: Path) -> None:
    """An empty database takes the language of the first start (``english``: stems and stop
    words, accents still ignored); starting later with another is refused in one line naming
    the one to set, by ``open`` and by ``serve`` (exit 2), and nothing changes."""
    engine = await open_engine(postgres_url, search_language="english")
    try:
        await engine.append("r", [Draft("u", "U", None, "The deployments were deployed at the "
                                        "Café", 1)], retention=0, dedup_window=0)
        for query in ("deploying", "DEPLOY*", "cafe", '"deployed at the café"'):
            page = await engine.search("r", query, before=None, limit=5)
            assert [f.message.seq for f in page.results] == [1], query
        assert (await engine.search("r", "the", before=None, limit=5)).results == ()
    finally:
        await engine.close()
    line = ("ROOMCHAT_SEARCH_LANGUAGE is simple, but this database's search index was built "
            "with english: set ROOMCHAT_SEARCH_LANGUAGE=english (this version cannot rebuild "
            "the index in another language)")
    with pytest.raises(SearchLanguageRefused) as refused:
        await open_engine(postgres_url)
    assert str(refused.value) == line
    done = serve_check(tmp_path, postgres_url)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and line in done.stderr
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cursor = await conn.execute("SELECT value FROM meta WHERE key = 'search_language'")
        assert await cursor.fetchone() == ("english",)


async def test_a_language_postgres_lacks_is_refused_naming_those_it_has(
        postgres_url: str) -> None:
    with pytest.raises(SearchLanguageRefused) as refused:
        await PostgresLog.open(postgres_url, search_language="klingon")
    assert str(refused.value).startswith(
        "ROOMCHAT_SEARCH_LANGUAGE is klingon, a text search configuration this PostgreSQL does "
        "not have: use one of arabic, ")
    assert ", english, " in str(refused.value) and "roomchat_" not in str(refused.value)
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cursor = await conn.execute("SELECT count(*) FROM meta")
        assert await cursor.fetchone() == (0,)  # nothing recorded: the next start chooses
    log = await PostgresLog.open(postgres_url, search_language="german")
    await log.close()


async def test_a_version_1_database_holding_messages_keeps_simple(postgres_url: str) -> None:
    """Version 1 indexed with ``simple`` and recorded nothing: the step to version 2 records it
    when messages are there, so a start with another language is refused, not silently
    searching a ``simple`` index with ``english`` queries."""
    engine = await open_engine(postgres_url)
    await engine.append("r", [Draft("u", "U", None, "running", 1)], retention=0, dedup_window=0)
    await engine.close()
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("DELETE FROM meta")  # as version 1 left it
        await conn.execute("UPDATE schema_version SET version = 1")
    with pytest.raises(SearchLanguageRefused) as refused:
        await open_engine(postgres_url, search_language="english")
    assert "built with simple: set ROOMCHAT_SEARCH_LANGUAGE=simple" in str(refused.value)
    engine = await open_engine(postgres_url)
    try:
        page = await engine.search("r", "running", before=None, limit=5)
        assert [f.message.seq for f in page.results] == [1]
    finally:
        await engine.close()


# -- durability, health, timeouts, failures ---------------------------------------------------

async def set_database(url: str, setting: str, value: str | None) -> None:
    """``ALTER DATABASE <url's> SET setting = value`` (``RESET`` when None): the sessions
    opened after it take it."""
    name = url.rsplit("/", 1)[1]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        if value is None:
            await conn.execute(f"ALTER DATABASE {name} RESET {setting}")
        else:
            await conn.execute(f"ALTER DATABASE {name} SET {setting} = {value}")


@pytest.mark.parametrize("commit", ["off", "local"])
async def test_an_asynchronous_commit_is_refused_unless_allowed(postgres_url: str,
                                                                tmp_path: Path,
                                                                commit: str) -> None:
    """``synchronous_commit`` ``off`` (an acknowledged commit may be lost in a crash) or
    ``local`` (in a failover) for roomchat's sessions: refused in one line naming the
    setting that accepts it, by ``open`` and ``serve`` (exit 2); accepted with it."""
    await set_database(postgres_url, "synchronous_commit", commit)
    with pytest.raises(AsyncCommitRefused) as refused:
        await PostgresLog.open(postgres_url)
    assert str(refused.value) == (
        f"PostgreSQL's synchronous_commit is {commit} for roomchat's sessions: a message could "
        "be acknowledged and then lost; set it to on (ALTER ROLE ... SET synchronous_commit = "
        "on), or ROOMCHAT_STORE_ALLOW_ASYNC_COMMIT=1 to accept that")
    done = serve_check(tmp_path, postgres_url)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and "ROOMCHAT_STORE_ALLOW_ASYNC_COMMIT=1" in done.stderr
    done = serve_check(tmp_path, postgres_url, env={"ROOMCHAT_STORE_ALLOW_ASYNC_COMMIT": "1"})
    assert (done.returncode, done.stderr) == (0, "")
    engine = await open_engine(postgres_url, allow_async_commit=True)
    try:
        assert await engine.append("r", [Draft("u", "U", "a", "hi", 1)], retention=0,
                                   dedup_window=10) == [Appended(1)]
    finally:
        await engine.close()
    await set_database(postgres_url, "synchronous_commit", "remote_write")  # on, without a standby
    log = await PostgresLog.open(postgres_url)
    await log.close()


async def admin(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """``sql`` run from the ``postgres`` database of ``url``'s server (not ``url``'s own: it
    may refuse connections, or be the one to alter)."""
    server = url.rsplit("/", 1)[0]
    async with await psycopg.AsyncConnection.connect(f"{server}/postgres",
                                                     autocommit=True) as conn:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall() if cursor.description else []


async def terminate_roomchat(url: str, wait_event: str | None = None) -> int:
    """Terminate the log's backends on ``url``'s database (those waiting on ``wait_event``
    only, when given); how many."""
    name = url.rsplit("/", 1)[1]
    rows = await admin(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                            "datname = %s AND application_name = 'roomchat' AND "
                            "(%s::text IS NULL OR wait_event = %s)", (name, wait_event, wait_event))
    return len(rows)


async def test_the_probe_finds_postgres_gone_and_back_while_idle(postgres_url: str) -> None:
    """With no call made, ``healthy`` turns false when PostgreSQL stops taking the log's
    connections and true again when it takes them: the ``SELECT 1`` probe's doing."""
    name = postgres_url.rsplit("/", 1)[1]
    log = await PostgresLog.open(postgres_url, max_connections=1, timeout=1.0,
                                 probe_idle=0.1, probe_unhealthy=0.1)
    try:
        assert log.healthy
        await admin(postgres_url, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        await terminate_roomchat(postgres_url)
        await until(lambda: not log.healthy, timeout=10)
        await admin(postgres_url, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        await until(lambda: log.healthy, timeout=10)
        assert await log.top("r") == 0
    finally:
        await admin(postgres_url, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        await log.close()


async def held_room(url: str, room: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    """A connection holding ``room``'s row locked (``FOR UPDATE``) until it is closed."""
    conn = await psycopg.AsyncConnection.connect(url)
    await conn.execute("INSERT INTO rooms (room, epoch) VALUES (%s, 'e') ON CONFLICT DO NOTHING",
                       (room,))
    await conn.commit()
    await conn.execute("SELECT 1 FROM rooms WHERE room = %s FOR UPDATE", (room,))
    return conn


async def test_a_statement_past_its_timeout_is_a_store_error_and_leaves_nothing(
        postgres_url: str) -> None:
    """An append waiting for a room's lock past ``statement_timeout`` (0.9 of the call's
    timeout): ``StoreError`` within the call's timeout, nothing stored, no transaction left
    open, and the next append goes through."""
    engine = await open_engine(postgres_url, timeout=1.0)
    holder = await held_room(postgres_url, "r")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"took too long.*statement timeout"):
            await engine.append("r", [Draft("u", "U", "a", "hi", 1)], retention=0,
                                dedup_window=10)
        assert time.monotonic() - started < 1.0 * SLOW + 0.5
    finally:
        await holder.close()
    assert await admin(postgres_url, "SELECT count(*) FROM pg_stat_activity WHERE "
                                     "application_name = 'roomchat' AND state LIKE 'idle in "
                                     "transaction%%'") == [(0,)]
    try:
        assert await engine.append("r", [Draft("u", "U", "a", "hi", 1)], retention=0,
                                   dedup_window=10) == [Appended(1)]
    finally:
        await engine.close()


async def test_a_server_that_stops_answering_is_a_store_error_within_the_timeout(
        postgres_url: str) -> None:
    """The backend frozen (SIGSTOP: a hung server, a lost network): the call's own timeout
    ends it with ``StoreError``; once it answers again the log works, on a fresh connection."""
    log = await PostgresLog.open(postgres_url, max_connections=1, timeout=0.5)
    ((pid,),) = await log._rows("SELECT pg_backend_pid()", ())
    os.kill(int(pid), signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"did not answer within 0\.5 s"):
            await log.top("r")
        assert time.monotonic() - started < 0.5 * SLOW + 0.5
    finally:
        os.kill(int(pid), signal.SIGCONT)
    try:
        assert await log.append("r", [Draft("u", "U", "a", "hi", 1)], retention=0,
                                dedup_window=10) == [Appended(1)]
        assert log.healthy
    finally:
        await log.close()


async def test_a_backend_killed_before_commit_stores_nothing_and_the_retry_stores_once(
        postgres_url: str) -> None:
    engine = await open_engine(postgres_url)
    batch = [Draft("u", "U", f"id{i}", f"text {i}", i) for i in range(3)]
    holder = await held_room(postgres_url, "r")
    try:
        append = asyncio.create_task(engine.append("r", batch, retention=0, dedup_window=10))
        await until_async(lambda: terminate_roomchat(postgres_url, "transactionid"))
        with pytest.raises(StoreError, match="PostgreSQL failed"):
            await append
    finally:
        await holder.close()
    try:
        assert await engine.append("r", batch, retention=0, dedup_window=10) == [
            Appended(1), Appended(2), Appended(3)]
        assert [e.seq for e in await engine.read("r", 0, 99, 99)] == [1, 2, 3]
    finally:
        await engine.close()


async def test_a_backend_killed_in_its_commit_is_answered_as_duplicates_on_retry(
        postgres_cluster: PostgresServer, postgres_url: str) -> None:
    """The reply lost after the commit: the backend is terminated while its COMMIT waits for
    a synchronous standby that never comes (the commit is already on disk). The append fails
    with ``StoreError``; the retry is answered as duplicates at the seqs stored, and nothing
    is stored twice."""
    engine = await open_engine(postgres_url)
    batch = [Draft("u", "U", f"id{i}", f"text {i}", i) for i in range(3)]
    await standby_names(postgres_url, "nobody")
    try:
        # pg_reload_conf only signals: a backend applies the setting before its next command,
        # and an append that commits before that is stored at once. Such an append is left
        # behind and the next one goes to another room, until one waits in its COMMIT.
        for attempt in range(20):
            room = f"r{attempt}"
            append = asyncio.create_task(
                engine.append(room, batch, retention=0, dedup_window=10))
            if await terminated_in_sync_rep(postgres_url, append):
                break
        else:
            raise AssertionError("no append ever waited for the standby")
        with pytest.raises(StoreError, match="PostgreSQL failed"):
            await append
    finally:
        await standby_names(postgres_url, "")
    try:
        assert await engine.append(room, batch, retention=0, dedup_window=10) == [
            Appended(1, duplicate=True), Appended(2, duplicate=True),
            Appended(3, duplicate=True)]
        assert [e.seq for e in await engine.read(room, 0, 99, 99)] == [1, 2, 3]
        assert await engine.top(room) == 3
    finally:
        await engine.close()


async def standby_names(url: str, names: str) -> None:
    """Set ``synchronous_standby_names`` and return once the postmaster has it (a new
    connection sees it), that is once it has signalled every backend to reload."""
    await admin(url, f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
    await admin(url, "SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10 * SLOW
    while (await admin(url, "SHOW synchronous_standby_names"))[0][0] != names:
        assert time.monotonic() < deadline, "the reload never came"
        await asyncio.sleep(0.01)


async def terminated_in_sync_rep(url: str, append: asyncio.Task[list[Appended]]) -> bool:
    """Terminate ``append``'s backend once it waits for a synchronous standby (True), or
    answer False if ``append`` finishes first."""
    deadline = time.monotonic() + 10 * SLOW
    while not append.done():
        if await terminate_roomchat(url, "SyncRep"):
            return True
        assert time.monotonic() < deadline, "the append neither waited nor finished"
        await asyncio.sleep(0.01)
    await append
    return False


async def until_async(found: Callable[[], Awaitable[int]], timeout: float = 10) -> None:
    """Call ``found`` until it answers more than 0 (a backend to act on was there)."""
    deadline = time.monotonic() + timeout * SLOW
    while not await found():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


# -- group commit: the appends of one loop turn in one transaction ---------------------------

def hello(room: str) -> list[Draft]:
    return [Draft("u", "U", f"{room}-1", f"hello {room}", 1)]


async def in_database(url: str, sql: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql)


def change(action: Action, target: int, id: str, text: str = "", emoji: str = "",
           on: bool = False) -> ChangeDraft:
    return ChangeDraft("u", "U", id, 5, action, target, text, emoji, on)


GROUP_CASES: dict[str, tuple[list[Draft | ChangeDraft], int, str | None, int]] = {
    "dup": ([Draft("u", "U", "m1", "again", 5), Draft("u", "U", "n1", "new", 5)], 0, None, 0),
    "changes": ([Draft("u", "U", "n1", "reply", 5, reply_to=2, mentions=("v",)),
                 change(Action.EDIT, 1, "e1", text="edited"),
                 change(Action.DELETE, 3, "d1"),
                 change(Action.REACT, 2, "r1", emoji="\U0001f44d", on=True),
                 change(Action.EDIT, 99, "e2", text="no such message")], 0, None, 0),
    "stale": ([Draft("u", "U", "n1", "x", 5)], 0, "stale", 0),
    "behind": ([Draft("u", "U", "n1", "x", 5)], 0, None, 10),
    "pruned": ([Draft("u", "U", f"n{i}", f"p{i}", 5) for i in range(4)], 2, None, 0),
    "twice": ([Draft("u", "U", "n1", "x", 5), Draft("u", "U", "n1", "x", 5)], 0, None, 0),
    "same-batch": ([Draft("u", "U", "n1", "first", 5), change(Action.EDIT, 4, "e1", text="then"),
                    change(Action.DELETE, 2, "d1")], 0, None, 0),
    "fresh": ([Draft("u", "U", "n1", "a new room", 5)], 0, None, 0),
}
"""A group's rooms: ``(drafts, retention, epoch, floor)``, what the bulk path must answer and
store exactly as room by room does. Every room but ``fresh`` holds messages 1-3 first."""


async def test_a_group_in_bulk_answers_and_stores_what_room_by_room_does(
        postgres_cluster: PostgresServer) -> None:
    """The same appends (duplicates, replies, edits, deletes, reactions, a refusal, a stale
    epoch, a log behind its floor, a retention cut, an id twice in a batch, a change of a
    message of the same batch, a room never seen) issued in one loop turn (one group, in bulk:
    no fallback) and one at a time (each its own transaction, room by room): the same
    outcomes, and the same entries, tops and search hits after."""
    seen: list[tuple[list[object], list[object]]] = []
    for together in (True, False):
        with postgres_cluster.fresh(migrated=True) as url:
            log = await PostgresLog.open(url, timeout=10 * SLOW)
            try:
                for room in GROUP_CASES:
                    if room != "fresh":
                        await log.append(room, [Draft("u", "U", f"m{i}", f"hello {i}", 1)
                                                for i in (1, 2, 3)], retention=0)
                calls = [log.append(room, drafts, retention=retention, dedup_window=10,
                                    epoch=epoch, floor=floor)
                         for room, (drafts, retention, epoch, floor) in GROUP_CASES.items()]
                fallbacks, groups = log._appends.fallbacks, log._appends.groups
                got: list[object] = []
                if together:
                    got += await asyncio.gather(*calls, return_exceptions=True)
                    assert (log._appends.fallbacks, log._appends.groups) == (fallbacks,
                                                                             groups + 1)
                else:
                    for call in calls:
                        try:
                            got.append(await call)
                        except LogReset as exc:
                            got.append(exc)
                outcomes: list[object] = [
                    ("LogReset", g.top) if isinstance(g, LogReset) else g for g in got]
                after: list[object] = [
                    (room, await log.top(room), await log.read(room, 0, 99, 99),
                     [f.message.seq for f in (await log.search(room, "hello", before=None,
                                                               limit=9)).results])
                    for room in GROUP_CASES]
                async with await psycopg.AsyncConnection.connect(url) as conn:
                    cursor = await conn.execute("SELECT room, top, low FROM rooms ORDER BY room")
                    after.append(await cursor.fetchall())  # the counters, retention's too
                seen.append((outcomes, after))
            finally:
                await log.close()
    assert seen[0] == seen[1]
    by_room: dict[str, Any] = dict(zip(GROUP_CASES, seen[0][0], strict=True))
    assert by_room["stale"] == ("LogReset", 3) and by_room["behind"] == ("LogReset", 10)
    assert by_room["dup"] == [Appended(1, duplicate=True), Appended(4, entry=ANY)]
    assert [(a.seq, a.refused) for a in by_room["changes"]] == [
        (4, None), (5, None), (6, None), (7, None), (0, Refusal.NOT_FOUND)]


async def test_one_rooms_failing_append_in_a_group_fails_alone(postgres_url: str) -> None:
    """Appends of several rooms issued in one loop turn go in one transaction (one group), each
    room's work in its own savepoint: a room whose statement fails (a CHECK constraint here)
    gets ``StoreError`` and stores nothing, a room whose epoch is stale gets ``LogReset``, and
    every other room of the group is stored, before and after them in the group's order."""
    await in_database(postgres_url,
                      "ALTER TABLE entries ADD CONSTRAINT no_c CHECK (room <> 'c')")
    log = await PostgresLog.open(postgres_url, timeout=10 * SLOW)
    try:
        assert await log.append("e", hello("e"), retention=0) == [Appended(1)]
        groups = log._appends.groups
        rooms = ["a", "f", "c", "d", "e", "b"]
        got = await asyncio.gather(*(
            log.append(room, hello(room), retention=0, dedup_window=10,
                       epoch="stale" if room == "e" else None) for room in rooms),
            return_exceptions=True)
        assert log._appends.groups == groups + 1  # one transaction, one commit
        assert isinstance(got[2], StoreError) and "no_c" in str(got[2])
        assert isinstance(got[4], LogReset) and got[4].top == 1
        assert [got[i] for i in (0, 1, 3, 5)] == [[Appended(1)]] * 4
        assert [await log.top(room) for room in rooms] == [1, 1, 0, 1, 1, 1]
        assert [e.text for e in await log.read("d", 0, 9, 9)] == ["hello d"]
    finally:
        await log.close()


async def test_a_group_holds_at_most_group_most_appends(postgres_url: str) -> None:
    """``GROUP_MOST`` appends issued in one turn are one transaction; one more goes in the
    next turn's group. Every one of them is stored."""
    log = await PostgresLog.open(postgres_url, timeout=10 * SLOW)
    try:
        for count, groups in ((GROUP_MOST, 1), (GROUP_MOST + 1, 2)):
            before = log._appends.groups
            rooms = [f"r{count}-{i}" for i in range(count)]
            got = await asyncio.gather(*(log.append(room, hello(room), retention=0)
                                         for room in rooms))
            assert got == [[Appended(1)]] * count
            assert log._appends.groups - before == groups
    finally:
        await log.close()


async def test_a_failed_group_commit_answers_every_caller_with_store_error(
        postgres_url: str) -> None:
    """The group's COMMIT fails (a deferred constraint trigger on one room's counter row
    refuses it): every caller of the group gets ``StoreError`` and nothing of any is stored;
    the next appends go through."""
    await in_database(postgres_url, """
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$;
        CREATE CONSTRAINT TRIGGER at_commit AFTER UPDATE ON rooms DEFERRABLE INITIALLY
            DEFERRED FOR EACH ROW WHEN (NEW.room = 'doomed') EXECUTE FUNCTION refuse();""")
    log = await PostgresLog.open(postgres_url, timeout=10 * SLOW)
    try:
        rooms = ["a", "doomed", "z"]
        got = await asyncio.gather(*(log.append(room, hello(room), retention=0)
                                     for room in rooms), return_exceptions=True)
        assert all(isinstance(g, StoreError) and "refused at commit" in str(g) for g in got)
        assert [await log.top(room) for room in rooms] == [0, 0, 0]
        got = await asyncio.gather(*(log.append(room, hello(room), retention=0)
                                     for room in ("a", "z")))
        assert got == [[Appended(1)], [Appended(1)]]
    finally:
        await log.close()


async def test_cancelled_callers_do_not_hold_back_their_group(postgres_url: str) -> None:
    """A group waits on a room's lock held elsewhere; that room's caller and the caller of a
    room after it in the group are cancelled meanwhile. Once the lock is released the group
    commits: the rooms before and after are answered, the room whose work had started is
    stored with the group, the one whose turn had not come is left out. (Room by room: the
    group's bulk statements found "held" locked, ``NOWAIT``.)"""
    log = await PostgresLog.open(postgres_url, timeout=30 * SLOW)
    holder = await held_room(postgres_url, "held")
    try:
        calls = {room: asyncio.create_task(log.append(room, hello(room), retention=0))
                 for room in ("a", "held", "m", "z")}
        await until_async(lambda: waiting_on_a_lock(postgres_url))
        calls["held"].cancel()
        calls["m"].cancel()
        await asyncio.wait([calls["held"], calls["m"]])
    finally:
        await holder.close()
    try:
        async with asyncio.timeout(10 * SLOW):
            assert await calls["a"] == [Appended(1)]
            assert await calls["z"] == [Appended(1)]
        assert calls["held"].cancelled() and calls["m"].cancelled()
        assert log._appends.fallbacks == 1  # "held" was locked: the group went room by room
        assert [await log.top(room) for room in ("a", "held", "m", "z")] == [1, 1, 0, 1]
        assert await log.append("held", hello("held"), retention=0, dedup_window=10) == [
            Appended(1, duplicate=True)]
    finally:
        await log.close()


async def waiting_on_a_lock(url: str) -> int:
    name = url.rsplit("/", 1)[1]
    rows = await admin(url, "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND "
                            "application_name = 'roomchat' AND wait_event_type = 'Lock'", (name,))
    return len(rows)


async def test_connections_default_to_8_for_postgres(postgres_url: str) -> None:
    """``ROOMCHAT_STORE_CONNECTIONS`` 0 (its default): each engine's own; PostgreSQL's is 8,
    each a server process (Redis keeps 32 sockets)."""
    from gateway.config import Config

    assert Config().store_connections == 0
    engine = await open_engine(postgres_url, max_connections=Config().store_connections)
    try:
        assert isinstance(engine, SplitEngine) and isinstance(engine.log, PostgresLog)
        assert engine.log._pool.max_size == POSTGRES_MAX_CONNECTIONS == 8
    finally:
        await engine.close()


# -- erasure's compaction ---------------------------------------------------------------------

def stored_bytes(cluster: PostgresServer, url: str, relations: list[str]) -> bytes:
    """The bytes of ``relations``' files (every segment) in ``cluster``'s data directory."""
    import glob

    data = b""
    with psycopg.connect(url) as conn:
        for name in relations:
            row = conn.execute("SELECT pg_relation_filepath(%s)", (name,)).fetchone()
            assert row is not None and row[0] is not None
            for path in glob.glob(f"{cluster.data / str(row[0])}*"):
                with open(path, "rb") as f:
                    data += f.read()
    return data


async def test_an_erased_word_leaves_the_partition_files_after_compact(
        postgres_cluster: PostgresServer, postgres_url: str) -> None:
    """Erasure overwrites and VACUUMs, which leaves the old row versions' bytes in free space
    (found here); ``compact`` rewrites the partition (heap, TOAST, indexes) and checkpoints:
    the erased words, a short one and one inside a TOASTed text, are in none of its files."""
    import random

    engine = await open_engine(postgres_url)
    noise = "".join(random.Random(24).choices("abcdefghijklmnopqrstuvwxyz ", k=6000))
    long = f"{noise[:3000]} toastedzanzibar {noise[3000:]}"  # incompressible: TOASTed out of line
    try:
        await engine.append("a", [Draft("gone", "G", None, "shortzanzibar words", 1),
                                  Draft("gone", "G", None, long, 2),
                                  Draft("stays", "S", None, "kept words", 3)],
                            retention=0, dedup_window=0)
        assert await engine.erase("gone") == {"a": [1, 2]}
        assert isinstance(engine, SplitEngine) and isinstance(engine.log, PostgresLog)
        log = engine.log
        ((partition, toast),) = await log._rows(
            "SELECT c.oid::regclass::text, c.reltoastrelid::regclass::text FROM pg_class c "
            "WHERE c.oid = (SELECT DISTINCT tableoid FROM entries WHERE room = 'a')", ())
        indexes = [str(name) for (name,) in await log._rows(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass",
            (partition,))]
        relations = [str(partition), str(toast), *indexes]
        await admin(postgres_url, "CHECKPOINT")
        before = stored_bytes(postgres_cluster, postgres_url, relations)
        assert b"shortzanzibar" in before or b"toastedzanzibar" in before  # what VACUUM leaves
        assert await log.compact(["a"]) == [partition]
        after = stored_bytes(postgres_cluster, postgres_url, relations)
        assert b"kept words" in after  # the files read are the partition's
        for word in (b"shortzanzibar", b"toastedzanzibar"):
            assert word not in after
        page = await engine.search("a", "kept", before=None, limit=5)
        assert [f.message.seq for f in page.results] == [3]
    finally:
        await engine.close()


def roomchat(tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_")}
    environ.update(PYTHONPATH=str(REPO), ROOMCHAT_JWT_SECRET=SECRET, ROOMCHAT_STORE_URL=url)
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=tmp,
                          capture_output=True, text=True, timeout=60, env=environ, check=False)


async def test_roomchat_erase_compact_rewrites_the_rooms_partitions(postgres_url: str,
                                                                    tmp_path: Path) -> None:
    """``roomchat erase --offline --compact`` on the PostgreSQL log: erased, then the partition
    of the room compacted (each said in one line); on SQLite ``--compact`` is refused in one
    line, exit 2, before anything is erased."""
    engine = await open_engine(postgres_url)
    try:
        await engine.append("a", [Draft("gone", "G", None, "bye", 1)], retention=0,
                            dedup_window=0)
        ((partition,),) = await engine.log._rows(  # type: ignore[attr-defined]
            "SELECT DISTINCT tableoid::regclass::text FROM entries", ())
    finally:
        await engine.close()
    done = roomchat(tmp_path, postgres_url, "erase", "--user", "gone", "--offline", "--compact")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "erased 1 message of gone in 1 room",
        f"compacted 1 partition of the PostgreSQL log: {partition}"]
    sqlite = f"sqlite://{tmp_path / 'db.sqlite3'}"
    done = roomchat(tmp_path, sqlite, "erase", "--user", "gone", "--offline", "--compact")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1
    assert "--compact is for the PostgreSQL log" in done.stderr

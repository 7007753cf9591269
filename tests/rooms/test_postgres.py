"""What is the PostgreSQL log's own (the engine contract runs on it in test_engine.py): its
versioned schema, many processes appending to one room, values PostgreSQL cannot hold, and the
start-up refusals. A real PostgreSQL, one per test session (tests/postgres_server.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from rooms.engine import Engine
from rooms.engines import open_engine
from rooms.engines.postgres import PostgresLog
from rooms.engines.postgres_schema import LATEST, MIGRATIONS, SchemaTooNew, migrate, version
from rooms.errors import Unstorable
from rooms.messages import Appended, Draft
from tests.postgres_server import PostgresServer
from tests.support import REPO, SECRET, free_port

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


def serve_check(tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_")}
    env.update(PYTHONPATH=str(REPO), ROOMCHAT_JWT_SECRET=SECRET, ROOMCHAT_STORE_URL=url)
    return subprocess.run([sys.executable, "-m", "gateway", "serve", "--check", "--bind",
                           f"127.0.0.1:{free_port()}", *args], cwd=tmp, capture_output=True,
                          text=True, timeout=60, env=env, check=False)


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

"""Issue 24's search measurements on the embedded engine and the PostgreSQL log, apart from the
server:

- **query latency** over one room of ``--messages`` (default 1,000,000) messages, plus
  ``--noise`` messages in 20 other rooms: ``SqliteStore.search`` as the HTTP route calls it
  (thread hand-off, index, rows, highlights), per kind of query, p50/p95/p99 (target: p95 <=
  50 ms);
- **index size** per message (SQLite's ``dbstat``: the FTS5 tables against ``messages``);
- **building** the index for an existing database (the migration's ``rebuild``) and
  **compacting** it (what an erasure runs: ``SqliteStore.compact_search``);
- **append cost** with the index against without (``bench.storebench``'s shapes, the store
  opened with ``search_index`` on and off: ``ROOMCHAT_SEARCH_INDEX``).

``--engine postgres`` measures the same query kinds on the PostgreSQL log (``PostgresLog.search``
through its pool, one connection; the server backend's CPU per query from
``/proc/<pid>/schedstat``), after loading the same texts straight into its tables (COPY into a
staging table, one ``INSERT ... SELECT`` computing the ``tsvector``s, then the GIN index built
whole: a bench load, not the append path), on a temporary cluster of its own unless
``--store-url`` names a database (loaded once: a database already holding the room is reused).
``--pg-statistics N`` sets the ``search`` column's statistics target before ``ANALYZE`` (the
design's first ordering step); ``--explain`` prints each kind's plan.

Texts: words drawn from a Zipf distribution (s = 1.07) over a 50,000-word synthetic
vocabulary, 4 to 24 words a message: the most common word is in ~3/4 of the messages (a
stop word), the 1,000th in ~0.1%, the 20,000th in almost none. Deterministic (seeded).
``python -m bench.search`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.storebench import _shape
from rooms.engines.sqlite import SqliteStore
from rooms.messages import Draft

ROOM = "big"
BATCH = 2_000
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "vo", "el", "an", "de", "po", "zu",
             "bri", "qua", "fen", "tor", "gal", "wy", "sen"]


def vocabulary(rng: random.Random, size: int = 50_000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words, key=lambda w: (len(w), w))  # rank 0: a short word (the most common)


def texts(rng: random.Random, words: list[str], count: int) -> list[str]:
    cumulative = list(itertools.accumulate(1 / (rank + 1) ** 1.07 for rank in range(len(words))))
    out = []
    for _ in range(count):
        n = rng.randint(4, 24)
        out.append(" ".join(rng.choices(words, cum_weights=cumulative, k=n)))
    return out


async def build(path: Path, messages: int, noise: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    words = vocabulary(rng)
    store = await SqliteStore.open(path, synchronous="NORMAL")
    started = time.perf_counter()
    try:
        done = 0
        while done < messages:
            n = min(BATCH, messages - done)
            await store.append(ROOM, [Draft("u", "U", None, t, 1_700_000_000_000 + done + i)
                                      for i, t in enumerate(texts(rng, words, n))], 0)
            done += n
            if noise and done % 100_000 == 0:
                room = f"noise-{done // 100_000 % 20}"
                await store.append(room, [Draft("v", "V", None, t, 0) for t in
                                          texts(rng, words, noise // 10)], 0)
    finally:
        await store.close()
    elapsed = time.perf_counter() - started
    return {"words": words, "build_s": elapsed, "build_msgs_per_s": (messages + noise) / elapsed}


def sizes(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {str(name): int(size) for name, size in conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name")}
    finally:
        conn.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def queries(path: Path, words: list[str], rounds: int) -> dict[str, Any]:
    """Latency (ms) per kind of query, each run ``rounds`` times (the kinds interleaved)."""
    kinds = kinds_of(words)
    store = await SqliteStore.open(path)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    page2: list[float] = []
    found: dict[str, int] = {}
    try:
        for _ in range(3):  # warm the page cache and the readers' connections
            for q in kinds.values():
                await store.search(ROOM, q, before=None, limit=20)
        for _ in range(rounds):
            for kind, q in kinds.items():
                t0, c0 = time.perf_counter(), time.process_time()
                page = await store.search(ROOM, q, before=None, limit=20)
                times[kind].append((time.perf_counter() - t0) * 1000)
                cpu[kind].append((time.process_time() - c0) * 1000)
                found[kind] = len(page.results)
                if kind == "common word (rank 1)" and page.before is not None:
                    t0 = time.perf_counter()
                    await store.search(ROOM, q, before=page.before // 2, limit=20)
                    page2.append((time.perf_counter() - t0) * 1000)
        conn = sqlite3.connect(path)
        counts = {kind: conn.execute(
            "SELECT count(*) FROM message_search WHERE message_search MATCH ?",
            (_expression(q),)).fetchone()[0] for kind, q in kinds.items()}
        conn.close()
    finally:
        await store.close()
    return _summary(kinds, times, cpu, page2, found, counts)


def _expression(query: str) -> str:
    from rooms.search import fts5_query, parse_query

    return fts5_query(parse_query(query))


def rebuild_and_compact(path: Path) -> dict[str, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        t0 = time.perf_counter()
        conn.execute("INSERT INTO message_search (message_search) VALUES ('rebuild')")
        rebuild = time.perf_counter() - t0
        segments_before = conn.execute("SELECT count(*) FROM message_search_data").fetchone()[0]
    finally:
        conn.close()

    async def compact() -> tuple[float, int]:
        store = await SqliteStore.open(path)
        try:
            t0 = time.perf_counter()
            steps = await store.compact_search()
            return time.perf_counter() - t0, steps
        finally:
            await store.close()

    compact_s, steps = asyncio.run(compact())
    return {"rebuild_s": rebuild, "compact_s": compact_s, "compact_steps": steps,
            "data_blocks_before_compact": segments_before}


async def appends(seconds: float) -> list[dict[str, Any]]:
    shapes = [(1, 1), (1, 32), (100, 1), (100, 32)]
    out = []
    for rooms, batch in shapes:
        for index in (False, True):
            # CPU of this process (the writer thread, the loop) per message: what the index
            # costs whatever else the machine runs (the rates swing with the load).
            c0 = time.process_time()
            result = await _shape(rooms, batch, seconds, "FULL", search_index=index)
            cpu_us = (time.process_time() - c0) / max(1, result["messages"]) * 1e6
            out.append({**result, "search_index": index, "cpu_us_per_message": cpu_us})
    return out


KINDS = ("common word (rank 1)", "rank 10 word", "rank 1000 word", "rare word (rank 20000)",
         "absent word", "two common words", "common + rare", "phrase of two common",
         "prefix (3 chars)", "five words")


def kinds_of(words: list[str]) -> dict[str, str]:
    """The query of each kind (``KINDS``), from the vocabulary's ranks."""
    queries_ = (words[0], words[9], words[999], words[19_999], "zzzzqqq",
                f"{words[0]} {words[1]}", f"{words[0]} {words[19_999]}",
                f'"{words[0]} {words[1]}"', words[2][:3] + "*",
                " ".join(words[i] for i in (0, 3, 7, 20, 50)))
    return dict(zip(KINDS, queries_, strict=True))


# -- PostgreSQL -------------------------------------------------------------------------------

PG_SETTINGS = ("shared_buffers=256MB", "maintenance_work_mem=256MB", "work_mem=16MB",
               "max_wal_size=4GB", "checkpoint_timeout=30min")
"""The bench cluster's settings beyond the tests' (a small production-like buffer cache)."""


async def pg_build(url: str, messages: int, noise: int, seed: int) -> dict[str, Any]:
    """The room ``ROOM`` of ``messages`` texts and ``noise`` more in 20 other rooms, loaded
    into the PostgreSQL log at ``url`` (reused when it holds them already)."""
    import psycopg

    from rooms.engines.postgres import PostgresLog
    from rooms.engines.postgres_schema import SEARCH_CONFIG

    rng = random.Random(seed)
    words = vocabulary(rng)
    await (await PostgresLog.open(url)).close()  # the schema
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute("SELECT top FROM rooms WHERE room = %s", (ROOM,))
        row = await cursor.fetchone()
        if row is not None and row[0] == messages:
            return {"words": words, "reused": True}
        if row is not None:
            raise SystemExit(f"{url} holds another load: give an empty database")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        await conn.execute("DROP INDEX entries_search")  # built whole below: much faster
        await conn.execute("CREATE UNLOGGED TABLE bench_load (room text, seq bigint, "
                           "text text, ts bigint)")
        async with conn.cursor() as cur, cur.copy(
                "COPY bench_load (room, seq, text, ts) FROM STDIN") as copy:
            done = 0
            while done < messages:
                n = min(BATCH * 10, messages - done)
                for i, text in enumerate(texts(rng, words, n)):
                    await copy.write_row((ROOM, done + i + 1, text,
                                          1_700_000_000_000 + done + i))
                done += n
            for r in range(20):
                for i, text in enumerate(texts(rng, words, noise // 20)):
                    await copy.write_row((f"noise-{r}", i + 1, text, i))
        timings["texts_and_copy_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        await conn.execute(
            "INSERT INTO entries (room, seq, kind, user_id, name, text, ts, search) "
            f"SELECT room, seq, 0, 'u', 'U', text, ts, to_tsvector('{SEARCH_CONFIG}', text) "
            "FROM bench_load")
        await conn.execute("INSERT INTO rooms (room, top, epoch) SELECT room, max(seq), "
                           "'bench' FROM bench_load GROUP BY room")
        await conn.execute("DROP TABLE bench_load")
        timings["insert_with_tsvector_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '256MB'")
        await conn.execute("CREATE INDEX entries_search ON entries USING gin (search) "
                           "WHERE search IS NOT NULL")
        timings["gin_index_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        await conn.execute("VACUUM ANALYZE entries")
        timings["vacuum_analyze_s"] = time.perf_counter() - t0
    return {"words": words, "reused": False, **timings}


async def pg_sizes(url: str) -> dict[str, Any]:
    """Bytes of the partition holding ``ROOM`` and of all of ``entries``: heap (with TOAST),
    each index."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid), "
            "(SELECT coalesce(sum(pg_relation_size(i.indexrelid)), 0) FROM pg_index i "
            " JOIN pg_class ic ON ic.oid = i.indexrelid "
            " WHERE i.indrelid = c.oid AND ic.relname LIKE '%%search%%') "
            "FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid "
            "WHERE h.inhparent = 'entries'::regclass")
        parts = await cursor.fetchall()
        cursor = await conn.execute("SELECT tableoid::regclass::text FROM entries "
                                    "WHERE room = %s LIMIT 1", (ROOM,))
        row = await cursor.fetchone()
        cursor = await conn.execute("SELECT count(*) FROM entries")
        count = await cursor.fetchone()
    rows = int(count[0]) if count else 0
    heap = sum(int(p[1]) for p in parts)
    indexes = sum(int(p[2]) for p in parts)
    search = sum(int(p[3]) for p in parts)
    return {"rows": rows, "room_partition": row[0] if row else None,
            "heap_bytes": heap, "indexes_bytes": indexes, "search_index_bytes": search,
            "bytes_per_message": (heap + indexes) / max(1, rows),
            "search_index_bytes_per_message": search / max(1, rows)}


def _backend_cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU of the process ``pid`` (this machine's server backend)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


async def pg_queries(url: str, words: list[str], rounds: int,
                     explain: bool) -> dict[str, Any]:
    """As ``queries``, through ``PostgresLog.search``; the CPU columns are the server
    backend's (the work is there), not this process's."""
    from rooms.engines.postgres import PostgresLog
    from rooms.search import parse_query

    kinds = kinds_of(words)
    log = await PostgresLog.open(url, max_connections=1, timeout=30)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    page2: list[float] = []
    found: dict[str, int] = {}
    counts: dict[str, int] = {}
    plans: dict[str, str] = {}
    try:
        ((pid,),) = await log._rows("SELECT pg_backend_pid()", ())
        for _ in range(3):
            for q in kinds.values():
                await log.search(ROOM, q, before=None, limit=20)
        for _ in range(rounds):
            for kind, q in kinds.items():
                t0, c0 = time.perf_counter(), _backend_cpu_ns(pid)
                page = await log.search(ROOM, q, before=None, limit=20)
                times[kind].append((time.perf_counter() - t0) * 1000)
                cpu[kind].append((_backend_cpu_ns(pid) - c0) / 1e6)
                found[kind] = len(page.results)
                if kind == KINDS[0] and page.before is not None:
                    t0 = time.perf_counter()
                    await log.search(ROOM, q, before=page.before // 2, limit=20)
                    page2.append((time.perf_counter() - t0) * 1000)
        for kind, q in kinds.items():
            sql, params = log.search_statement(ROOM, parse_query(q), 2**62, 21)
            where = sql.split("WHERE", 1)[1].split("ORDER BY", 1)[0]
            ((n,),) = await log._rows(f"SELECT count(*) FROM entries WHERE {where}", params)
            counts[kind] = int(n)
            if explain:
                rows = await log._rows(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
                plans[kind] = "\n".join(str(r[0]) for r in rows)
    finally:
        await log.close()
    out = _summary(kinds, times, cpu, page2, found, counts)
    if explain:
        out["plans"] = plans
    return out


def _summary(kinds: dict[str, str], times: dict[str, list[float]], cpu: dict[str, list[float]],
             page2: list[float], found: dict[str, int],
             counts: dict[str, int]) -> dict[str, Any]:
    everything = [t for ts in times.values() for t in ts]
    return {
        "kinds": {kind: {"query": kinds[kind], "matches": counts[kind],
                         "results": found[kind],
                         "p50_ms": percentile(ts, 0.5), "p95_ms": percentile(ts, 0.95),
                         "p99_ms": percentile(ts, 0.99), "max_ms": max(ts),
                         "cpu_p50_ms": percentile(cpu[kind], 0.5),
                         "cpu_p95_ms": percentile(cpu[kind], 0.95)}
                  for kind, ts in times.items()},
        "older page (before = mid-room), common word": {
            "p50_ms": percentile(page2, 0.5), "p95_ms": percentile(page2, 0.95)},
        "all": {"count": len(everything), "p50_ms": percentile(everything, 0.5),
                "p95_ms": percentile(everything, 0.95), "p99_ms": percentile(everything, 0.99),
                "cpu_p95_ms": percentile([c for cs in cpu.values() for c in cs], 0.95)},
    }


async def pg_statistics(url: str, target: int) -> float:
    """``ALTER TABLE entries ALTER search SET STATISTICS target`` and ``ANALYZE``: seconds."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        await conn.execute(f"ALTER TABLE entries ALTER search SET STATISTICS {int(target)}")
        await conn.execute("ANALYZE entries")
        return time.perf_counter() - t0


def postgres(args: argparse.Namespace) -> dict[str, Any]:
    import contextlib
    import os

    out: dict[str, Any] = {"engine": "postgres", "messages": args.messages,
                           "noise": args.noise, "loadavg_before": os.getloadavg()}
    with contextlib.ExitStack() as stack:
        url = args.store_url
        if not url:
            from tests.postgres_server import PostgresServer

            cluster = stack.enter_context(PostgresServer(*PG_SETTINGS))
            url = cluster.database()
        built = asyncio.run(pg_build(url, args.messages, args.noise, args.seed))
        words = built.pop("words")
        out["build"] = built
        if args.pg_statistics:
            out["statistics"] = {"target": args.pg_statistics,
                                 "analyze_s": asyncio.run(pg_statistics(url,
                                                                        args.pg_statistics))}
        out["sizes"] = asyncio.run(pg_sizes(url))
        out["queries"] = asyncio.run(pg_queries(url, words, args.rounds, args.explain))
    out["loadavg_after"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="roomchat search on the embedded engine "
                                                 "or the PostgreSQL log")
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--store-url", default="",
                        help="postgres: a database to load (or reuse); default: a temporary "
                             "cluster")
    parser.add_argument("--pg-statistics", type=int, default=0,
                        help="postgres: the search column's statistics target (0: default)")
    parser.add_argument("--explain", action="store_true",
                        help="postgres: EXPLAIN ANALYZE each kind's query")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--noise", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--append-seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--skip-appends", action="store_true")
    args = parser.parse_args(argv)
    if args.engine == "postgres":
        print(json.dumps(postgres(args), indent=1), flush=True)
        return 0
    out: dict[str, Any] = {"sqlite": sqlite3.sqlite_version, "messages": args.messages,
                           "noise": args.noise}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        path = Path(tmp) / "roomchat.sqlite3"
        built = asyncio.run(build(path, args.messages, args.noise, args.seed))
        words = built.pop("words")
        out["build"] = built
        stored = sizes(path)
        index = sum(v for k, v in stored.items() if k.startswith(("message_search", "search_")))
        total = args.messages + args.noise
        out["sizes"] = {"messages_bytes": stored.get("messages", 0), "index_bytes": index,
                        "index_bytes_per_message": index / total,
                        "messages_bytes_per_message": stored.get("messages", 0) / total,
                        "tables": stored}
        out["queries"] = asyncio.run(queries(path, words, args.rounds))
        out["maintenance"] = rebuild_and_compact(path)
        out["sizes"]["index_bytes_after_compact"] = sum(
            v for k, v in sizes(path).items() if k.startswith(("message_search", "search_")))
    if not args.skip_appends:
        out["appends"] = asyncio.run(appends(args.append_seconds))
    print(json.dumps(out, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

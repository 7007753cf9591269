"""Bytes a message of history costs in each log engine: what docs/scaling.md's history-per-day
table is computed from.

Appends ``--messages`` messages (100 rooms, batches of 32, the way busy rooms store) through
``open_engine``, then measures what the engine keeps for them:

- ``sqlite``: the database file after a WAL checkpoint (search index on and off: two runs);
- ``redis``: ``used_memory`` growth (RAM: the whole history lives in memory) and the AOF's
  growth (``appendonly yes``, automatic rewrites off during the fill);
- ``postgresql``: ``pg_total_relation_size`` of the log's tables (heap, TOAST, indexes) after
  ``VACUUM``, on a server started for the run (as the tests start one) or ``--postgres-url``.

Message texts are drawn from a fixed distribution of lengths (seeded): most chat lines are short,
a few are long (median 42, mean 58 characters), words from a fixed list, so the search indexes
see repeated vocabulary as they would in a real room. Each entry also carries what every stored
message has: user id, display name, client id, timestamp.

``python -m bench.history_size --messages 200000 [--postgres-url postgresql://...]`` prints one
JSON object and a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rooms.engines import open_engine
from rooms.messages import Draft

ROOMS = 100
BATCH = 32
WORDS = ("the deploy is done", "can you look at", "thanks", "lunch?", "ok", "merged the fix",
         "I think we should", "tests pass on main", "the build broke again", "see the doc",
         "meeting in 5", "what about the cache", "yes", "no idea", "let me check",
         "latency went up after", "rollback", "ship it", "PTAL", "good morning")


def texts(n: int, seed: int = 7) -> list[str]:
    """``n`` message texts, lengths lognormal around 42 characters (capped at 2,000)."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        want = min(2000, max(2, int(rnd.lognormvariate(3.75, 0.8))))
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < want:
            parts.append(rnd.choice(WORDS))
        out.append(" ".join(parts)[:want])
    return out


async def fill(url: str, bodies: list[str], search_index: bool = True) -> float:
    """Append ``bodies`` to ``ROOMS`` rooms through the engine ``url`` names; seconds taken."""
    engine = await open_engine(url, search_index=search_index, timeout=60.0)
    t0 = time.perf_counter()
    try:
        per_room = [bodies[r::ROOMS] for r in range(ROOMS)]

        async def room(r: int) -> None:
            mine = per_room[r]
            for i in range(0, len(mine), BATCH):
                drafts = [Draft(f"user-{r}-{j % 7}", f"User {r}-{j % 7}", f"c{r}-{i + j}",
                                text, int(time.time() * 1000))
                          for j, text in enumerate(mine[i:i + BATCH])]
                await engine.append(f"room-{r}", drafts, retention=0, dedup_window=1000)

        async with asyncio.TaskGroup() as tg:
            for r in range(ROOMS):
                tg.create_task(room(r))
    finally:
        await engine.close()
    return time.perf_counter() - t0


def sqlite_bytes(path: Path) -> int:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
    return int(pages * size)


async def measure_sqlite(bodies: list[str], search_index: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-size-") as tmp:
        db = Path(tmp) / "roomchat.sqlite3"
        seconds = await fill(f"sqlite://{db}", bodies, search_index)
        size = sqlite_bytes(db)
    return {"engine": "sqlite", "search_index": search_index, "bytes": size,
            "seconds": seconds}


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], check=True,
                          capture_output=True, text=True).stdout


def redis_info(port: int, field: str) -> int:
    out = redis_cli(port, "info", "memory")
    for line in out.splitlines():
        if line.startswith(field + ":"):
            return int(line.split(":", 1)[1])
    raise RuntimeError(f"redis INFO has no {field}")


def aof_bytes(workdir: Path) -> int:
    """The size of every AOF file under ``workdir`` (Redis 7 keeps a directory of them)."""
    return sum(p.stat().st_size for p in workdir.rglob("*.aof"))


async def measure_redis(bodies: list[str]) -> dict[str, Any]:
    from tests.redis_server import redis_server  # a real server on a free port, as in tests

    with (tempfile.TemporaryDirectory(prefix="bench-size-") as tmp,
          redis_server(Path(tmp), aof=True) as url):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        # No AOF rewrite mid-fill: it would shrink the log and hide what appends write.
        redis_cli(port, "config", "set", "auto-aof-rewrite-percentage", "0")
        before = redis_info(port, "used_memory")
        aof_before = aof_bytes(Path(tmp))
        seconds = await fill(url, bodies)
        used = redis_info(port, "used_memory") - before
        aof = aof_bytes(Path(tmp)) - aof_before
    return {"engine": "redis", "bytes": used, "aof_bytes": aof, "seconds": seconds}


async def measure_postgres(url: str | None, bodies: list[str]) -> dict[str, Any]:
    """On the database ``url`` names, or (None) on a scratch server started like the tests'."""
    import psycopg  # the postgres extra

    if url is None:
        from tests.postgres_server import PostgresServer

        with PostgresServer() as server:
            return await measure_postgres(server.database(), bodies)

    seconds = await fill(url, bodies)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("VACUUM ANALYZE")
        cur = await conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') ")
        row = await cur.fetchone()
    return {"engine": "postgresql", "bytes": int(row[0]) if row else 0, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--postgres-url", default=None,
                        help="a scratch database (default: a server started for the run)")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    bodies = texts(args.messages)
    results = [asyncio.run(measure_sqlite(bodies, True)),
               asyncio.run(measure_sqlite(bodies, False)),
               asyncio.run(measure_redis(bodies))]
    if not args.no_postgres:
        results.append(asyncio.run(measure_postgres(args.postgres_url, bodies)))
    chars = [len(b) for b in bodies]
    summary = {"messages": args.messages, "text_chars_mean": statistics.mean(chars),
               "text_chars_median": statistics.median(chars), "results": results}
    for r in results:
        r["bytes_per_message"] = r["bytes"] / args.messages
        if "aof_bytes" in r:
            r["aof_bytes_per_message"] = r["aof_bytes"] / args.messages
    json.dump(summary, sys.stdout, indent=1)
    print("\n\n| engine | bytes per message | written per message |\n|---|---|---|")
    for r in results:
        name = r["engine"] + ("" if r.get("search_index", True) else " (no search index)")
        extra = f"{r['aof_bytes_per_message']:.0f} (AOF)" if "aof_bytes" in r else ""
        print(f"| {name} | {r['bytes_per_message']:.0f} | {extra} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 24's search measurements on the embedded engine, apart from the server:

- **query latency** over one room of ``--messages`` (default 1,000,000) messages, plus
  ``--noise`` messages in 20 other rooms: ``SqliteStore.search`` as the HTTP route calls it
  (thread hand-off, index, rows, highlights), per kind of query, p50/p95/p99 (target: p95 <=
  50 ms);
- **index size** per message (SQLite's ``dbstat``: the FTS5 tables against ``messages``);
- **building** the index for an existing database (the migration's ``rebuild``) and
  **compacting** it (what an erasure runs: ``SqliteStore.compact_search``);
- **append cost** with the index against without (``bench.storebench``'s shapes, the store
  opened with ``search_index`` on and off: ``ROOMCHAT_SEARCH_INDEX``).

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
    kinds = {
        "common word (rank 1)": words[0],
        "rank 10 word": words[9],
        "rank 1000 word": words[999],
        "rare word (rank 20000)": words[19_999],
        "absent word": "zzzzqqq",
        "two common words": f"{words[0]} {words[1]}",
        "common + rare": f"{words[0]} {words[19_999]}",
        "phrase of two common": f'"{words[0]} {words[1]}"',
        "prefix (3 chars)": words[2][:3] + "*",
        "five words": " ".join(words[i] for i in (0, 3, 7, 20, 50)),
    }
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="roomchat search on the embedded engine")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--noise", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--append-seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--skip-appends", action="store_true")
    args = parser.parse_args(argv)
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

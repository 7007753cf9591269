"""Throughput of roomchat's embedded store (``rooms.engines.sqlite.SqliteStore``), apart from
the server.

Simulated rooms call ``append()`` in a loop the way room actors do: each awaits its append before
the next, so concurrency comes from many rooms (the store's writer thread group-commits whatever is
pending). Three shapes:

- ``1 room x 1``: one room, one message per append: each message waits for its own commit
  (the worst case: a lightly loaded room);
- ``1 room x 32``: one room, batches of 32 (a busy room: the actor stores what piled up);
- ``100 rooms x 1``: 100 rooms, one message per append, concurrently (group commit).

Run by :mod:`bench.run` in a child process pinned to the server core:
``python -m bench.storebench --seconds S`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rooms.engines.sqlite import SqliteStore
from rooms.messages import Draft

TEXT = "1234.567|3|lorem ipsum dolor sit amet, consectetur adipiscing elit"


async def _shape(rooms: int, batch: int, seconds: float, synchronous: str,
                 search_index: bool = True) -> dict[str, Any]:
    """``search_index=False``: the search index's triggers dropped once the store is open
    (what appends cost without it: ``bench.search``)."""
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        store = await SqliteStore.open(Path(tmp) / "roomchat.sqlite3", synchronous=synchronous)
        if not search_index:
            drop_search_triggers(Path(tmp) / "roomchat.sqlite3")
        stored = 0
        commits: list[float] = []
        deadline = time.perf_counter() + seconds

        async def room(r: int) -> None:
            nonlocal stored
            name = f"store-{r}"
            seq = 0
            while time.perf_counter() < deadline:
                msgs = []
                for _ in range(batch):
                    seq += 1
                    msgs.append(Draft(f"u{r}", f"User {r}", f"c-{seq}", TEXT,
                                      int(time.time() * 1000)))
                t0 = time.perf_counter()
                await store.append(name, msgs, 100_000)
                commits.append(time.perf_counter() - t0)
                stored += batch

        t0 = time.perf_counter()
        try:
            async with asyncio.TaskGroup() as tg:
                for r in range(rooms):
                    tg.create_task(room(r))
        finally:
            await store.close()
        elapsed = time.perf_counter() - t0
    commits.sort()
    return {
        "rooms": rooms,
        "batch": batch,
        "synchronous": synchronous,
        "seconds": elapsed,
        "messages": stored,
        "messages_per_s": stored / elapsed,
        "append_p50_ms": commits[len(commits) // 2] * 1000 if commits else None,
        "append_p99_ms": commits[int(len(commits) * 0.99)] * 1000 if commits else None,
    }


def drop_search_triggers(path: Path) -> None:
    """Drop the search index's triggers from the database at ``path`` (benchmarks only)."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                    "AND name LIKE 'message_search_%'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.commit()
    finally:
        conn.close()


async def run_all(seconds: float, synchronous: str) -> dict[str, Any]:
    """Every shape for ``seconds`` each."""
    # (1, 512): what one saturated room appends per commit (max_batch); (100, 32): busy rooms.
    shapes = [(1, 1), (1, 32), (1, 512), (100, 1), (100, 32)]
    results = [await _shape(r, b, seconds, synchronous) for r, b in shapes]
    return {"status": "ok", "shapes": results}


def main(argv: list[str] | None = None) -> int:
    """Print the JSON result (or a failure object) on stdout."""
    parser = argparse.ArgumentParser(description="roomchat SqliteStore throughput")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--synchronous", default="FULL")
    args = parser.parse_args(argv)
    try:
        out = asyncio.run(run_all(args.seconds, args.synchronous))
    except Exception as exc:  # reported, not raised: the benchmark goes on without it
        out = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of roomchat's embedded store (``rooms.engines.sqlite.SqliteStore``), apart from
the server; with ``--postgres``, of the PostgreSQL log (``rooms.engines.postgres.PostgresLog``)
on a PostgreSQL of its own.

Simulated rooms call ``append()`` in a loop the way room actors do: each awaits its append before
the next, so concurrency comes from many rooms (the store's writer thread group-commits whatever is
pending). Three shapes:

- ``1 room x 1``: one room, one message per append: each message waits for its own commit
  (the worst case: a lightly loaded room);
- ``1 room x 32``: one room, batches of 32 (a busy room: the actor stores what piled up);
- ``100 rooms x 1``: 100 rooms, one message per append, concurrently (group commit).

The store keeps its search index as the server's ``ROOMCHAT_SEARCH_INDEX`` says (from the
environment, default on; ``--search-index 0|1`` overrides it), and each shape reports the CPU
this process spent per message stored (the writer thread and the loop): steadier than the rates
on a shared machine.

Run by :mod:`bench.run` in a child process pinned to the server core:
``python -m bench.storebench --seconds S`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.config import env_name, load_config
from rooms.engines.sqlite import SqliteStore
from rooms.messages import Draft

TEXT = "1234.567|3|lorem ipsum dolor sit amet, consectetur adipiscing elit"


async def _busy(until: float) -> None:
    """Keep the event loop busy in Python, as a loaded server's is (fan-out, parsing), giving
    it up only for a zero-timeout poll per iteration: the writer thread then competes with the
    loop for the GIL as it does in a server."""
    while time.perf_counter() < until:
        for _ in range(2000):
            pass
        await asyncio.sleep(0)


class _PostgresTarget:
    """The PostgreSQL log (``rooms.engines.postgres.PostgresLog``) on a server of the
    benchmark's own (tests/postgres_server.py: fsync on, ``synchronous_commit`` on), a fresh
    database per shape; ``append`` as ``SqliteStore.append`` is called."""

    def __init__(self, url: str, postmaster: int) -> None:
        self.url = url
        self.postmaster = postmaster

    async def open(self) -> Any:
        from rooms.engines.postgres import PostgresLog

        log = await PostgresLog.open(self.url, max_connections=8, timeout=10)

        class Store:
            async def append(self, room: str, drafts: list[Draft], retention: int) -> None:
                await log.append(room, drafts, retention=retention, dedup_window=0)

            def appends_per_group(self) -> float | None:
                """Appends per transaction (the log's group commit), if it groups them."""
                appends = getattr(log, "_appends", None)
                return appends.appends / max(1, appends.groups) if appends else None

            async def close(self) -> None:
                await log.close()

        return Store()


async def _shape(rooms: int, batch: int, seconds: float, synchronous: str,
                 search_index: bool = True, busy_loop: bool = False,
                 postgres: _PostgresTarget | None = None) -> dict[str, Any]:
    """``search_index``: ``SqliteStore.open``'s (``ROOMCHAT_SEARCH_INDEX``): off, the store
    keeps no search index (what appends cost without it: ``bench.search``). ``busy_loop``:
    run ``_busy`` beside the rooms (the CPU per message then includes it: compare context
    switches and syscalls, not CPU). ``postgres``: the PostgreSQL log instead (its server's
    CPU per message reported beside this process's)."""
    from bench.notify import _cpu_of_tree

    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        store: Any
        if postgres is None:
            store = await SqliteStore.open(Path(tmp) / "roomchat.sqlite3",
                                           synchronous=synchronous, search_index=search_index)
        else:
            store = await postgres.open()
        pg0 = _cpu_of_tree(postgres.postmaster) if postgres is not None else 0.0
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

        t0, c0 = time.perf_counter(), time.process_time()
        u0 = resource.getrusage(resource.RUSAGE_SELF)  # every thread's, the writer's included
        try:
            async with asyncio.TaskGroup() as tg:
                for r in range(rooms):
                    tg.create_task(room(r))
                if busy_loop:
                    tg.create_task(_busy(deadline))
        finally:
            await store.close()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        pg_cpu = _cpu_of_tree(postgres.postmaster) - pg0 if postgres is not None else 0.0
        grouped = store.appends_per_group() if postgres is not None else None
    commits.sort()
    return {
        "engine": "sqlite" if postgres is None else "postgres",
        "server_cpu_us_per_message": pg_cpu / max(1, stored) * 1e6,
        "rooms": rooms,
        "batch": batch,
        "synchronous": synchronous,
        "search_index": search_index,
        "seconds": elapsed,
        "messages": stored,
        "messages_per_s": stored / elapsed,
        "cpu_us_per_message": cpu / max(1, stored) * 1e6,
        # Context switches of the whole process (loop and writer thread) per message stored:
        # voluntary ones are waits (a thread hand-off, an fsync), involuntary ones preemption.
        "voluntary_switches_per_message": (u1.ru_nvcsw - u0.ru_nvcsw) / max(1, stored),
        "involuntary_switches_per_message": (u1.ru_nivcsw - u0.ru_nivcsw) / max(1, stored),
        "append_p50_ms": commits[len(commits) // 2] * 1000 if commits else None,
        "append_p99_ms": commits[int(len(commits) * 0.99)] * 1000 if commits else None,
        # PostgreSQL: appends per transaction (its group commit), None without one.
        "appends_per_group": grouped,
    }


SHAPES = ((1, 1), (1, 32), (1, 512), (100, 1), (100, 32))
"""(rooms, batch): (1, 512) is what one saturated room appends per commit (max_batch); (100, 32):
busy rooms."""


async def run_all(seconds: float, synchronous: str, search_index: bool = True,
                  shapes: Sequence[tuple[int, int]] = SHAPES,
                  busy_loop: bool = False, postgres: bool = False) -> dict[str, Any]:
    """Every shape for ``seconds`` each (``postgres``: on the PostgreSQL log, a server of its
    own started for the run)."""
    if not postgres:
        results = [await _shape(r, b, seconds, synchronous, search_index, busy_loop)
                   for r, b in shapes]
        return {"status": "ok", "shapes": results}
    from tests.postgres_server import PostgresServer

    with PostgresServer() as pg:
        assert pg._proc is not None
        results = [await _shape(r, b, seconds, synchronous, search_index, busy_loop,
                                _PostgresTarget(pg.database(migrated=True), pg._proc.pid))
                   for r, b in shapes]
    return {"status": "ok", "shapes": results}


def _shapes(text: str) -> list[tuple[int, int]]:
    """``1x1,100x32`` -> [(1, 1), (100, 32)]."""
    try:
        pairs = [part.split("x") for part in text.split(",")]
        return [(int(rooms), int(batch)) for rooms, batch in pairs]
    except ValueError:
        raise argparse.ArgumentTypeError(f"shapes are ROOMSxBATCH,...: {text!r}") from None


def _search_index_setting() -> bool:
    """``ROOMCHAT_SEARCH_INDEX`` as the server reads it (the rest of the environment is not
    this benchmark's business)."""
    name = env_name("search_index")
    return load_config({name: os.environ[name]} if name in os.environ else {}).search_index


def main(argv: list[str] | None = None) -> int:
    """Print the JSON result (or a failure object) on stdout."""
    parser = argparse.ArgumentParser(description="roomchat SqliteStore throughput")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--search-index", choices=("0", "1"), default=None,
                        help="keep the search index (default: ROOMCHAT_SEARCH_INDEX, on)")
    parser.add_argument("--shapes", type=_shapes, default=list(SHAPES),
                        help="ROOMSxBATCH,... (default: %(default)s)")
    parser.add_argument("--busy-loop", action="store_true",
                        help="keep the event loop busy beside the rooms, as a server's is")
    parser.add_argument("--postgres", action="store_true",
                        help="the PostgreSQL log (a server of its own) instead of SQLite")
    args = parser.parse_args(argv)
    try:
        search_index = (_search_index_setting() if args.search_index is None
                        else args.search_index == "1")
        out = asyncio.run(run_all(args.seconds, args.synchronous, search_index, args.shapes,
                                  args.busy_loop, args.postgres))
    except Exception as exc:  # reported, not raised: the benchmark goes on without it
        out = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

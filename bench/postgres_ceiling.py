"""The ceiling of PostgreSQL appends of 100 rooms x 1 message, whatever the log's code: the
cheapest transaction a group of 100 rooms could be. One UPDATE of the 100 rooms' counters and
one INSERT of 100 entries (``unnest``, search column built), one COMMIT: no dedup lookup, no
savepoints, no Python per room beyond building the arrays. ``C`` connections run such groups
back to back, each on its own 100 rooms, for ``S`` seconds.

It prints the rate, and the CPU per message of the PostgreSQL server (its process tree, read
while the connections are still open: a backend that exits takes its CPU out of the sum) and of
this process. The server's CPU per message bounds what any design of the log can reach on this
machine: two cores give it at most 2 / (server µs per message) messages a second.

``python -m bench.postgres_ceiling [--connections C] [--seconds S] [--search 0|1]``; a
PostgreSQL of its own (tests/postgres_server.py: fsync on, ``synchronous_commit`` on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from typing import Any

from bench.notify import _cpu_of_tree
from rooms.engines.postgres_schema import SEARCH_CONFIG

TEXT = "1234.567|3|lorem ipsum dolor sit amet, consectetur adipiscing elit"
ROOMS = 100
UPDATE = ("UPDATE rooms SET top = top + 1 FROM unnest(%s::text[]) AS r(name) "
          "WHERE rooms.room = r.name RETURNING rooms.room, rooms.top")


def _insert(search: bool) -> str:
    column = f"to_tsvector('{SEARCH_CONFIG}', t)" if search else "NULL"
    return ("INSERT INTO entries (room, seq, kind, user_id, name, client_id, text, ts, search) "
            f"SELECT r, s, 0, u, u, c, t, %s, {column} FROM unnest(%s::text[], %s::bigint[], "
            "%s::text[], %s::text[], %s::text[]) AS x(r, s, u, c, t)")


async def _groups(url: str, index: int, deadline: float, search: bool, counts: dict[str, int],
                  finished: asyncio.Event, done: asyncio.Event) -> None:
    import psycopg

    names = [f"w{index}-r{i}" for i in range(ROOMS)]
    users = [f"u{i}" for i in range(ROOMS)]
    insert = _insert(search)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        group = 0
        while time.perf_counter() < deadline:
            group += 1
            async with conn.transaction():
                cursor = await conn.execute(UPDATE, (names,))
                tops: dict[str, int] = dict(await cursor.fetchall())
                await conn.execute(insert, (
                    int(time.time() * 1000), names, [tops[r] for r in names], users,
                    [f"c{index}-{group}-{i}" for i in range(ROOMS)], [TEXT] * ROOMS))
            counts["messages"] += ROOMS
        counts["finished"] += 1
        if counts["finished"] == counts["connections"]:
            finished.set()
        await done.wait()  # the connection stays open until the CPU is read


async def measure(connections: int, seconds: float, search: bool) -> dict[str, Any]:
    import psycopg

    from tests.postgres_server import PostgresServer

    with PostgresServer() as server:
        assert server._proc is not None
        url = server.database(migrated=True)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("INSERT INTO rooms (room, epoch) SELECT 'w' || w || '-r' || i, "
                               "'e' FROM generate_series(0, %s) w, generate_series(0, %s) i",
                               (connections - 1, ROOMS - 1))
        postmaster = server._proc.pid
        counts = {"messages": 0, "finished": 0, "connections": connections}
        finished, done = asyncio.Event(), asyncio.Event()
        server0, own0 = _cpu_of_tree(postmaster), resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        tasks = [asyncio.create_task(_groups(url, i, started + seconds, search, counts,
                                             finished, done)) for i in range(connections)]
        await finished.wait()
        elapsed = time.perf_counter() - started
        server1, own1 = _cpu_of_tree(postmaster), resource.getrusage(resource.RUSAGE_SELF)
        done.set()
        await asyncio.gather(*tasks)
    messages = max(1, counts["messages"])
    own = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
    return {"connections": connections, "search_index": search, "seconds": round(elapsed, 2),
            "messages_per_s": round(counts["messages"] / elapsed),
            "server_cpu_us_per_message": round((server1 - server0) / messages * 1e6, 1),
            "client_cpu_us_per_message": round(own / messages * 1e6, 1),
            "load_1min": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--search", choices=("0", "1"), default="1")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.connections, args.seconds, args.search == "1"))))


if __name__ == "__main__":
    main()

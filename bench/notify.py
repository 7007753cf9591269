"""Where PostgreSQL's LISTEN/NOTIFY stops scaling as roomchat's bus (``NotifyBus``,
rooms/engines/postgres_bus.py). Run by hand; not part of ``make bench``:

    .venv/bin/python -m bench.notify [--listeners 1,2,4] [--rooms 1000] [--seconds 5]
                                     [--mode bus|engine] [--rates 250,500,1000,...]

A PostgreSQL of its own (tests/postgres_server.py: ``initdb`` in a temporary directory, fsync
on, ``synchronous_commit`` on), one **writer** (this process) and L **listener** processes
(``--listen``), each LISTENing to every one of ``--rooms`` rooms (small rooms spread over every
process: each process serves members of every room, the worst case for the channel lists).
For each L, the writer offers rising rates of one-message batches to random rooms, open loop
(every 10 ms, what is due), for ``--seconds`` each:

- ``--mode bus``: straight into ``NotifyBus.entries`` (what NOTIFY alone carries: the bus's
  publisher sends up to 256 notices per transaction);
- ``--mode engine``: ``SplitEngine(PostgresLog, NotifyBus).append``, as rooms do (the log's
  commit, then the notice): appends in flight are bounded by ``--in-flight``;
- ``--publish-batch 1``: one NOTIFY transaction per notice (what notifying inside each append's
  transaction would cost), against the bus's batches.

Each message carries its scheduled time; listeners report latency (schedule to arrival, so
queueing in the writer counts) p50/p99/max and the count received. Reported per step: offered
and delivered rate per listener, latency, PostgreSQL's CPU (the postmaster and its children,
from /proc, as a share of one core), the writer's and the busiest listener's CPU, commits/s
(``pg_stat_database``), the notices dropped, ``pg_notification_queue_usage()``, and the
commonest waits of active backends (``pg_stat_activity``, sampled every 0.1 s; JSON only).
A series stops at the first step whose p99 passes ``--p99-limit`` or that delivers under 90%
of what was offered. Prints JSON lines, then a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from rooms.messages import Draft, WireMessage

TICK = 0.01
"""Seconds between two rounds of the open-loop writer."""
TICKS = os.sysconf("SC_CLK_TCK")


def room_name(i: int) -> str:
    return f"bench-room-{i}"


# -- a listener process ------------------------------------------------------------------------


class _Heard:
    """A ``RoomListener`` for every room: latencies of what arrives."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.resyncs = 0
        self.rooms = 0
        self.listening = asyncio.Event()

    def remote_messages(self, messages: list[WireMessage]) -> None:
        now = time.time()
        for m in messages:
            self.latencies.append(now - float(orjson.loads(m.wire)["text"]))

    def remote_presence(self) -> None:
        pass

    def resync(self) -> None:
        self.resyncs += 1
        if self.resyncs >= self.rooms:
            self.listening.set()

    def remote_banned(self, user: str, reason: str) -> None:
        pass

    def remote_read(self, user: str, seq: int) -> None:
        pass


async def listen(url: str, rooms: int) -> None:
    """The listener process: LISTEN to every room, say ``ready``; on ``go`` clear the figures,
    on ``report`` print them (JSON), on ``stop`` (or EOF) close."""
    from rooms.engines.postgres_bus import NotifyBus

    bus = await NotifyBus.open(url)
    heard = _Heard()
    heard.rooms = rooms
    for i in range(rooms):
        bus.subscribe(room_name(i), heard)
    await heard.listening.wait()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    cpu0 = t0 = 0.0
    try:
        while line := (await reader.readline()).decode().strip():
            if line == "go":
                heard.latencies = []
                cpu0, t0 = _own_cpu(), time.monotonic()
            elif line == "report":
                got = sorted(heard.latencies)
                print(json.dumps({"received": len(got), **_percentiles(got),
                                  "pointers": bus.pointers,
                                  "cpu": (_own_cpu() - cpu0) / (time.monotonic() - t0)}),
                      flush=True)
            elif line == "stop":
                break
    finally:
        await bus.close()


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    return {"p50_ms": round(values[len(values) // 2] * 1000, 1),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 1),
            "max_ms": round(values[-1] * 1000, 1)}


# -- the writer ----------------------------------------------------------------------------------


def _cpu_of_tree(root: int) -> float:
    """CPU seconds of ``root`` and its children (PostgreSQL's backends are the postmaster's)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == root or int(fields[1]) == root:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Listeners:
    """L listener processes, driven by lines on their stdin."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs

    @classmethod
    async def start(cls, url: str, count: int, rooms: int) -> Listeners:
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.notify", "--listen", url, "--rooms", str(rooms),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            for _ in range(count)]
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), 120)
            if line.strip() != b"ready":
                raise RuntimeError(f"a listener did not start: {line!r}")
        return cls(procs)

    async def say(self, word: str) -> list[dict[str, Any]]:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(f"{word}\n".encode())
            await p.stdin.drain()
        if word != "report":
            return []
        answers = []
        for p in self.procs:
            assert p.stdout is not None
            answers.append(json.loads(await asyncio.wait_for(p.stdout.readline(), 60)))
        return answers

    async def stop(self) -> None:
        await self.say("stop")
        for p in self.procs:
            await p.wait()


async def _stats(conn: Any) -> tuple[int, float]:
    cursor = await conn.execute(
        "SELECT xact_commit, pg_notification_queue_usage() FROM pg_stat_database "
        "WHERE datname = current_database()")
    commits, usage = await cursor.fetchone()
    return int(commits), float(usage)


async def step(engine: Any, bus: Any, mode: str, rate: float, seconds: float, rooms: int,
               in_flight: int, listeners: Listeners, postmaster: int,
               conn: Any) -> dict[str, Any]:
    """Offer ``rate`` messages a second for ``seconds``; the figures of the step."""
    seqs = [0] * rooms
    pending: set[asyncio.Task[Any]] = set()
    gate = asyncio.Semaphore(in_flight)
    late = 0

    async def append(room: int, stamp: str) -> None:
        async with gate:
            await engine.append(room_name(room), [Draft("w", "W", None, stamp, 0)],
                                retention=0, dedup_window=0)

    waits: dict[str, int] = {}

    async def sample_waits() -> None:
        """What PostgreSQL's backends wait on, sampled every 0.1 s (``pg_stat_activity``)."""
        while True:
            cursor = await conn.execute(
                "SELECT coalesce(application_name, ''), wait_event_type, wait_event "
                "FROM pg_stat_activity WHERE wait_event IS NOT NULL AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend' AND state = 'active'")
            for app, kind, event in await cursor.fetchall():
                key = f"{app or '?'}:{kind}:{event}"
                waits[key] = waits.get(key, 0) + 1
            await asyncio.sleep(0.1)

    await listeners.say("go")
    dropped0, commits0 = bus.dropped, (await _stats(conn))[0]
    sampler = asyncio.create_task(sample_waits())
    cpu0, own0, t0 = _cpu_of_tree(postmaster), _own_cpu(), time.monotonic()
    sent = 0
    end = t0 + seconds
    while (now := time.monotonic()) < end:
        for _ in range(int(rate * (now - t0)) - sent):  # what is due by now
            room = random.randrange(rooms)
            stamp = f"{time.time():.6f}"
            if mode == "bus":
                seqs[room] += 1
                bus.entries(room_name(room), [WireMessage(seqs[room], orjson.dumps(
                    {"type": "message", "room": room_name(room), "seq": seqs[room],
                     "user": "w", "name": "W", "text": stamp, "ts": 0}).decode())])
            else:
                if gate.locked():
                    late += 1
                task = asyncio.create_task(append(room, stamp))
                pending.add(task)
                task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.sleep(max(0.0, now + TICK - time.monotonic()))
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    if pending:
        await asyncio.wait(pending, timeout=30)
    # Let the last notices arrive (a bounded wait: a series that broke is reported as such).
    await asyncio.sleep(1.0)
    elapsed = time.monotonic() - t0
    cpu, own = _cpu_of_tree(postmaster) - cpu0, _own_cpu() - own0
    commits, usage = await _stats(conn)
    answers = await listeners.say("report")
    received = min(a["received"] for a in answers)
    return {
        "mode": mode, "listeners": len(answers), "rooms": rooms, "offered": rate,
        "sent_per_s": round(sent / seconds), "delivered_per_s": round(received / seconds),
        "p50_ms": max(a["p50_ms"] for a in answers), "p99_ms": max(a["p99_ms"] for a in answers),
        "max_ms": max(a["max_ms"] for a in answers),
        "pg_cpu": round(cpu / elapsed, 2), "writer_cpu": round(own / elapsed, 2),
        "listener_cpu": round(max(a.get("cpu", 0.0) for a in answers), 2),
        "commits_per_s": round((commits - commits0) / elapsed),
        "dropped": bus.dropped - dropped0, "queue_usage": usage, "appends_waited": late,
        "complete": received >= sent,
        "waits": dict(sorted(waits.items(), key=lambda kv: -kv[1])[:4]),
    }


async def run(args: argparse.Namespace) -> None:
    import psycopg

    from rooms.engines.postgres import PostgresLog
    from rooms.engines.postgres_bus import NotifyBus
    from rooms.engines.split import SplitEngine
    from tests.postgres_server import PostgresServer

    if args.publish_batch:
        from rooms.engines import postgres_bus

        postgres_bus.PUBLISH_BATCH = args.publish_batch
    results: list[dict[str, Any]] = []
    with PostgresServer() as pg:
        url = pg.database(migrated=True)
        assert pg._proc is not None
        postmaster = pg._proc.pid
        log = await PostgresLog.open(url, max_connections=8, timeout=10)
        bus = await NotifyBus.open(url, timeout=10)
        engine = SplitEngine(log, bus)
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        try:
            for count in args.listeners:
                listeners = await Listeners.start(url, count, args.rooms)
                try:
                    for rate in args.rates:
                        figures = await step(engine, bus, args.mode, rate, args.seconds,
                                             args.rooms, args.in_flight, listeners,
                                             postmaster, conn)
                        print(json.dumps(figures), flush=True)
                        results.append(figures)
                        if (figures["p99_ms"] > args.p99_limit
                                or figures["delivered_per_s"] < 0.9 * figures["sent_per_s"]
                                or figures["sent_per_s"] < 0.9 * rate):
                            break
                finally:
                    await listeners.stop()
        finally:
            await conn.close()
            await engine.close()
    print()
    print("| mode | listeners | offered/s | delivered/s per listener | p50 ms | p99 ms | "
          "PostgreSQL CPU | writer CPU | busiest listener CPU | commits/s | dropped | "
          "queue usage |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['listeners']} | {r['offered']:.0f} | {r['delivered_per_s']}"
              f" | {r['p50_ms']} | {r['p99_ms']} | {r['pg_cpu']:.2f} | {r['writer_cpu']:.2f} | "
              f"{r['listener_cpu']:.2f} | {r['commits_per_s']} | {r['dropped']} | "
              f"{r['queue_usage']:.4f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", help=argparse.SUPPRESS)  # a listener process: its URL
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--listeners", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2, 4])
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                        default=[250, 500, 1000, 2000, 4000, 8000, 16000])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--mode", choices=("bus", "engine"), default="bus")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--publish-batch", type=int, default=0,
                        help="notices per NOTIFY transaction (0: the bus's PUBLISH_BATCH; 1: "
                             "one transaction per notice, as NOTIFY inside each append)")
    parser.add_argument("--p99-limit", type=float, default=250.0,
                        help="milliseconds: a step past it ends its series")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if args.listen:
        asyncio.run(listen(args.listen, args.rooms))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()

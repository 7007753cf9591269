"""Scenario 8: a randomized soak. 60-150 clients in several rooms of one real ``roomchat serve``
(embedded SQLite; the same data dir and port after every restart) for ``ROOMCHAT_CHAOS_SECONDS``
(30 s under ``make test``, 300 s under ``make chaos``). At random the server is killed -9 or
stopped with SIGTERM and restarted; clients drop and resume (``after=<last seq>``, unacked
messages resent with the same id), and some stall (stop reading their socket) for a while.
At the end every client's seq list is 1..top of its room and every acked message is stored
exactly once. The seed is printed; ``ROOMCHAT_CHAOS_SEED`` replays it."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from pathlib import Path

from tests.chaos.harness import (
    ENV,
    SOAK_SECONDS,
    StallingChatter,
    audit_embedded,
    record,
    restart,
    rss_mb,
    seed,
    stop,
)
from tests.clients import Chatter, Target, settle
from tests.support import Process, start_process

ALLOWED_CLOSES = {1006, 1012, 4009, 4010}
"""Kill -9 (1006), SIGTERM (1012), and the stalled ones: 4009 (slow) or 4010 (silent)."""


async def roam(c: StallingChatter, target: Target, rng: random.Random, until: float,
               counts: Counter[str]) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        if not c.open:
            await c.connect(target)
        roll = rng.random()
        if roll < 0.02:  # drop, maybe with a message in flight; come back a little later
            if rng.random() < 0.5:
                await c.say()
            await c.disconnect()
            counts["drops"] += 1
            await asyncio.sleep(rng.uniform(0, 2))
            continue
        if roll < 0.03:  # stall: stop reading for a while (long ones get 4009/4010)
            counts["stalls"] += 1
            await c.stall(rng.uniform(1, 8))
            continue
        await c.say()
        await c.resend()
        await asyncio.sleep(rng.uniform(0.5, 3))


async def test_randomized_soak(tmp_path: Path) -> None:
    value = seed("soak")
    rng = random.Random(value)
    clients = rng.randint(60, 150)
    rooms = [f"soak{r}" for r in range(rng.randint(3, 6))]
    data = tmp_path / "data"
    proc: Process = await asyncio.to_thread(start_process, data, None, ENV)
    target: Target = proc  # the port stays the same across restarts
    chatters = [StallingChatter(f"s{i}", rooms[i % len(rooms)]) for i in range(clients)]
    counts: Counter[str] = Counter()
    term_exits: list[float] = []
    term_codes: list[int] = []
    bad_exits: list[str] = []
    rss: list[float] = []
    loop = asyncio.get_running_loop()
    until = loop.time() + SOAK_SECONDS
    drain = float(ENV["ROOMCHAT_DRAIN_TIMEOUT"])

    async def havoc() -> None:
        nonlocal proc
        while loop.time() < until - 8:
            await asyncio.sleep(rng.uniform(6, 15))
            rss.append(rss_mb(proc.proc.pid))
            sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
            took = await asyncio.to_thread(stop, proc, sig)
            counts[sig.name] += 1
            if sig == signal.SIGTERM:
                term_exits.append(took)
                term_codes.append(proc.proc.returncode)
                if proc.proc.returncode != 0 or took > drain + 1.0:
                    # Checked at the end, so the soak still runs and audits to completion.
                    bad_exits.append(f"exit {proc.proc.returncode} after {took:.1f}s")
            proc = await asyncio.to_thread(restart, proc, data, ENV)

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(havoc())
            for i, c in enumerate(chatters):
                tg.create_task(roam(c, target, random.Random(value * 1000 + i), until, counts))
        rss.append(rss_mb(proc.proc.pid))
        everyone: list[Chatter] = list(chatters)
        await settle(everyone, [target], timeout=90)
        tops = {room: await audit_embedded(target, data, room, everyone,
                                           context=f"[seed {value}] ") for room in rooms}
        closes = Counter(code for c in chatters for code in c.server_closes)
        record("soak", seed=value, seconds=SOAK_SECONDS, clients=clients, rooms=len(rooms),
               messages=sum(len(c.sent) for c in chatters), stored=sum(tops.values()),
               deliveries=sum(len(c.seqs) for c in chatters),
               connects=sum(c.connects for c in chatters),
               kill_9=counts["SIGKILL"], sigterm=counts["SIGTERM"],
               sigterm_exit_s=[round(t, 2) for t in term_exits], sigterm_codes=term_codes,
               drops=counts["drops"], stalls=counts["stalls"],
               duplicate_acks=sum(c.duplicate_acks for c in chatters),
               server_closes={str(k): v for k, v in closes.items()},
               rss_max_mb=round(max(rss), 1))
        unexpected = {code: n for code, n in closes.items() if code not in ALLOWED_CLOSES}
        assert not unexpected, f"[seed {value}] unexpected close codes: {unexpected}"
        assert counts["SIGKILL"] + counts["SIGTERM"] >= 1, "no restart happened"
        assert not bad_exits, f"[seed {value}] SIGTERM did not exit 0 within {drain + 1:g}s: " \
                              f"{bad_exits}"
        for c in chatters:
            await c.disconnect()
    finally:
        proc.kill_all()

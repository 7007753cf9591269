"""Scenario 6, on Redis: randomized and longer than the integration tests it reuses
(``tests/integration/test_scaleout_faults.py``, ``test_scaleout.py``) and their clients and
audit (``tests.clients``, ``tests.audit``). Clients wander between
two ``roomchat serve`` processes sharing Redis (AOF, ``appendfsync always``) while, at random,
Redis is crashed (SIGKILL) and restarted and one of the processes is killed -9 and restarted;
then the same audit: gapless seqs per client, every acked message stored exactly once."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

from tests.audit import audit
from tests.chaos.harness import (
    LIFT_CAPS,
    StallingChatter,
    pick,
    record,
    restart,
    seed,
    stop,
)
from tests.clients import Chatter, Target, settle, wander
from tests.redis_server import RedisServer
from tests.support import SCALEOUT_ENV, server_process, wait_ready

# As tests/integration/test_scaleout_faults.py: rooms ride out a Redis restart (up to 10 s).
REDIS_ENV = {**SCALEOUT_ENV, "ROOMCHAT_STORE_OUTAGE_TIMEOUT": "10", **LIFT_CAPS}


def store(redis: RedisServer) -> list[str]:
    return ["--store-url", redis.url]


async def test_redis_crashes_and_process_kills_at_random(tmp_path: Path) -> None:
    value = seed("redis-chaos")
    rng = random.Random(value)
    seconds = pick(15, 90)
    with RedisServer(tmp_path / "redis", aof=True) as redis, \
            server_process(tmp_path / "a", env=REDIS_ENV, args=store(redis)) as a, \
            server_process(tmp_path / "b", env=REDIS_ENV, args=store(redis)) as b:
        await asyncio.to_thread(wait_ready, a, b)
        procs = {"a": a, "b": b}
        targets: list[Target] = [a, b]
        rooms = ["r0", "r1"]
        # StallingChatter (never stalled here): its connect retries a handshake cut by kill -9.
        chatters: list[Chatter] = [StallingChatter(f"u{i}", rooms[i % 2]) for i in range(12)]
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        faults: list[str] = []

        async def havoc() -> None:
            while loop.time() < until - 4:
                await asyncio.sleep(rng.uniform(2, 5))
                if rng.random() < 0.5:
                    redis.stop(crash=True)
                    faults.append("redis-crash")
                    await asyncio.sleep(rng.uniform(0.5, 3))
                    redis.start()
                else:
                    name = rng.choice(["a", "b"])
                    await asyncio.to_thread(stop, procs[name], signal.SIGKILL)
                    faults.append(f"kill-9-{name}")
                    procs[name] = await asyncio.to_thread(
                        restart, procs[name], tmp_path / name, REDIS_ENV, store(redis))

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(havoc())
                for i, c in enumerate(chatters):
                    tg.create_task(wander(c, targets, random.Random(value * 100 + i), until))
            if not redis.running:
                redis.start()
            await settle(chatters, targets, timeout=60)
            for room in rooms:
                await audit(redis.url, targets[0], room, chatters, context=f"[seed {value}] ")
            record("redis-chaos", seed=value, seconds=seconds, clients=len(chatters),
                   faults=faults, messages=sum(len(c.sent) for c in chatters),
                   connects=sum(c.connects for c in chatters),
                   deliveries=sum(len(c.seqs) for c in chatters),
                   duplicate_acks=sum(c.duplicate_acks for c in chatters),
                   unavailable_errors=sum(c.errors["unavailable"] for c in chatters))
            assert faults, "no fault happened"
            for c in chatters:
                await c.disconnect()
        finally:
            for proc in procs.values():  # restarted ones are ours to stop, even on a failure
                proc.kill_all()

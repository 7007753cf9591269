"""One room across processes on Redis, under faults: Redis restarted mid-traffic, pub/sub
messages lost (dropped batches, killed subscriber connections), a soak of random reconnects
across three processes, and handshakes while Redis is away.

Real ``roomchat serve`` processes, a real redis-server and real WebSocket clients
(``tests.clients.Chatter``). Every test ends with the same audit (``tests.audit.audit``): each
client's seqs are exactly 1..top, with no gap and no duplicate across its reconnects; everything
it sent was acked; and the room read back with ``after=0`` (and straight from the Redis stream)
holds every acked message exactly once, at its acked seq.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import replace
from pathlib import Path

import pytest
import websockets
from redis import asyncio as aioredis
from websockets.exceptions import InvalidStatus

from rooms.engines.redis_feed import RedisFeed
from tests.audit import audit
from tests.clients import Chatter, Target, chat, connect, settle, traffic, wander
from tests.redis_server import RedisServer
from tests.support import (
    SCALEOUT_ENV,
    SLOW,
    make_config,
    make_token,
    running_server,
    server_process,
    until,
    wait_ready,
)

ENV = {**SCALEOUT_ENV, "ROOMCHAT_STORE_OUTAGE_TIMEOUT": "10"}


def args(redis: RedisServer) -> list[str]:
    return ["--store-url", redis.url]


async def test_redis_restarted_mid_traffic_loses_nothing_and_resumes_live(
        tmp_path: Path) -> None:
    # a's rooms give up on the outage quickly (1013, clients reconnect with after=last); b's
    # keep their sockets open through it (clients get `unavailable` and resend).
    with RedisServer(tmp_path / "redis", aof=True) as redis, \
            server_process(tmp_path / "a", args=args(redis),
                           env={**ENV, "ROOMCHAT_STORE_OUTAGE_TIMEOUT": "1.5"}) as a, \
            server_process(tmp_path / "b", env=ENV, args=args(redis)) as b:
        room = "restart"
        targets: list[Target] = [a, b, a, b]
        chatters = [Chatter(f"u{i}", room) for i in range(4)]
        for c, t in zip(chatters, targets, strict=True):
            await c.connect(t)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for c, t in zip(chatters, targets, strict=True):
                tg.create_task(chat(c, t, stop, 0.05))
            await until(lambda: all(len(c.acked) >= 5 for c in chatters), 15,
                        "traffic before the restart")
            before = {c.user: dict(c.acked) for c in chatters}
            redis.stop(crash=True)  # SIGKILL: only what was fsynced (appendfsync always) stays
            # Away until every client has met the outage: `unavailable` for all, and a's
            # rooms given up (1013, after its 1.5 s outage timeout).
            await until(lambda: all(c.errors["unavailable"] for c in chatters)
                        and all(1013 in c.server_closes for c in chatters[0::2]), 15,
                        "every client to meet the outage")
            redis.start()
            during = [len(c.acked) for c in chatters]
            await until(lambda: all(len(c.acked) > n for c, n in zip(chatters, during,
                                                                      strict=True)),
                        30, "every client's messages to be acked again after the restart")
            stop.set()
        await settle(chatters, targets)

        for c in chatters:
            assert c.errors["unavailable"] > 0, f"{c}: no `unavailable` during the outage"
        for c in chatters[0::2]:  # on a
            assert 1013 in c.server_closes, f"{c}: not closed with 1013: {c.server_closes}"
            assert c.connects >= 2
        for c in chatters[1::2]:  # on b: kept through the outage
            assert c.server_closes == [], c.server_closes
        for c, acked in zip(chatters, before.values(), strict=True):
            for cid, seq in acked.items():
                assert c.acked[cid] == seq

        # Live delivery resumes: new messages from both sides reach members on both processes
        # on the connections they have now (not by replay after a reconnect).
        connects = [c.connects for c in chatters]
        for c in chatters[:2]:
            await c.say()
        await settle(chatters, targets, timeout=10)
        assert [c.connects for c in chatters] == connects

        # Messages acked before the crash are still deduplicated after the restart (the dedup
        # window came back from the AOF), even resent through the other process.
        resent = list(before["u0"].items())[:5]
        u0_on_b, _ = await connect(b, "u0", room, after=chatters[0].last)
        for cid, _seq in resent:
            await u0_on_b.say(chatters[0].sent[cid], id=cid)
        for cid, seq in resent:
            ack = await u0_on_b.recv_type("ack", 10)
            assert (ack["id"], ack["seq"], ack.get("duplicate")) == (cid, seq, True)
        await u0_on_b.ws.close()

        await audit(redis.url, b, room, chatters)
        for c in chatters:
            await c.disconnect()


def lossy_dispatch(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Make every in-process Redis feed (``RedisFeed``) drop message batches from other
    processes: every third one while ``mode`` is 1, all of them while it is 2, none while 0.
    Returns the knobs and the count of batches dropped."""
    knobs = {"mode": 1, "seen": 0, "dropped": 0}
    original = RedisFeed.dispatch

    def dispatch(self: RedisFeed, channel: bytes, data: bytes) -> None:
        if data[:1] == b"m" and data[1:].partition(b"\n")[0].decode() != self.node:
            knobs["seen"] += 1
            if knobs["mode"] == 2 or (knobs["mode"] == 1 and knobs["seen"] % 3 == 0):
                knobs["dropped"] += 1
                return
        original(self, channel, data)

    monkeypatch.setattr(RedisFeed, "dispatch", dispatch)
    return knobs


async def test_dropped_pubsub_batches_are_repaired_from_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    knobs = lossy_dispatch(monkeypatch)
    with RedisServer(tmp_path / "redis", aof=False) as redis, \
            server_process(tmp_path / "remote", env=ENV, args=args(redis)) as remote:
        config = replace(make_config(tmp_path / "victim", sync_interval=0.5, presence_ttl=2,
                                     rate_burst=1000, rate_per_sec=1000),
                         store_url=redis.url)
        async with running_server(config) as victim:
            room = "lossy"
            # On the victim: one member that writes too, one that only listens.
            targets: list[Target] = [victim, victim, remote, remote]
            chatters = [Chatter(u, room) for u in ("v-writer", "v-listener", "r0", "r1")]
            for c, t in zip(chatters, targets, strict=True):
                await c.connect(t)
            writers = [chatters[0], chatters[2], chatters[3]]
            for _ in range(40):
                for c in writers:
                    await c.say()
                await asyncio.sleep(0.02)
            await settle(chatters, targets, timeout=15)
            assert knobs["dropped"] >= 5, knobs

            # A loss at the very end, with nothing after it to reveal the jump: the periodic
            # sync (0.5 s) finds the log ahead and repairs it.
            knobs["mode"] = 2
            dropped = knobs["dropped"]
            for c in chatters[2:]:
                await c.say()
            await settle(chatters, targets, timeout=10)
            assert knobs["dropped"] > dropped, knobs
            knobs["mode"] = 0

            assert [c.connects for c in chatters] == [1, 1, 1, 1], "repaired only by replay"
            await audit(redis.url, remote, room, chatters)
            for c in chatters:
                await c.disconnect()


async def test_resume_on_a_process_whose_feed_lags_sees_no_duplicate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that saw seq N on one process and resumes with ``after=N`` on another whose
    pub/sub feed has not delivered N yet (a slow link, a busy loop) must get a gapless resume:
    ``recovered`` true, nothing at or below N again."""
    original = RedisFeed.dispatch

    def late(self: RedisFeed, channel: bytes, data: bytes) -> None:
        asyncio.get_running_loop().call_later(0.5, original, self, channel, data)

    monkeypatch.setattr(RedisFeed, "dispatch", late)
    with RedisServer(tmp_path / "redis", aof=False) as redis, \
            server_process(tmp_path / "remote", env=ENV, args=args(redis)) as remote:
        config = replace(make_config(tmp_path / "lagging", sync_interval=0.5, presence_ttl=2,
                                     rate_burst=1000, rate_per_sec=1000),
                         store_url=redis.url)
        async with running_server(config) as lagging:
            room = "lag"
            listener, writer = Chatter("listener", room), Chatter("writer", room)
            await listener.connect(lagging)  # the room is live on the lagging process
            await writer.connect(remote)
            for _ in range(3):
                for _ in range(3):
                    await writer.say()
                await settle([writer], [remote], timeout=10)
                await writer.connect(lagging)  # resumes with after=<last seen>, at once
                await writer.connect(remote)
            await settle([listener, writer], [lagging, remote], timeout=10)
            await audit(redis.url, remote, room, [listener, writer])
            for c in (listener, writer):
                await c.disconnect()


async def test_killed_subscriber_connections_resync_without_gaps(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", aof=False) as redis, \
            server_process(tmp_path / "a", env=ENV, args=args(redis)) as a, \
            server_process(tmp_path / "b", env=ENV, args=args(redis)) as b:
        room = "killsub"
        targets: list[Target] = [a, b, a, b]
        chatters = [Chatter(f"u{i}", room) for i in range(4)]
        for c, t in zip(chatters, targets, strict=True):
            await c.connect(t)
        admin = aioredis.Redis.from_url(redis.url)
        try:
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                for c, t in zip(chatters[:3], targets, strict=False):  # u3 only listens
                    tg.create_task(chat(c, t, stop, 0.03))
                for _ in range(3):
                    await traffic(chatters[:3], 10)
                    subscribers = {c["id"] for c in await admin.client_list("pubsub")}
                    assert len(subscribers) == 2, subscribers
                    killed = await admin.execute_command(  # type: ignore[no-untyped-call]
                        "CLIENT", "KILL", "TYPE", "pubsub")
                    assert killed == 2, killed
                    # Both processes come back with new subscriber connections.
                    async with asyncio.timeout(10 * SLOW):
                        while True:
                            now = {c["id"] for c in await admin.client_list("pubsub")}
                            if len(now) == 2 and not now & subscribers:
                                break
                            await asyncio.sleep(0.05)
                await traffic(chatters[:3], 10)  # after the last kill too: its gaps show
                stop.set()
        finally:
            await admin.aclose()
        await settle(chatters, targets, timeout=15)
        assert [c.connects for c in chatters] == [1, 1, 1, 1]
        assert all(c.server_closes == [] for c in chatters)
        await audit(redis.url, a, room, chatters)
        for c in chatters:
            await c.disconnect()


SOAK_SECONDS = float(os.environ.get("ROOMCHAT_SOAK_SECONDS", "20"))


async def test_soak_random_reconnects_across_three_processes(tmp_path: Path) -> None:
    seed = int(os.environ.get("ROOMCHAT_SOAK_SEED") or random.SystemRandom().randrange(10**9))
    print(f"soak seed {seed}: replay with ROOMCHAT_SOAK_SEED={seed} "
          f"ROOMCHAT_SOAK_SECONDS={SOAK_SECONDS:g}")
    context = f"[seed {seed}] "
    with RedisServer(tmp_path / "redis", aof=False) as redis, \
            server_process(tmp_path / "a", env=ENV, args=args(redis)) as a, \
            server_process(tmp_path / "b", env=ENV, args=args(redis)) as b, \
            server_process(tmp_path / "c", env=ENV, args=args(redis)) as c3:
        procs: list[Target] = [a, b, c3]
        rooms = [f"soak{r}" for r in range(5)]
        chatters = [Chatter(f"s{i}", rooms[i % 5]) for i in range(30)]
        end = asyncio.get_running_loop().time() + SOAK_SECONDS
        async with asyncio.TaskGroup() as tg:
            for i, ch in enumerate(chatters):
                tg.create_task(wander(ch, procs, random.Random(seed * 100 + i), end))
        await settle(chatters, procs, timeout=30)
        print(f"soak: {sum(len(ch.sent) for ch in chatters)} messages, "
              f"{sum(ch.connects for ch in chatters)} connects, "
              f"{sum(len(ch.seqs) for ch in chatters)} deliveries, "
              f"{sum(ch.duplicate_acks for ch in chatters)} duplicate acks")
        for room in rooms:
            await audit(redis.url, procs[rooms.index(room) % 3], room, chatters,
                        context=context)
        closes = [(ch, ch.server_closes) for ch in chatters if ch.server_closes]
        assert not closes, f"{context}server closed clients: {closes}"
        assert sum(ch.connects for ch in chatters) >= 60, "too few reconnects to mean much"
        for ch in chatters:
            await ch.disconnect()


async def test_handshakes_get_503_while_redis_is_down_and_succeed_after(
        tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", aof=True) as redis, \
            server_process(tmp_path / "busy", env=ENV, args=args(redis)) as busy, \
            server_process(tmp_path / "idle", env=ENV, args=args(redis)) as idle:
        await asyncio.to_thread(wait_ready, busy, idle)
        alice = Chatter("alice", "hs")  # busy has a room; idle has none
        await alice.connect(busy)
        await alice.say()
        await settle([alice], [busy], timeout=10)

        redis.stop(crash=True)
        loop = asyncio.get_running_loop()
        for proc, room in ((busy, "hs"), (busy, "other"), (idle, "hs")):
            started = loop.time()
            while True:
                assert loop.time() - started < 5 * SLOW, f"{proc.port}/{room}: never refused"
                try:
                    ws = await websockets.connect(proc.url(room, make_token("bob")),
                                                  open_timeout=5 * SLOW)
                except InvalidStatus as exc:
                    assert exc.response.status_code == 503
                    assert b"unavailable" in exc.response.body
                    break
                await ws.close()  # accepted before the outage was noticed: try again
                await asyncio.sleep(0.2)

        redis.start()
        for proc, room in ((busy, "hs"), (busy, "other"), (idle, "hs")):
            name = "busy" if proc is busy else "idle (no room open)"
            try:
                client, welcome = await connect(proc, "bob", room, after=0, patience=15)
            except InvalidStatus as exc:
                raise AssertionError(f"{name}: handshake for {room} still refused 15 s after "
                                     f"Redis came back: {exc.response.status_code}") from exc
            assert welcome["recovered"] is True
            await client.ws.close()
        # The room works again: alice (kept through the outage) and a new member chat.
        if not alice.open:
            await alice.connect(busy)
        bob = Chatter("bob", "hs")
        await bob.connect(idle)
        await bob.say()
        await alice.say()
        await settle([alice, bob], [busy, idle], timeout=15)
        await audit(redis.url, idle, "hs", [alice, bob])
        for c in (alice, bob):
            await c.disconnect()


async def test_a_hung_redis_is_unavailable_within_the_store_timeout(tmp_path: Path) -> None:
    """Issue 20, item 5: a Redis that stops answering (SIGSTOP; a partition looks the same)
    stalled rooms silently for redis-py's 5 s socket timeout: no ack, no ``unavailable``,
    handshakes hanging instead of 503. With ``store_timeout`` (1 s here) a handshake gets 503
    and the room's members ``unavailable`` within it, and once Redis answers again the message
    sent meanwhile is stored and delivered."""
    timeout = 1.0
    margin = 0.8 * SLOW  # this machine's scheduling, on top of the timeout itself
    with RedisServer(tmp_path / "redis", aof=False) as redis:
        config = replace(make_config(tmp_path / "d", store_timeout=timeout,
                                     store_outage_timeout=20.0), store_url=redis.url)
        try:
            async with running_server(config) as srv:
                alice = await srv.connect(user="alice")
                bob = await srv.connect(user="bob")
                for client in (alice, bob):
                    assert (await client.recv())["type"] == "welcome"
                await alice.say("before", id="m0")
                assert (await bob.recv_type("message"))["text"] == "before"
                assert (await alice.recv_type("ack"))["seq"] == 1

                redis.pause()
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(InvalidStatus) as refused:
                    await srv.connect(user="carol")
                assert refused.value.response.status_code == 503
                assert b"unavailable" in refused.value.response.body
                assert loop.time() - started < timeout + margin

                started = loop.time()
                await alice.say("during", id="m1")
                for client in (alice, bob):
                    error = await client.recv_type("error", timeout=timeout + margin)
                    assert error["code"] == "unavailable"
                assert loop.time() - started < timeout + margin

                redis.resume()
                # Stored on the room's retry (deduplicated by id if the hung call got through).
                live = await bob.recv_type("message", timeout=15)
                assert (live["seq"], live["text"]) == (2, "during")
                assert (await alice.recv_type("ack", timeout=5))["seq"] == 2
                late = await srv.connect(user="carol", after="0")
                assert (await late.recv())["seq"] == 2
        finally:
            redis.resume()

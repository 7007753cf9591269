"""One room across two ``roomchat serve`` processes on a real 3-master Redis Cluster
(tests/redis_cluster.py), and its slot moved to another master mid-traffic: every key of the
room migrated one at a time (``MIGRATE``), so appends meet the slot half moved (ASK
redirections, ``TRYAGAIN`` for the scripts whose keys are on both sides) and the room's
shard channel changes node. Ends with the fault tests' audit (``tests.audit.check_room``):
each client's seqs are exactly 1..top, everything sent was acked, and the room read back
and its stream in Redis hold every acked message exactly once, at its acked seq."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster as ClusterClient

from rooms.engines import open_engine
from rooms.engines.redis import RedisEngine, split_cluster_url
from rooms.errors import StoreError
from tests.audit import check_room, read_back
from tests.clients import Chatter, Stored, Target, chat, settle, traffic
from tests.redis_cluster import RedisCluster
from tests.redis_server import redis_server
from tests.support import SCALEOUT_ENV, server_process, until


async def cluster_stream(url: str, room: str) -> list[tuple[int, Stored]]:
    """The room's stream, read straight from the cluster (the layout: rooms/engines/redis.py)."""
    plain, _ = split_cluster_url(url)
    client = ClusterClient.from_url(plain, decode_responses=True)
    try:
        entries: Any = await client.xrange(f"roomchat:{{{room}}}:log")
    finally:
        await client.aclose()
    return [(int(eid.split("-")[1]), (f["user"], f["id"] or None, f["text"]))
            for eid, f in entries]


async def test_a_room_split_across_processes_keeps_every_acked_message_through_a_slot_move(
        tmp_path: Path, redis_cluster: RedisCluster) -> None:
    room = "moving"
    slot = redis_cluster.keyslot(f"roomchat:{{{room}}}:log")
    args = ["--store-url", redis_cluster.url]
    with server_process(tmp_path / "a", env=SCALEOUT_ENV, args=args) as a, \
            server_process(tmp_path / "b", env=SCALEOUT_ENV, args=args) as b:
        targets: list[Target] = [a, b, a, b]
        chatters = [Chatter(f"u{i}", room) for i in range(4)]
        for c, t in zip(chatters, targets, strict=True):
            await c.connect(t)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for c, t in zip(chatters, targets, strict=True):
                tg.create_task(chat(c, t, stop, 0.02))
            await traffic(chatters, 5)
            source = redis_cluster.slot_owner(slot)
            target = next(port for port in redis_cluster.masters().values() if port != source)
            before = [set(c.sent) for c in chatters]
            # One key at a time, 50 ms apart: the room's ~10 keys are split between the two
            # masters for ~0.5 s while all four clients send.
            moved = await asyncio.to_thread(redis_cluster.migrate_slot, slot, target,
                                            pause=0.05)
            # What was sent while the slot moved (its acks may come after the move: refused
            # scripts are retried with backoff, and under load that outlasts the move).
            during = [set(c.sent) - sent for c, sent in zip(chatters, before, strict=True)]
            await traffic(chatters, 10)  # live again, on the slot's new master
            stop.set()
        await settle(chatters, targets, timeout=20)
        assert redis_cluster.slot_owner(slot) == target
        assert moved >= 5, f"only {moved} keys moved: the room's keys were not in its slot"
        assert any(during), "no message was sent while the slot moved"
        assert all(ids <= set(c.acked) for c, ids in zip(chatters, during, strict=True))
        # Refused calls were sent again until they ran: no client was told to resend.
        assert [dict(c.errors) for c in chatters] == [{}] * 4

        wire = await read_back(a, room)
        check_room(room, wire, await cluster_stream(redis_cluster.url, room), "stream",
                   chatters)
        # Both processes hear each other live again after the move (not only by replay).
        connects = [c.connects for c in chatters]
        for c in chatters[:2]:
            await c.say()
        await settle(chatters, targets, timeout=10)
        assert [c.connects for c in chatters] == connects


async def test_the_url_must_say_whether_redis_is_a_cluster(
        tmp_path: Path, redis_cluster: RedisCluster) -> None:
    """A plain ``redis://`` URL naming a cluster node would work for the rooms whose slots
    that node serves and fail (MOVED) for the others; ``?cluster=1`` on a single Redis would
    fail on the first command. Both are refused when the engine opens, saying what to do."""
    node_url = redis_cluster.url.replace("?cluster=1", "")
    with pytest.raises(StoreError, match=r"Redis Cluster: add \?cluster=1"):
        await open_engine(node_url)
    with redis_server(tmp_path / "single") as single, \
            pytest.raises(StoreError, match=r"not a node of a Redis Cluster: remove \?cl"):
        await open_engine(single + "?cluster=1")
    with pytest.raises(StoreError, match=r"bad Redis Cluster URL .*db.* must be 0"):
        await open_engine(redis_cluster.url.replace("/0?", "/1?"))
    with pytest.raises(ValueError, match="cluster=1"):
        await open_engine(redis_cluster.url.replace("cluster=1", "cluster=maybe"))
    engine = await open_engine(redis_cluster.url)
    await engine.close()


async def test_rooms_and_erasure_find_the_rooms_on_every_master(
        redis_cluster: RedisCluster) -> None:
    """``rooms()`` and ``erase`` SCAN for room logs: on a cluster each master holds only its
    slots' keys, so a SCAN of one node finds a third of the rooms."""
    from rooms.messages import Draft

    engine = await RedisEngine.open(redis_cluster.url)
    try:
        names = [f"r{i}" for i in range(12)]
        for name in names:
            await engine.load(name, 10)
            await engine.append(name, [Draft("eve", "Eve", "x", "hi", 1)], retention=0,
                                dedup_window=10)
        owners = {redis_cluster.slot_owner(redis_cluster.keyslot(f"roomchat:{{{n}}}:log"))
                  for n in names}
        assert len(owners) == 3  # the rooms are spread over the three masters
        assert await engine.rooms() == sorted(names)
        erased = await engine.erase("eve")
        assert sorted(erased) == sorted(names)
    finally:
        await engine.close()


async def test_the_live_feed_follows_a_room_whose_slot_moved(
        redis_cluster: RedisCluster) -> None:
    """Redis drops the shard-channel subscriptions of a slot that leaves its node (it sends
    ``sunsubscribe``): the engine subscribes the room again on the slot's new node, and the
    other process's messages arrive live again, not only by a room's sync."""
    from tests.engines import Listener, drafts, wait_for

    room = "follow"
    slot = redis_cluster.keyslot(f"roomchat:{{{room}}}:log")
    a = await RedisEngine.open(redis_cluster.url)
    b = await RedisEngine.open(redis_cluster.url)
    try:
        heard = Listener()
        b.subscribe(room, heard)
        await a.load(room, 10)
        await until(lambda: heard.resyncs > 0, 5, "the subscription's confirmation")
        await a.append(room, drafts(1), retention=0, dedup_window=10)
        await wait_for(heard.arrived, lambda: len(heard.messages) == 1)
        source = redis_cluster.slot_owner(slot)
        target = next(port for port in redis_cluster.masters().values() if port != source)
        # Counted before the move: the new node's confirmation can come before it returns.
        resyncs = heard.resyncs
        await asyncio.to_thread(redis_cluster.migrate_slot, slot, target)
        # Subscribed again on the new node: confirmed (a resync) ...
        await until(lambda: heard.resyncs > resyncs, 5, "the subscription on the new node")
        # ... and live: a's next append reaches b through pub/sub.
        await a.append(room, drafts(1, start=1), retention=0, dedup_window=10)
        await wait_for(heard.arrived, lambda: len(heard.messages) == 2)
        assert [m.seq for m in heard.messages] == [1, 2]
    finally:
        await a.close()
        await b.close()


async def test_a_master_killed_mid_traffic_its_replica_takes_over_and_nothing_acked_is_lost(
        tmp_path: Path) -> None:
    """The room's master is SIGKILLed while four clients on two processes send; its replica
    is promoted after ``NODE_TIMEOUT_MS`` (1 s) and an election. Meanwhile appends fail
    (``unavailable``: not acked, the clients resend), then the rooms go on on the new master
    with every acked message there: on this machine the replica receives each write when the
    client receives its ack (Redis sends both in the same turn of its loop); replication is
    asynchronous, so docs/scaling.md says what a lagging replica would lose. Afterwards both
    processes hear each other live again, without reconnecting anyone."""
    room = "failover"
    env = {**SCALEOUT_ENV, "ROOMCHAT_STORE_OUTAGE_TIMEOUT": "20"}
    with RedisCluster(tmp_path / "cluster", replicas=1) as cluster:
        slot = cluster.keyslot(f"roomchat:{{{room}}}:log")
        master = cluster.slot_owner(slot)
        # The processes' seed node is the master that dies: they must find the cluster
        # through the nodes they learnt of (the subscription reconnects after the kill).
        args = ["--store-url", f"redis://127.0.0.1:{master}/0?cluster=1"]
        with server_process(tmp_path / "a", env=env, args=args) as a, \
                server_process(tmp_path / "b", env=env, args=args) as b:
            targets: list[Target] = [a, b, a, b]
            chatters = [Chatter(f"u{i}", room) for i in range(4)]
            for c, t in zip(chatters, targets, strict=True):
                await c.connect(t)
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                for c, t in zip(chatters, targets, strict=True):
                    tg.create_task(chat(c, t, stop, 0.02))
                await traffic(chatters, 5)
                before = {c.user: dict(c.acked) for c in chatters}
                cluster.kill(master)
                await asyncio.to_thread(cluster.wait_ok, gone=master)
                assert cluster.slot_owner(slot) != master  # the replica serves it now
                await traffic(chatters, 10)
                stop.set()
            await settle(chatters, targets, timeout=30)
            for c in chatters:
                for cid, seq in before[c.user].items():
                    assert c.acked[cid] == seq
            wire = await read_back(a, room)
            check_room(room, wire, await cluster_stream(cluster.url, room), "stream",
                       chatters)
            connects = [c.connects for c in chatters]
            for c in chatters[:2]:
                await c.say()
            await settle(chatters, targets, timeout=10)
            assert [c.connects for c in chatters] == connects

"""The service on the Redis engine: same behaviour, plus rooms that move between processes."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace
from pathlib import Path

import pytest
from redis import asyncio as aioredis
from websockets.exceptions import InvalidStatus

from tests.redis_server import redis_server
from tests.support import (
    collect_messages,
    make_config,
    make_token,
    running_server,
    send_and_ack,
    server_process,
)


async def test_chat_resume_and_dedup_on_redis(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        config = replace(make_config(tmp_path / "d", rate_burst=100), store_url=url)
        async with running_server(config) as srv:
            alice = await srv.connect(user="alice")
            bob = await srv.connect(user="bob")
            await alice.recv()
            await bob.recv()
            for i in range(5):
                await alice.say(f"m{i}", id=f"m{i}")
            seqs = [(await bob.recv_type("message"))["seq"] for _ in range(5)]
            assert seqs == [1, 2, 3, 4, 5]
            await alice.say("m0", id="m0")
            dup = await alice.recv_type("ack")
            while not dup.get("duplicate"):
                dup = await alice.recv_type("ack")
            assert dup["seq"] == 1
            late = await srv.connect(user="carol", after="3")
            assert (await late.recv())["recovered"] is True
            assert [(await late.recv())["seq"] for _ in range(2)] == [4, 5]


async def test_room_moves_to_another_process_and_kill_9_loses_nothing(tmp_path: Path) -> None:
    env = {"ROOMCHAT_RATE_BURST": "1000", "ROOMCHAT_RATE_PER_SEC": "1000"}
    with redis_server(tmp_path / "redis", aof=True) as url:
        args = ["--store-url", url]
        with server_process(tmp_path / "a", env=env, args=args) as first:
            acked = await send_and_ack(first.url("moving", make_token()),
                                        [f"a{i}" for i in range(50)])
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
        assert acked == list(range(1, 51))
        # Another process, with its own data dir, takes the room over from Redis.
        with server_process(tmp_path / "b", env=env, args=args) as second:
            more = await send_and_ack(second.url("moving", make_token()), ["b0", "b1"])
            assert more == [51, 52]
            _, replay = await collect_messages(second.url("moving", make_token("r"), after="0"),
                                               52)
            assert [m["text"] for m in replay] == [f"a{i}" for i in range(50)] + ["b0", "b1"]


async def test_malformed_data_in_redis_neither_fails_joins_nor_crashes_the_room(
        tmp_path: Path) -> None:
    """Issue 20, item 9: what roomchat never writes, written into Redis by hand while a room is
    live (a ban value, a log entry missing its fields, a seq counter and a presence entry that
    are not numbers) gave 500 on join or crashed the room with 1011. Each is read as untrusted
    input: skipped or repaired, and the room carries on."""
    with redis_server(tmp_path / "redis") as url:
        config = replace(make_config(tmp_path / "d", rate_burst=100, sync_interval=0.2,
                                     presence_ttl=2.0), store_url=url)
        raw = aioredis.from_url(url)
        try:
            async with running_server(config) as srv:
                alice = await srv.connect(user="alice")
                assert (await alice.recv())["type"] == "welcome"
                for i in range(3):
                    await alice.say(f"m{i}", id=f"m{i}")
                assert [(await alice.recv_type("ack"))["seq"] for _ in range(3)] == [1, 2, 3]
                await raw.set("roomchat:{lobby}:ban:eve", b"garbage")
                await raw.xadd("roomchat:{lobby}:log", {"user": "x"}, id="0-4")
                await raw.set("roomchat:{lobby}:seq", "four")
                await raw.hset("roomchat:{lobby}:presence", "junk", "junk")
                await asyncio.sleep(0.5)  # a few syncs of the live room meet all of it
                # A ban key is a ban, whatever its value: 403, not 500.
                with pytest.raises(InvalidStatus) as refused:
                    await srv.connect(user="eve")
                assert refused.value.response.status_code == 403
                bob = await srv.connect(user="bob", after="0")
                welcome = await bob.recv()
                assert (welcome["type"], welcome["seq"], welcome["recovered"]) == (
                    "welcome", 4, True)
                replay = [(await bob.recv_type("message"))["text"] for _ in range(3)]
                assert replay == ["m0", "m1", "m2"]  # the entry that is not a message: left out
                await alice.say("after", id="after")
                for client in (alice, bob):
                    live = await client.recv_type("message")
                    assert (live["seq"], live["text"]) == (5, "after")
                assert (await alice.recv_type("ack"))["seq"] == 5
                assert await raw.hget("roomchat:{lobby}:presence", "junk") is None  # repaired
                assert [a.lifecycle.value for a in srv.gateway.registry.rooms()] == ["running"]
        finally:
            await raw.aclose()


async def test_redis_losing_its_data_reuses_no_seq_and_loses_nothing_acked_after(
        tmp_path: Path) -> None:
    """Issue 20, item 3: a FLUSHALL (as a restart without the AOF, or a failover to a replica
    that lagged) while a room is live used to ack the next message as seq 1, deliver it to
    nobody (everyone had seen seq 1), answer a resume with ``recovered: true`` and nothing,
    and show other texts at seqs clients held. Now the room finds its log behind what it
    delivered: the log goes on after it under a new epoch, members are closed with 1012 and
    come back (with the old epoch) to ``recovered: false`` and a fresh history, and the
    message sent across the reset is stored once, as seq 6."""
    with redis_server(tmp_path / "redis") as url:
        config = replace(make_config(tmp_path / "d", rate_burst=100), store_url=url)
        raw = aioredis.from_url(url)
        try:
            async with running_server(config) as srv:
                alice = await srv.connect(user="alice")
                bob = await srv.connect(user="bob")
                epoch = (await alice.recv())["epoch"]
                assert (await bob.recv())["epoch"] == epoch
                for i in range(5):
                    await alice.say(f"m{i}", id=f"m{i}")
                assert [(await alice.recv_type("ack"))["seq"] for _ in range(5)] == [1, 2, 3,
                                                                                   4, 5]
                assert [(await bob.recv_type("message"))["seq"] for _ in range(5)] == [
                    1, 2, 3, 4, 5]

                await raw.flushall()
                await alice.say("across the reset", id="a6")
                for client in (alice, bob):
                    assert await client.closed() == 1012
                    assert client.ws.close_reason == "room history reset"

                alice = await srv.connect(user="alice", after="5", epoch=epoch)
                welcome = await alice.recv()
                assert (welcome["recovered"], welcome["seq"]) == (False, 6)
                assert welcome["epoch"] != epoch
                replay = await alice.recv_type("message")
                assert (replay["seq"], replay["text"]) == (6, "across the reset")
                await alice.say("across the reset", id="a6")  # its outbox resends it
                ack = await alice.recv_type("ack")
                assert (ack["seq"], ack.get("duplicate")) == (6, True)

                bob = await srv.connect(user="bob", after="5", epoch=epoch)
                assert (await bob.recv())["recovered"] is False
                assert (await bob.recv_type("message"))["seq"] == 6
                await bob.say("next", id="b7")
                for client in (alice, bob):
                    assert (await client.recv_type("message"))["seq"] == 7
                # The new epoch resumes as usual; a client that sends no epoch is told by the
                # seq: it held 1..5 as they were, and gets what came after.
                carol = await srv.connect(user="carol", after="6", epoch=welcome["epoch"])
                assert (await carol.recv())["recovered"] is True
                assert (await carol.recv_type("message"))["seq"] == 7
                dave = await srv.connect(user="dave", after="3")
                assert (await dave.recv())["recovered"] is False
                stored = await srv.gateway.store.read("lobby", 0, 100, 100)
                assert [(m.seq, m.text) for m in stored] == [(6, "across the reset"),
                                                             (7, "next")]
        finally:
            await raw.aclose()


async def test_a_reset_found_by_one_process_reaches_the_others_by_their_sync(
        tmp_path: Path) -> None:
    """Two processes serve the room when Redis loses its data. The one whose append meets the
    empty log moves it on and closes its members; the other sees the new epoch at its next
    sync and does the same: everyone comes back to one fresh history, and seqs go on."""
    with redis_server(tmp_path / "redis") as url:
        config = replace(make_config(tmp_path / "a", rate_burst=100, sync_interval=0.3,
                                     presence_ttl=2.0), store_url=url)
        raw = aioredis.from_url(url)
        try:
            async with running_server(config) as a, \
                    running_server(replace(config, data_dir=tmp_path / "b")) as b:
                alice = await a.connect(user="alice")
                bob = await b.connect(user="bob")
                epoch = (await alice.recv())["epoch"]
                assert (await bob.recv())["epoch"] == epoch
                for i in range(3):
                    await alice.say(f"m{i}", id=f"m{i}")
                assert [(await bob.recv_type("message"))["seq"] for _ in range(3)] == [1, 2, 3]
                await raw.flushall()
                await bob.say("across", id="b4")
                for client in (bob, alice):
                    assert await client.closed(timeout=5) == 1012
                for server, user in ((a, "alice"), (b, "bob")):
                    client = await server.connect(user=user, after="3", epoch=epoch)
                    welcome = await client.recv()
                    assert (welcome["recovered"], welcome["seq"]) == (False, 4)
                    assert welcome["epoch"] != epoch
                    assert (await client.recv_type("message"))["text"] == "across"
        finally:
            await raw.aclose()

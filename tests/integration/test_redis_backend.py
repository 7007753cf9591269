"""The service on the Redis engine: same behaviour, plus rooms that move between processes."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

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

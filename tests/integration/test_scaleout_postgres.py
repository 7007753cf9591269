"""One room across processes on the PostgreSQL log with the Redis bus (``--store-url
postgresql://... --bus-url redis://...``) and with PostgreSQL's LISTEN/NOTIFY as the bus
(``--bus-url postgresql://...``, the log's own server): test_scaleout.py's flows on the split
engine, where
the publish follows the commit instead of being part of it. Every member sees every message
live in one order, presence agrees, a retry through the other process is deduplicated, and a
process killed with SIGKILL mid-traffic loses nothing acked: each client's seqs are 1..top and
every message it saw is the one PostgreSQL holds at that seq (``tests.audit.check_room``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.audit import check_room, read_back
from tests.clients import (
    Chatter,
    Stored,
    Target,
    chat,
    joined,
    members_seen,
    messages,
    settle,
    traffic,
)
from tests.redis_server import redis_server
from tests.support import REPO, SCALEOUT_ENV, Process, free_port, server_process


def split(postgres_url: str, bus_url: str) -> list[str]:
    return ["--store-url", postgres_url, "--bus-url", bus_url]


@pytest.fixture(params=["redis", "postgres"])
def bus(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> Iterator[str]:
    """The bus beside the log: a Redis, or the log's PostgreSQL itself (LISTEN/NOTIFY)."""
    if request.param == "postgres":
        yield postgres_url
    else:
        with redis_server(tmp_path / "redis") as url:
            yield url


async def entries_of(postgres_url: str, room: str) -> list[tuple[int, Stored]]:
    """The room's messages as PostgreSQL holds them (rooms/engines/postgres_schema.py)."""
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cursor = await conn.execute(
            "SELECT seq, user_id, client_id, text FROM entries WHERE room = %s AND kind = 0 "
            "ORDER BY seq", (room,))
        return [(seq, (user, cid, text)) for seq, user, cid, text in await cursor.fetchall()]


async def test_two_processes_one_room_on_postgres_live_order_and_presence(
        tmp_path: Path, postgres_url: str, bus: str) -> None:
    with server_process(tmp_path / "a", env=SCALEOUT_ENV, args=split(postgres_url, bus)) as a, \
            server_process(tmp_path / "b", env=SCALEOUT_ENV, args=split(postgres_url, bus)) as b:
        alice = await joined(a, "alice")
        bob = await joined(b, "bob")
        carol = await joined(b, "carol")  # only listens, on bob's process
        everyone = {"alice", "bob", "carol"}
        for client in (alice, bob, carol):
            await members_seen(client, everyone)

        for i in range(15):  # interleaved writes from both sides
            await alice.say(f"a{i}", id=f"a{i}")
            await bob.say(f"b{i}", id=f"b{i}")
        lists = [await messages(c, 30) for c in (alice, bob, carol)]
        seqs = [[m["seq"] for m in got] for got in lists]
        assert seqs[0] == list(range(1, 31)), seqs[0]
        assert all(s == seqs[0] for s in seqs)
        held = dict(await entries_of(postgres_url, "split"))
        for got in lists:  # each copy is what the log holds at its seq
            assert [(m["user"], m["id"], m["text"]) for m in got] == [held[s] for s in seqs[0]]

        # A retry of alice's message through the other process: deduplicated by the log.
        alice_on_b = await joined(b, "alice", after="30")
        await alice_on_b.say("a3", id="a3")
        dup = await alice_on_b.recv_type("ack")
        assert dup["duplicate"] is True and held[dup["seq"]] == ("alice", "a3", "a3")

        await carol.ws.close()
        for client in (alice, bob):
            await members_seen(client, everyone - {"carol"})


class Failover:
    """A ``Target`` that is one process until ``fail_over()``, then another (clients of a
    killed process reconnect to the survivor, as behind a load balancer)."""

    def __init__(self, first: Process, then: Process) -> None:
        self.current, self._then = first, then

    def fail_over(self) -> None:
        self.current = self._then

    def url(self, room: str, token: str, **query: Any) -> str:
        return self.current.url(room, token, **query)


async def test_kill_9_mid_traffic_loses_nothing_acked(tmp_path: Path, postgres_url: str,
                                                     bus: str) -> None:
    """Four members, two on each process, writing all along; one process is killed with
    SIGKILL (between a commit and its publish, perhaps: the survivors repair from the log).
    Its members resume on the survivor with ``after=<last seen>`` and resend what was never
    acked; the room ends exactly as PostgreSQL holds it, in every client."""
    with server_process(tmp_path / "a", env=SCALEOUT_ENV, args=split(postgres_url, bus)) as a, \
            server_process(tmp_path / "b", env=SCALEOUT_ENV, args=split(postgres_url, bus)) as b:
        room = "kill9"
        to_b = Failover(b, a)
        targets: list[Target] = [a, to_b, a, to_b]
        chatters = [Chatter(f"u{i}", room) for i in range(4)]
        for c, t in zip(chatters, targets, strict=True):
            await c.connect(t)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for c, t in zip(chatters, targets, strict=True):
                tg.create_task(chat(c, t, stop, 0.03))
            await traffic(chatters, 10)
            to_b.fail_over()
            b.proc.send_signal(signal.SIGKILL)
            b.proc.wait()
            await traffic(chatters, 10)  # b's members back, on a
            stop.set()
        await settle(chatters, [a], timeout=20)
        assert all(c.connects >= 2 for c in chatters[1::2])  # b's members did move
        wire = await read_back(a, room)
        top = check_room(room, wire, await entries_of(postgres_url, room), "PostgreSQL",
                         chatters)
        assert top >= 80
        for c in chatters:
            await c.disconnect()


def serve_check(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_")}
    env.update(PYTHONPATH=str(REPO), ROOMCHAT_JWT_SECRET="s" * 32)
    return subprocess.run([sys.executable, "-m", "gateway", "serve", "--check", "--bind",
                           f"127.0.0.1:{free_port()}", *args], cwd=tmp, capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def test_serve_checks_the_bus_and_refuses_what_cannot_share_it(tmp_path: Path,
                                                               postgres_url: str) -> None:
    with redis_server(tmp_path / "redis") as bus:
        done = serve_check(tmp_path, *split(postgres_url, bus), "--workers", "2")
        assert (done.returncode, done.stderr) == (0, "")
        assert f"bus {bus})" in done.stdout
    gone = f"redis://:pw-sekret@127.0.0.1:{free_port()}/0"
    done = serve_check(tmp_path, *split(postgres_url, gone))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and "sekret" not in done.stderr
    assert "cannot reach Redis at 127.0.0.1:" in done.stderr
    assert "(--bus-url / ROOMCHAT_BUS_URL)" in done.stderr
    done = serve_check(tmp_path, "--bus-url", "redis://127.0.0.1:1/0")  # SQLite's log
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and "the SQLite log serves one process" in done.stderr


def test_serve_checks_the_notify_bus(tmp_path: Path, postgres_url: str) -> None:
    """``--bus-url postgresql://`` beside the PostgreSQL log: ``--workers 2`` accepted, the bus
    opened by the check; one unreachable is one line naming the setting, with no password."""
    done = serve_check(tmp_path, *split(postgres_url, postgres_url), "--workers", "2")
    assert (done.returncode, done.stderr) == (0, "")
    gone = f"postgresql://postgres:pw-sekret@127.0.0.1:{free_port()}/nothing"
    done = serve_check(tmp_path, *split(postgres_url, gone))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and "sekret" not in done.stderr
    assert "cannot reach PostgreSQL (the bus)" in done.stderr
    assert "(--bus-url / ROOMCHAT_BUS_URL)" in done.stderr

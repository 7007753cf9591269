"""One room across processes on Redis, under faults: Redis restarted mid-traffic, pub/sub
messages lost (dropped batches, killed subscriber connections), a soak of random reconnects
across three processes, and handshakes while Redis is away.

Real ``roomchat serve`` processes, a real redis-server and real WebSocket clients. Every test
ends with the same audit (``audit``): each client's seqs are exactly 1..top, with no gap and no
duplicate across its reconnects (it resumes with ``after=<last seq seen>``); everything it sent
was acked; and the room read back with ``after=0`` (and straight from the Redis stream) holds
every acked message exactly once, at its acked seq, with no ``(user, id)`` stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import pytest
import websockets
from redis import asyncio as aioredis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rooms.engines.redis import RedisEngine
from tests.integration.test_scaleout import FAST, Member
from tests.redis_server import RedisServer
from tests.support import SLOW, Process, make_config, make_token, running_server, server_process

ENV = {**FAST, "ROOMCHAT_STORE_OUTAGE_TIMEOUT": "10"}
Stored = tuple[str, str | None, str]
"""What a message is: (user, client id, text)."""


class Target(Protocol):
    """A server to connect to: a ``Process`` (``roomchat serve``) or an in-process ``Server``."""

    def url(self, room: str, token: str, **query: Any) -> str: ...


def args(redis: RedisServer) -> list[str]:
    return ["--store-url", redis.url]


def wait_ready(*procs: Process) -> None:
    """Wait until each process has finished starting (opened its engine): a bound port is not
    enough (the socket listens before the app's startup has reached Redis)."""
    for proc in procs:
        url = f"http://127.0.0.1:{proc.port}/readyz"
        with urllib.request.urlopen(url, timeout=20 * SLOW) as response:
            assert response.status == 200


async def connect(target: Target, user: str, room: str, *, after: int | None,
                  patience: float = 30.0) -> tuple[Member, dict[str, Any]]:
    """Connect and read the welcome, retrying while the server refuses with 503 (Redis away) or
    closes the socket at once (a room closing with 1013), for up to ``patience`` seconds."""
    query = {} if after is None else {"after": str(after)}
    loop = asyncio.get_running_loop()
    give_up = loop.time() + patience * SLOW
    while True:
        try:
            ws = await websockets.connect(target.url(room, make_token(user), **query),
                                          compression=None, open_timeout=10 * SLOW,
                                          max_size=2**24)
        except InvalidStatus as exc:
            if exc.response.status_code != 503 or loop.time() > give_up:
                raise
        except (OSError, TimeoutError):
            if loop.time() > give_up:
                raise
        else:
            client = Member(ws)
            client.members = set()
            try:
                welcome = await client.recv(10)
            except ConnectionClosed:
                if loop.time() > give_up:
                    raise
            else:
                assert welcome["type"] == "welcome", welcome
                client.members = {m["user"] for m in welcome["members"]}
                return client, welcome
        await asyncio.sleep(0.2)


def anomalies(seqs: list[int], first: int = 1) -> list[str]:
    """The gaps and repeats in ``seqs`` (which should be ``first, first + 1, ...``)."""
    out: list[str] = []
    expected = first
    for i, seq in enumerate(seqs):
        if seq != expected:
            out.append(f"at #{i}: got {seq}, expected {expected}")
        expected = seq + 1
    return out[:10]


class Chatter:
    """A client that keeps one room's stream across reconnects, as the page does: it resumes
    with ``after=<last seq seen>``, resends every unacked message with its id after a reconnect
    and any refused one (``unavailable``, ``busy``) a little later, and records everything it
    saw for the audit. It never drops a seq it already has: every one received is recorded."""

    def __init__(self, user: str, room: str) -> None:
        self.user = user
        self.room = room
        self.seqs: list[int] = []
        self.seen: dict[int, Stored] = {}
        self.sent: dict[str, str] = {}  # id -> text, every message ever sent
        self.unacked: dict[str, str] = {}
        self.acked: dict[str, int] = {}
        self.refused: set[str] = set()
        self.duplicate_acks = 0
        self.errors: Counter[str] = Counter()
        self.server_closes: list[int | None] = []  # close codes of closes we did not start
        self.problems: list[str] = []
        self.connects = 0
        self.client: Member | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._count = 0
        self._next_resend = 0.0

    def __repr__(self) -> str:
        return f"<{self.user}@{self.room} last={self.last} connects={self.connects}>"

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    @property
    def open(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def connect(self, target: Target) -> None:
        """(Re)connect, resuming after the last seq seen, and resend what is unacked."""
        await self.disconnect()
        after = self.last
        client, welcome = await connect(target, self.user, self.room, after=after)
        self.connects += 1
        if welcome["recovered"] is not True or welcome["seq"] < after:
            self.problems.append(f"connect #{self.connects} with after={after}: welcome seq "
                                 f"{welcome['seq']}, recovered {welcome['recovered']}")
        self.client = client
        self._closing = False
        self._reader = asyncio.create_task(self._read(client), name=f"read:{self.user}")
        for cid in list(self.unacked):
            await self._send(cid)

    async def disconnect(self) -> None:
        """Close our side (if open) and wait for the reader to finish."""
        client, reader = self.client, self._reader
        self.client = self._reader = None
        if client is not None:
            self._closing = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.ws.close(), 5 * SLOW)
        if reader is not None:
            await reader

    async def _read(self, client: Member) -> None:
        try:
            while True:
                self._handle(await client.recv(timeout=3600))
        except ConnectionClosed:
            if not self._closing:
                self.server_closes.append(client.ws.close_code)

    def _handle(self, obj: dict[str, Any]) -> None:
        kind = obj["type"]
        if kind == "message":
            seq = obj["seq"]
            if seq != self.last + 1:
                self.problems.append(f"message seq {seq} after {self.last}")
            self.seqs.append(seq)
            self.seen.setdefault(seq, (obj["user"], obj["id"], obj["text"]))
        elif kind == "ack":
            cid, seq = obj["id"], obj["seq"]
            if self.acked.setdefault(cid, seq) != seq:
                self.problems.append(f"{cid} acked as {seq}, earlier as {self.acked[cid]}")
            self.duplicate_acks += bool(obj.get("duplicate"))
            self.unacked.pop(cid, None)
            self.refused.discard(cid)
        elif kind == "error":
            self.errors[obj["code"]] += 1
            cid = obj.get("id")
            if cid is not None and cid in self.unacked:
                self.refused.add(cid)

    async def _send(self, cid: str) -> None:
        client = self.client
        if client is None or not self.open:
            return  # sent again after the next connect
        with contextlib.suppress(ConnectionClosed):
            await client.send({"type": "message", "text": self.sent[cid], "id": cid})

    async def say(self) -> None:
        self._count += 1
        cid = f"{self.user}-{self._count}"
        self.sent[cid] = self.unacked[cid] = f"{self.room}:{cid}"
        await self._send(cid)

    async def resend(self, *, everything: bool = False) -> None:
        """Resend refused messages (at most every half second), or ``everything`` unacked."""
        now = time.monotonic()
        if not everything and (not self.refused or now < self._next_resend):
            return
        self._next_resend = now + 0.5
        ids = list(self.unacked) if everything else [c for c in self.refused
                                                     if c in self.unacked]
        self.refused.clear()
        for cid in ids:
            await self._send(cid)


async def read_back(target: Target, room: str) -> list[dict[str, Any]]:
    """Every message of ``room``, read with ``after=0`` (resuming after the last one read, as
    any client would, if the server closes the connection meanwhile)."""
    got: list[dict[str, Any]] = []
    for _ in range(5):
        after = got[-1]["seq"] if got else 0
        client, welcome = await connect(target, "auditor", room, after=after)
        try:
            while welcome["seq"] > (got[-1]["seq"] if got else 0):
                got.append(await client.recv_type("message", 10))
            return got
        except websockets.ConnectionClosed:
            continue
        finally:
            await client.ws.close()
    raise AssertionError(f"could not read room {room} back")


async def stream_of(url: str, room: str) -> list[tuple[int, Stored]]:
    """The room's Redis stream, read directly (the key layout is in rooms/engines/redis.py)."""
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        entries: Any = await redis.xrange(f"roomchat:{{{room}}}:log")
    finally:
        await redis.aclose()
    return [(int(eid.split("-")[1]), (f["user"], f["id"] or None, f["text"]))
            for eid, f in entries]


async def settle(chatters: list[Chatter], targets: list[Target], timeout: float = 30) -> None:
    """Make sure every chatter is connected, get every message acked (resending), then wait
    until every chatter has seen its room's top."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * SLOW
    for i, c in enumerate(chatters):
        if not c.open:
            await c.connect(targets[i % len(targets)])
    next_resend = loop.time() + 1
    while any(c.unacked for c in chatters):
        assert loop.time() < deadline, [(c, sorted(c.unacked)) for c in chatters if c.unacked]
        await asyncio.sleep(0.02)
        for i, c in enumerate(chatters):
            if not c.open:
                await c.connect(targets[i % len(targets)])
        if loop.time() >= next_resend:
            next_resend = loop.time() + 1
            for c in chatters:
                await c.resend(everything=True)
    tops = {c.room: max(seq for x in chatters if x.room == c.room for seq in x.acked.values())
            for c in chatters if c.acked}
    while any(c.last < tops.get(c.room, 0) for c in chatters):
        behind = [(c, tops[c.room]) for c in chatters if c.last < tops.get(c.room, 0)]
        assert loop.time() < deadline, f"never caught up: {behind}"
        await asyncio.sleep(0.02)
        for i, c in enumerate(chatters):
            # Closed meanwhile (a stall that outlasted the heartbeat ends in 4010): resume.
            if not c.open:
                await c.connect(targets[i % len(targets)])


def check_room(room: str, wire: list[dict[str, Any]], backing: list[tuple[int, Stored]],
               backing_name: str, chatters: list[Chatter], *, context: str = "") -> int:
    """The checks every test ends with (see the module docstring), given the room's read-back
    (``after=0``) and what its engine holds (``backing``, named ``backing_name`` in messages).
    Returns the room's top seq."""
    mine = [c for c in chatters if c.room == room]
    stored = {m["seq"]: (m["user"], m["id"], m["text"]) for m in wire}
    seqs = [m["seq"] for m in wire]
    assert seqs == list(range(1, len(seqs) + 1)), f"{context}{room} read back: {anomalies(seqs)}"
    assert backing == sorted(stored.items()), \
        f"{context}{room}: {backing_name} differs from read back"
    twice = [k for k, n in Counter((u, i) for u, i, _ in stored.values()).items() if n > 1]
    assert not twice, f"{context}{room}: stored more than once: {twice[:10]}"
    top = len(seqs)
    for c in mine:
        assert not c.problems, f"{context}{c}: {c.problems[:10]}"
        assert c.seqs == list(range(1, top + 1)), f"{context}{c}: {anomalies(c.seqs)}"
        wrong = [s for s in c.seqs if c.seen[s] != stored[s]]
        assert not wrong, f"{context}{c}: saw other messages than stored at {wrong[:10]}"
        assert not c.unacked, f"{context}{c}: never acked: {sorted(c.unacked)[:10]}"
        assert set(c.acked) == set(c.sent)
        misplaced = [cid for cid, seq in c.acked.items()
                     if stored.get(seq) != (c.user, cid, c.sent[cid])]
        assert not misplaced, f"{context}{c}: acked but not stored at their seq: {misplaced[:10]}"
        assert 1011 not in c.server_closes, f"{context}{c}: closed with 1011"
    stored_ids = {(u, i) for u, i, _ in stored.values()}
    sent = {(c.user, cid) for c in mine for cid in c.sent}
    assert stored_ids == sent, f"{context}{room}: stored messages nobody sent"
    return top


async def audit(url: str, target: Target, room: str, chatters: list[Chatter],
                *, context: str = "") -> None:
    """``check_room`` against the room's Redis stream."""
    wire = await read_back(target, room)
    check_room(room, wire, await stream_of(url, room), "stream", chatters, context=context)


async def chat(c: Chatter, target: Target, stop: asyncio.Event, pause: float) -> None:
    """Send a message every ``pause`` seconds until ``stop``; reconnect whenever closed."""
    while not stop.is_set():
        if not c.open:
            await c.connect(target)
        await c.say()
        await c.resend()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)


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
            await asyncio.sleep(1.5)
            before = {c.user: dict(c.acked) for c in chatters}
            assert all(before.values()), "no traffic before the restart"
            redis.stop(crash=True)  # SIGKILL: only what was fsynced (appendfsync always) stays
            await asyncio.sleep(3)
            redis.start()
            await asyncio.sleep(2)
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
    """Make every in-process ``RedisEngine`` drop message batches from other processes: every
    third one while ``mode`` is 1, all of them while it is 2, none while 0. Returns the knobs and
    the count of batches dropped."""
    knobs = {"mode": 1, "seen": 0, "dropped": 0}
    original = RedisEngine._dispatch

    def dispatch(self: RedisEngine, channel: bytes, data: bytes) -> None:
        if data[:1] == b"m" and data[1:].partition(b"\n")[0].decode() != self.node:
            knobs["seen"] += 1
            if knobs["mode"] == 2 or (knobs["mode"] == 1 and knobs["seen"] % 3 == 0):
                knobs["dropped"] += 1
                return
        original(self, channel, data)

    monkeypatch.setattr(RedisEngine, "_dispatch", dispatch)
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
    original = RedisEngine._dispatch

    def late(self: RedisEngine, channel: bytes, data: bytes) -> None:
        asyncio.get_running_loop().call_later(0.5, original, self, channel, data)

    monkeypatch.setattr(RedisEngine, "_dispatch", late)
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
                    await asyncio.sleep(1)
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
                await asyncio.sleep(1)
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


async def wander(c: Chatter, procs: list[Target], rng: random.Random, until: float) -> None:
    """Connect to a random process, chat a while, leave; again and again until ``until``."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        await c.connect(rng.choice(procs))
        leave_at = min(until, loop.time() + rng.expovariate(1 / 1.5))
        while loop.time() < leave_at and c.open:
            await c.say()
            await c.resend()
            await asyncio.sleep(rng.uniform(0.2, 0.8))
        if c.open and rng.random() < 0.5:
            # Leave right after sending: unacked, resent (same id) after the next connect,
            # maybe through another process while the first copy is being stored.
            await c.say()
            await c.disconnect()
        else:
            await c.disconnect()
            await asyncio.sleep(rng.uniform(0, 0.5))  # away a while: misses some live ones


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
        until = asyncio.get_running_loop().time() + SOAK_SECONDS
        async with asyncio.TaskGroup() as tg:
            for i, ch in enumerate(chatters):
                tg.create_task(wander(ch, procs, random.Random(seed * 100 + i), until))
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

"""Clients the integration and chaos tests share.

- ``Member``: answers heartbeat pings, as the page does, and follows the member list.
- ``Chatter``: keeps one room's stream across reconnects (resuming with ``after``, resending
  what is unacked) and records everything it saw, for ``tests.audit``; ``chat``, ``traffic``
  and ``settle`` drive a group of them.
- ``RawClient``: a bare socket with a small receive buffer that reads only when told to, so the
  server's sends to it block as for a stalled phone; ``store_messages`` fills a room for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import random
import socket
import sys
import termios
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from tests.support import SLOW, Client, Process, make_token, until

Stored = tuple[str, str | None, str]
"""What a message is: (user, client id, text)."""


class Target(Protocol):
    """A server to connect to: a ``Process`` (``roomchat serve``) or an in-process ``Server``."""

    def url(self, room: str, token: str, **query: Any) -> str: ...


class Member(Client):
    """A client that answers heartbeat pings, as the page does, and follows the member list."""

    members: set[str]

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        obj = await super().recv(timeout)
        if obj["type"] == "ping":
            await self.send({"type": "pong"})
        elif obj["type"] == "presence":
            (self.members.add if obj["event"] == "join" else self.members.discard)(obj["user"])
        return obj


async def messages(client: Client, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < count:
        got.append(await client.recv_type("message", timeout))
    return got


async def members_seen(client: Member, want: set[str], timeout: float = 10.0) -> None:
    """Follow presence events until the member set is ``want``."""
    async with asyncio.timeout(timeout * SLOW):
        while client.members != want:
            await client.recv_type("presence", timeout)


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


async def chat(c: Chatter, target: Target, stop: asyncio.Event, pause: float) -> None:
    """Send a message every ``pause`` seconds until ``stop``; reconnect whenever closed."""
    while not stop.is_set():
        if not c.open:
            await c.connect(target)
        await c.say()
        await c.resend()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)


async def traffic(chatters: list[Chatter], acks: int) -> None:
    """Wait until each of ``chatters`` (chatting meanwhile) has ``acks`` more messages acked."""
    goal = [len(c.acked) + acks for c in chatters]
    await until(lambda: all(len(c.acked) >= n for c, n in zip(chatters, goal, strict=True)),
                15, f"{acks} more acks for each of {chatters}")


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


async def wander(c: Chatter, procs: list[Target], rng: random.Random, end: float) -> None:
    """Connect to a random process, chat a while, leave; again and again until ``end`` (the
    loop's time)."""
    loop = asyncio.get_running_loop()
    while loop.time() < end:
        await c.connect(rng.choice(procs))
        leave_at = min(end, loop.time() + rng.expovariate(1 / 1.5))
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


TCP_ESTABLISHED = 1


BIG = 16_000  # characters per stored message: 600 of them (~10 MB) outgrow any socket buffer


# Replay frames of 32 x 16 KB: big enough to block on a stalled socket, small enough for a
# default websockets client (1 MiB max_size) to resume with.
FLOOD = {"rate_burst": 100_000, "rate_per_sec": 100_000, "max_text_chars": BIG + 100,
         "outbox_limit": 100_000, "max_frame_messages": 32}


@dataclass
class RawClient:
    """A WebSocket client on a bare socket with a small receive buffer: it reads only when
    told to, so the server's sends to it block as they would for a stalled phone."""

    sock: socket.socket
    ws: WSConnection
    seqs: list[int] = field(default_factory=list)
    close_code: int | None = None
    reset: bool = False
    _text: list[str] = field(default_factory=list)

    @classmethod
    async def connect(cls, port: int, path: str, rcvbuf: int = 4096) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect, so the window stays small (no autotuning).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        ws = WSConnection(ConnectionType.CLIENT)
        await loop.sock_sendall(sock, ws.send(Request(host=f"127.0.0.1:{port}", target=path)))
        client = cls(sock, ws)
        async with asyncio.timeout(10 * SLOW):
            while not any(isinstance(e, AcceptConnection) for e in client._feed(
                    await loop.sock_recv(sock, 1024))):
                pass
        return client

    def _feed(self, data: bytes | None) -> list[Any]:
        self.ws.receive_data(data)
        events = list(self.ws.events())
        for event in events:
            if isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    frame, self._text = "".join(self._text), []
                    objects = [orjson.loads(line) for line in frame.split("\n")]
                    self.seqs += [o["seq"] for o in objects if o["type"] == "message"]
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
        return events

    def queued(self) -> int:
        """Bytes the kernel holds for us, not read yet (FIONREAD)."""
        data = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(data, sys.byteorder, signed=True)

    async def stalled(self) -> None:
        """Wait until the server's sends to us are blocked: more queued than any frame before
        a replay's first (a welcome), on a receive buffer that small."""
        await until(lambda: self.queued() > 2048, 10, "the replay to fill our receive buffer")

    def tcp_state(self) -> int:
        """The kernel's state of our end (TCP_INFO), read without reading any data."""
        return self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]

    async def read_to_end(self, timeout: float = 30) -> None:
        """Read everything the server sends until it closes or resets the connection."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout * SLOW):
            while True:
                try:
                    data = await loop.sock_recv(self.sock, 1 << 16)
                except ConnectionResetError:
                    self.reset = True
                    return
                if not data:
                    return
                for event in self._feed(data):
                    if isinstance(event, CloseConnection):  # complete the close handshake
                        await loop.sock_sendall(self.sock, self.ws.send(event.response()))

    def close(self) -> None:
        self.sock.close()


def room_path(room: str, token: str, **query: Any) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"/rooms/{room}/ws?token={token}{extra}"


async def store_messages(url: str, count: int, first: int = 0, size: int = BIG) -> None:
    """Send ``count`` messages of ``size`` characters and wait until all are acked."""
    async with websockets.connect(url, compression=None, max_size=None) as ws:
        await ws.recv()
        for i in range(first, first + count):
            await ws.send(orjson.dumps({"type": "message", "id": f"m{i}",
                                        "text": f"{i}:" + "x" * size}).decode())
        acked = 0
        async with asyncio.timeout(60 * SLOW):
            while acked < count:
                for line in str(await ws.recv()).split("\n"):
                    acked += orjson.loads(line)["type"] == "ack"


async def member(proc: Process, user: str, room: str = "split", **query: Any) -> Member:
    """A socket of ``user`` to ``room`` on a server process (scale-out tests)."""
    ws = await websockets.connect(proc.url(room, make_token(user), **query), compression=None,
                                  open_timeout=10 * SLOW, max_size=2**24)
    return Member(ws)


async def joined(proc: Process, user: str, **query: Any) -> Member:
    """``member`` after its welcome: ``welcome`` and ``members`` set from it."""
    client = await member(proc, user, **query)
    welcome = await client.recv()
    assert welcome["type"] == "welcome"
    client.welcome = welcome  # type: ignore[attr-defined]
    client.members = {m["user"] for m in welcome["members"]}
    return client

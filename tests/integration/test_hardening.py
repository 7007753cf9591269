"""Issue 13's high-severity bugs against real servers: clients that stop reading, closes during a
replay, shutdown with stalled sockets, hostile claims and parameters."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import signal
import socket
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from tests.conftest import ServerFactory
from tests.support import (
    SLOW,
    Server,
    collect_messages,
    make_token,
    metric,
    server_process,
    session_closes,
    until,
)

TCP_ESTABLISHED = 1
BIG = 16_000  # characters per stored message: 600 of them (~10 MB) outgrow any socket buffer


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


# Replay frames of 32 x 16 KB: big enough to block on a stalled socket, small enough for a
# default websockets client (1 MiB max_size) to resume with.
FLOOD = {"rate_burst": 100_000, "rate_per_sec": 100_000, "max_text_chars": BIG + 100,
         "outbox_limit": 100_000, "max_frame_messages": 32}


# -- bug 1: a close during a replay must not leave a gap --------------------------------------

@pytest.mark.parametrize("close_by", ["drain", "token_expiry"])
async def test_a_close_during_a_replay_leaves_no_gap(
        server_with: ServerFactory, close_by: str) -> None:
    room_limits = {**FLOOD, "send_timeout": 60.0, "close_timeout": 10.0, "tick_interval": 0.1}
    async with server_with(**room_limits) as srv:
        await store_messages(srv.url("lobby", make_token("writer")), 600)
        ttl = 3 if close_by == "token_expiry" else 3600
        slow = await RawClient.connect(srv.port, room_path(
            "lobby", make_token("slow", ttl=ttl), after="0"))
        try:
            await slow.stalled()  # its replay is now blocked on a full socket
            await store_messages(srv.url("lobby", make_token("writer")), 20, first=600, size=10)
            code = 1012 if close_by == "drain" else 4001
            if close_by == "drain":
                srv.shutdown.set()  # SIGTERM's path: 1012 to everyone
            # else: the first tick at or after the token's exp (whole seconds) closes it.
            await until(lambda: session_closes(srv, code) == 1, ttl + 5,
                        f"the room to close the stalled socket with {code}")
            await slow.read_to_end()  # the client reads again, as a slow one eventually does
        finally:
            slow.close()
        got = slow.seqs
        assert got == list(range(1, len(got) + 1)), "a gap: the resume would skip messages"
        assert 0 < len(got) < 600
        assert slow.close_code == code
        config = srv.config
    # A careful client resumes after the last seq it got, on the restarted server: no gap.
    from tests.support import running_server

    async with running_server(config) as again:
        welcome, rest = await collect_messages(
            again.url("lobby", make_token("slow"), after=str(got[-1])), 620 - got[-1])
        assert welcome["recovered"] is True
        assert [m["seq"] for m in rest] == list(range(got[-1] + 1, 621))


# -- bug 4: a slow consumer's socket is freed and counted until it is ------------------------

@pytest.mark.fast_paths
async def test_a_slow_consumer_socket_is_dropped_and_counted_until_then(
        server_with: ServerFactory) -> None:
    close_timeout = 0.5
    async with server_with(**FLOOD, send_timeout=0.5, tick_interval=0.1,
                           close_timeout=close_timeout) as srv:
        await store_messages(srv.url("lobby", make_token("writer")), 600)
        gw = srv.gateway
        started = time.monotonic()
        stuck = await RawClient.connect(srv.port, room_path("lobby", make_token("stuck"),
                                                            after="0"))
        try:
            # The replay blocks; the send watchdog closes it with 4009; the close frame can't be
            # written either. Its socket must go within close_timeout (twice: the closing phase,
            # then the wait for the handshake), and count until it is gone.
            deadline = started + (0.5 + 0.2 + 2 * close_timeout + 2) * SLOW
            while stuck.tcp_state() == TCP_ESTABLISHED:
                assert gw.connections == 1, "an open socket is no longer counted"
                assert time.monotonic() < deadline, "the slow consumer's socket was kept"
                await asyncio.sleep(0.01)
            async with asyncio.timeout(2 * SLOW):
                while gw.connections:  # noqa: ASYNC110 (polling the server from outside)
                    await asyncio.sleep(0.01)
            assert await asyncio.to_thread(metric, srv.port, "roomchat_connections") == 0
            await stuck.read_to_end(5)
            assert stuck.reset  # dropped, not left half-open
        finally:
            stuck.close()


# -- bug 2: SIGTERM exits within the drain bound whatever the clients do ---------------------

@pytest.mark.parametrize(("drain_timeout", "close_timeout"), [(4.0, 30.0), (30.0, 1.0)])
@pytest.mark.fast_paths
async def test_sigterm_exits_in_time_with_a_client_that_stopped_reading(
        tmp_path: Path, drain_timeout: float, close_timeout: float) -> None:
    # (4, 30): only the gateway's deadline can free the socket; (30, 1): the session's own
    # closing phase does it, long before the drain's deadline.
    env = {"ROOMCHAT_RATE_BURST": "100000", "ROOMCHAT_RATE_PER_SEC": "100000",
           "ROOMCHAT_MAX_TEXT_CHARS": str(BIG + 100), "ROOMCHAT_SEND_TIMEOUT": "60",
           "ROOMCHAT_MAX_FRAME_MESSAGES": "32",
           "ROOMCHAT_DRAIN_TIMEOUT": str(drain_timeout),
           "ROOMCHAT_CLOSE_TIMEOUT": str(close_timeout)}
    with server_process(tmp_path, env=env) as srv:
        await store_messages(srv.url("lobby", make_token("writer")), 600)
        stuck = await RawClient.connect(srv.port, room_path("lobby", make_token("stuck"),
                                                            after="0"))
        try:
            async with websockets.connect(srv.url("lobby", make_token("ok")),
                                          compression=None, max_size=None) as ok:
                await stuck.stalled()  # the stuck client's replay fills its socket
                started = time.monotonic()
                srv.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(websockets.ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ok.recv(), 10 * SLOW)
                assert ok.close_code == 1012
                bound = min(drain_timeout, 2 * close_timeout) + 1.0 + 2.0 * SLOW
                while srv.proc.poll() is None:
                    assert time.monotonic() - started < bound, "shutdown hangs on a stalled client"
                    await asyncio.sleep(0.05)
            assert srv.proc.returncode == 0, srv.output()
        finally:
            stuck.close()


# -- bug 3 (gateway side) and bug 7: refused at the handshake, not a 500 ---------------------

async def _refusal(url: str) -> tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, open_timeout=5 * SLOW):
            pass
    return info.value.response.status_code, bytes(info.value.response.body or b"")


@pytest.mark.parametrize(("user", "name"), [("alice", "\ud800"), ("\udfff", None),
                                           ("alice", "a\x00")])
async def test_a_signed_token_with_a_lone_surrogate_is_401(
        server: Server, user: str, name: str | None) -> None:
    status, body = await _refusal(server.url("lobby", make_token(user, name=name)))
    assert status == 401 and b'"invalid_token"' in body
    # The room is unharmed: the next join works.
    alice = await server.connect()
    assert (await alice.recv())["type"] == "welcome"


@pytest.mark.parametrize("after", ["%C2%B2", "%D9%A3", "1%C2%B2", "+1", "1e3", "0x10"])
async def test_after_must_be_ascii_digits(server: Server, after: str) -> None:
    status, body = await _refusal(server.url("lobby", make_token(), after=after))
    assert status == 400 and b"bad_request" in body


# -- a client whose replay is still draining is alive ------------------------------------------

@pytest.mark.fast_paths
async def test_a_slow_replay_that_is_moving_is_not_evicted_as_a_zombie(
        server_with: ServerFactory) -> None:
    limits = {**FLOOD, "send_timeout": 60.0, "ping_interval": 0.5, "ping_timeout": 0.5,
              "tick_interval": 0.1}
    async with server_with(**limits) as srv:
        await store_messages(srv.url("lobby", make_token("writer")), 200)
        slow = await RawClient.connect(srv.port, room_path("lobby", make_token("slow"),
                                                           after="0"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(60 * SLOW):
                while len(slow.seqs) < 200 and slow.close_code is None:
                    data = await loop.sock_recv(slow.sock, 1 << 16)  # <= 64 KiB per 20 ms: slow
                    if not data:
                        break
                    slow._feed(data)
                    await asyncio.sleep(0.02)
        finally:
            slow.close()
        # ~3 MB at that pace outlasts ping_interval + ping_timeout (1 s) several times over,
        # and the client never answers a ping: only its progress keeps it in.
        assert loop.time() - started > 1.5
        assert slow.seqs == list(range(1, 201)), (len(slow.seqs), slow.close_code)

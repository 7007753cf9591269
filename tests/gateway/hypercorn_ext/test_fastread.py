"""Reading client frames straight off the transport: simple text frames are parsed exactly as
wsproto would, and every other kind of frame, with all that follows it, goes back to Hypercorn."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import uvloop
import websockets
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from gateway.hypercorn_ext.fastread import DirectReader, parse_text_frames, unmask
from tests.conftest import ServerFactory
from tests.support import Server, frame_writers, make_config, running_server, wait_connections


def _client_frames(*events: Any) -> bytes:
    """What a real (masking) client puts on the wire for ``events``."""
    client = Connection(ConnectionType.CLIENT)
    return b"".join(client.send(event) for event in events)


def test_unmask_is_its_own_inverse() -> None:
    for payload in (b"", b"a", b"abcd", b"hello world, how are you" * 7):
        mask = b"\x01\x80\xfe\x37"
        assert unmask(unmask(payload, mask), mask) == payload
    assert unmask(b"\x00\x00\x00\x00\x00", b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04\x01"


@pytest.mark.parametrize("text", ["", "x", "x" * 125, "x" * 126, "é🙂" * 5000, "x" * 65_535])
def test_a_text_frame_of_any_16_bit_length_parses_whole(text: str) -> None:
    data = _client_frames(TextMessage(text))
    assert parse_text_frames(data, limit=1 << 20) == ([text], len(data), False)


def test_frames_in_one_read_come_out_in_order_and_a_partial_one_waits() -> None:
    data = _client_frames(*(TextMessage(f"m{i}") for i in range(5)))
    assert parse_text_frames(data, 100) == ([f"m{i}" for i in range(5)], len(data), False)
    cut = len(data) - 3
    texts, used, foreign = parse_text_frames(data[:cut], 100)
    assert texts == [f"m{i}" for i in range(4)] and not foreign
    assert data[used:cut] and used < cut  # the start of m4, kept for the next read


@pytest.mark.parametrize("other", [
    Ping(b"are you there"),
    CloseConnection(code=1000),
    BytesMessage(b"\x00\x01"),
    TextMessage("first half", message_finished=False),
], ids=["ping", "close", "binary", "fragment"])
def test_any_other_kind_of_frame_stops_the_parse_where_it_starts(other: Any) -> None:
    head = _client_frames(TextMessage("before"))
    client = Connection(ConnectionType.CLIENT)
    rest = client.send(other)
    texts, used, foreign = parse_text_frames(head + rest + head, 100)
    assert (texts, used, foreign) == (["before"], len(head), True)


def test_unmasked_reserved_bits_64_bit_lengths_bad_utf8_and_big_frames_are_foreign() -> None:
    ok = _client_frames(TextMessage("ok"))
    unmasked = b"\x81\x02hi"
    rsv1 = bytes([0xC1]) + ok[1:]
    long64 = b"\x81\xff" + (10).to_bytes(8, "big") + b"\0\0\0\0" + b"x" * 10
    bad_utf8 = b"\x81\x82\0\0\0\0\xc3\x28"
    for frame in (unmasked, rsv1, long64, bad_utf8):
        assert parse_text_frames(ok + frame, 100) == (["ok"], len(ok), True)
    big = _client_frames(TextMessage("y" * 101))
    assert parse_text_frames(ok + big, 100) == (["ok"], len(ok), True)
    assert parse_text_frames(big, 101)[0] == ["y" * 101]


class _Inner(asyncio.Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        self.received.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.protocol: asyncio.BaseProtocol | None = None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def is_closing(self) -> bool:
        return False


def test_a_reader_fed_byte_by_byte_hands_over_at_the_first_foreign_frame() -> None:
    texts = [f"message {i} ✓" for i in range(4)]
    wire = _client_frames(*(TextMessage(t) for t in texts))
    tail = _client_frames(Ping(b"p")) + _client_frames(TextMessage("after"))
    transport, inner = _Transport(), _Inner()
    got: list[str] = []
    reader = DirectReader(transport, inner, got.append, limit=100)
    transport.set_protocol(reader)
    for i in range(len(wire)):
        reader.data_received(wire[i:i + 1])
    assert got == texts and transport.get_protocol() is reader
    # Three bytes of the ping: its first byte already says "not a text frame", so it is
    # handed over at once, without waiting for the rest of it.
    reader.data_received(tail[:3])
    assert transport.get_protocol() is inner
    assert inner.received == [tail[:3]]
    reader.connection_lost(None)
    assert inner.lost == [None]


def _direct(server: Server) -> list[bool]:
    return [w._target is not None
            and isinstance(w._target[1].transport.get_protocol(), DirectReader)
            for w in frame_writers(server)]


@pytest.mark.fast_paths
async def test_room_sockets_are_read_directly_and_messages_flow(
        server_with: ServerFactory) -> None:
    async with server_with(rate_burst=1000) as srv:
        alice, bob = await srv.connect(), await srv.connect(user="bob")
        for client in (alice, bob):
            await client.recv_type("welcome")
        assert _direct(srv) == [True, True]
        for i in range(30):
            await alice.say(f"m{i}", id=f"m{i}")
        assert [(await bob.recv_type("message"))["text"] for _ in range(30)] == \
            [f"m{i}" for i in range(30)]
        await alice.send("not json")
        assert (await alice.recv_type("error"))["code"] == "invalid_json"
        await alice.ws.close()
        await wait_connections(srv, 1)


@pytest.mark.fast_paths
async def test_a_ping_hands_the_socket_back_and_it_keeps_working(
        server_with: ServerFactory) -> None:
    async with (server_with(rate_burst=1000) as srv,
                websockets.connect(srv.url(), compression=None) as ws):
        assert json.loads(await ws.recv())["type"] == "welcome"
        assert _direct(srv) == [True]
        pong = await ws.ping(b"hello")
        await asyncio.wait_for(pong, 5)  # Hypercorn answered it
        assert _direct(srv) == [False]
        # Fragmented, then whole: both reach the room through Hypercorn now.
        await ws.send(iter(['{"type":"message",', '"text":"in two","id":"f1"}']))
        await ws.send('{"type":"message","text":"whole","id":"f2"}')
        seen: list[str] = []
        while len(seen) < 2:
            frame = str(await asyncio.wait_for(ws.recv(), 5))
            # A server frame may hold several objects, one per line.
            seen += [obj["text"] for obj in map(json.loads, frame.split("\n"))
                     if obj["type"] == "message"]
        assert seen == ["in two", "whole"]


@pytest.mark.parametrize(("frame", "code"), [
    (b"\x81\x82\0\0\0\0\xc3\x28", 1007),  # invalid UTF-8
    (b"\x82\x82\0\0\0\0\x00\x01", 1003),  # binary: roomchat refuses it
], ids=["bad-utf8", "binary"])
@pytest.mark.fast_paths
async def test_frames_the_reader_cannot_take_close_with_hypercorns_codes(
        server_with: ServerFactory, frame: bytes, code: int) -> None:
    async with (server_with() as srv,
                websockets.connect(srv.url(), compression=None) as ws):
        assert json.loads(await ws.recv())["type"] == "welcome"
        assert _direct(srv) == [True]
        ws.transport.write(frame)  # raw: the client library would not send these
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code


@pytest.mark.fast_paths
async def test_a_frame_over_the_size_limit_closes_1009(server_with: ServerFactory) -> None:
    async with (server_with({"max_message_bytes": 1000}) as srv,
                websockets.connect(srv.url(), compression=None) as ws):
        assert json.loads(await ws.recv())["type"] == "welcome"
        assert _direct(srv) == [True]
        await ws.send('{"type":"message","id":"big","text":"' + "z" * 2000 + '"}')
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


@pytest.mark.fast_paths
def test_under_uvloop_too(tmp_path: Path) -> None:
    """``roomchat serve`` runs on uvloop, whose transports are not ``asyncio.Transport``
    subclasses (a check on that once kept the reader off there): read directly, handed back
    by a ping, still working after."""

    async def main() -> None:
        async with (running_server(make_config(tmp_path)) as srv,
                    websockets.connect(srv.url(), compression=None) as ws):
            assert json.loads(await ws.recv())["type"] == "welcome"
            assert _direct(srv) == [True]
            await ws.send('{"type":"message","text":"direct","id":"a"}')
            await asyncio.wait_for(ws.recv(), 5)
            await asyncio.wait_for(await ws.ping(b"x"), 5)
            assert _direct(srv) == [False]
            await ws.send('{"type":"message","text":"via hypercorn","id":"b"}')
            texts: list[str] = []
            while "via hypercorn" not in texts:
                frame = str(await asyncio.wait_for(ws.recv(), 5))
                texts += [o.get("text", "") for o in map(json.loads, frame.split("\n"))]

    uvloop.run(main())

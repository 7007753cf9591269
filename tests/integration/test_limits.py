"""Limits at their edges that protect the process itself."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import resource
from dataclasses import replace
from pathlib import Path

import pytest
import websockets

from tests.support import SLOW, make_config, make_token, running_server


async def test_a_deflate_bomb_is_refused_with_1009_before_it_inflates(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), compression=True, max_message_bytes=65_536)
    async with running_server(config) as srv:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        async with websockets.connect(srv.url("bomb", make_token()), compression="deflate",
                                      max_size=None, open_timeout=10 * SLOW) as ws:
            assert ws.protocol.extensions, "the server accepted permessage-deflate"
            await ws.recv()
            # 64 MiB of zeros deflates to ~64 KiB on the wire.
            await ws.send('{"type":"message","text":"' + "0" * (64 << 20) + '"}')
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await ws.recv()
            assert ws.close_code == 1009
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        # The client built the 64 MiB text itself (and its UTF-8 copy); the server must not
        # have inflated it on top of that.
        assert grown_mib < 200, grown_mib
        async with websockets.connect(srv.url("bomb", make_token()), compression="deflate") as ok:
            assert "welcome" in str(await ok.recv())  # the server is fine


async def test_compressed_messages_up_to_the_limit_are_accepted(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), compression=True, max_message_bytes=65_536)
    async with running_server(config) as srv, websockets.connect(srv.url("ok", make_token()),
                                  compression="deflate") as ws:
        await ws.recv()
        await ws.send('{"type":"message","text":"' + "y" * 1900 + '","id":"big"}')
        while '"ack"' not in (frame := str(await ws.recv())):
            pass
        assert '"id":"big"' in frame


async def raw_ws(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
                 f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return (bytes((0x80 | opcode, 0x80 | len(payload))) + mask +
            bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


async def close_code_after(port: int, frame: bytes) -> int:
    reader, writer = await raw_ws(port, f"/rooms/raw/ws?token={make_token()}")
    try:
        writer.write(frame)
        async with asyncio.timeout(5 * SLOW):
            while True:  # skip the welcome; the first close frame carries the code
                first = await reader.readexactly(2)
                length = first[1] & 0x7F
                if length == 126:
                    length = int.from_bytes(await reader.readexactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(await reader.readexactly(8), "big")
                payload = await reader.readexactly(length)
                if first[0] & 0x0F == 0x8:
                    return int.from_bytes(payload[:2], "big")
    finally:
        writer.close()


@pytest.mark.parametrize(("frame", "code"), [
    (masked(0x1, b"\xff\xfe"), 1007),  # invalid UTF-8 in a text frame
    (masked(0x3, b""), 1002),  # a reserved opcode
    (bytes((0x81, 0x02)) + b"hi", 1002),  # an unmasked client frame
], ids=["invalid-utf8", "reserved-opcode", "unmasked"])  # masks are random: stable ids for xdist
@pytest.mark.fast_paths
async def test_protocol_errors_get_their_close_frame(tmp_path: Path, frame: bytes,
                                                     code: int) -> None:
    async with running_server(make_config(tmp_path)) as srv:
        assert await close_code_after(srv.port, frame) == code

"""A staged drain: on shutdown, connections close in waves, not all at once."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.server import ACCEPT_GRACE
from tests.support import make_config, make_token, running_server


async def test_sockets_close_in_waves_within_the_drain_timeout(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), drain_batch=2, drain_step=0.5, drain_timeout=6.0)
    async with running_server(config) as srv:
        clients = [await srv.connect(f"room{i}", user=f"u{i}") for i in range(6)]
        for client in clients:
            await client.recv()
        loop = asyncio.get_running_loop()
        started = loop.time()
        srv.shutdown.set()

        async def closed_at(client: object) -> tuple[int | None, float]:
            code = await client.closed(timeout=10)  # type: ignore[attr-defined]
            return code, loop.time() - started

        results = await asyncio.gather(*(closed_at(c) for c in clients))
    codes = [code for code, _ in results]
    times = sorted(t for _, t in results)
    assert codes == [1012] * 6
    # Three waves of two rooms, 0.5 s apart (well within half of the 6 s drain timeout).
    assert times[1] < 0.4 and 0.4 < times[2] < 0.9 and 0.9 < times[4] < 1.5, times
    assert times[-1] < 3.0


async def test_few_connections_close_at_once(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as srv:  # default: 10,000 per wave
        clients = [await srv.connect(f"r{i}", user=f"u{i}") for i in range(5)]
        for client in clients:
            await client.recv()
        loop = asyncio.get_running_loop()
        started = loop.time()
        srv.shutdown.set()
        codes = await asyncio.gather(*(c.closed(timeout=10) for c in clients))
        assert codes == [1012] * 5 and loop.time() - started < 0.5


# The drain is held open by a client that never answers the close frame: only the fast
# paths wait for that answer (plain Hypercorn finishes at once), so this runs with them on.
@pytest.mark.fast_paths
async def test_the_listener_closes_before_the_drain(tmp_path: Path) -> None:
    # Stop accepting, then drain: while a client that never answers the close frame holds the
    # drain open, a new connection is refused (a proxy retries it elsewhere), not accepted only
    # to be refused with 503 "draining" or closed unanswered (issue 20, 13). The default event
    # loop here; tests/integration/test_workers.py checks uvloop and a shared port.
    config = replace(make_config(tmp_path), drain_timeout=3.0)
    async with running_server(config) as srv:
        reader, stalled = await asyncio.open_connection("127.0.0.1", srv.port)
        stalled.write(b"GET /rooms/lobby/ws?token=" + make_token().encode() + b" HTTP/1.1\r\n"
                        b"Host: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Version: 13\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 101")
        srv.shutdown.set()
        await asyncio.sleep(ACCEPT_GRACE + 0.2)
        assert srv.gateway.draining and not srv.task.done()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", srv.port)
        stalled.close()

"""A staged drain: on shutdown, connections close in waves, not all at once."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from tests.support import make_config, running_server


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

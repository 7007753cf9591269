"""A closed connection is freed by reference counting: no reference cycle of Hypercorn's or ours
keeps it for the garbage collector (gateway.hypercorn_ext.wsfixes, FrameWriter.detach)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest
import websockets
from hypercorn.asyncio.tcp_server import TCPServer

from tests.support import make_config, make_token, running_server, wait_connections

# What one room connection is made of on the server; each one used to end in a cycle.
SERVER_SIDE = {"TCPServer", "ProtocolWrapper", "H11Protocol", "WSStream", "FrameWriter",
               "Session", "_Inbound"}


@pytest.mark.fast_paths
async def test_a_closed_connection_leaves_no_cycle_for_the_collector(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as srv:
        warm = await websockets.connect(srv.url("lobby", make_token("w", ["lobby"])),
                                        compression=None)
        await warm.recv()
        await warm.close()
        await wait_connections(srv, 0)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable is kept to look at
        try:
            ws = await websockets.connect(srv.url("lobby", make_token("u", ["lobby"])),
                                          compression=None)
            await ws.recv()
            await ws.close()
            await wait_connections(srv, 0)
            # Until Hypercorn's server object for it is gone: freed, or found as garbage.
            for _ in range(300):
                gc.collect()
                found = {id(o) for o in gc.garbage}
                if not any(isinstance(o, TCPServer) and id(o) not in found
                           for o in gc.get_objects()):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the connection's TCPServer is still alive after 3 s")
            cyclic = {type(o).__qualname__ for o in gc.garbage} & SERVER_SIDE
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert not cyclic, f"left in reference cycles: {sorted(cyclic)}"

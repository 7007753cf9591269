"""The listen backlog is ``listen_backlog`` (Hypercorn's default of 100 overflowed in a
reconnect storm: dropped SYNs wait for TCP's retransmissions), on the socket preflight binds
and after Hypercorn listens on it again."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import urllib.request
from dataclasses import replace
from pathlib import Path

from gateway.preflight import bind_socket
from tests.support import make_config, running_server


def max_backlog(sock: socket.socket) -> int:
    """A listening socket's backlog, as Linux reports it (``tcpi_sacked`` of TCP_INFO)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 28)[0])


def test_preflight_listens_with_the_configured_backlog() -> None:
    sock = bind_socket("127.0.0.1:0", 777)
    try:
        assert max_backlog(sock) == 777
    finally:
        sock.close()


async def test_the_serving_socket_keeps_the_configured_backlog(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), listen_backlog=333)
    async with running_server(config) as srv:
        # Answered only once Hypercorn serves, so after it listened again: the server counts as
        # started a little before that, while the socket still has the test's own backlog.
        url = f"http://127.0.0.1:{srv.port}/healthz"
        with await asyncio.to_thread(urllib.request.urlopen, url, timeout=10) as response:
            assert response.status == 200
        backlogs = set()  # of every fd on the listening socket (Hypercorn dups the one it gets)
        for fd in os.listdir("/proc/self/fd"):
            try:
                sock = socket.socket(fileno=os.dup(int(fd)))
            except OSError:
                continue  # not a socket, or closed since the listing
            with sock:
                try:
                    listening = (sock.family == socket.AF_INET
                                 and sock.getsockname()[1] == srv.port
                                 and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
                except OSError:
                    continue
                if listening:
                    backlogs.add(max_backlog(sock))
        assert backlogs == {333}

"""Issue 13's high-severity bugs against real servers: clients that stop reading, closes during a
replay, shutdown with stalled sockets, hostile claims and parameters."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.clients import BIG, FLOOD, TCP_ESTABLISHED, RawClient, room_path, store_messages
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

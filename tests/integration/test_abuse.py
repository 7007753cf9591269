"""Abuse caps at their edges (issue 13): a real server, real clients.

Connections per user and per client IP (trusted proxies' X-Forwarded-For), handshakes per IP,
messages per user across connections, live rooms per process, joins per user per minute, and
the process-wide connection rate (503 `busy`, issue 11).
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from gateway.config import Config
from tests.support import (
    SLOW,
    Client,
    ManualClock,
    Server,
    door_with_clocks,
    make_config,
    make_token,
    running_server,
    until,
)


def config(tmp: Path, room: dict[str, Any] | None = None, **gateway: Any) -> Config:
    return replace(make_config(tmp, **(room or {})), **gateway)


async def refused(srv: Server, room: str = "lobby", user: str = "alice",
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    """Connect and expect a refusal: its status, JSON body and headers."""
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(srv.url(room, make_token(user)), additional_headers=headers,
                                      open_timeout=5 * SLOW):
            pass
    response = info.value.response
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, orjson.loads(response.body or b""), response.headers


async def joined(srv: Server, room: str = "lobby", user: str = "alice",
                 headers: dict[str, str] | None = None) -> Client:
    client = await srv.connect(room, user, headers=headers)
    assert (await client.recv())["type"] == "welcome"
    return client


def forwarded(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


# --- connections per user and per IP -------------------------------------------------------

async def test_connections_per_user_n_allowed_then_429_and_a_closed_one_frees_its_slot(
        tmp_path: Path) -> None:
    async with running_server(config(tmp_path, max_connections_per_user=3)) as srv:
        clients = [await joined(srv, f"room{i}") for i in range(3)]
        status, body, _ = await refused(srv, "room9")
        assert (status, body["error"]) == (429, "too_many_user_connections")
        assert "3 connections" in body["detail"]
        await joined(srv, "room9", user="bob")  # another user is not affected

        await clients[0].ws.close()
        # The slot is free once the server has seen the socket really gone.
        counts = srv.gateway.limits.user_connections
        await until(lambda: counts.count("alice") == 2)
        await joined(srv, "room9")
        status, body, _ = await refused(srv, "room9")
        assert body["error"] == "too_many_user_connections"


async def test_connections_per_forwarded_ip_behind_a_trusted_proxy(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_connections_per_ip=2, trusted_proxies=("127.0.0.1",))
    async with running_server(cfg) as srv:
        first = await joined(srv, user="u1", headers=forwarded("203.0.113.1"))
        # The client wrote the left part itself; the proxy (us, 127.0.0.1) appended the real one.
        await joined(srv, user="u2", headers=forwarded("6.6.6.6, 203.0.113.1"))
        status, body, _ = await refused(srv, user="u3", headers=forwarded("203.0.113.1"))
        assert (status, body["error"]) == (429, "too_many_ip_connections")
        # Another client address behind the same proxy has its own count.
        await joined(srv, user="u3", headers=forwarded("203.0.113.2"))
        await joined(srv, user="u4", headers=forwarded("203.0.113.2"))
        assert srv.gateway.limits.ip_connections.count("127.0.0.1") == 0

        await first.ws.close()
        counts = srv.gateway.limits.ip_connections
        await until(lambda: counts.count("203.0.113.1") == 1)
        await joined(srv, user="u5", headers=forwarded("203.0.113.1"))


@pytest.mark.parametrize("prefix", [64, 128])
async def test_ipv6_clients_behind_a_proxy_count_per_network(tmp_path: Path, prefix: int) -> None:
    """Round-3 finding: 60 addresses of one /64 got no refusal where one address got 40 of 60.
    With the default prefix (64) the third address of one /64 is refused; with 128 it is not."""
    cfg = config(tmp_path, max_connections_per_ip=2)  # the default trusted_proxies: loopback
    assert cfg.client_ipv6_prefix == 64
    async with running_server(replace(cfg, client_ipv6_prefix=prefix)) as srv:
        await joined(srv, user="u1", headers=forwarded("2001:db8:1:2::1"))
        await joined(srv, user="u2", headers=forwarded("2001:db8:1:2::2"))
        if prefix == 64:
            status, body, _ = await refused(srv, user="u3", headers=forwarded("2001:db8:1:2::3"))
            assert (status, body["error"]) == (429, "too_many_ip_connections")
            assert srv.gateway.limits.ip_connections.count("2001:db8:1:2::/64") == 2
        else:
            await joined(srv, user="u3", headers=forwarded("2001:db8:1:2::3"))
        await joined(srv, user="u4", headers=forwarded("2001:db8:1:3::1"))  # another /64


async def test_forwarded_headers_are_ignored_from_an_untrusted_peer(tmp_path: Path) -> None:
    # Only 10.0.0.0/8 is trusted: the test client's 127.0.0.1 is the client, whatever it says.
    cfg = config(tmp_path, max_connections_per_ip=2, trusted_proxies=("10.0.0.0/8",))
    async with running_server(cfg) as srv:
        await joined(srv, user="u1", headers=forwarded("203.0.113.1"))
        await joined(srv, user="u2", headers=forwarded("203.0.113.2"))
        status, body, _ = await refused(srv, user="u3", headers=forwarded("203.0.113.3"))
        assert (status, body["error"]) == (429, "too_many_ip_connections")
        assert srv.gateway.limits.ip_connections.count("127.0.0.1") == 2


# --- rates ---------------------------------------------------------------------------------

async def test_handshakes_per_ip_burst_then_429_with_retry_after_then_refill(
        tmp_path: Path) -> None:
    cfg = config(tmp_path, handshake_burst=3, handshake_rate=5.0,
                 trusted_proxies=("127.0.0.1",))
    async with running_server(cfg) as srv:
        clock = ManualClock(time.monotonic())  # the buckets refill only when stepped
        door_with_clocks(srv.gateway, monotonic=clock)
        # Refused handshakes cost a token too (the check comes before any other).
        status, body, _ = await refused(srv, "bad.room")
        assert (status, body["error"]) == (404, "bad_room")
        await joined(srv)
        await joined(srv, user="bob")
        status, body, headers = await refused(srv)
        assert (status, body["error"]) == (429, "too_many_handshakes")
        assert headers["Retry-After"] == "1"
        # Per IP: another forwarded client is not affected.
        await joined(srv, headers=forwarded("203.0.113.1"))

        clock.step(0.19)  # one token back after 1/rate = 0.2 s: not yet
        status, body, _ = await refused(srv)
        assert body["error"] == "too_many_handshakes"
        clock.step(0.02)
        await joined(srv)
        status, body, _ = await refused(srv)
        assert body["error"] == "too_many_handshakes"


def post_ticket(port: int, user: str) -> tuple[int, dict[str, Any], str | None]:
    """``POST /rooms/lobby/ticket`` as the page does: status, JSON body, Retry-After."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/rooms/lobby/ticket", data=b"",
                                     method="POST",
                                     headers={"Authorization": f"Bearer {make_token(user)}"})
    try:
        with urllib.request.urlopen(request, timeout=10 * SLOW) as response:
            return response.status, orjson.loads(response.read()), None
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read()), exc.headers.get("Retry-After")


async def test_connection_rate_burst_then_503_busy_with_retry_after_then_admitted(
        tmp_path: Path) -> None:
    cfg = config(tmp_path, connection_burst=3, connection_rate=1.0)
    async with running_server(cfg) as srv:
        clock = ManualClock(time.monotonic())  # nothing comes back until the test steps it
        door_with_clocks(srv.gateway, monotonic=clock)
        await joined(srv)
        await joined(srv, user="bob")
        status, body, _ = await asyncio.to_thread(post_ticket, srv.port, "carol")  # the third
        assert status == 200
        ticket = body["ticket"]

        status, body, headers = await refused(srv, user="dave", headers=forwarded("203.0.113.1"))
        assert (status, body["error"]) == (503, "busy")  # whatever the address: process-wide
        retry_after = int(headers["Retry-After"])
        assert 1 <= retry_after <= 3  # a token in <= 1 s, then a random point of >= 1 s
        status, body, hint = await asyncio.to_thread(post_ticket, srv.port, "erin")
        assert (status, body["error"]) == (503, "busy")  # what the page reads
        assert hint is not None and int(hint) >= 1

        # The ticket's request paid: its upgrade is not refused for the rate.
        async with websockets.connect(f"ws://127.0.0.1:{srv.port}/rooms/lobby/ws?ticket={ticket}",
                                      open_timeout=5 * SLOW) as ws:
            first = await ws.recv()
            assert orjson.loads(str(first).split("\n")[0])["user"] == "carol"

        clock.step(retry_after)
        await joined(srv, user="dave")


async def test_message_rate_per_user_spans_two_connections_in_different_rooms(
        tmp_path: Path) -> None:
    # Each connection may send 4 frames, the user 1.5 connections' worth: 6 in all (the buckets
    # barely refill during the test).
    cfg = config(tmp_path, {"rate_burst": 4, "rate_per_sec": 0.01, "rate_abuse_strikes": 3},
                 user_rate_connections=1.5)
    async with running_server(cfg) as srv:
        one = await joined(srv, "room1")
        two = await joined(srv, "room2")
        for client, ids in ((one, ("a", "b", "x")), (two, ("c", "d", "y"))):
            for id in ids:
                await client.say(id, id)
                assert (await client.recv_type("ack"))["id"] == id
        for client, id in ((one, "e"), (two, "f")):
            await client.say(id, id)
            error = await client.recv_type("error")
            assert (error["code"], error["id"]) == ("rate_limited", id)
            assert error["retry_after"] > 0
            assert "this user" in error["message"]  # the user's bucket, not the connection's
        # Another user has their own bucket.
        bob = await joined(srv, "room1", user="bob")
        await bob.say("hi", "g")
        assert (await bob.recv_type("ack"))["id"] == "g"
        # Refused frames never reach the room, so this connection counts its own strikes.
        await one.say("h", "h")
        await one.say("i", "i")
        assert await one.closed() == 4008


# --- rooms ---------------------------------------------------------------------------------

async def test_live_rooms_cap_refuses_a_new_room_and_allows_again_after_rooms_stop(
        tmp_path: Path) -> None:
    cfg = config(tmp_path, {"room_idle_ttl": 0.1, "tick_interval": 0.05}, max_live_rooms=2)
    async with running_server(cfg) as srv:
        first = await joined(srv, "room1")
        second = await joined(srv, "room2", user="bob")
        status, body, _ = await refused(srv, "room3", user="carol")
        assert (status, body["error"]) == (503, "too_many_rooms")
        # Rooms already running still take joins.
        await joined(srv, "room1", user="carol")
        for client in (first, second):
            await client.ws.close()
        registry = srv.gateway.registry
        await until(lambda: len(registry) < 2)
        await joined(srv, "room3", user="carol")


async def test_joins_per_user_per_minute(tmp_path: Path) -> None:
    async with running_server(config(tmp_path, user_joins_per_minute=3)) as srv:
        for i in range(3):
            client = await joined(srv, f"room{i}")
            await client.ws.close()
        status, body, headers = await refused(srv, "room3")
        assert (status, body["error"]) == (429, "too_many_joins")
        assert headers["Retry-After"] == "20"  # one join every 60/3 s
        await joined(srv, "room3", user="bob")

"""Single-use tickets, revocation and key rotation, against real servers."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from gateway.auth import make_verifier
from tests.redis_server import redis_server
from tests.support import (
    REPO,
    SECRET,
    SLOW,
    door_with_clocks,
    make_config,
    make_token,
    running_server,
    server_process,
)


def post_ticket(port: int, room: str, token: str | None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/rooms/{room}/ticket", data=b"",
                                     method="POST")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10 * SLOW) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def ticket_for(port: int, room: str, token: str) -> str:
    status, body = await asyncio.to_thread(post_ticket, port, room, token)
    assert status == 200, body
    assert body["expires_in"] == 30
    ticket: str = body["ticket"]
    return ticket


async def upgrade_status(port: int, room: str, query: str) -> int:
    """101 if the upgrade is accepted (and the welcome arrives), else the refusal's status."""
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/rooms/{room}/ws?{query}",
                                      open_timeout=10 * SLOW) as ws:
            assert '"welcome"' in str(await ws.recv())
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def test_a_ticket_opens_one_connection_and_refusals_are_readable(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as srv:
        token = make_token("alice", rooms=["lobby"])
        ticket = await ticket_for(srv.port, "lobby", token)
        assert token not in ticket
        assert await upgrade_status(srv.port, "lobby", f"ticket={ticket}") == 101
        assert await upgrade_status(srv.port, "lobby", f"ticket={ticket}") == 401  # used
        other = await ticket_for(srv.port, "lobby", token)
        assert await upgrade_status(srv.port, "elsewhere", f"ticket={other}") == 403
        assert await upgrade_status(srv.port, "lobby", "ticket=made-up-ticket-value") == 401
        # The reasons a page can show, as JSON, on an ordinary HTTP answer:
        cases = {None: (401, "missing_token"), "garbage": (401, "invalid_token"),
                 make_token("alice", ttl=-60): (401, "token_expired"),
                 make_token("alice", rooms=["other"]): (403, "room_forbidden")}
        for bad, (status, error) in cases.items():
            got = await asyncio.to_thread(post_ticket, srv.port, "lobby", bad)
            assert got[0] == status and got[1]["error"] == error, (bad, got)


async def test_tickets_are_single_use_across_restarts_of_the_embedded_server(
        tmp_path: Path) -> None:
    with server_process(tmp_path) as first:
        token = make_token("alice")
        used = await ticket_for(first.port, "lobby", token)
        kept = await ticket_for(first.port, "lobby", token)
        assert await upgrade_status(first.port, "lobby", f"ticket={used}") == 101
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    with server_process(tmp_path) as second:
        assert await upgrade_status(second.port, "lobby", f"ticket={used}") == 401
        assert await upgrade_status(second.port, "lobby", f"ticket={kept}") == 101
        assert await upgrade_status(second.port, "lobby", f"ticket={kept}") == 401


async def test_tickets_are_single_use_across_processes_on_redis(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url, \
            server_process(tmp_path / "a", args=["--store-url", url]) as a, \
            server_process(tmp_path / "b", args=["--store-url", url]) as b:
        ticket = await ticket_for(a.port, "lobby", make_token("alice"))
        results = await asyncio.gather(upgrade_status(b.port, "lobby", f"ticket={ticket}"),
                                       upgrade_status(a.port, "lobby", f"ticket={ticket}"))
        assert sorted(results) == [101, 401]


def revoke(data_dir: Path, user: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "revoke", "--user", user, "--data-dir", str(data_dir),
         *extra], capture_output=True, text=True, timeout=30 * SLOW, cwd=REPO,
        env={"ROOMCHAT_JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin"}, check=False)


async def closed_with(ws: Any, timeout: float) -> int | None:
    async with asyncio.timeout(timeout * SLOW):
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed:
            return ws.close_code  # type: ignore[no-any-return]


async def test_revoke_closes_every_socket_of_the_user_and_refuses_older_tokens(
        tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url, \
            server_process(tmp_path / "a", args=["--store-url", url]) as a, \
            server_process(tmp_path / "b", args=["--store-url", url]) as b:
        old = make_token("mallory")
        sockets = [await websockets.connect(p.url(room, old)) for p in (a, b)
                   for room in ("r1", "r2")]
        bystander = await websockets.connect(a.url("r1", make_token("bob")))
        for ws in (*sockets, bystander):
            await ws.recv()
        started = time.monotonic()
        result = await asyncio.to_thread(revoke, tmp_path / "a", "mallory", "--store-url", url)
        assert result.returncode == 0, result.stderr
        assert "revoked 'mallory'" in result.stdout
        codes = await asyncio.gather(*(closed_with(ws, 5) for ws in sockets))
        assert codes == [4003] * 4
        assert time.monotonic() - started < 2 + 1.5 * SLOW  # within 2 s of the command
        assert await upgrade_status(a.port, "r1", f"token={old}") == 401
        status, body = await asyncio.to_thread(post_ticket, b.port, "r1", old)
        assert (status, body["error"]) == (401, "token_revoked")
        # A token issued after the revocation is admitted. ``iat`` has whole seconds, so the
        # first such token says the next second (within jwt_leeway of now): no need to wait
        # for the clock to get there.
        after = make_token("mallory", iat=int(time.time()) + 1)
        assert await upgrade_status(b.port, "r1", f"token={after}") == 101
        await bystander.send('{"type":"pong"}')  # bob was never disturbed
        assert bystander.close_code is None
        await bystander.close()


async def test_revoke_on_the_embedded_engine_beside_a_live_server(tmp_path: Path) -> None:
    with server_process(tmp_path) as srv:
        ws = await websockets.connect(srv.url("lobby", make_token("mallory")))
        await ws.recv()
        result = await asyncio.to_thread(revoke, tmp_path, "mallory")
        assert result.returncode == 0, result.stderr
        assert await closed_with(ws, 5) == 4003


async def test_key_rotation_by_kid(tmp_path: Path) -> None:
    new_secret = "a-second-secret-that-is-long-enough-0123456789"
    config = replace(make_config(tmp_path), jwt_keys=(f"2026-11={new_secret}",))
    now = int(time.time())
    claims = {"sub": "alice", "rooms": ["*"], "aud": "roomchat", "iss": "roomchat",
              "iat": now, "exp": now + 60}
    rotated = jwt.encode(claims, new_secret, algorithm="HS256", headers={"kid": "2026-11"})
    unknown = jwt.encode(claims, new_secret, algorithm="HS256", headers={"kid": "nope"})
    wrong = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "2026-11"})
    verifier = make_verifier(config)
    assert verifier.verify(rotated).user == "alice"
    assert verifier.verify(make_token("alice")).user == "alice"  # no kid: the main key
    for bad in (unknown, wrong):
        with pytest.raises(Exception, match="invalid token"):
            verifier.verify(bad)
    async with running_server(config) as srv:
        assert await upgrade_status(srv.port, "lobby", f"token={rotated}") == 101
        assert await upgrade_status(srv.port, "lobby", f"token={unknown}") == 401


async def test_the_ticket_answers_what_the_upgrade_would_refuse(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), max_connections_per_user=1)
    async with running_server(config) as srv:
        token = make_token("alice")
        first = await ticket_for(srv.port, "lobby", token)
        async with websockets.connect(f"ws://127.0.0.1:{srv.port}/rooms/lobby/ws?ticket={first}"):
            status, body = await asyncio.to_thread(post_ticket, srv.port, "lobby", token)
            assert (status, body["error"]) == (429, "too_many_user_connections")
        srv.gateway.draining = True  # as during a shutdown
        status, body = await asyncio.to_thread(post_ticket, srv.port, "lobby", token)
        assert (status, body["error"]) == (503, "draining")
        srv.gateway.draining = False


async def test_a_draining_server_refuses_before_spending_a_ticket(tmp_path: Path) -> None:
    """While draining, an upgrade is refused (503 ``draining``) before its credentials are
    looked at: no token verified, and a ticket stays unspent for the retry."""
    async with running_server(make_config(tmp_path)) as srv:
        ticket = await ticket_for(srv.port, "lobby", make_token("alice"))
        srv.gateway.draining = True
        assert await upgrade_status(srv.port, "lobby", f"ticket={ticket}") == 503
        assert await upgrade_status(srv.port, "lobby", "token=not-a-jwt") == 503
        srv.gateway.draining = False
        async with websockets.connect(
                f"ws://127.0.0.1:{srv.port}/rooms/lobby/ws?ticket={ticket}") as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"


async def refusal(port: int, room: str, query: str) -> tuple[int, dict[str, Any]]:
    """The refused upgrade's status and JSON body (an accepted one fails the test)."""
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"ws://127.0.0.1:{port}/rooms/{room}/ws?{query}",
                                      open_timeout=10 * SLOW) as ws:
            pytest.fail(f"admitted: {await ws.recv()!r}")
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"")


async def test_a_ticket_is_refused_once_its_token_has_expired(tmp_path: Path) -> None:
    """Round-3 finding: ``redeem`` never looked at ``exp``, so a ticket outlived its token (the
    socket got its welcome and history before the room's next tick closed it with 4001)."""
    async with running_server(make_config(tmp_path)) as srv:
        # Expired 5 s ago: within jwt_leeway (10 s) the ticket request still takes the token.
        now = int(time.time())
        stale = make_token("alice", iat=now - 60, exp=now - 5)
        ticket = await ticket_for(srv.port, "lobby", stale)
        assert await refusal(srv.port, "lobby", f"ticket={ticket}") == (401, {
            "error": "token_expired",
            "detail": "the token this ticket was issued for has expired"})
        assert await upgrade_status(srv.port, "lobby", f"ticket={ticket}") == 401  # spent

        # Valid when the ticket was issued, expired by the upgrade (within ticket_ttl): the
        # front door's wall clock (injected) is moved to the token's exp, the first instant
        # it has expired; a moment before, a ticket of the same token still opens a socket.
        exp = int(time.time()) + 600
        token = make_token("alice", exp=exp)
        early = await ticket_for(srv.port, "lobby", token)
        late = await ticket_for(srv.port, "lobby", token)
        door_with_clocks(srv.gateway, wall=lambda: exp - 0.001)
        assert await upgrade_status(srv.port, "lobby", f"ticket={early}") == 101
        door_with_clocks(srv.gateway, wall=lambda: float(exp))
        status, body = await refusal(srv.port, "lobby", f"ticket={late}")
        assert (status, body["error"]) == (401, "token_expired")
        door_with_clocks(srv.gateway)
        # A ticket of a token still valid opens its socket, as before.
        fresh = await ticket_for(srv.port, "lobby", make_token("alice"))
        assert await upgrade_status(srv.port, "lobby", f"ticket={fresh}") == 101

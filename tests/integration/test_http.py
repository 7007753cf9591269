"""Plain HTTP routes and operations: page, headers, health, readiness, metrics, admin, logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import ServerFactory
from tests.support import SLOW, Server, make_config, make_token, running_server, server_process


def get(url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return response.status, headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


async def aget(url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(get, url, data)


async def test_room_page_has_strict_csp_and_security_headers(server: Server) -> None:
    status, headers, body = await aget(f"http://127.0.0.1:{server.port}/rooms/lobby")
    assert status == 200 and b"<html" in body
    csp = headers["content-security-policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "connect-src 'self'",
                      "frame-ancestors 'none'", "object-src 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert (await aget(f"http://127.0.0.1:{server.port}/rooms/bad.name"))[0] == 404
    assert (await aget(f"http://127.0.0.1:{server.port}/static/ui.js"))[0] == 200


async def test_health_ready_and_metrics(server: Server) -> None:
    base = f"http://127.0.0.1:{server.port}"
    assert (await aget(f"{base}/healthz"))[0] == 200
    assert (await aget(f"{base}/readyz"))[0] == 200
    alice = await server.connect()
    await alice.recv()
    await alice.say("count me", id="c")
    await alice.recv_type("ack")
    with pytest.raises(InvalidStatus):
        async with websockets.connect(server.url(token="bad")):
            pass
    _, headers, body = await aget(f"{base}/metrics")
    text = body.decode()
    assert headers["content-type"].startswith("text/plain")
    assert "roomchat_connections 1.0" in text
    assert "roomchat_rooms_active 1.0" in text
    assert "roomchat_messages_stored_total 1.0" in text
    assert 'roomchat_handshake_rejections_total{reason="invalid_token"} 1.0' in text
    assert "roomchat_broadcast_latency_seconds_count 1.0" in text
    assert "roomchat_store_commit_seconds_count" in text
    server.gateway.draining = True
    assert (await aget(f"{base}/readyz"))[0] == 503


async def test_dev_login_is_off_by_default(server: Server) -> None:
    base = f"http://127.0.0.1:{server.port}"
    assert json.loads((await aget(f"{base}/api/info"))[2]) == {
        "dev_login": False, "max_file_bytes": 25 * 1024 * 1024}
    status, _, _ = await aget(f"{base}/api/dev-login", b'{"name":"x","room":"lobby"}')
    assert status == 404


async def test_dev_login_issues_short_lived_room_token(server_with: ServerFactory) -> None:
    async with server_with({"dev_login": True, "dev_login_ttl": 600.0,
                            "max_file_bytes": 1000}) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        # /api/info also says the largest upload (the page refuses a larger file in words).
        assert json.loads((await aget(f"{base}/api/info"))[2]) == {"dev_login": True,
                                                                  "max_file_bytes": 1000}
        status, _, body = await aget(f"{base}/api/dev-login", b'{"name":" Zoe ","room":"lobby"}')
        assert status == 200
        answer = json.loads(body)
        assert answer["expires_in"] == 600 and answer["user"].startswith("guest-")
        client = await srv.connect(token=answer["token"])
        welcome = await client.recv()
        assert (welcome["name"], welcome["user"]) == ("Zoe", answer["user"])
        # Not UTF-8 and nested deeply were 500s (UnicodeDecodeError, RecursionError).
        for bad in (b'{"name":"","room":"lobby"}', b'{"name":"x","room":"a b"}', b"nope",
                    b'{"name":"\xff","room":"lobby"}', b"[" * 100_000 + b"]" * 100_000):
            status, _, body = await aget(f"{base}/api/dev-login", bad)
            assert (status, json.loads(body)["error"]) == (400, "bad_request"), bad[:20]


def test_dev_login_is_refused_on_public_bind(tmp_path: Path) -> None:
    from dataclasses import replace

    from gateway.app import create_app
    from tests.support import make_config

    with pytest.raises(ValueError, match="non-loopback"):
        create_app(replace(make_config(tmp_path), dev_login=True, bind="0.0.0.0:8000"))


async def test_admin_stream_requires_admin_claim(server: Server) -> None:
    url = f"ws://127.0.0.1:{server.port}/admin/ws?token="
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url + make_token()):
            pass
    assert info.value.response.status_code == 403
    member = await server.connect("busy", user="m")
    await member.recv()
    async with websockets.connect(url + make_token("root", admin=True)) as ws:
        objects: list[dict[str, Any]] = []
        while not any(o["type"] == "stats" for o in objects):
            data = await asyncio.wait_for(ws.recv(), 5 * SLOW)
            objects += [orjson.loads(line) for line in str(data).split("\n")]
        stats = next(o for o in objects if o["type"] == "stats")
        assert stats["connections"] >= 2
        (room,) = [r for r in stats["rooms"] if r["room"] == "busy"]
        assert (room["sessions"], room["members"]) == (1, 1)
    status, headers, _ = await aget(f"http://127.0.0.1:{server.port}/admin")
    assert status == 200 and "script-src 'self'" in headers["content-security-policy"]


async def test_logs_are_json_and_never_contain_tokens(tmp_path: Path) -> None:
    token = make_token()
    with server_process(tmp_path, args=["--log-json", "--log-level", "debug"]) as srv:
        async with websockets.connect(srv.url("lobby", token)) as ws:
            await ws.recv()
            await ws.send('{"type":"message","text":"secret words","id":"x"}')
            await ws.recv()
        with pytest.raises(InvalidStatus):
            async with websockets.connect(srv.url("lobby", token + "x")):
                pass
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=15 * SLOW)
    output = srv.output()
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and all(json.loads(line)["level"] for line in lines)
    assert any("/rooms/lobby/ws" in line for line in lines)
    assert token[:20] not in output and "token=" not in output
    assert "secret words" not in output


def test_no_token_in_default_access_log_format() -> None:
    from gateway.logs import ACCESS_LOG_FORMAT

    # %(r)s/%(R)s/%(q)s/%(Uq)s would include the query string, and with it the token.
    assert "%(U)s" in ACCESS_LOG_FORMAT
    for atom in ("%(R)s", "%(q)s", "%(Uq)s"):
        assert atom not in ACCESS_LOG_FORMAT
    logging.getLogger(__name__).debug("ok")


async def test_admin_stream_honours_expiry_and_heartbeat(tmp_path: Path) -> None:
    # ping_timeout well above ping_interval: on a loaded machine a pong answered late must
    # not end the first stream (4010) before its token's expiry does (4001).
    config = make_config(tmp_path, ping_interval=0.5, ping_timeout=3.0, tick_interval=0.1)
    async with running_server(config) as srv:
        url = f"ws://127.0.0.1:{srv.port}/admin/ws?token="
        # A token living 6 pings: fresh-clone run 31 (load 7) saw its 1.5 s expire after
        # five stats and before the first ping.
        async with websockets.connect(url + make_token("root", admin=True, ttl=3.0)) as ws:
            kinds: list[str] = []
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:  # answer pings: only the token's expiry ends the stream
                    for line in str(await asyncio.wait_for(ws.recv(), 5 * SLOW)).split("\n"):
                        kinds.append(orjson.loads(line)["type"])
                        if kinds[-1] == "ping":
                            await ws.send('{"type":"pong"}')
            assert ws.close_code == 4001 and "ping" in kinds
        async with websockets.connect(url + make_token("root", admin=True)) as ws:
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:  # never answer: heartbeat timeout
                    await asyncio.wait_for(ws.recv(), 5 * SLOW)
            assert ws.close_code == 4010


@pytest.mark.parametrize("path", ["/static/index.html", "/static/admin.html", "/rooms/lobby",
                                  "/admin"])
async def test_every_html_response_carries_the_csp_and_is_not_cached(
        server: Server, path: str) -> None:
    status, headers, _ = await aget(f"http://127.0.0.1:{server.port}{path}")
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"

"""infra/Caddyfile: it validates, and a real Caddy in front of real roomchat processes
terminates TLS (h2), passes WebSockets through (also across a config reload), keeps a room on
one upstream, and never logs a token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets

from gateway.app import PAGE_CSP
from tests.infra.harness import (
    CADDYFILE,
    Caddy,
    caddy_env,
    caddy_running,
    chat_once,
    get,
    join,
    negotiated_alpn,
    request,
    run_caddy,
    stop,
    wait_healthy,
)
from tests.support import SLOW, Process, make_token, start_process

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
PRODUCTION = {"ROOMCHAT_DOMAIN": "chat.example.com", "ROOMCHAT_TLS": "acme",
              "ROOMCHAT_UPSTREAMS": "roomchat-a:8000 roomchat-b:8000"}
LOCAL = {"ROOMCHAT_DOMAIN": "localhost", "ROOMCHAT_TLS": "internal",
         "ROOMCHAT_UPSTREAMS": "127.0.0.1:8000", "ROOMCHAT_CADDY_ADMIN": "off"}


# ---- the file itself ---------------------------------------------------------------------

def test_caddyfile_is_formatted(tmp_path: Path) -> None:
    result = run_caddy(["fmt", str(CADDYFILE)], caddy_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == CADDYFILE.read_text(), "run: caddy fmt --overwrite infra/Caddyfile"


@pytest.mark.parametrize("settings", [LOCAL, PRODUCTION], ids=["local", "production"])
def test_caddyfile_validates(tmp_path: Path, settings: dict[str, str]) -> None:
    result = run_caddy(["validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                       caddy_env(tmp_path, **settings))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid configuration" in result.stdout + result.stderr


def _adapt(tmp_path: Path, settings: dict[str, str]) -> dict[str, Any]:
    result = run_caddy(["adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                       caddy_env(tmp_path, **settings))
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def _handlers(node: object) -> Iterator[dict[str, Any]]:
    """Every handler object anywhere in an adapted config."""
    if isinstance(node, dict):
        if "handler" in node:
            yield node
        for value in node.values():
            yield from _handlers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _handlers(value)


def test_adapted_config_has_what_production_needs(tmp_path: Path) -> None:
    config = _adapt(tmp_path, PRODUCTION)
    (proxy,) = [h for h in _handlers(config) if h["handler"] == "reverse_proxy"]
    assert [u["dial"] for u in proxy["upstreams"]] == ["roomchat-a:8000", "roomchat-b:8000"]
    policy = proxy["load_balancing"]["selection_policy"]
    assert policy["policy"] == "header" and policy["field"] == "X-Roomchat-Room"
    assert proxy["health_checks"]["active"]["uri"] == "/readyz"
    assert proxy["stream_close_delay"] >= 60 * 10**9  # nanoseconds
    assert proxy["stream_timeout"] >= 3600 * 10**9
    # Both loggers (access and Caddy's own) delete the token from the URI's query.
    for name in ("default", "log0"):
        fields = config["logging"]["logs"][name]["encoder"]["fields"]
        assert fields["request>uri"] == {"filter": "query",
                                         "actions": [{"type": "delete", "parameter": "token"}]}
    headers = [h for h in _handlers(config) if h["handler"] == "headers"]
    text = json.dumps(headers)
    assert "Strict-Transport-Security" in text  # acme mode: public certificate, HSTS
    assert "Content-Security-Policy" not in text  # roomchat's own CSP is left alone
    # No HSTS with Caddy's local CA (localhost, test hosts).
    assert "Strict-Transport-Security" not in json.dumps(_adapt(tmp_path, LOCAL))


# ---- a live edge: Caddy + two roomchat upstreams --------------------------------------------

@dataclass
class Edge:
    caddy: Caddy
    upstreams: list[Process]

    def ws_url(self, room: str, token: str, query: str = "") -> str:
        return f"wss://localhost:{self.caddy.https_port}/rooms/{room}/ws?token={token}{query}"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """Two roomchat processes (own data dirs) behind one Caddy, for this module's tests."""
    base = tmp_path_factory.mktemp("edge")
    upstreams: list[Process] = []
    try:
        for name in ("a", "b"):
            upstreams.append(start_process(base / name))
        for process in upstreams:
            wait_healthy(process)
        with caddy_running(base / "caddy", [p.port for p in upstreams]) as caddy:
            yield Edge(caddy, upstreams)
    finally:
        for process in upstreams:
            stop(process.proc)


def _wait_for(predicate: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout * SLOW
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def test_wss_chat_through_caddy_with_a_browser_origin(edge: Edge) -> None:
    context = edge.caddy.context()
    origin = f"https://localhost:{edge.caddy.https_port}"
    ws, welcome = await join(edge.ws_url("edge-chat", make_token("alice")), context, origin)
    try:
        assert welcome["room"] == "edge-chat" and welcome["user"] == "alice"
        ack = await chat_once(ws, "hello through caddy", "m1")
        assert ack["seq"] == 1
    finally:
        await ws.close()
    # The Host header reached roomchat unchanged: a foreign Origin is still refused there.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await join(edge.ws_url("edge-chat", make_token("mallory")), context,
                   "https://evil.example")
    assert refused.value.response.status_code == 403


def test_edge_negotiates_h2_and_sets_headers(edge: Edge) -> None:
    caddy = edge.caddy
    assert negotiated_alpn(caddy.https_port, caddy.context()) == "h2"
    assert negotiated_alpn(caddy.https_port, caddy.context(), offer=("http/1.1",)) == "http/1.1"

    status, headers, _ = get(caddy.url("/rooms/lobby"), caddy.context())
    assert status == 200
    assert headers["content-security-policy"] == PAGE_CSP  # roomchat's, untouched
    assert headers["x-content-type-options"] == "nosniff"
    assert "server" not in headers
    assert "strict-transport-security" not in headers  # tls internal: no HSTS

    # Metrics are internal: Caddy answers 404 itself, still with security headers.
    status, headers, _ = get(caddy.url("/metrics"), caddy.context())
    assert status == 404
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    direct = edge.upstreams[0].port
    assert get(f"http://127.0.0.1:{direct}/metrics")[0] == 200


async def test_every_request_of_a_room_reaches_the_same_upstream(edge: Edge) -> None:
    """The page, its ticket, the socket the ticket opens, the history and the API of a room all
    go to the room's upstream: with per-instance storage a ticket issued by one instance is
    unknown to the other (the page's first connection failed at random, then retried)."""
    rooms = [f"sticky-{i:02d}" for i in range(16)]
    context = edge.caddy.context()
    for room in rooms:
        bearer = {"Authorization": f"Bearer {make_token('bob')}"}
        assert get(edge.caddy.url(f"/rooms/{room}"), context)[0] == 200
        status, _, body = request("POST", edge.caddy.url(f"/rooms/{room}/ticket"), context,
                                  headers=bearer, body=b"")
        assert status == 200, body
        ticket = json.loads(body)["ticket"]
        url = f"wss://localhost:{edge.caddy.https_port}/rooms/{room}/ws?ticket={ticket}"
        ws, _ = await join(url, context)  # fails if the ticket went to the other instance
        await ws.close()
        for path in (f"/rooms/{room}/history?before=1", f"/api/v1/rooms/{room}/messages"):
            status, _, body = get(edge.caddy.url(path), context, headers=bearer)
            assert status in (200, 403), (path, status, body)  # reached roomchat, not Caddy

    kinds = ["GET /rooms/{} ", "POST /rooms/{}/ticket ", "GET /rooms/{}/ws ",
             "GET /rooms/{}/history", "GET /api/v1/rooms/{}/messages"]

    def served(room: str) -> dict[str, list[int]]:
        """For each kind of request, the upstreams whose access log shows it for ``room``."""
        outputs = [process.output() for process in edge.upstreams]
        return {kind: [i for i, out in enumerate(outputs) if f'"{kind.format(room)}' in out]
                for kind in kinds}

    def one_upstream(room: str) -> bool:
        hits = served(room)
        return all(len(where) == 1 for where in hits.values()) and len(
            {where[0] for where in hits.values()}) == 1

    _wait_for(lambda: all(one_upstream(r) for r in rooms),
              "each room's requests, all on one upstream")
    where = {room: served(room)["GET /rooms/{} "][0] for room in rooms}
    # 16 rooms on 2 upstreams: both are used (all on one: probability 2**-15).
    assert set(where.values()) == {0, 1}, where


async def test_token_is_in_no_log(edge: Edge) -> None:
    token = make_token("carol", rooms=["secret-room"])
    ws, _ = await join(edge.ws_url("secret-room", token, "&after=0"), edge.caddy.context())
    try:
        await chat_once(ws, "psst", "s1")
    finally:
        await ws.close()

    def entries() -> list[dict[str, Any]]:
        log = edge.caddy.access_log
        lines = log.read_text().splitlines() if log.exists() else []
        return [e for e in map(json.loads, lines)
                if e["request"]["uri"].startswith("/rooms/secret-room/ws")]

    _wait_for(entries, "the access log entry of the socket")
    (entry,) = entries()
    assert entry["request"]["uri"] == "/rooms/secret-room/ws?after=0"  # other params kept
    assert entry["status"] == 101
    for name, text in [("caddy access log", edge.caddy.access_log.read_text()),
                       ("caddy output", edge.caddy.output()),
                       *((f"roomchat {i}", p.output()) for i, p in enumerate(edge.upstreams))]:
        assert token not in text, name
        assert "token=" not in text, name


async def test_browser_page_goes_live_through_caddy(edge: Edge) -> None:
    """Chromium: the page over h2, its WebSocket through Caddy past the Origin check."""
    from playwright.async_api import async_playwright

    room = "browser-room"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = await browser.new_context(ignore_https_errors=True)
            page = await context.new_page()
            seen: list[str] = []  # what the page did, for the failure message
            page.on("console", lambda m: seen.append(f"console {m.type}: {m.text}"))
            page.on("pageerror", lambda e: seen.append(f"uncaught: {e}"))
            page.on("requestfailed", lambda r: seen.append(f"failed: {r.url} {r.failure}"))
            page.on("response", lambda r: seen.append(f"{r.status} {r.url}"))
            page.on("websocket", lambda ws: seen.append(f"websocket {ws.url}"))
            await page.goto(edge.caddy.url(f"/rooms/{room}#token={make_token('web')}"))
            try:
                await page.wait_for_selector('#status[data-state="live"]', timeout=10_000 * SLOW)
            except Exception as exc:
                status = await page.evaluate(
                    "(() => { const s = document.querySelector('#status');"
                    " return s ? `${s.dataset.state}: ${s.textContent}` : 'no #status' })()")
                raise AssertionError(_not_live(edge, status, seen)) from exc
        finally:
            await browser.close()

    def page_entries() -> list[dict[str, Any]]:
        lines = edge.caddy.access_log.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["request"]["uri"] == f"/rooms/{room}"]

    _wait_for(page_entries, "the page's access log entry")
    assert page_entries()[0]["request"]["proto"] == "HTTP/2.0"
    assert "token=" not in edge.caddy.access_log.read_text()  # the page's socket is logged too


def _not_live(edge: Edge, status: str, seen: list[str]) -> str:
    """Why the page did not go live: its status, what it did, and the servers' last lines."""
    tail = "\n".join
    return (f"the page did not go live; #status is {status!r}\n"
            f"the page:\n{tail(seen)}\n"
            f"caddy:\n{tail(edge.caddy.output().splitlines()[-20:])}\n"
            + "".join(f"roomchat {i}:\n{tail(p.output().splitlines()[-20:])}\n"
                      for i, p in enumerate(edge.upstreams)))


async def test_config_reload_keeps_open_sockets(edge: Edge) -> None:
    """stream_close_delay: a reload does not close every WebSocket at once."""
    context = edge.caddy.context()
    ws, _ = await join(edge.ws_url("reload-room", make_token("dave")), context)
    try:
        result = edge.caddy.reload()
        assert result.returncode == 0, result.stdout + result.stderr
        await chat_once(ws, "still here after the reload", "r1")
        other, _ = await join(edge.ws_url("reload-room", make_token("erin")), context)
        await chat_once(other, "and new sockets work", "r2")
        await other.close()
    finally:
        await ws.close()

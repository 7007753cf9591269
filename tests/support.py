"""Shared test helpers: a real roomchat server on a free port, tokens, a WebSocket client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jwt
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from gateway.access import FrontDoor
from gateway.app import Gateway, create_app
from gateway.config import Config, load_config
from gateway.hypercorn_ext import FrameWriter
from gateway.server import serve
from rooms.config import RoomConfig

# One factor for slow machines (python-websockets does the same): scale every wait by it.
SLOW = float(os.environ.get("ROOMCHAT_TEST_SLOW", "1"))
SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
SCALEOUT_ENV = {"ROOMCHAT_RATE_BURST": "1000", "ROOMCHAT_RATE_PER_SEC": "1000",
                "ROOMCHAT_SYNC_INTERVAL": "0.5", "ROOMCHAT_PRESENCE_TTL": "2",
                "ROOMCHAT_PING_INTERVAL": "2", "ROOMCHAT_PING_TIMEOUT": "2"}
"""Settings of ``roomchat serve`` processes that share a room on Redis in tests: rate limits out
of the way (the traffic is the test's), syncs, presence and heartbeats quick."""
REPO = Path(__file__).resolve().parent.parent


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_token(user: str = "alice", rooms: list[str] | None = None, *, name: str | None = None,
               ttl: float = 3600, secret: str = SECRET, **extra: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "rooms": rooms if rooms is not None else ["*"],
                              "aud": "roomchat", "iss": "roomchat", "iat": now,
                              "exp": now + ttl}
    if name is not None:
        claims["name"] = name
    claims.update(extra)
    return jwt.encode(claims, secret, algorithm="HS256")


def make_config(tmp: Path, **room: Any) -> Config:
    return replace(load_config({}, data_dir=tmp, jwt_secret=SECRET),
                   room=replace(RoomConfig(), **room))


@dataclass
class Server:
    """A roomchat app served by Hypercorn in this event loop."""

    config: Config
    port: int
    gateway: Gateway
    shutdown: asyncio.Event
    task: asyncio.Task[None]
    clients: list[ClientConnection] = field(default_factory=list)

    def url(self, room: str = "lobby", token: str | None = None, **query: Any) -> str:
        token = make_token() if token is None else token
        extra = "".join(f"&{k}={v}" for k, v in query.items())
        return f"ws://127.0.0.1:{self.port}/rooms/{room}/ws?token={token}{extra}"

    async def connect(self, room: str = "lobby", user: str = "alice", **kw: Any) -> Client:
        token = kw.pop("token", None) or make_token(user, name=kw.pop("name", None))
        headers = kw.pop("headers", None)
        ws = await websockets.connect(self.url(room, token, **kw), additional_headers=headers,
                                      open_timeout=10 * SLOW, max_size=2**24,
                                      compression=None)
        self.clients.append(ws)
        return Client(ws)


@dataclass
class Client:
    """A real WebSocket client that splits server frames into protocol objects."""

    ws: ClientConnection
    pending: list[dict[str, Any]] = field(default_factory=list)
    frames: int = 0

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        while not self.pending:
            async with asyncio.timeout(timeout * SLOW):
                data = await self.ws.recv()
            assert isinstance(data, str), "server frames are text"
            self.frames += 1
            self.pending.extend(orjson.loads(line) for line in data.split("\n"))
        return self.pending.pop(0)

    async def recv_type(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next object of ``kind``, skipping pings and presence of other kinds."""
        while True:
            obj = await self.recv(timeout)
            if obj["type"] == kind:
                return obj

    async def send(self, obj: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(obj if isinstance(obj, str | bytes) else orjson.dumps(obj).decode())

    async def say(self, text: str, id: str | None = None) -> None:
        await self.send({"type": "message", "text": text, "id": id})

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Wait for the server to close; the close code it sent."""
        async with asyncio.timeout(timeout * SLOW):
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await self.ws.recv()
        return self.ws.close_code


async def send_and_ack(url: str, texts: list[str]) -> list[int]:
    """Connect, send each text (with itself as the client id), return the acked seqs in order."""
    acked: list[int] = []
    async with websockets.connect(url, compression=None) as ws:
        await ws.recv()
        for text in texts:
            await ws.send(orjson.dumps({"type": "message", "text": text, "id": text}).decode())
        while len(acked) < len(texts):
            for line in str(await asyncio.wait_for(ws.recv(), 10 * SLOW)).split("\n"):
                obj = orjson.loads(line)
                if obj["type"] == "ack":
                    acked.append(obj["seq"])
    return acked


async def collect_messages(url: str, count: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Connect; return the welcome and the first ``count`` message objects (replay, then live)."""
    messages: list[dict[str, Any]] = []
    async with websockets.connect(url, compression=None) as ws:
        objects = [orjson.loads(x) for x in str(await ws.recv()).split("\n")]
        welcome = objects.pop(0)
        while True:
            messages += [o for o in objects if o["type"] == "message"]
            if len(messages) >= count:
                return welcome, messages[:count]
            objects = [orjson.loads(x) for x in
                       str(await asyncio.wait_for(ws.recv(), 10 * SLOW)).split("\n")]


def frame_writers(server: Server) -> list[FrameWriter]:
    """The transports of the sessions in ``server``'s only room."""
    (actor,) = server.gateway.registry.rooms()
    writers = [s._transport for s in actor._sessions.values()]
    assert all(isinstance(w, FrameWriter) for w in writers)
    return writers  # type: ignore[return-value]


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0,
                what: str = "the condition") -> None:
    """Poll ``condition`` (a server seen from outside; a coroutine function too) until it
    holds; fail after ``timeout`` seconds (times SLOW) naming ``what``."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def until_refused(port: int, timeout: float = 5.0) -> None:
    """Wait until nothing listens on ``port``: a TCP connect is refused. A connect that still
    succeeds (completed by the kernel's backlog) is closed at once, without a request."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return
        except ConnectionResetError:
            pass  # the listener closed during this handshake: the next one tells
        else:
            writer.close()
        assert time.monotonic() < deadline, f"port {port} still accepts connections"
        await asyncio.sleep(0.01)


def metric(port: int, name: str) -> float:
    """One unlabelled sample from the server's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


class ManualClock:
    """A clock that stands still until the test moves it (``step``): time that passes only
    when a test says so, for the parts that take their clock injected."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


def door_with_clocks(gw: Gateway, *, monotonic: Callable[[], float] = time.monotonic,
                     wall: Callable[[], float] = time.time) -> None:
    """Give ``gw`` a front door on these clocks (``FrontDoor``'s ``monotonic``: its rate
    buckets; ``wall``: a ticket's token expiry), otherwise as the gateway built it. The
    buckets' state (``gw.limits``) carries over; every route reads ``gw.door`` per request."""
    config = gw.config
    gw.door = FrontDoor(gw, verifier=gw.verifier, revocations=gw.revocations, limits=gw.limits,
                        addresses=gw.addresses, allowed_origins=config.allowed_origins,
                        max_connections=config.max_connections, api_key=config.api_key,
                        monotonic=monotonic, wall=wall)


def session_closes(server: Server, code: int) -> float:
    """How many sessions ``server``'s rooms have closed with ``code`` so far (its
    ``roomchat_session_closes`` counter, read in-process: it also answers during a drain)."""
    value = server.gateway.observer.registry.get_sample_value(
        "roomchat_session_closes_total", {"code": str(code)})
    return value or 0.0


async def wait_connections(server: Server, count: int, seconds: float = 3.0) -> None:
    """Wait (up to ``seconds``) until ``server`` counts ``count`` open sockets; assert it does."""
    for _ in range(int(seconds * 100)):
        if server.gateway.connections == count:
            break
        await asyncio.sleep(0.01)
    assert server.gateway.connections == count


def fast_paths_from_env(config: Config) -> Config:
    """``config`` with ``ROOMCHAT_FAST_PATHS`` from the environment when it is set: the
    WebSocket suites run with the fast paths off too (``make test-plain-asgi``). Servers in
    child processes (``start_process``) read it themselves."""
    value = os.environ.get("ROOMCHAT_FAST_PATHS")
    if value is None:
        return config
    return replace(config, fast_paths=load_config({"ROOMCHAT_FAST_PATHS": value}).fast_paths)


FAST_PATHS = fast_paths_from_env(Config()).fast_paths
"""Whether this run's servers use the fast paths (``ROOMCHAT_FAST_PATHS``, default on)."""


@contextlib.asynccontextmanager
async def running_server(config: Config, app: Any = None) -> AsyncIterator[Server]:
    """``config`` (fast paths as ``ROOMCHAT_FAST_PATHS`` says, when set) served by Hypercorn
    in this event loop on a free port, until the block ends."""
    config = fast_paths_from_env(config)
    sock = free_socket()
    app = app or create_app(config)
    shutdown = asyncio.Event()
    port = sock.getsockname()[1]
    task = asyncio.create_task(serve(config, app=app, fd=sock.detach(), shutdown=shutdown,
                                     handle_signals=False))
    gw: Gateway = app.extensions["roomchat"]
    server = Server(config, port, gw, shutdown, task)
    try:
        async with asyncio.timeout(10 * SLOW):
            while not gw.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield server
    finally:
        for ws in server.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
        shutdown.set()
        await asyncio.wait_for(task, 20 * SLOW)


@dataclass
class Process:
    """``roomchat serve`` in a child process, leading a process group of its own (what it
    starts, such as its image workers or ``--workers`` children, is in that group)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, room: str, token: str, **query: Any) -> str:
        extra = "".join(f"&{k}={v}" for k, v in query.items())
        return f"ws://127.0.0.1:{self.port}/rooms/{room}/ws?token={token}{extra}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill_all(self) -> None:
        """SIGKILL the server and whatever of its group is left, and reap the server. A
        ``roomchat serve`` killed alone leaves its image workers running for good (a
        ProcessPoolExecutor's workers outlive a SIGKILLed parent), one pair per killed run."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_process(data_dir: Path, port: int | None = None, env: dict[str, str] | None = None,
                  args: list[str] | None = None) -> Process:
    """``roomchat serve`` on ``port`` (a free one when None), once it listens there itself.
    A free port is only free when it was looked at: another test's server (an xdist worker)
    may take it first. So "listening" is this process's own log line saying where it runs (a
    connection could reach the other server), and a free port taken meanwhile is picked again
    (up to ``PORT_ATTEMPTS`` times)."""
    for attempt in range(PORT_ATTEMPTS):
        try:
            return _start_process(data_dir, port or free_port(), env, args)
        except _PortTaken:
            if port is not None or attempt == PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


PORT_ATTEMPTS = 3


class _PortTaken(RuntimeError):
    """The server could not bind its port: another process had taken it."""


def _start_process(data_dir: Path, port: int, env: dict[str, str] | None,
                   args: list[str] | None) -> Process:
    log = data_dir / f"server-{port}-{time.monotonic_ns()}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "ROOMCHAT_JWT_SECRET": SECRET, **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--bind", f"127.0.0.1:{port}",
             "--data-dir", str(data_dir), *(args or [])],
            stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=data_dir,
            start_new_session=True)
    deadline = time.monotonic() + 20 * SLOW
    running = f"Running on http://127.0.0.1:{port} "
    running_tls = f"Running on https://127.0.0.1:{port} "
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = log.read_text(errors="replace")
            if "already in use" in output.lower():  # (preflight: "the address is already in use")
                raise _PortTaken(f"port {port} taken:\n{output}")
            raise RuntimeError(f"server exited early:\n{output}")
        output = log.read_text(errors="replace")
        if running in output or running_tls in output:
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", port), 0.2):
                return Process(proc, port, log)
        time.sleep(0.05)
    Process(proc, port, log).kill_all()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


def wait_ready(*procs: Process) -> None:
    """Wait until each process has finished starting (opened its engine): a bound port is not
    enough (the socket listens before the app's startup has reached Redis)."""
    for proc in procs:
        url = f"http://127.0.0.1:{proc.port}/readyz"
        with urllib.request.urlopen(url, timeout=20 * SLOW) as response:
            assert response.status == 200


@contextlib.contextmanager
def server_process(data_dir: Path, **kw: Any) -> Iterator[Process]:
    process = start_process(data_dir, **kw)
    try:
        yield process
    finally:
        process.kill_all()  # also when the test killed the server itself: its group may live

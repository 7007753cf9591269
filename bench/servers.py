"""The servers under test: roomchat and the two baseline peers, how to install and start each.

Each server runs pinned to the server core with its own free port and (for roomchat) its own
temporary data directory; :func:`start_server` waits until its port accepts connections.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Child, ChildError, Children, free_port, process_tree, wait_port

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VENV_BIN = REPO / ".venv" / "bin"
NODE_WS_DIR = BENCH / "peers" / "node-ws"
LOADGEN_DIR = BENCH / "loadgen"

JWT_SECRET = "bench-secret-0123456789abcdef0123456789abcdef"

# Limits raised so that the benchmark measures the fan-out path, not the protective limits.
ROOMCHAT_ENV = {
    "ROOMCHAT_JWT_SECRET": JWT_SECRET,
    "ROOMCHAT_RATE_BURST": "1000000",
    "ROOMCHAT_RATE_PER_SEC": "1000000",
    "ROOMCHAT_MAX_CONNECTIONS": "20000",
    "ROOMCHAT_MAX_ROOM_CONNECTIONS": "20000",
    "ROOMCHAT_OUTBOX_LIMIT": "100000",
    "ROOMCHAT_HISTORY_ON_JOIN": "0",
    "ROOMCHAT_INBOX_LIMIT": "100000",
    # Every load-generator socket comes from 127.0.0.1: lift the per-IP and per-user abuse
    # caps (they are measured by tests, not here).
    "ROOMCHAT_MAX_CONNECTIONS_PER_IP": "100000",
    "ROOMCHAT_MAX_CONNECTIONS_PER_USER": "100000",
    "ROOMCHAT_HANDSHAKE_RATE": "100000",
    "ROOMCHAT_HANDSHAKE_BURST": "100000",
    # The process-wide connection rate (a storm protection, measured by bench/storm.py only).
    "ROOMCHAT_CONNECTION_RATE": "1000000",
    "ROOMCHAT_CONNECTION_BURST": "1000000",
    "ROOMCHAT_USER_JOINS_PER_MINUTE": "1000000",
    "ROOMCHAT_MAX_LIVE_ROOMS": "100000",
}


@dataclass(frozen=True)
class ServerKind:
    """How to start one kind of server.

    ``argv(port, data_dir)`` builds the command line; ``verifies_jwt`` says whether its
    handshakes include JWT verification; ``sends_welcome`` whether clients get a ``welcome``.
    """

    key: str
    label: str
    argv: Callable[[int, Path], list[str]]
    env: dict[str, str]
    verifies_jwt: bool
    sends_welcome: bool
    notes: str


def _roomchat_argv(port: int, data_dir: Path) -> list[str]:
    return [
        str(VENV_BIN / "roomchat"),
        "serve",
        "--bind",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
    ]


def _roomchat_redis_argv(port: int, data_dir: Path) -> list[str]:
    """roomchat on the Redis engine. A shell starts redis-server (AOF, fsync on every write:
    the same durability promise as SQLite FULL) and then *becomes* roomchat (exec), so Redis
    is a child of the measured process: its CPU counts in the server's, and it dies with it."""
    redis_port = free_port()
    roomchat = " ".join(_roomchat_argv(port, data_dir))
    script = (
        f"redis-server --port {redis_port} --bind 127.0.0.1 --dir {data_dir} --save '' "
        f"--appendonly yes --appendfsync always --daemonize no >/dev/null 2>&1 &\n"
        f"until redis-cli -p {redis_port} ping >/dev/null 2>&1; do sleep 0.05; done\n"
        f"exec {roomchat} --store-url redis://127.0.0.1:{redis_port}/0\n"
    )
    return ["/bin/sh", "-c", script]


def _postgres_bin() -> Path:
    for found in ("/usr/lib/postgresql/15/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                                        reverse=True)):
        if (Path(found) / "initdb").exists():
            return Path(found)
    raise ChildError("PostgreSQL is missing: run scripts/install-system-deps.sh")


def _roomchat_postgres_argv(port: int, data_dir: Path) -> list[str]:
    """roomchat on the PostgreSQL log with the Redis bus (issue 24's split engine). A shell
    starts redis-server (as for ``roomchat-redis``) and a PostgreSQL of its own (``initdb`` in
    the data directory; fsync and ``synchronous_commit`` on: the same promise as SQLite FULL
    and AOF always), then becomes roomchat: both servers' CPU counts in roomchat's. As root,
    PostgreSQL runs as ``nobody`` (it refuses root)."""
    redis_port, pg_port = free_port(), free_port()
    pg_bin = _postgres_bin()
    pg_dir = data_dir / "pg"
    as_user = "runuser -u nobody -- " if os.geteuid() == 0 else ""
    roomchat = " ".join(_roomchat_argv(port, data_dir))
    script = (
        f"chmod 755 {data_dir} && mkdir -p {pg_dir} && "
        f"{'chown nobody ' + str(pg_dir) + ' && ' if as_user else ''}"
        f"{as_user}{pg_bin}/initdb -D {pg_dir}/data -U postgres --auth=trust -E UTF8 "
        f"--locale=C.UTF-8 >/dev/null 2>&1 || exit 1\n"
        f"{as_user}{pg_bin}/postgres -D {pg_dir}/data -p {pg_port} -k {pg_dir} -h 127.0.0.1 "
        f"-c max_connections=100 >{pg_dir}/server.log 2>&1 &\n"
        f"redis-server --port {redis_port} --bind 127.0.0.1 --dir {data_dir} --save '' "
        f"--appendonly yes --appendfsync always --daemonize no >/dev/null 2>&1 &\n"
        f"until redis-cli -p {redis_port} ping >/dev/null 2>&1; do sleep 0.05; done\n"
        f"until {pg_bin}/pg_isready -q -h 127.0.0.1 -p {pg_port} -U postgres; do sleep 0.05; "
        f"done\n"
        f"exec {roomchat} --store-url postgresql://postgres@127.0.0.1:{pg_port}/postgres "
        f"--bus-url redis://127.0.0.1:{redis_port}/0\n"
    )
    return ["/bin/sh", "-c", script]


def _node_ws_argv(port: int, data_dir: Path) -> list[str]:
    return ["/usr/bin/node", str(NODE_WS_DIR / "server.js"), "--port", str(port)]


def _py_websockets_argv(port: int, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "bench.peers.py_websockets.server", "--port", str(port)]


ROOMCHAT = ServerKind(
    key="roomchat",
    label="roomchat",
    argv=_roomchat_argv,
    env=ROOMCHAT_ENV,
    verifies_jwt=True,
    sends_welcome=True,
    notes="Quart + Hypercorn, room actors, SQLite store; JWT checked on upgrade",
)
ROOMCHAT_TASK = ServerKind(
    key="roomchat-task",
    label="roomchat, frames through the task",
    argv=_roomchat_argv,
    env={**ROOMCHAT_ENV, "ROOMCHAT_DIRECT_FRAMES": "0"},
    verifies_jwt=True,
    sends_welcome=True,
    notes="roomchat with ROOMCHAT_DIRECT_FRAMES=0: every frame wakes its room's task (the "
    "message path before issue 22 item 1), for a before/after in one run; not in a plan, "
    "ask for it with --servers",
)
ROOMCHAT_REDIS = ServerKind(
    key="roomchat-redis",
    label="roomchat on Redis",
    argv=_roomchat_redis_argv,
    env=ROOMCHAT_ENV,
    verifies_jwt=True,
    sends_welcome=True,
    notes="roomchat with ROOMCHAT_STORE_URL=redis://... (Redis 7, appendfsync always, pinned "
    "to the server core; its CPU counted with roomchat's)",
)
ROOMCHAT_POSTGRES = ServerKind(
    key="roomchat-postgres",
    label="roomchat on PostgreSQL + Redis",
    argv=_roomchat_postgres_argv,
    env=ROOMCHAT_ENV,
    verifies_jwt=True,
    sends_welcome=True,
    notes="roomchat with ROOMCHAT_STORE_URL=postgresql://... and ROOMCHAT_BUS_URL=redis://... "
    "(PostgreSQL 15 with fsync and synchronous_commit on, Redis 7 with appendfsync always, "
    "both pinned to the server core; their CPU counted with roomchat's)",
)
ROOMCHAT_MEMORY = ServerKind(
    key="roomchat-memory",
    label="roomchat, memory store",
    argv=lambda port, data_dir: [*_roomchat_argv(port, data_dir), "--store-url", "memory://"],
    env=ROOMCHAT_ENV,
    verifies_jwt=True,
    sends_welcome=True,
    notes="roomchat with ROOMCHAT_STORE_URL=memory:// (history in memory, bounded by "
    "retention, lost on restart): the fair twin of peers that store nothing",
)
NODE_WS = ServerKind(
    key="node-ws",
    label="Node ws",
    argv=_node_ws_argv,
    env={},
    verifies_jwt=False,
    sends_welcome=False,
    notes="Node 20 + ws 8, perMessageDeflate off, payload Buffer built once per broadcast, "
    "bufferutil",
)
PY_WEBSOCKETS = ServerKind(
    key="py-websockets",
    label="Python websockets",
    argv=_py_websockets_argv,
    env={},
    verifies_jwt=False,
    sends_welcome=False,
    notes="websockets 17 asyncio + broadcast(), compression=None, uvloop, orjson, bytes as text",
)
KINDS: dict[str, ServerKind] = {
    k.key: k for k in (ROOMCHAT, ROOMCHAT_TASK, ROOMCHAT_REDIS, ROOMCHAT_POSTGRES,
                        ROOMCHAT_MEMORY, NODE_WS, PY_WEBSOCKETS)
}


@dataclass
class RunningServer:
    """A started server: its process, port and data directory (removed on stop)."""

    kind: ServerKind
    child: Child
    port: int
    data_dir: Path

    def pids(self) -> list[int]:
        """The server's process tree now (workers included)."""
        return process_tree(self.child.pid)

    @property
    def url(self) -> str:
        """Base WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def urls(self) -> list[str]:
        """Every client connects to the one URL."""
        return [self.url]

    def cpu_groups(self) -> dict[str, list[int]]:
        """No CPU reported apart: the whole tree is the server."""
        return {}

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log."""
        return self.child.log_tail(lines)


def npm_ci(directory: Path) -> None:
    """Install ``directory``'s locked dependencies unless node_modules is already current.

    Raises:
        ChildError: npm failed.
    """
    marker = directory / "node_modules" / ".package-lock.json"
    lock = directory / "package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    proc = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise ChildError(f"npm ci in {directory} failed:\n{proc.stdout}\n{proc.stderr}")


def roomchat_available() -> str | None:
    """None when ``roomchat serve --help`` works, else why not."""
    exe = VENV_BIN / "roomchat"
    if not exe.exists():
        return f"{exe} does not exist (pip install -e {REPO}?)"
    try:
        proc = subprocess.run(
            [str(exe), "serve", "--help"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`roomchat serve --help` failed: {exc}"
    if proc.returncode != 0:
        return f"`roomchat serve --help` exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
    return None


def start_server(kids: Children, kind: ServerKind, name: str, cpu: int | None) -> RunningServer:
    """Start ``kind`` on a free port pinned to ``cpu`` and wait until it accepts connections.

    The caller must stop it with :func:`stop_server` (``kids`` kills it anyway on exit).

    Raises:
        ChildError: it exited or did not open its port within 60 s.
    """
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{kind.key}-"))
    child = kids.start(name, kind.argv(port, data_dir), cpu=cpu, env=kind.env, cwd=REPO)
    try:
        wait_port(port, child, 60)
    except ChildError:
        kids.stop(child)
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    # Let worker processes (if any) appear before anyone snapshots the process tree.
    time.sleep(0.3)
    return RunningServer(kind, child, port, data_dir)


def stop_server(kids: Children, server: RunningServer) -> None:
    """Stop the server's process group and remove its data directory."""
    kids.stop(server.child)
    shutil.rmtree(server.data_dir, ignore_errors=True)

"""Where an idle connection's memory goes: ``python -m bench.profiles.idle_memory``.

Starts ``roomchat serve`` (through ``bench.profiles.memserver``, with the bench's settings),
opens 20 warm-up connections, takes a "before" dump, opens ``--connections`` idle ones in rooms
of ``--room-size`` (raw sockets offering permessage-deflate, like the bench's load generator),
waits, takes an "after" dump, and prints per connection: RSS, glibc malloc, pymalloc blocks,
live objects by type and (with ``--tracemalloc N``) allocations by source line and by file.
The summary is what bench/profiles/*-idle-memory.md quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.procs import free_port
from bench.servers import REPO, ROOMCHAT_ENV, VENV_BIN
from bench.tokens import mint_tokens


class _Idle(asyncio.Protocol):
    """One raw client: sends the upgrade, then reads and drops whatever comes."""

    def __init__(self, request: bytes, upgraded: asyncio.Future[bool]) -> None:
        self.request = request
        self.upgraded = upgraded
        self.head = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.upgraded.done():
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.upgraded.set_result(self.head.startswith(b"HTTP/1.1 101"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_result(False)


async def _open(port: int, room: str, token: str, keep: list[asyncio.Transport]) -> bool:
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /rooms/{room}/ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
    upgraded: asyncio.Future[bool] = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: _Idle(request.encode(), upgraded), "127.0.0.1", port)
    ok = await upgraded
    keep.append(transport)
    return ok


async def _connect(port: int, count: int, room_size: int, tokens: list[str], prefix: str,
                   keep: list[asyncio.Transport]) -> int:
    sem = asyncio.Semaphore(100)

    async def one(i: int) -> bool:
        async with sem:
            return await _open(port, f"{prefix}-{i // room_size}", tokens[i], keep)

    results = await asyncio.gather(*(one(i) for i in range(count)))
    return sum(results)


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server did not open port {port}")


def _dump(pid: int, out: Path, n: int) -> dict[str, Any]:
    os.kill(pid, signal.SIGUSR1)
    done = out / f"{n}.done"
    deadline = time.monotonic() + 300
    while not done.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not dump")
        time.sleep(0.1)
    report: dict[str, Any] = json.loads((out / f"{n}.json").read_text())
    return report


def _kib(value: float) -> str:
    return f"{value / 1024:,.2f}"


_STDLIB = ("/lib/python3.", "<frozen")
_PACKAGES = ("hypercorn", "h11", "wsproto", "quart", "jwt")
_EVENT_LOOP = "event loop (uvloop, asyncio streams and tasks)"
# Frames that only start the event loop: an allocation with nothing closer to it than these was
# made by the loop's C code or the asyncio machinery it calls back.
_LOOP_STARTERS = ("uvloop", "gateway/server.py", "gateway/cli.py", "bench/profiles/")


def owner(traceback: tracemalloc.Traceback) -> str:
    """Who an allocation is for: the innermost frame outside the standard library, by package
    (roomchat by module); "event loop" when only the loop's C code and the stdlib are on the
    stack (uvloop transports, asyncio streams and tasks made for accepted connections)."""
    for frame in reversed(list(traceback)):
        path = frame.filename
        relative = path.replace(str(REPO) + "/", "")
        for root in ("/gateway/", "/rooms/", "/bench/"):  # also in another checkout (--source)
            if root in path and "site-packages/" not in path:
                relative = root[1:] + path.rsplit(root, 1)[1]
        if "site-packages/uvloop" in path or relative.startswith(_LOOP_STARTERS):
            return _EVENT_LOOP
        if "site-packages/" in path:
            package = path.split("site-packages/", 1)[1].split("/", 1)[0]
            if package in _PACKAGES:
                if package == "hypercorn":
                    sub = path.split("hypercorn/", 1)[1].removesuffix(".py")
                    return f"hypercorn/{sub}"
                return package
            continue
        if any(marker in path for marker in _STDLIB):
            continue
        if relative.startswith(("gateway/", "rooms/")):
            return f"roomchat {relative}"
        return relative
    return _EVENT_LOOP


def summarize(before: dict[str, Any], after: dict[str, Any], n: int, out: Path,
              top: int) -> str:
    lines = [f"connections: {n:,}", "", "| measure | bytes per connection |", "|---|---|"]
    for key in ("VmRSS", "RssAnon", "RssFile"):
        lines.append(f"| {key} | {(after['status'][key] - before['status'][key]) / n:,.0f} |")
    for key in ("arena", "hblkhd", "uordblks", "fordblks"):
        lines.append(f"| glibc mallinfo2.{key} | "
                     f"{(after['mallinfo'][key] - before['mallinfo'][key]) / n:,.0f} |")
    for key in ("Total", "# bytes in allocated blocks", "# bytes in available blocks",
                "# bytes lost to quantization"):
        if key in after.get("pymalloc", {}):
            lines.append(f"| pymalloc {key.lstrip('# ')} | "
                         f"{(after['pymalloc'][key] - before['pymalloc'][key]) / n:,.0f} |")
    lines.append(f"| pymalloc blocks (count) | "
                 f"{(after['allocated_blocks'] - before['allocated_blocks']) / n:,.2f} |")
    if after.get("traced"):
        lines.append(f"| tracemalloc traced | "
                     f"{(after['traced'][0] - before['traced'][0]) / n:,.0f} |")
    lines += ["", "GC-tracked objects by type (delta per connection, getsizeof bytes):", "",
              "| type | objects | bytes |", "|---|---|---|"]
    deltas = []
    for name, count in after["gc_counts"].items():
        dc = count - before["gc_counts"].get(name, 0)
        ds = after["gc_sizes"].get(name, 0) - before["gc_sizes"].get(name, 0)
        deltas.append((ds, dc, name))
    deltas.sort(reverse=True)
    total = 0.0
    for ds, dc, name in deltas[:top]:
        lines.append(f"| {name} | {dc / n:.2f} | {ds / n:,.0f} |")
    for ds, _, _ in deltas:
        total += ds
    lines.append(f"| (all types) | | {total / n:,.0f} |")
    first, last = out / "1.snapshot", out / "2.snapshot"
    if first.exists() and last.exists():
        old = tracemalloc.Snapshot.load(str(first))
        new = tracemalloc.Snapshot.load(str(last))
        owners: dict[str, list[float]] = {}
        for stat in new.compare_to(old, "traceback"):
            entry = owners.setdefault(owner(stat.traceback), [0.0, 0.0])
            entry[0] += stat.size_diff
            entry[1] += stat.count_diff
        lines += ["", "tracemalloc by owner (the innermost caller outside the standard library; "
                  "needs --tracemalloc > 1 to tell):", "", "| owner | bytes | blocks |",
                  "|---|---|---|"]
        for name, (size, count) in sorted(owners.items(), key=lambda kv: -kv[1][0]):
            if abs(size) / n >= 8:
                lines.append(f"| {name} | {size / n:,.0f} | {count / n:.2f} |")
        for key in ("filename", "lineno"):
            lines += ["", f"tracemalloc by {key} (delta per connection):", "",
                      "| where | bytes | blocks |", "|---|---|---|"]
            for stat in new.compare_to(old, key)[:top]:
                frame = stat.traceback[0]
                where = frame.filename.replace(str(REPO) + "/", "")
                for marker in ("site-packages/", "lib/python3"):
                    if marker in where:
                        where = where.split(marker, 1)[1]
                if key == "lineno":
                    where += f":{frame.lineno}"
                lines.append(f"| {where} | {stat.size_diff / n:,.0f} | "
                             f"{stat.count_diff / n:.2f} |")
    return "\n".join(lines)


async def _measure(args: argparse.Namespace, proc: subprocess.Popen[bytes], port: int,
                   out: Path) -> None:
    keep: list[asyncio.Transport] = []
    try:
        tokens = mint_tokens(args.connections + 20)
        await _connect(port, 20, 10, tokens[-20:], "warm", keep)
        await asyncio.sleep(1.0)
        before = _dump(proc.pid, out, 1)
        t0 = time.monotonic()
        ok = await _connect(port, args.connections, args.room_size, tokens, "idle", keep)
        print(f"{ok:,} of {args.connections:,} connected in {time.monotonic() - t0:.1f} s",
              file=sys.stderr)
        await asyncio.sleep(args.settle)
        after = _dump(proc.pid, out, 2)
        print(summarize(before, after, ok, out, args.top))
    finally:
        for transport in keep:
            transport.abort()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profiles.idle_memory")
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--room-size", type=int, default=100)
    p.add_argument("--tracemalloc", type=int, default=0, help="frames per traceback; 0: off")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    p.add_argument("--floor", action="store_true",
                   help="serve bench.profiles.floor (bare Hypercorn) instead of roomchat")
    p.add_argument("--source", type=Path, default=None,
                   help="run the server from this checkout (e.g. `git archive` of a commit)")
    args = p.parse_args()
    out = Path(tempfile.mkdtemp(prefix="idle-memory-"))
    data = Path(tempfile.mkdtemp(prefix="idle-memory-data-"))
    port = free_port()
    # No heartbeat during the run: these raw clients never answer pings, and a traced server
    # takes longer than ping_interval + ping_timeout to connect 10,000 of them.
    env = {**os.environ, **ROOMCHAT_ENV, "ROOMCHAT_MEMDUMP_DIR": str(out),
           "ROOMCHAT_PING_INTERVAL": "3600"}
    if args.source is not None:  # another checkout (with bench/profiles/ copied into it)
        env["PYTHONPATH"] = str(args.source)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    argv = [str(VENV_BIN / "python")]
    if args.tracemalloc:
        argv.append(f"-Xtracemalloc={args.tracemalloc}")
    if args.floor:
        argv += ["-m", "bench.profiles.floor", "--bind", f"127.0.0.1:{port}"]
    else:
        argv += ["-m", "bench.profiles.memserver", "serve", "--bind", f"127.0.0.1:{port}",
                 "--data-dir", str(data)]
    with (out / "server.log").open("w") as log:
        proc = subprocess.Popen(argv, env=env, cwd=args.source or REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            _wait_port(port, proc)
            asyncio.run(_measure(args, proc, port, out))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            print(f"dumps and server log in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

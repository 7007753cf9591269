"""Reconnect storm: every client of a server reconnects at once after it restarts (issue 11).

One storm: a server (pinned to the server core) with ``clients`` clients in rooms of
``room_size`` (one sender per room sending every ``send_interval_ms``) from
``bench/loadgen/storm.js`` (pinned to the loadgen core); SIGTERM (roomchat closes every socket
with 1012, in waves when the drain is staged); the old process exits; a new one starts on the same
port and data directory; the clients reconnect with static/chat.js's own policy
(``reconnectDelay``: full jitter, or a constant draw for "no jitter") and, on roomchat, resume with
``after=<last seq>``. Measured from the new process being ready (its ``/readyz`` answering 200; the
baselines: port open): the last 101, the last ``welcome``, and the last client caught up with the
welcome's ``seq`` (every missed message replayed). Every client's seqs are checked for gaps and
duplicates, and at the end against the room's highest seq. The clients reconnecting while the
server is away count refused connects, 503s and their retry hints.

Variants of roomchat (each protection on or off): the staged drain (``drain_batch``), the page's
jitter, the connection-rate limit (``connection_rate`` at its default). The baselines (Node ws,
Python websockets) have no resume: the same storm, to the last reconnect.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.driver import Loadgen, LoadgenError
from bench.measure import LOADGEN_CPU, SERVER_CPU
from bench.plan import BASELINE, StormPlan, StormVariant
from bench.procs import CLK_TCK, Child, ChildError, Children, process_tree, wait_for_quiet
from bench.servers import REPO, ServerKind

CHAT_JS = REPO / "static" / "chat.js"
# Ready polling: often enough that the "from ready" times are not late by more than this.
POLL_S = 0.01


def _env(kind: ServerKind, plan: StormPlan, variant: StormVariant) -> dict[str, str]:
    env = dict(kind.env)
    if kind.key != "roomchat":
        return env
    for name in ("ROOMCHAT_CONNECTION_RATE", "ROOMCHAT_CONNECTION_BURST"):
        env.pop(name, None)  # the bench lifts them elsewhere; here the defaults apply...
    if not variant.rate_limit:  # ...or none at all
        env["ROOMCHAT_CONNECTION_RATE"] = env["ROOMCHAT_CONNECTION_BURST"] = "1000000"
    if variant.staged_drain:
        env["ROOMCHAT_DRAIN_BATCH"] = str(max(1, -(-plan.clients // plan.drain_waves)))
        env["ROOMCHAT_DRAIN_STEP"] = str(plan.drain_step_s)
    else:
        env["ROOMCHAT_DRAIN_BATCH"] = "1000000"
    return env


def _http_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _wait_ready(port: int, child: Child, readyz: bool, timeout_s: float) -> tuple[float, float]:
    """Poll until the port accepts and (roomchat) ``/readyz`` says 200; wall times of both.

    Raises:
        ChildError: the child exited or was not ready within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    port_at = 0.0
    while time.monotonic() < deadline:
        if not child.alive():
            raise ChildError(f"{child.name} exited with {child.popen.returncode}:\n"
                             f"{child.log_tail()}")
        if not port_at:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                port_at = time.time()
        if port_at and (not readyz or _http_ok(port, "/readyz")):
            return port_at, time.time()
        time.sleep(POLL_S)
    raise ChildError(f"{child.name} not ready on port {port} in {timeout_s}s:\n{child.log_tail()}")


def run_storm(kids: Children, kind: ServerKind, variant: StormVariant, plan: StormPlan,
              tokens: list[str], log: Callable[[str], None], quiet_wait_s: float) -> dict[str, Any]:
    """One storm against ``kind`` (see the module docstring). Never raises: a failure is an
    entry with ``status: failed`` and the logs' tails."""
    quiet = wait_for_quiet(quiet_wait_s, log)
    resume = kind.sends_welcome
    name = f"storm-{kind.key}-{variant.key}"
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    env = _env(kind, plan, variant)
    port = _free_port()
    rooms = [{"name": f"s{r}", "size": plan.room_size}
             for r in range(-(-plan.clients // plan.room_size))]
    entry: dict[str, Any] = {"status": "failed", "variant": variant.key, "title": variant.title,
                             "clients": plan.clients, "rooms": len(rooms), "quiet": quiet,
                             "staged_drain": variant.staged_drain, "jitter": variant.jitter,
                             "rate_limit": variant.rate_limit, "resume": resume}
    old: Child | None = None
    new: Child | None = None
    loadgen: Loadgen | None = None
    try:
        old = kids.start(f"{name}-1", kind.argv(port, data_dir), cpu=SERVER_CPU, env=env, cwd=REPO)
        _wait_ready(port, old, resume, 60)
        spec = {"host": "127.0.0.1", "port": port, "rooms": rooms, "tokens": tokens,
                "resume": resume, "welcome": kind.sends_welcome, "jitter": variant.jitter,
                "send_interval_ms": plan.send_interval_ms, "connect_concurrency": 100,
                "chat_js": str(CHAT_JS), "clk_tck": CLK_TCK}
        loadgen = Loadgen(kids, name, spec, LOADGEN_CPU, script="storm.js")
        connected = loadgen.command({"cmd": "connect"}, "connected", 300)
        entry["connect"] = connected
        if connected["failed"]:
            raise LoadgenError(f"{connected['failed']} of {plan.clients} clients did not connect")
        loadgen.command({"cmd": "traffic"}, "traffic", 10)
        time.sleep(plan.traffic_s)
        loadgen.command({"cmd": "arm"}, "armed", 10)
        sigterm_at = time.time()
        os.kill(old.pid, signal.SIGTERM)
        try:
            code = old.popen.wait(timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise ChildError(f"{old.name} did not exit within 60 s of SIGTERM") from exc
        exit_at = time.time()
        entry["old_exit_code"] = code
        new = kids.start(f"{name}-2", kind.argv(port, data_dir), cpu=SERVER_CPU, env=env, cwd=REPO)
        port_at, ready_at = _wait_ready(port, new, resume, 60)
        storm = loadgen.command({"cmd": "await", "ready_ms": ready_at * 1000,
                                 "cpu_pids": process_tree(new.pid),
                                 "timeout_s": plan.timeout_s}, "storm", plan.timeout_s + 30)
        result = loadgen.command({"cmd": "finish", "after_s": plan.after_s}, "result", 60)
        first_close = storm.get("first_close_ms")
        entry.update({
            "status": "ok" if not storm["incomplete"] else "partial",
            "sigterm_to_first_close_s": (first_close / 1000 - sigterm_at) if first_close else None,
            "drain_s": exit_at - sigterm_at, "exit_to_port_s": port_at - exit_at,
            "exit_to_ready_s": ready_at - exit_at, "sigterm_to_ready_s": ready_at - sigterm_at,
            "storm": storm, "check": result,
        })
        if storm["incomplete"]:
            entry["error"] = (f"{storm['incomplete']} clients not back within "
                              f"{plan.timeout_s:.0f} s of ready")
        last = storm["caught_up_s" if resume else "open_s"].get("max")
        log(f"  {kind.key} {variant.key}: drain {entry['drain_s']:.1f}s, exit->ready "
            f"{entry['exit_to_ready_s']:.1f}s, ready->last back {_s(last)}, "
            f"connects {storm['connects']:,}, refusals {storm['refusals']}, "
            f"gaps {result['gaps']} dups {result['duplicates']} behind {result['behind_at_end']}")
    except (ChildError, LoadgenError, OSError, KeyError, ValueError) as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        log(f"  {kind.key} {variant.key}: failed: {entry['error'][:300]}")
        for child in (old, new):
            if child is not None:
                entry.setdefault("server_log_tails", []).append(child.log_tail(20))
    finally:
        if loadgen is not None:
            loadgen.quit()
        for child in (new, old):
            if child is not None:
                kids.stop(child)
        shutil.rmtree(data_dir, ignore_errors=True)
    return entry


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_storms(kids: Children, kinds: dict[str, ServerKind], servers: list[str],
               plan: StormPlan, tokens: list[str], log: Callable[[str], None],
               quiet_wait_s: float) -> dict[str, Any]:
    """Every variant against roomchat, then the baselines; the report's ``storm`` section."""
    out: dict[str, Any] = {"plan": {**plan.__dict__,
                                    "variants": [v.key for v in plan.variants]},
                           "runs": []}
    if "roomchat" in servers:
        for variant in plan.variants:
            out["runs"].append({"server": "roomchat",
                                **run_storm(kids, kinds["roomchat"], variant, plan, tokens, log,
                                            quiet_wait_s)})
    for key in plan.baselines:
        if key in servers:
            out["runs"].append({"server": key,
                                **run_storm(kids, kinds[key], BASELINE, plan, tokens, log,
                                            quiet_wait_s)})
    return out

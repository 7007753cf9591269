"""``make bench`` / ``make bench-quick``: roomchat and two baselines, measured side by side.

Usage::

    python -m bench.run [--quick]
                        [--servers roomchat,roomchat-task,roomchat-redis,roomchat-postgres,
                                   roomchat-memory,node-ws,py-websockets]
                        [--scenarios room10,room100,room1000,rooms1000x10]
                        [--skip rooms,split,workers,memory,handshakes,storm,store,changes]
                        [--report-dir bench/reports]

Each server runs pinned to core 0, the Node load generator to core 1 (except ``workers``, which
runs unpinned: see :mod:`bench.scaleout`). Every child process is killed when this exits
(``Children``); a server that fails is reported, not fatal. The report is
``<report-dir>/<YYYY-MM-DD-HHMM>.md`` with PNG plots and the raw ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

from bench.changes import run_changes
from bench.measure import (
    SERVER_CPU,
    OpenLoad,
    run_handshakes,
    run_idle_memory,
    run_room_scenario,
)
from bench.plan import ALL_SCENARIOS, FULL, QUICK, Plan, RoomScenario
from bench.procs import CLK_TCK, ChildError, Children, pinned
from bench.report import write_report
from bench.scaleout import DEPLOYMENTS, run_split, run_workers
from bench.servers import (
    BENCH,
    KINDS,
    LOADGEN_DIR,
    NODE_WS_DIR,
    REPO,
    npm_ci,
    roomchat_available,
)
from bench.storm import run_storms
from bench.tokens import mint_tokens

COMMON_LOAD_EXCLUDED = frozenset({"roomchat-postgres"})
"""Servers whose saturation does not set a room scenario's common load."""

SERVER_ORDER = ("roomchat", "roomchat-task", "roomchat-redis", "roomchat-postgres",
                "roomchat-memory", "node-ws", "py-websockets")
SKIPPABLE = ("rooms", "split", "workers", "memory", "handshakes", "storm", "store", "changes")
_T0 = time.monotonic()


def log(msg: str) -> None:
    """Progress on stderr, with seconds since start."""
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _sh(argv: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=30, cwd=cwd, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _pkg_version(directory: Path, name: str) -> str:
    try:
        data = json.loads((directory / "node_modules" / name / "package.json").read_text())
        return str(data.get("version", "?"))
    except (OSError, ValueError):
        return "not installed"


def machine_info() -> dict[str, str]:
    """What the report says about the machine and the software versions."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"

    def ver(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    git = _sh(["git", "rev-parse", "--short", "HEAD"], REPO) or "no commit"
    dirty = _sh(["git", "status", "--porcelain", "--", "rooms", "gateway"], REPO)
    return {
        "CPU": f"{cpu} x {os.cpu_count()} cores (server on core {SERVER_CPU}, loadgen on core 1)",
        "memory": mem,
        "kernel": platform.release(),
        "OS": _sh(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]) or platform.platform(),
        "Python": platform.python_version(),
        "Node": _sh(["/usr/bin/node", "--version"]),
        "ws (loadgen / peer)": f"{_pkg_version(LOADGEN_DIR, 'ws')} / "
        f"{_pkg_version(NODE_WS_DIR, 'ws')}",
        "websockets": ver("websockets"),
        "Quart / Hypercorn / wsproto": f"{ver('quart')} / {ver('hypercorn')} / {ver('wsproto')}",
        "uvloop / orjson": f"{ver('uvloop')} / {ver('orjson')}",
        "roomchat git": git + (" (uncommitted changes in rooms/ or gateway/)" if dirty else ""),
        "load average at start": Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__(),
        "CLK_TCK": str(CLK_TCK),
    }


def run_store(plan: Plan, kids: Children) -> dict[str, Any]:
    """Run :mod:`bench.storebench` pinned to the server core; summarise its JSON."""
    argv = pinned(
        SERVER_CPU,
        [sys.executable, "-m", "bench.storebench", "--seconds", str(plan.store_seconds)],
    )
    try:
        proc = subprocess.run(
            argv,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120 + 6 * plan.store_seconds,
            check=False,
        )
        out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        stderr = proc.stderr[-1500:] if "proc" in locals() else ""
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc} {stderr}"}
    if out.get("status") != "ok":
        return out
    out["detail"] = "; ".join(
        f"{s['rooms']} room(s) x {s['batch']} msg/append: {s['messages_per_s']:,.0f} msg/s"
        for s in out["shapes"]
    )
    return out


def run_scenario(
    kids: Children,
    sc: RoomScenario,
    plan: Plan,
    servers: list[str],
    tokens: list[str],
    skipped: Callable[[str], dict[str, Any] | None],
    entry: dict[str, Any],
) -> None:
    """Saturation pass for every server, then the latency pass (own fractions + common load)."""
    results = entry["servers"]
    for key in servers:
        results[key] = skipped(key) or run_room_scenario(
            kids, KINDS[key], sc, plan=plan, tokens=tokens, log=log
        )
    sats = {
        k: e["saturation_msgs_per_s"]
        for k, e in results.items()
        if e.get("status") == "ok" and e.get("saturation_msgs_per_s")
    }
    # Beside the baselines, the common load comes from the servers of earlier runs: a lower
    # saturation of roomchat-postgres (a database round trip per commit) would move everyone's
    # common load, and every comparison with those runs. Without a baseline in the run (e.g.
    # roomchat-redis against roomchat-postgres), from every server.
    with_peers = any(k in sats for k in ("node-ws", "py-websockets"))
    basis = {k: v for k, v in sats.items()
             if not (with_peers and k in COMMON_LOAD_EXCLUDED)}
    common = plan.common_fraction * min(basis.values()) if len(sats) > 1 else None
    entry["common_msgs_per_s"] = common
    if common is not None:
        log(
            f"  common load: {common:,.0f} msg/s ({plan.common_fraction:.0%} of the lowest "
            f"saturation, {min(basis, key=lambda k: basis[k])})"
        )
    for key in servers:
        if key not in sats:
            continue
        loads = [OpenLoad(f"{f:.0%}", f, f * sats[key]) for f in plan.fractions]
        if common is not None:
            loads.append(OpenLoad("common", None, common))
        res = run_room_scenario(
            kids, KINDS[key], sc, plan=plan, tokens=tokens, log=log, loads=loads
        )
        results[key]["open"] = res.get("open", [])
        results[key]["open_connect"] = res.get("connect")
        if res["status"] != "ok":
            results[key]["status"] = "partial"
            results[key]["error"] = f"latency pass: {res.get('error')}"
            results[key]["server_log_tail"] = res.get("server_log_tail")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="room of 100 (+ scale-out), short windows (< 2 min)"
    )
    p.add_argument("--servers", default="",
                   help="comma-separated (default: the plan's; full: all of "
                        f"{','.join(SERVER_ORDER)}; quick: roomchat,node-ws)")
    p.add_argument("--scenarios", default="", help="comma-separated scenario keys (default: plan)")
    p.add_argument(
        "--skip",
        default="",
        help="comma-separated: rooms (the room scenarios), split (a room split over 2 "
        "processes on Redis), workers (--workers 1 vs 2), memory, handshakes, storm (the "
        "reconnect storm), store, changes (issue 21: reactions and edits, folded pages)",
    )
    p.add_argument("--report-dir", type=Path, default=BENCH / "reports")
    return p.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the report; 0 unless the run itself could not happen."""
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        plan = Plan(
            **{**plan.__dict__, "scenarios": tuple(s for s in ALL_SCENARIOS if s.key in wanted)}
        )
    wanted_servers = set(args.servers.split(",")) if args.servers else set(plan.servers)
    servers = [s for s in SERVER_ORDER if s in wanted_servers]
    skip = set(filter(None, args.skip.split(",")))
    if skip - set(SKIPPABLE):
        log(f"unknown --skip {sorted(skip - set(SKIPPABLE))}; choose from {', '.join(SKIPPABLE)}")
        return 2
    if "rooms" in skip:
        plan = Plan(**{**plan.__dict__, "scenarios": ()})
    signal.signal(signal.SIGTERM, _terminate)

    started = dt.datetime.now()
    stamp = started.strftime("%Y-%m-%d-%H%M")
    log_dir = Path(tempfile.mkdtemp(prefix=f"roomchat-bench-{stamp}-"))
    log(f"{plan.name} run, servers {servers}, logs in {log_dir}")

    unavailable: dict[str, str] = {}
    try:
        npm_ci(LOADGEN_DIR)
    except ChildError as exc:
        log(f"cannot install the load generator: {exc}")
        return 2
    if "node-ws" in servers:
        try:
            npm_ci(NODE_WS_DIR)
        except ChildError as exc:
            unavailable["node-ws"] = str(exc)
    for key in ("roomchat", "roomchat-task", "roomchat-redis", "roomchat-postgres",
                "roomchat-memory"):
        if key in servers:
            why = roomchat_available()
            if why:
                unavailable[key] = why
    for key in ("roomchat-redis", "roomchat-postgres"):
        if key in servers and not shutil.which("redis-server"):
            unavailable[key] = "redis-server is not installed (make system-deps)"
    if "roomchat-postgres" in servers and not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        unavailable["roomchat-postgres"] = "PostgreSQL is not installed (make system-deps)"
    scaleout = [s for s in ("split", "workers") if s not in skip]
    if scaleout:
        why = roomchat_available() or (
            None if shutil.which("redis-server") else "redis-server is not installed"
        )
        if why:
            unavailable["scale-out"] = why
    for key, why in unavailable.items():
        log(f"{key} unavailable: {why}")

    results: dict[str, Any] = {
        "meta": {
            "started": started.strftime("%Y-%m-%d %H:%M"),
            "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine_info(),
            "log_dir": str(log_dir),
        },
        "plan": {
            **plan.__dict__,
            "scenarios": [s.key for s in plan.scenarios],
            "split_scenario": plan.split_scenario.key,
            "workers_scenario": plan.workers_scenario.key,
            "storm": dataclasses.asdict(plan.storm),
        },
        "servers": servers,
        "server_notes": {k: KINDS[k].notes for k in servers},
        "deployment_notes": {k: d.notes for k, d in DEPLOYMENTS.items()},
        "scenarios": {},
        "memory": {},
        "handshakes": {},
    }
    n_tokens = max(
        plan.idle_connections,
        plan.split_scenario.members,
        plan.workers_scenario.members,
        max((s.members for s in plan.scenarios), default=0),
    )
    tokens = mint_tokens(max(n_tokens + plan.handshakes, plan.storm.clients) + 100)

    def skipped(key: str) -> dict[str, Any] | None:
        if key in unavailable:
            return {"status": "failed", "error": f"not available: {unavailable[key]}"}
        return None

    try:
        with Children(log_dir) as kids:
            for sc in plan.scenarios:
                log(f"scenario {sc.title}")
                entry: dict[str, Any] = {
                    "title": sc.title,
                    "rooms": sc.rooms,
                    "size": sc.size,
                    "servers": {},
                }
                results["scenarios"][sc.key] = entry
                run_scenario(kids, sc, plan, servers, tokens, skipped, entry)
            for what in scaleout:
                if "scale-out" in unavailable:
                    results[what] = skipped("scale-out")
                elif what == "split":
                    log(f"split: {plan.split_scenario.title} on 1 and on 2 processes on Redis")
                    room = results["scenarios"].get(plan.split_scenario.key, {})
                    results["split"] = run_split(
                        kids, plan, tokens, log, room.get("common_msgs_per_s")
                    )
                else:
                    log(f"workers: --workers 1 and 2 on Redis, {plan.workers_scenario.title}")
                    results["workers"] = run_workers(kids, plan, tokens, log)
            if "memory" not in skip:
                log(f"memory: {plan.idle_connections:,} idle connections")
                for key in servers:
                    results["memory"][key] = skipped(key) or run_idle_memory(
                        kids, KINDS[key], plan=plan, tokens=tokens, log=log
                    )
            if "handshakes" not in skip:
                log(f"handshakes: {plan.handshakes:,}, {plan.handshake_concurrency} in flight")
                for key in servers:
                    results["handshakes"][key] = skipped(key) or run_handshakes(
                        kids, KINDS[key], plan=plan, tokens=tokens, log=log
                    )
            if "storm" not in skip:
                log(f"storm: {plan.storm.clients:,} clients reconnecting after a restart")
                storm_servers = [k for k in servers if k not in unavailable]
                results["storm"] = run_storms(kids, KINDS, storm_servers, plan.storm, tokens,
                                              log, min(plan.quiet_wait_s, 30.0))
            if "changes" not in skip and "roomchat" in servers and "roomchat" not in unavailable:
                log("changes: a room of 100 with 30% reactions and edits; folded history pages")
                results["changes"] = run_changes(kids, plan, tokens, log)
            if "store" not in skip and "roomchat" in servers:
                log("store throughput")
                results["store"] = run_store(plan, kids)
                log(f"  store: {results['store'].get('detail') or results['store'].get('error')}")
    finally:
        results["meta"]["duration_s"] = time.monotonic() - _T0
        results["meta"]["machine"]["load average at end"] = str(
            Path("/proc/loadavg").read_text().split(" ", 3)[:3]
        )
        args.report_dir.mkdir(parents=True, exist_ok=True)
        path = args.report_dir / f"{stamp}{'-quick' if args.quick else ''}.md"
        path.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
        write_report(results, path)
        log(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

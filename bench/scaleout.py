"""Scale-out measurements: one room split across two roomchat processes on one Redis, and
``roomchat serve --workers 1`` against ``--workers 2``, each in the same run as its baseline.

Both start Redis as a process of its own (AOF, ``appendfsync always``: as the
``roomchat-redis`` server kind runs it), so its CPU is measured apart from roomchat's: the
load generator reads each group of pids (``cpu_groups``) at the edges of every window.

- **Split room** (:func:`run_split`): the plan's split scenario (a room of 100, 10 senders)
  once on one ``roomchat serve`` process and once on two, each on its own port, both on one
  Redis; member k connects to process k % 2, so half the members and half the senders are on
  each side and every message reaches the other side through Redis pub/sub. Everything
  server-side (Redis and every roomchat process) is pinned to the server core and the load
  generator to the other, as in the room scenarios: both variants get the same single core,
  and CPU per delivery is comparable with the ``roomchat-redis`` rows.
- **Workers** (:func:`run_workers`): ``serve --workers 1`` (a single process: the supervisor
  only runs for N > 1) and ``--workers 2`` (a supervisor and two workers sharing one
  listening socket) in many small rooms. Two workers cannot both get one core, and the load
  generator needs CPU too, so here *nothing is pinned*: Redis, roomchat and the load
  generator share both cores as the scheduler likes, and the report gives each one's CPU
  share. The kernel hands each connection to whichever worker accepts it first, so most rooms
  have members on both workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import (
    SERVER_CPU,
    OpenLoad,
    Target,
    measure_rooms,
    on_fresh_target,
)
from bench.plan import Plan, RoomScenario
from bench.procs import Child, ChildError, Children, free_port, process_tree, wait_port
from bench.servers import REPO, ROOMCHAT_ENV, VENV_BIN

Log = Callable[[str], None]


@dataclass(frozen=True)
class Deployment:
    """How roomchat is deployed on one Redis for a scale-out measurement.

    ``processes`` separate ``roomchat serve`` processes, each on its own port; ``workers`` the
    ``--workers`` flag given to each (None: not given); ``pinned``: Redis and roomchat on the
    server core and the load generator on its own core, else nothing pinned.
    """

    key: str
    label: str
    processes: int
    workers: int | None
    pinned: bool
    notes: str


SPLIT_BASELINE = Deployment(
    "redis-1proc", "1 process on Redis", 1, None, True,
    "one `roomchat serve --store-url redis://...`; Redis and roomchat pinned to the server core",
)
SPLIT = Deployment(
    "redis-split2", "2 processes on one Redis, members split", 2, None, True,
    "two `roomchat serve --store-url redis://...` on two ports, member k on process k % 2; "
    "Redis and both processes pinned to the server core",
)
WORKERS_1 = Deployment(
    "workers-1", "--workers 1", 1, 1, False,
    "`roomchat serve --workers 1 --store-url redis://...` (one process, no supervisor); "
    "nothing pinned",
)
WORKERS_2 = Deployment(
    "workers-2", "--workers 2", 1, 2, False,
    "`roomchat serve --workers 2 --store-url redis://...` (a supervisor and two workers on one "
    "listening socket); nothing pinned",
)
DEPLOYMENTS = {d.key: d for d in (SPLIT_BASELINE, SPLIT, WORKERS_1, WORKERS_2)}


@dataclass
class RunningDeployment:
    """A started :class:`Deployment`: Redis, the roomchat processes, their ports. Implements
    ``bench.measure.Target``."""

    deployment: Deployment
    redis: Child
    servers: list[Child]
    ports: list[int]
    data_dir: Path

    @property
    def urls(self) -> list[str]:
        """One base URL per roomchat process (one for a supervisor and its workers)."""
        return [f"ws://127.0.0.1:{port}" for port in self.ports]

    def supervisor_pids(self) -> list[int]:
        """With ``--workers`` N > 1 the process started is the supervisor; else none."""
        workers = self.deployment.workers
        return [c.pid for c in self.servers] if workers is not None and workers > 1 else []

    def serving_pids(self) -> list[int]:
        """The processes that hold client sockets (workers, or the plain processes)."""
        sup = set(self.supervisor_pids())
        return [p for c in self.servers for p in process_tree(c.pid) if p not in sup]

    def pids(self) -> list[int]:
        """Redis and every roomchat process: the whole server side."""
        return [self.redis.pid, *self.supervisor_pids(), *self.serving_pids()]

    def cpu_groups(self) -> dict[str, list[int]]:
        """``roomchat`` (every roomchat process) and ``redis``; with a supervisor also
        ``supervisor`` and ``workers`` apart."""
        groups = {
            "roomchat": [*self.supervisor_pids(), *self.serving_pids()],
            "redis": [self.redis.pid],
        }
        if self.supervisor_pids():
            groups["supervisor"] = self.supervisor_pids()
            groups["workers"] = self.serving_pids()
        return groups

    def log_tail(self, lines: int = 40) -> str:
        """The end of every roomchat process's log, then Redis's."""
        parts = [f"--- {c.name}\n{c.log_tail(lines)}" for c in self.servers]
        parts.append(f"--- {self.redis.name}\n{self.redis.log_tail(10)}")
        return "\n".join(parts)


def _healthz_pid(port: int) -> int | None:
    """The pid that answered ``/healthz`` on a new connection, or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return int(json.loads(resp.read())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _wait_workers(port: int, child: Child, count: int, timeout_s: float) -> None:
    """Wait until ``count`` distinct processes have answered ``/healthz`` on ``port``: the
    supervisor's socket accepts before its workers serve, and the first worker up would
    otherwise take every connection.

    Raises:
        ChildError: the server exited, or fewer answered within ``timeout_s``.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < count:
        if not child.alive():
            raise ChildError(f"{child.name} exited:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise ChildError(
                f"only {len(seen)} of {count} workers answered /healthz in {timeout_s:.0f}s:\n"
                f"{child.log_tail()}"
            )
        pid = _healthz_pid(port)
        if pid is not None:
            seen.add(pid)
        else:
            time.sleep(0.05)


def start_deployment(kids: Children, dep: Deployment, name: str) -> RunningDeployment:
    """Start Redis and ``dep``'s roomchat processes on free ports; wait until all serve.

    The caller must stop it with :func:`stop_deployment` (``kids`` kills it anyway on exit).

    Raises:
        ChildError: something exited or did not serve within 60 s.
    """
    cpu = SERVER_CPU if dep.pinned else None
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{dep.key}-"))
    redis_port = free_port()
    redis = kids.start(
        f"{name}-redis",
        [
            "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
            "--dir", str(data_dir), "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--daemonize", "no",
        ],
        cpu=cpu,
        cwd=data_dir,
    )
    running = RunningDeployment(dep, redis, [], [], data_dir)
    try:
        wait_port(redis_port, redis, 30)
        for i in range(dep.processes):
            port = free_port()
            argv = [
                str(VENV_BIN / "roomchat"), "serve", "--bind", f"127.0.0.1:{port}",
                "--data-dir", str(data_dir / f"p{i}"),
                "--store-url", f"redis://127.0.0.1:{redis_port}/0",
            ]
            if dep.workers is not None:
                argv += ["--workers", str(dep.workers)]
            running.servers.append(
                kids.start(f"{name}-{i}", argv, cpu=cpu, env=ROOMCHAT_ENV, cwd=REPO)
            )
            running.ports.append(port)
        for child, port in zip(running.servers, running.ports, strict=True):
            wait_port(port, child, 60)
            _wait_workers(port, child, dep.workers or 1, 60)
    except ChildError:
        stop_deployment(kids, running)
        raise
    return running


def stop_deployment(kids: Children, running: RunningDeployment) -> None:
    """Stop the roomchat processes, then Redis; remove the data directory."""
    for child in running.servers:
        kids.stop(child)
    kids.stop(running.redis)
    shutil.rmtree(running.data_dir, ignore_errors=True)


def _tcp_inodes(port: int) -> set[str]:
    """Inodes of established TCP sockets whose local port is ``port`` (the server's side)."""
    out: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    out.add(f[9])
    return out


def clients_per_process(running: RunningDeployment) -> dict[str, int]:
    """How many client connections each serving process holds (by pid)."""
    inodes: set[str] = set()
    for port in running.ports:
        inodes |= _tcp_inodes(port)
    out: dict[str, int] = {}
    for pid in running.serving_pids():
        n = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        n += 1
        out[str(pid)] = n
    return out


def _measure(
    kids: Children,
    dep: Deployment,
    sc: RoomScenario,
    *,
    plan: Plan,
    tokens: list[str],
    log: Log,
    saturate: bool,
    loads: list[OpenLoad] | Callable[[dict[str, Any]], list[OpenLoad]],
    name: str,
) -> dict[str, Any]:
    """One fresh deployment, ``sc``'s clients, the closed loop and/or the open loads."""

    def start() -> Target:
        return start_deployment(kids, dep, f"{name}-{dep.key}")

    def stop(target: Target) -> None:
        assert isinstance(target, RunningDeployment)
        stop_deployment(kids, target)

    def body(target: Target, out: dict[str, Any]) -> None:
        assert isinstance(target, RunningDeployment)

        def after_connect(out: dict[str, Any]) -> None:
            out["clients_per_process"] = clients_per_process(target)

        measure_rooms(
            kids, target, sc, plan=plan, tokens=tokens, log=log, label=dep.key,
            saturate=saturate, loads=loads, out=out, pinned=dep.pinned,
            after_connect=after_connect,
        )

    out = on_fresh_target(start, stop, dep.key, plan, log, body)
    out["deployment"] = dep.key
    return out


def run_split(
    kids: Children, plan: Plan, tokens: list[str], log: Log, common_hint: float | None
) -> dict[str, Any]:
    """The split room against the same room in one process: saturation pass for both, then
    the latency pass (own fractions + the common load) on fresh deployments.

    The common load is ``common_hint`` (the room scenario's common load, when it ran in this
    run) or else ``plan.common_fraction`` of the lower of the two saturations.
    """
    sc = plan.split_scenario
    entry: dict[str, Any] = {
        "title": f"{sc.title} split across 2 processes on Redis",
        "scenario": sc.key,
        "size": sc.size,
        "rooms": sc.rooms,
        "baseline": SPLIT_BASELINE.key,
        "split": SPLIT.key,
        "notes": {d.key: d.notes for d in (SPLIT_BASELINE, SPLIT)},
        "deployments": {},
    }
    deps = (SPLIT_BASELINE, SPLIT)
    for dep in deps:
        entry["deployments"][dep.key] = _measure(
            kids, dep, sc, plan=plan, tokens=tokens, log=log, saturate=True, loads=[],
            name="split",
        )
    sats = {
        k: e["saturation_msgs_per_s"]
        for k, e in entry["deployments"].items()
        if e.get("status") == "ok" and e.get("saturation_msgs_per_s")
    }
    if common_hint:
        common: float | None = common_hint
        entry["common_source"] = f"the {sc.key} scenario's common load in this run"
    elif sats:
        common = plan.common_fraction * min(sats.values())
        entry["common_source"] = (
            f"{plan.common_fraction:.0%} of the lower saturation of the two (the {sc.key} "
            "scenario did not run)"
        )
    else:
        common = None
    entry["common_msgs_per_s"] = common
    for dep in deps:
        if dep.key not in sats:
            continue
        loads = [OpenLoad(f"{f:.0%}", f, f * sats[dep.key]) for f in plan.fractions]
        if common is not None:
            loads.append(OpenLoad("common", None, common))
        res = _measure(
            kids, dep, sc, plan=plan, tokens=tokens, log=log, saturate=False, loads=loads,
            name="split",
        )
        target = entry["deployments"][dep.key]
        target["open"] = res.get("open", [])
        target["open_connect"] = res.get("connect")
        if res["status"] != "ok":
            target["status"] = "partial"
            target["error"] = f"latency pass: {res.get('error')}"
            target["server_log_tail"] = res.get("server_log_tail")
    return entry


def run_workers(kids: Children, plan: Plan, tokens: list[str], log: Log) -> dict[str, Any]:
    """``--workers 1`` then ``--workers 2``, each on one fresh deployment: the closed loop,
    then the fixed load (``plan.workers_fixed_fraction`` of the ``--workers 1`` saturation)."""
    sc = plan.workers_scenario
    entry: dict[str, Any] = {
        "title": f"`serve --workers 1` vs `--workers 2` on Redis, {sc.title}",
        "scenario": sc.key,
        "size": sc.size,
        "rooms": sc.rooms,
        "fixed_fraction": plan.workers_fixed_fraction,
        "notes": {d.key: d.notes for d in (WORKERS_1, WORKERS_2)},
        "deployments": {},
    }
    fixed: list[float] = []

    def first_loads(out: dict[str, Any]) -> list[OpenLoad]:
        # --workers 1 sets the fixed load from its own saturation, measured just before.
        if out.get("saturation_msgs_per_s"):
            fixed.append(plan.workers_fixed_fraction * out["saturation_msgs_per_s"])
            entry["fixed_msgs_per_s"] = fixed[0]
        return later_loads(out)

    def later_loads(out: dict[str, Any]) -> list[OpenLoad]:
        return [OpenLoad("fixed", None, fixed[0])] if fixed else []

    for dep, loads in ((WORKERS_1, first_loads), (WORKERS_2, later_loads)):
        entry["deployments"][dep.key] = _measure(
            kids, dep, sc, plan=plan, tokens=tokens, log=log, saturate=True, loads=loads,
            name="workers",
        )
    return entry

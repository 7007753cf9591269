"""One measurement = one fresh server + one load generator; each returns a JSON-able dict.

A failure (the server does not start, dies, refuses clients, the load generator times out) is
caught here and returned as ``{"status": "failed", "error": ...}`` so the run goes on with the
other servers and the report says what broke.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from bench.driver import Loadgen, LoadgenError
from bench.plan import Plan, RoomScenario
from bench.procs import CLK_TCK, ChildError, Children, rss_bytes, wait_for_quiet
from bench.servers import RunningServer, ServerKind, start_server, stop_server

SERVER_CPU = 0
LOADGEN_CPU = 1
FAILURES = (ChildError, LoadgenError, OSError, ValueError, KeyError)


class Target(Protocol):
    """The server side of one measurement: one server (:class:`RunningServer`) or several
    processes (``bench.scaleout.RunningDeployment``)."""

    @property
    def urls(self) -> list[str]:
        """Base WebSocket URLs; member k of a room connects to ``urls[k % len(urls)]``."""
        ...

    def pids(self) -> list[int]:
        """Every process whose CPU counts as the server's."""
        ...

    def cpu_groups(self) -> dict[str, list[int]]:
        """Named subsets of :meth:`pids` whose CPU is also reported apart (may be empty)."""
        ...

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for failure reports."""
        ...


def _spec(server: Target, tokens: list[str], rooms: list[dict[str, Any]],
          change_mix: float = 0.0) -> dict[str, Any]:
    return {
        "change_mix": change_mix,
        "url": server.urls[0],
        "urls": server.urls,
        "rooms": rooms,
        "tokens": tokens,
        "cpu_pids": server.pids(),
        "cpu_groups": server.cpu_groups(),
        "clk_tck": CLK_TCK,
        "connect_concurrency": 100,
        "settle_quiet_ms": 500,
        "settle_max_ms": 120_000,
        "drain_max_ms": 20_000,
    }


def enrich(phase: dict[str, Any], pinned: bool = True) -> dict[str, Any]:
    """Add derived figures to a loadgen phase result (CPU per delivery, core utilisations).

    ``pinned``: the server ran on core SERVER_CPU and the loadgen on LOADGEN_CPU, so other
    people's load is measured per core; unpinned, it is what the whole machine did beyond the
    server and the loadgen (``foreign_util_machine``, in cores).
    """
    wall = phase.get("wall_s") or 0.0
    server_cpu = phase.get("server_cpu_s", 0.0)
    loadgen_cpu = phase.get("loadgen_cpu_s", 0.0)
    deliveries = phase.get("deliveries", 0)
    phase["cpu_us_per_delivery"] = server_cpu * 1e6 / deliveries if deliveries else None
    phase["server_util"] = server_cpu / wall if wall else None
    phase["loadgen_util"] = loadgen_cpu / wall if wall else None
    groups = phase.get("group_cpu_s") or {}
    phase["group_cpu_us_per_delivery"] = {
        k: v * 1e6 / deliveries if deliveries else None for k, v in groups.items()
    }
    phase["group_util"] = {k: v / wall if wall else None for k, v in groups.items()}
    cores = phase.get("core_busy_s", {})
    phase["pinned"] = pinned
    if not pinned:
        busy = sum(cores.values())
        phase["foreign_util_machine"] = (
            max(0.0, busy - server_cpu - loadgen_cpu) / wall if wall else 0.0
        )
        phase["machine_util"] = busy / (wall * len(cores)) if wall and cores else None
        phase["loadgen_bound"] = False
        phase["loadgen_above_server"] = loadgen_cpu > server_cpu
        return phase
    if wall and str(SERVER_CPU) in cores:
        # Busy time on the server's core that the server did not use: other people's work.
        phase["foreign_util_server_core"] = max(0.0, cores[str(SERVER_CPU)] - server_cpu) / wall
    if wall and str(LOADGEN_CPU) in cores:
        phase["foreign_util_loadgen_core"] = max(0.0, cores[str(LOADGEN_CPU)] - loadgen_cpu) / wall
    # The loadgen limits the result when it is busier than the server and (nearly) saturated.
    phase["loadgen_bound"] = bool(
        phase["loadgen_util"] is not None
        and phase["server_util"] is not None
        and phase["loadgen_util"] > 0.9
        and phase["server_util"] < 0.9
    )
    phase["loadgen_above_server"] = loadgen_cpu > server_cpu
    return phase


NOISE_LIMIT = 0.10


def _noise(phase: dict[str, Any]) -> float:
    return float(
        max(
            phase.get("foreign_util_server_core", 0.0),
            phase.get("foreign_util_loadgen_core", 0.0),
            phase.get("foreign_util_machine", 0.0),
        )
    )


def measure_phase(
    lg: Loadgen,
    cmd: dict[str, Any],
    timeout_s: float,
    plan: Plan,
    log: Any,
    pinned: bool = True,
) -> dict[str, Any]:
    """Run one measured phase; repeat it when other processes disturbed it (see Plan.retries)."""
    best: dict[str, Any] | None = None
    for attempt in range(plan.retries + 1):
        res = enrich(lg.command(cmd, "result", timeout_s), pinned)
        res["attempt"] = attempt + 1
        if best is None or _noise(res) < _noise(best):
            best = res
        if _noise(res) <= NOISE_LIMIT or attempt == plan.retries:
            break
        log(f"    other processes used {_noise(res):.0%} of a core during {cmd['cmd']}: again")
        wait_for_quiet(plan.quiet_wait_s, log)
    assert best is not None
    return best


def _failed(exc: BaseException, server: Target | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(limit=4),
    }
    if server is not None:
        out["server_log_tail"] = server.log_tail(40)
    return out


def _phase_timeout(warmup: float, measure: float) -> float:
    return warmup + measure + 60.0


@dataclass(frozen=True)
class OpenLoad:
    """One open-loop phase: ``rate`` messages/s in total; ``fraction`` of the server's own
    saturation, or None for the common load that every server gets."""

    label: str
    fraction: float | None
    rate: float


def on_fresh_target(
    start: Callable[[], Target],
    stop: Callable[[Target], None],
    label: str,
    plan: Plan,
    log: Any,
    body: Callable[[Target, dict[str, Any]], None],
) -> dict[str, Any]:
    """Run one measurement, ``body(target, out)``, on a target fresh from ``start()``, stopped
    with ``stop`` afterwards, and return ``out``. A failure (the start included) is recorded in
    ``out`` with the server's log tail instead of raised: the run goes on without it."""
    out: dict[str, Any] = {"status": "ok"}
    server: Target | None = None
    try:
        out["quiet"] = wait_for_quiet(plan.quiet_wait_s, log)
        server = start()
        body(server, out)
    except FAILURES as exc:
        out.update(_failed(exc, server))
        log(f"  {label}: FAILED {out['error']}")
    finally:
        if server is not None:
            stop(server)
    return out


def _on_fresh_server(
    kids: Children, kind: ServerKind, name: str, plan: Plan, log: Any,
    body: Callable[[RunningServer, dict[str, Any]], None],
) -> dict[str, Any]:
    """:func:`on_fresh_target` for one server of ``kind`` pinned to the server core."""

    def start() -> RunningServer:
        return start_server(kids, kind, f"{name}-{kind.key}-server", SERVER_CPU)

    def stop(server: Target) -> None:
        assert isinstance(server, RunningServer)
        stop_server(kids, server)

    def run(server: Target, out: dict[str, Any]) -> None:
        assert isinstance(server, RunningServer)
        body(server, out)

    return on_fresh_target(start, stop, kind.key, plan, log, run)


@contextlib.contextmanager
def _loadgen(
    kids: Children, name: str, spec: dict[str, Any], cpu: int | None = LOADGEN_CPU
) -> Iterator[Loadgen]:
    """The load generator on its own core (``cpu`` None: unpinned); always told to quit."""
    lg = Loadgen(kids, name, spec, cpu)
    try:
        yield lg
    finally:
        lg.quit()


def run_room_scenario(
    kids: Children,
    kind: ServerKind,
    sc: RoomScenario,
    *,
    plan: Plan,
    tokens: list[str],
    log: Any,
    loads: list[OpenLoad] | None = None,
) -> dict[str, Any]:
    """One fresh server in one room scenario: the saturation pass (``loads`` None: closed loop)
    or the latency pass (each of ``loads``, open loop)."""

    def body(server: RunningServer, out: dict[str, Any]) -> None:
        measure_rooms(
            kids, server, sc, plan=plan, tokens=tokens, log=log, label=kind.key,
            saturate=loads is None, loads=loads or [], out=out,
        )

    return _on_fresh_server(kids, kind, sc.key, plan, log, body)


def measure_rooms(
    kids: Children,
    server: Target,
    sc: RoomScenario,
    *,
    plan: Plan,
    tokens: list[str],
    log: Any,
    label: str,
    saturate: bool,
    loads: list[OpenLoad] | Callable[[dict[str, Any]], list[OpenLoad]],
    out: dict[str, Any],
    pinned: bool = True,
    after_connect: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Connect ``sc``'s clients to ``server``; with ``saturate`` run the closed loop, then each
    open-loop load (``loads``, or ``loads(out)`` computed after the saturation phase); close.
    Results go into ``out`` (``connect``, ``saturation``, ``open``). ``pinned``: the loadgen
    runs on its own core, else unpinned. ``after_connect(out)`` runs once all are connected.

    Raises:
        LoadgenError: not every client connected, or the loadgen failed.
    """
    rooms = [
        {"name": f"{sc.key}-{i}", "size": sc.size, "senders": sc.senders_per_room}
        for i in range(sc.rooms)
    ]
    spec = _spec(server, tokens[: sc.members], rooms, sc.change_mix)
    cpu = LOADGEN_CPU if pinned else None
    with _loadgen(kids, f"{sc.key}-{label}-loadgen", spec, cpu) as lg:
        connected = lg.command({"cmd": "connect"}, "connected", 300)
        out["connect"] = connected
        log(
            f"  {label}: {connected['ok']} connected ({connected['failed']} failed, "
            f"{connected.get('deflate', 0)} with permessage-deflate) in "
            f"{connected['connect_ms'] / 1000:.1f}s, "
            f"settled {connected['settle_ms'] / 1000:.1f}s"
        )
        if connected["ok"] < sc.members:
            raise LoadgenError(
                f"only {connected['ok']} of {sc.members} clients connected: "
                f"errors {connected['errors']} closes {connected['closes']}"
            )
        if after_connect is not None:
            after_connect(out)
        if saturate:
            _saturate(lg, sc, label, plan, log, out, pinned)
        todo = loads(out) if callable(loads) else loads
        if todo:
            out["open"] = [_open_loop(lg, sc, label, plan, log, load, pinned) for load in todo]
        lg.command({"cmd": "close"}, "closed", 60)


def _saturate(
    lg: Loadgen,
    sc: RoomScenario,
    label: str,
    plan: Plan,
    log: Any,
    out: dict[str, Any],
    pinned: bool = True,
) -> None:
    sat = measure_phase(
        lg,
        {
            "cmd": "closed",
            "window": sc.window,
            "warmup_s": plan.warmup_s,
            "measure_s": plan.measure_s,
        },
        _phase_timeout(plan.warmup_s, plan.measure_s),
        plan,
        log,
        pinned,
    )
    out["saturation"] = sat
    out["saturation_msgs_per_s"] = sat["deliveries_per_s"] / sc.size
    log(
        f"  {label}: saturation {sat['deliveries_per_s']:,.0f} deliveries/s, "
        f"{sat['cpu_us_per_delivery'] or float('nan'):.2f} us/delivery, "
        f"server {sat['server_util']:.0%} loadgen {sat['loadgen_util']:.0%}"
    )


def _open_loop(
    lg: Loadgen,
    sc: RoomScenario,
    label: str,
    plan: Plan,
    log: Any,
    load: OpenLoad,
    pinned: bool = True,
) -> dict[str, Any]:
    rate = max(1.0, load.rate)
    res = measure_phase(
        lg,
        {
            "cmd": "open",
            "rate": rate,
            "warmup_s": plan.open_warmup_s,
            "measure_s": plan.open_measure_s,
        },
        _phase_timeout(plan.open_warmup_s, plan.open_measure_s),
        plan,
        log,
        pinned,
    )
    res["label"] = load.label
    res["fraction"] = load.fraction
    res["common"] = load.fraction is None
    res["offered_deliveries_per_s"] = rate * sc.size
    lat = res["latency"]
    log(
        f"  {label}: open {load.label} ({rate:,.0f} msg/s): p50 {lat['p50']} "
        f"p99 {lat['p99']} max {lat['max_ms']:.1f} ms, "
        f"{res['cpu_us_per_delivery'] or float('nan'):.2f} us/delivery, "
        f"server {res['server_util']:.0%}"
    )
    return res


def run_idle_memory(
    kids: Children, kind: ServerKind, *, plan: Plan, tokens: list[str], log: Any
) -> dict[str, Any]:
    """RSS of the server tree before and after ``plan.idle_connections`` idle connections."""
    n = plan.idle_connections

    def body(server: RunningServer, out: dict[str, Any]) -> None:
        size = plan.idle_room_size
        rooms = [
            {"name": f"idle-{i}", "size": min(size, n - i * size), "senders": 0}
            for i in range((n + size - 1) // size)
        ]
        with _loadgen(kids, f"memory-{kind.key}-loadgen", _spec(server, tokens, rooms)) as lg:
            # Warm up (lazy imports, first-connection allocations): 20 connections kept open, so
            # they are in both the before and the after figure.
            lg.command(
                {"cmd": "handshakes", "count": 20, "concurrency": 4, "room_size": 10}, "result", 60
            )
            time.sleep(1.0)
            before = rss_bytes(server.pids())
            connected = lg.command({"cmd": "connect"}, "connected", 600)
            time.sleep(2.0)
            after = rss_bytes(server.pids())
            ok = connected["ok"]
            out.update(
                connect=connected,
                connections=ok,
                rss_before=before,
                rss_after=after,
                bytes_per_connection=(after - before) / ok if ok else None,
            )
            if ok < n:
                out["status"] = "partial"
                out["error"] = f"only {ok} of {n} connected: {connected['errors']}"
            log(
                f"  {kind.key}: {ok} idle connections, RSS {before / 2**20:.1f} -> "
                f"{after / 2**20:.1f} MiB = {(after - before) / max(ok, 1) / 1024:.1f} KiB each"
            )
            lg.command({"cmd": "close"}, "closed", 120)
    return _on_fresh_server(kids, kind, "memory", plan, log, body)


def _per_handshake(res: dict[str, Any]) -> dict[str, Any]:
    res["server_cpu_us_per_handshake"] = (
        res["server_cpu_s"] * 1e6 / res["ok"] if res["ok"] else None
    )
    res["loadgen_cpu_us_per_handshake"] = (
        res["loadgen_cpu_s"] * 1e6 / res["ok"] if res["ok"] else None
    )
    return res


def run_handshakes(
    kids: Children, kind: ServerKind, *, plan: Plan, tokens: list[str], log: Any,
    deflate: bool = True, reconnect: bool = False,
) -> dict[str, Any]:
    """WebSocket handshakes per second (kept open, ``plan.handshake_concurrency`` in flight).

    A handshake ends at the server's first frame when ``kind.sends_welcome`` (the welcome is
    part of what a join costs), else at the 101. ``deflate``: the clients offer
    permessage-deflate (as browsers do). ``reconnect``: then, on the same server, each after
    the set before it closed, as many handshakes with new tokens (``fresh`` in the result)
    and as many with the first set's tokens again (``reconnect``: what a reconnect shows).
    """

    def body(server: RunningServer, out: dict[str, Any]) -> None:
        with _loadgen(kids, f"handshakes-{kind.key}-loadgen", _spec(server, tokens, [])) as lg:
            shape = {"concurrency": plan.handshake_concurrency,
                     "room_size": plan.handshake_room_size,
                     "first_frame": kind.sends_welcome, "deflate": deflate}
            warm = 20
            lg.command({"cmd": "handshakes", "count": warm, **shape, "concurrency": 4},
                       "result", 60)
            # A repeat (when disturbed) opens another set; the earlier ones stay open.
            res = _per_handshake(measure_phase(
                lg, {"cmd": "handshakes", "count": plan.handshakes, **shape}, 600, plan, log))
            if reconnect:
                # Each further set starts after the previous one closed (a handshake costs more
                # with more sockets open, and closes can make the GC steward thaw): first new
                # tokens (``fresh``, the control), then the first set's tokens again.
                for key, seq in (("fresh", None), ("reconnect", warm)):
                    lg.command({"cmd": "close"}, "closed", 120)
                    cmd = {"cmd": "handshakes", "count": plan.handshakes, **shape}
                    if seq is not None:
                        cmd["token_seq"] = seq
                    res[key] = _per_handshake(measure_phase(lg, cmd, 600, plan, log))
            out.update(res)
            out["verifies_jwt"] = kind.verifies_jwt
            if res["failed"]:
                out["status"] = "partial"
            log(
                f"  {kind.key}: {res['handshakes_per_s']:,.0f} handshakes/s, server "
                f"{res['server_util']:.0%}, loadgen {res['loadgen_util']:.0%}, "
                f"{res['failed']} failed"
            )
            lg.command({"cmd": "close"}, "closed", 120)
    return _on_fresh_server(kids, kind, "handshakes", plan, log, body)

"""Turn a run's results (a JSON-able dict) into a Markdown report with PNG plots.

Layout of ``results`` (as built by :mod:`bench.run`)::

    {"meta": {...}, "plan": {...}, "servers": [keys in column order],
     "scenarios": {key: {"title", "size", "rooms",
                         "servers": {server: measure.run_room_scenario()}}},
     "memory": {server: ...}, "handshakes": {server: ...}, "store": {...},
     "split": scaleout.run_split(), "workers": scaleout.run_workers()}
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LABELS = {"roomchat": "roomchat", "roomchat-task": "roomchat, frames through the task",
          "roomchat-redis": "roomchat on Redis",
          "roomchat-postgres": "roomchat on PostgreSQL + Redis",
          "roomchat-memory": "roomchat, memory store", "node-ws": "Node ws",
          "py-websockets": "Python websockets"}
COLORS = {"roomchat": "#d62728", "roomchat-task": "#e377c2", "roomchat-redis": "#ff9896",
          "roomchat-postgres": "#9467bd",
          "roomchat-memory": "#8c564b",
          "node-ws": "#2ca02c",
          "py-websockets": "#1f77b4"}
PEERS = ("node-ws", "py-websockets")
TITLES = {"room100": "1 room of 100", "room1000": "1 room of 1,000"}
KIB = 1024


def _label(key: str) -> str:
    return LABELS.get(key, key)


def _ok(entry: dict[str, Any] | None) -> bool:
    return bool(entry) and entry is not None and entry.get("status") in ("ok", "partial")


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _ratio_s(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _open_at(entry: dict[str, Any], frac: float | None) -> dict[str, Any] | None:
    """The open-loop result at ``frac`` of the server's own saturation (None: the common load)."""
    for res in entry.get("open", []):
        f = res.get("fraction")
        if (frac is None and res.get("common")) or (
            frac is not None and f is not None and abs(f - frac) < 1e-9
        ):
            return dict(res)
    return None


def _phase_name(ph: dict[str, Any]) -> str:
    return "saturation" if ph.get("phase") == "closed" else f"open {ph.get('label', '')}"


def _lat_s(res: dict[str, Any] | None) -> str:
    if not res:
        return "-"
    lat = res.get("latency", {})
    if not lat.get("count"):
        return "no deliveries"
    return (
        f"{_num(lat.get('p50'), '{:.1f}')} / {_num(lat.get('p99'), '{:.1f}')} / "
        f"{_num(lat.get('max_ms'), '{:.0f}')}"
    )


def _cpu_at(res: dict[str, Any] | None) -> str:
    if not res:
        return "-"
    return (
        f"{_num(res.get('cpu_us_per_delivery'), '{:.2f}')} "
        f"({_num(res.get('server_util'), '{:.0%}')})"
    )


def _client_stall(ph: dict[str, Any]) -> str:
    """A note when, in an open-loop phase, the load generator's own event loop stopped for at
    least half the phase's p99 (and 10 ms): deliveries that arrive meanwhile wait in its
    sockets, and its scheduled sends go out late, so that part of the tail is the client's,
    whatever the server. Empty otherwise (and for results from before the load generator
    reported its loop)."""
    if ph.get("phase") == "closed":
        return ""  # at saturation the load generator is meant to be busy; no target reads its p99
    own = ph.get("loadgen_loop_delay") or {}
    stalled = own.get("max_ms")
    p99 = (ph.get("latency") or {}).get("p99")
    if stalled is None or p99 is None or stalled < max(10.0, 0.5 * p99):
        return ""
    gc = own.get("gc") or {}
    gc_note = f", its longest GC {gc['max_ms']:.0f} ms" if gc.get("max_ms") is not None else ""
    return f"load generator's loop stalled up to {stalled:.0f} ms{gc_note}: p99 partly client-side"


def _flags(entry: dict[str, Any]) -> str:
    notes: list[str] = []
    phases = [entry.get("saturation"), *entry.get("open", [])]
    for ph in phases:
        if not ph:
            continue
        name = _phase_name(ph)
        if ph.get("loadgen_bound"):
            notes.append(f"loadgen-bound ({name})")
        if ph.get("undelivered"):
            notes.append(f"{ph['undelivered']} undelivered after drain ({name})")
        foreign = ph.get("foreign_util_server_core") or 0.0
        if foreign > 0.05:
            notes.append(f"other load on server core {foreign:.0%} ({name})")
        machine = ph.get("foreign_util_machine") or 0.0
        if machine > 0.1:
            notes.append(f"other load on the machine {machine:.2f} cores ({name})")
        stall = _client_stall(ph)
        if stall:
            notes.append(f"{stall} ({name})")
    for ph in phases:
        if ph and ph.get("errors"):
            notes.append(f"errors {ph['errors']}")
        if ph and ph.get("closes"):
            notes.append(f"closes {ph['closes']}")
    if entry.get("status") == "partial" and entry.get("error"):
        notes.append(str(entry["error"]))
    return "; ".join(dict.fromkeys(notes))


def _sat_util(entry: dict[str, Any]) -> str:
    sat = entry.get("saturation") or {}
    return f"{_num(sat.get('server_util'), '{:.0%}')} / {_num(sat.get('loadgen_util'), '{:.0%}')}"


def scenario_section(results: dict[str, Any], key: str, fractions: list[float]) -> list[str]:
    """The Markdown tables for one room scenario: saturation, then latency."""
    sc = results["scenarios"][key]
    common = sc.get("common_msgs_per_s")
    lines = [f"### {sc['title']}", ""]
    head = [
        "server",
        "deliveries/s at saturation",
        "server CPU µs / delivery at saturation",
        "core busy at saturation: server / loadgen",
    ]
    if common:
        head.append("server CPU µs / delivery at the common load (server core busy)")
    head += [f"latency ms p50 / p99 / max @ {f:.0%} of own saturation" for f in fractions]
    if common:
        head.append(
            f"latency ms p50 / p99 / max @ common load {common:,.0f} msg/s "
            f"({common * sc['size']:,.0f} deliveries/s)"
        )
    head += ["notes"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for server in results["servers"]:
        entry = sc["servers"].get(server)
        if entry is None:
            continue
        if not _ok(entry):
            row = [_label(server)] + ["failed"] * (len(head) - 2) + [entry.get("error", "")]
        else:
            sat = entry.get("saturation") or {}
            row = [
                _label(server),
                _num(sat.get("deliveries_per_s")),
                _num(sat.get("cpu_us_per_delivery"), "{:.2f}"),
                _sat_util(entry),
            ]
            if common:
                row.append(_cpu_at(_open_at(entry, None)))
            row += [_lat_s(_open_at(entry, f)) for f in fractions]
            if common:
                row.append(_lat_s(_open_at(entry, None)))
            row += [_flags(entry)]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in row) + " |")
    lines.append("")
    offered = []
    for server in results["servers"]:
        entry = sc["servers"].get(server)
        if _ok(entry) and entry is not None and "saturation_msgs_per_s" in entry:
            offered.append(f"{_label(server)} {entry['saturation_msgs_per_s']:,.0f} msg/s")
    if offered:
        lines.append(
            "Saturation in messages/s: "
            + ", ".join(offered)
            + ". Open-loop loads are fractions of each server's own saturation"
            + (
                ", plus the common load offered to every server (half the lowest saturation)."
                if common
                else "."
            )
        )
        lines.append("")
    return lines


def _metric(results: dict[str, Any], key: str, server: str, what: str) -> float | None:
    entry = results["scenarios"].get(key, {}).get("servers", {}).get(server)
    if not _ok(entry) or entry is None:
        return None
    if what == "cpu":
        return (entry.get("saturation") or {}).get("cpu_us_per_delivery")
    if what == "throughput":
        return (entry.get("saturation") or {}).get("deliveries_per_s")
    if what == "p99@50":
        res = _open_at(entry, 0.5)
        return None if res is None else res.get("latency", {}).get("p99")
    if what == "p99@common":
        res = _open_at(entry, None)
        return None if res is None else res.get("latency", {}).get("p99")
    if what == "cpu@common":
        res = _open_at(entry, None)
        return None if res is None else res.get("cpu_us_per_delivery")
    return None


def ratio_section(results: dict[str, Any]) -> list[str]:
    """roomchat divided by each baseline, for every scenario, memory and handshakes."""
    lines = [
        "## Ratios against the baselines (same run)",
        "",
        "roomchat's figure divided by the baseline's. CPU per delivery, memory and latency: "
        "lower is better (below 1.00x = roomchat wins). Throughput and handshakes: higher is "
        "better.",
        "",
        "| figure | roomchat ÷ Node ws | roomchat ÷ Python websockets |",
        "|---|---|---|",
    ]
    for key, sc in results["scenarios"].items():
        for what, label in (
            ("cpu", "server CPU µs / delivery at saturation"),
            ("cpu@common", "server CPU µs / delivery at the common load"),
            ("throughput", "deliveries/s at saturation"),
            ("p99@common", "p99 latency at the common load"),
            ("p99@50", "p99 latency at 50% of own saturation"),
        ):
            rc = _metric(results, key, "roomchat", what)
            cells = [_ratio_s(_ratio(rc, _metric(results, key, p, what))) for p in PEERS]
            lines.append(f"| {sc['title']}: {label} | {cells[0]} | {cells[1]} |")
    mem = results.get("memory", {})

    def mem_of(s: str) -> float | None:
        e = mem.get(s)
        return e.get("bytes_per_connection") if _ok(e) else None

    cells = [_ratio_s(_ratio(mem_of("roomchat"), mem_of(p))) for p in PEERS]
    lines.append(f"| RSS per idle connection | {cells[0]} | {cells[1]} |")
    hs = results.get("handshakes", {})

    def hs_of(s: str) -> float | None:
        e = hs.get(s)
        return e.get("handshakes_per_s") if _ok(e) else None

    cells = [_ratio_s(_ratio(hs_of("roomchat"), hs_of(p))) for p in PEERS]
    lines.append(
        f"| handshakes/s (roomchat verifies a JWT, peers do not) | {cells[0]} | {cells[1]} |"
    )
    lines.append("")
    return lines


def targets_section(results: dict[str, Any]) -> list[str]:
    """Each target with the measured figure and whether it is met."""
    rows: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**NOT met**")

    for what, where in (("cpu", "at saturation"), ("cpu@common", "at the common load")):
        rc = _metric(results, "room100", "roomchat", what)
        for peer in PEERS:
            if peer not in results.get("servers", PEERS):
                continue  # a baseline this run left out (the quick run has Node ws only)
            pv = _metric(results, "room100", peer, what)
            r = _ratio(rc, pv)
            rows.append(
                (
                    f"server CPU per delivery, 100-member room, {where}, ≤ 1.0x {_label(peer)}",
                    f"{_num(rc, '{:.2f}')} vs {_num(pv, '{:.2f}')} µs = {_ratio_s(r)}",
                    verdict(None if r is None else r <= 1.0),
                )
            )
    for key, limit in (("room100", 50.0), ("room1000", 250.0)):
        p99 = _metric(results, key, "roomchat", "p99@50")
        title = results["scenarios"].get(key, {}).get("title", TITLES.get(key, key))
        rows.append(
            (
                f"p99 < {limit:.0f} ms at half of roomchat's saturation, {title}",
                f"{_num(p99, '{:.1f}')} ms",
                verdict(None if p99 is None else p99 < limit),
            )
        )
    mem = results.get("memory", {}).get("roomchat")
    if _ok(mem) and mem is not None and mem.get("bytes_per_connection") is not None:
        kib = mem["bytes_per_connection"] / KIB
        n = mem.get("connections", 0)
        note = "" if n >= 10_000 else f" (at {n:,} connections, not 10,000)"
        rows.append(
            (
                "idle connection ≤ 30 KiB RSS at 10,000 connections",
                f"{kib:.1f} KiB{note}",
                verdict(kib <= 30),
            )
        )
    else:
        rows.append(("idle connection ≤ 30 KiB RSS at 10,000 connections", "-", verdict(None)))
    store = results.get("store") or {}
    sat = results["scenarios"].get("room100", {}).get("servers", {}).get("roomchat")
    sat_msgs = sat.get("saturation_msgs_per_s") if _ok(sat) and sat is not None else None
    shapes = store.get("shapes", []) if store.get("status") == "ok" else []
    target = "embedded storage rate ≥ 10x the message rate saturating a 100-member room"
    if not shapes or sat_msgs is None:
        rows.append((target, "-", verdict(None)))
    for shape in shapes:
        r = _ratio(shape["messages_per_s"], sat_msgs)
        rows.append(
            (
                f"{target} — store appends of {shape['rooms']} room(s) x {shape['batch']} msg",
                f"{_num(shape['messages_per_s'])} msg/s stored vs {_num(sat_msgs)} msg/s "
                f"= {_ratio_s(r)}",
                verdict(None if r is None else r >= 10),
            )
        )
    rows += split_target_rows(results, verdict)
    rows += changes_target_rows(results, verdict)
    lines = ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.append("")
    return lines


SPLIT_CPU_LIMIT = 1.3
SPLIT_P99_LIMIT = 1.5


def _deps(section: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not section or "deployments" not in section:
        return {}
    deps: dict[str, dict[str, Any]] = section["deployments"]
    return deps


def _phase(entry: dict[str, Any] | None, which: str) -> dict[str, Any] | None:
    """``which``: "sat" (the closed loop) or "common" (the open-loop common/fixed load)."""
    if not _ok(entry) or entry is None:
        return None
    if which == "sat":
        sat: dict[str, Any] | None = entry.get("saturation")
        return sat
    return _open_at(entry, None)


def _cpu_parts(ph: dict[str, Any] | None) -> tuple[float | None, float | None, float | None]:
    """(roomchat processes, Redis, both) server CPU µs per delivery in one phase."""
    if not ph:
        return None, None, None
    groups = ph.get("group_cpu_us_per_delivery") or {}
    return groups.get("roomchat"), groups.get("redis"), ph.get("cpu_us_per_delivery")


def _cpu_parts_s(ph: dict[str, Any] | None) -> str:
    rc, redis, total = _cpu_parts(ph)
    return f"{_num(rc, '{:.2f}')} / {_num(redis, '{:.2f}')} / {_num(total, '{:.2f}')}"


def _p(ph: dict[str, Any] | None, q: str, key: str = "latency") -> float | None:
    if not ph:
        return None
    value: float | None = (ph.get(key) or {}).get(q)
    return value


def _clients_s(entry: dict[str, Any]) -> str:
    per = entry.get("clients_per_process") or {}
    return " + ".join(str(n) for n in per.values()) or "-"


def split_target_rows(
    results: dict[str, Any], verdict: Callable[[bool | None], str]
) -> list[tuple[str, str, str]]:
    """The scale-out targets: the split room's CPU per delivery and p99 against one process."""
    split = results.get("split")
    deps = _deps(split)
    if split is None:
        return []
    base = deps.get(split.get("baseline", ""))
    two = deps.get(split.get("split", ""))
    rows: list[tuple[str, str, str]] = []
    for which, where in (("common", "at the common load"), ("sat", "at saturation")):
        b, t = _cpu_parts(_phase(base, which)), _cpu_parts(_phase(two, which))
        r = _ratio(t[2], b[2])
        rows.append(
            (
                f"room of 100 split across 2 processes on Redis: CPU per delivery {where} "
                f"≤ {SPLIT_CPU_LIMIT}x one process on Redis (roomchat processes + Redis)",
                f"{_num(t[2], '{:.2f}')} vs {_num(b[2], '{:.2f}')} µs = {_ratio_s(r)} "
                f"(roomchat processes alone {_ratio_s(_ratio(t[0], b[0]))}, "
                f"Redis alone {_ratio_s(_ratio(t[1], b[1]))})",
                verdict(None if r is None else r <= SPLIT_CPU_LIMIT),
            )
        )
    b99, t99 = _p(_phase(base, "common"), "p99"), _p(_phase(two, "common"), "p99")
    r = _ratio(t99, b99)
    rows.append(
        (
            f"room of 100 split across 2 processes on Redis: p99 at the common load "
            f"≤ {SPLIT_P99_LIMIT}x one process on Redis",
            f"{_num(t99, '{:.1f}')} vs {_num(b99, '{:.1f}')} ms = {_ratio_s(r)}",
            verdict(None if r is None else r <= SPLIT_P99_LIMIT),
        )
    )
    return rows


def split_section(results: dict[str, Any]) -> list[str]:
    """One room of 100 on one process against the same room split over two, both on Redis."""
    split = results.get("split")
    if not split:
        return []
    lines = ["## One room across processes (Redis)", ""]
    if "deployments" not in split:
        return [*lines, f"Not measured: {split.get('error', 'unknown')}", ""]
    fractions = list(results["plan"]["fractions"])
    common = split.get("common_msgs_per_s")
    lines += [
        f"{split['title']}: the same room and load as the {split['scenario']} scenario, once "
        "on one `roomchat serve` process and once on two, each on its own port, both on one "
        "Redis (AOF, `appendfsync always`). In the split, member k connects to process k % 2: "
        "half the members and half the senders on each side, so every message reaches half its "
        "recipients through Redis pub/sub. Redis runs as a process of its own here, so its CPU "
        "is measured apart: CPU columns give **roomchat processes / Redis / both** in µs per "
        "delivery; the server core's busy share in parentheses is all of them together. Redis "
        "and every roomchat process are pinned to core 0, the load generator to core 1, as in "
        "the room scenarios, so both variants get the same one core. Common load: "
        f"{_num(common)} msg/s ({split.get('common_source', '-')}). 'Other side' latency counts "
        "only deliveries to members on the other process than the sender's.",
        "",
    ]
    head = [
        "deployment",
        "clients per process",
        "deliveries/s at saturation",
        "core busy at saturation: server / loadgen",
        "CPU µs / delivery at saturation: roomchat / Redis / both",
        "CPU µs / delivery at the common load: roomchat / Redis / both (server core busy)",
        *[f"latency ms p50 / p99 / max @ {f:.0%} of own saturation" for f in fractions],
        "latency ms p50 / p99 / max @ common load",
        "other side only: p50 / p99 @ common load",
        "notes",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, entry in _deps(split).items():
        label = f"{key} ({split.get('notes', {}).get(key, '')})"
        if not _ok(entry):
            row = [label] + ["failed"] * (len(head) - 2) + [entry.get("error", "")]
        else:
            sat, com = _phase(entry, "sat"), _phase(entry, "common")
            row = [
                label,
                _clients_s(entry),
                _num((sat or {}).get("deliveries_per_s")),
                _sat_util(entry),
                _cpu_parts_s(sat),
                f"{_cpu_parts_s(com)} ({_num((com or {}).get('server_util'), '{:.0%}')})",
                *[_lat_s(_open_at(entry, f)) for f in fractions],
                _lat_s(com),
                f"{_num(_p(com, 'p50', 'latency_cross'), '{:.1f}')} / "
                f"{_num(_p(com, 'p99', 'latency_cross'), '{:.1f}')}",
                _flags(entry),
            ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in row) + " |")
    lines.append("")
    base = _deps(split).get(split["baseline"])
    two = _deps(split).get(split["split"])
    lines += [
        "Split ÷ one process (same run; CPU and latency: lower is better):",
        "",
        "| figure | at saturation | at the common load |",
        "|---|---|---|",
    ]
    for i, what in enumerate(("roomchat processes' CPU", "Redis's CPU", "both (the target)")):
        cells = [
            _ratio_s(_ratio(_cpu_parts(_phase(two, w))[i], _cpu_parts(_phase(base, w))[i]))
            for w in ("sat", "common")
        ]
        lines.append(f"| CPU µs / delivery, {what} | {cells[0]} | {cells[1]} |")
    thr = _ratio(
        (_phase(two, "sat") or {}).get("deliveries_per_s"),
        (_phase(base, "sat") or {}).get("deliveries_per_s"),
    )
    lines.append(f"| deliveries/s (higher is better) | {_ratio_s(thr)} | |")
    for q in ("p50", "p99"):
        r = _ratio(_p(_phase(two, "common"), q), _p(_phase(base, "common"), q))
        lines.append(f"| {q} latency | | {_ratio_s(r)} |")
    lines.append("")
    return lines


def workers_section(results: dict[str, Any]) -> list[str]:
    """``serve --workers 1`` against ``--workers 2``: throughput, CPU, who used which core."""
    wk = results.get("workers")
    if not wk:
        return []
    lines = ["## `serve --workers 1` vs `--workers 2` (Redis)", ""]
    if "deployments" not in wk:
        return [*lines, f"Not measured: {wk.get('error', 'unknown')}", ""]
    fixed = wk.get("fixed_msgs_per_s")
    lines += [
        f"{wk['rooms']:,} rooms of {wk['size']}, one sender per room (the {wk['scenario']} "
        "scenario), against `roomchat serve --workers 1` (one process: no supervisor below 2) "
        "and `--workers 2` (a supervisor and two workers accepting on one shared socket), both "
        "on one Redis (AOF, `appendfsync always`). **Nothing is pinned here**: two workers "
        "cannot share one core meaningfully and the machine has two, so Redis, roomchat and the "
        "load generator share both cores as the scheduler likes. 'Cores used' is each group's "
        "CPU seconds per second of the window (2.00 = both cores); 'other' is what the rest of "
        "the machine used meanwhile (other people's work). The load generator's share is CPU "
        "the server could not have: with it near a full core, --workers 2 has about one core "
        "left, and the throughput ratio is a floor for what a machine with a separate load "
        "generator would show. The kernel gives each connection to whichever worker accepts "
        "first, so most rooms have members on both workers and their messages cross Redis "
        "pub/sub. The fixed load is "
        f"{wk['fixed_fraction']:.0%} of the --workers 1 saturation: {_num(fixed)} msg/s, run "
        "on the same server right after its saturation phase.",
        "",
    ]
    head = [
        "deployment",
        "clients per worker",
        "deliveries/s at saturation",
        "CPU µs / delivery at saturation: roomchat / Redis / both",
        "cores used at saturation: roomchat / Redis / loadgen / other",
        "CPU µs / delivery at the fixed load: roomchat / Redis / both",
        "cores used at the fixed load: roomchat / Redis / loadgen / other",
        "latency ms p50 / p99 / max @ fixed load",
        "notes",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cores(ph: dict[str, Any] | None) -> str:
        if not ph:
            return "-"
        g = ph.get("group_util") or {}
        return (
            f"{_num(g.get('roomchat'), '{:.2f}')} / {_num(g.get('redis'), '{:.2f}')} / "
            f"{_num(ph.get('loadgen_util'), '{:.2f}')} / "
            f"{_num(ph.get('foreign_util_machine'), '{:.2f}')}"
        )

    for key, entry in _deps(wk).items():
        label = f"{key} ({wk.get('notes', {}).get(key, '')})"
        if not _ok(entry):
            row = [label] + ["failed"] * (len(head) - 2) + [entry.get("error", "")]
        else:
            sat, fix = _phase(entry, "sat"), _phase(entry, "common")
            row = [
                label,
                _clients_s(entry),
                _num((sat or {}).get("deliveries_per_s")),
                _cpu_parts_s(sat),
                cores(sat),
                _cpu_parts_s(fix),
                cores(fix),
                _lat_s(fix),
                _flags(entry),
            ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in row) + " |")
    lines.append("")
    one, two = _deps(wk).get("workers-1"), _deps(wk).get("workers-2")
    thr = _ratio(
        (_phase(two, "sat") or {}).get("deliveries_per_s"),
        (_phase(one, "sat") or {}).get("deliveries_per_s"),
    )
    cpu_sat = _ratio(_cpu_parts(_phase(two, "sat"))[2], _cpu_parts(_phase(one, "sat"))[2])
    cpu_fix = _ratio(_cpu_parts(_phase(two, "common"))[2], _cpu_parts(_phase(one, "common"))[2])
    p99 = _ratio(_p(_phase(two, "common"), "p99"), _p(_phase(one, "common"), "p99"))
    lines += [
        f"From 1 to 2 workers: throughput at saturation **{_ratio_s(thr)}**; CPU per delivery "
        f"(roomchat + Redis) {_ratio_s(cpu_sat)} at saturation and {_ratio_s(cpu_fix)} at the "
        f"fixed load; p99 at the fixed load {_ratio_s(p99)}.",
        "",
    ]
    return lines


def memory_section(results: dict[str, Any]) -> list[str]:
    """Idle-connection memory table."""
    mem = results.get("memory", {})
    if not mem:
        return []
    lines = [
        "## Memory per idle connection",
        "",
        "| server | connections | RSS before | RSS after | per connection | notes |",
        "|---|---|---|---|---|---|",
    ]
    for server in results["servers"]:
        e = mem.get(server)
        if e is None:
            continue
        if not _ok(e):
            lines.append(f"| {_label(server)} | failed | | | | {e.get('error', '')} |")
            continue
        bpc = e.get("bytes_per_connection")
        lines.append(
            f"| {_label(server)} | {e['connections']:,} | {e['rss_before'] / 2**20:.1f} MiB | "
            f"{e['rss_after'] / 2**20:.1f} MiB | "
            f"{_num(None if bpc is None else bpc / KIB, '{:.1f}')} KiB | {e.get('error', '')} |"
        )
    lines.append("")
    return lines


def handshake_section(results: dict[str, Any]) -> list[str]:
    """Handshake rate table."""
    hs = results.get("handshakes", {})
    if not hs:
        return []
    lines = [
        "## WebSocket handshakes",
        "",
        "| server | JWT verified | handshakes/s | server CPU µs / handshake | "
        "core busy: server / loadgen | notes |",
        "|---|---|---|---|---|---|",
    ]
    for server in results["servers"]:
        e = hs.get(server)
        if e is None:
            continue
        if not _ok(e):
            lines.append(f"| {_label(server)} | | failed | | | {e.get('error', '')} |")
            continue
        note = "loadgen-bound" if e.get("loadgen_bound") else ""
        if e.get("failed"):
            note += f" {e['failed']} failed: {e.get('errors')}"
        lines.append(
            f"| {_label(server)} | {'yes' if e.get('verifies_jwt') else 'no'} | "
            f"{_num(e.get('handshakes_per_s'))} | {_num(e.get('server_cpu_us_per_handshake'))} | "
            f"{_num(e.get('server_util'), '{:.0%}')} / {_num(e.get('loadgen_util'), '{:.0%}')} | "
            f"{note.strip()} |"
        )
    lines.append("")
    return lines


def _secs(value: float | None) -> str:
    return _num(value, "{:.2f}")


def _q(stats: dict[str, Any] | None, key: str) -> float | None:
    if not stats or not stats.get("count"):
        return None
    value = stats.get(key)
    return float(value) if value is not None else None


def _refusals_s(storm: dict[str, Any]) -> str:
    parts = [f"{n:,} {k}" for k, n in sorted(storm.get("refusals", {}).items())]
    parts += [f"{n:,} {k}" for k, n in sorted(storm.get("errors", {}).items())]
    if storm.get("timeouts"):
        parts.append(f"{storm['timeouts']:,} timed out")
    return ", ".join(parts) or "none"


def storm_section(results: dict[str, Any]) -> list[str]:
    """The reconnect storm (bench/storm.py): one row per server and variant."""
    st = results.get("storm")
    if not st or not st.get("runs"):
        return []
    plan = st["plan"]
    lines = [
        "## Reconnect storm",
        "",
        f"{plan['clients']:,} clients in rooms of {plan['room_size']} (one sender per room, a "
        f"message every {plan['send_interval_ms'] / 1000:g} s while it is connected), the server "
        "SIGTERMed, a new process started on the same port and data directory as soon as the "
        "old one exited; the clients reconnect with static/chat.js's own `reconnectDelay` (token "
        "in the URL: one request per connect) and, on roomchat, resume with `after=`. Times are "
        "seconds from the new process being ready (`/readyz` 200; baselines: port open). "
        "*Replayed*: the client holds every seq up to its welcome's. Variants: staged drain "
        f"({plan['drain_waves']} waves {plan['drain_step_s']:g} s apart, else all at once), "
        "jitter (the page's full jitter, else a constant draw: everyone waits the same), "
        "connection-rate limit (`connection_rate` default, else none).",
        "",
        "| server | variant | SIGTERM→exit | exit→ready | ready→last 101 | ready→last welcome | "
        "ready→last replayed | client downtime p50 / p99 / max | connects per client (max) | "
        "refused or failed connects | seq check | server CPU s (ready→last) | loadgen core |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for run in st["runs"]:
        server = _label(run["server"])
        title = run.get("title", run.get("variant", ""))
        if run.get("status") not in ("ok", "partial"):
            lines.append(f"| {server} | {title} | failed | | | | | | | "
                         f"{run.get('error', '')[:200]} | | | |")
            continue
        storm = run["storm"]
        check = run["check"]
        down = storm.get("downtime_s")
        per = storm.get("connects_per_client") or {}
        if check.get("checked"):
            seq = (f"{check['gaps']} gaps, {check['duplicates']} dups, "
                   f"{check['behind_at_end']} behind; {check['replayed']:,} replayed")
            if check.get("not_recovered"):
                seq += f", {check['not_recovered']} not recovered"
        else:
            seq = "no resume"
        cpu = storm.get("cpu_from_ready") or {}
        arm = storm.get("loadgen_since_arm") or {}
        core = arm.get("loadgen_core")
        lines.append(
            f"| {server} | {title} | {_secs(run.get('drain_s'))} | "
            f"{_secs(run.get('exit_to_ready_s'))} | {_secs(_q(storm.get('open_s'), 'max'))} | "
            f"{_secs(_q(storm.get('welcome_s'), 'max'))} | "
            f"{_secs(_q(storm.get('caught_up_s'), 'max'))} | "
            f"{_secs(_q(down, 'p50'))} / {_secs(_q(down, 'p99'))} / {_secs(_q(down, 'max'))} | "
            f"{_num(storm['connects'] / max(1, storm['clients']), '{:.2f}')} "
            f"({per.get('max', '-')}) | {_refusals_s(storm)} | {seq} | "
            f"{_num(cpu.get('server_cpu_s'), '{:.2f}')} | {_num(core, '{:.0%}')} |"
        )
        if run.get("status") == "partial":
            notes.append(f"{server} {title}: {run.get('error')}")
        if core is not None and core > 0.85:
            notes.append(f"{server} {title}: the load generator used {core:.0%} of its core: "
                         "it, not the server, may have set the pace")
    lines.append("")
    lines += [f"- {n}" for n in notes]
    if notes:
        lines.append("")
    return lines


def changes_target_rows(results: dict[str, Any],
                        verdict: Any) -> list[tuple[str, str, str]]:
    """Issue 21's two targets (bench/changes.py), when the run measured them."""
    changes = results.get("changes")
    if not changes:
        return []
    churn, pages = changes.get("churn") or {}, changes.get("pages") or {}
    r, p = churn.get("ratio"), pages.get("ratio")
    plain, mixed = ((churn.get(k) or {}).get("cpu_us_per_delivery") for k in ("plain", "changes"))
    return [
        (f"100-member room with 30% reactions/edits: server CPU per delivery ≤ "
         f"{churn.get('target', 1.1)}x plain messages (same load)",
         f"{_num(mixed, '{:.2f}')} vs {_num(plain, '{:.2f}')} µs = {_ratio_s(r)}",
         verdict(None if r is None else r <= churn.get("target", 1.1))),
        (f"history pages with changes folded ≥ {pages.get('target', 0.8)}x the rate of plain "
         "pages (pages per server CPU second)",
         f"{_num((pages.get('changed') or {}).get('pages_per_cpu_s'))} vs "
         f"{_num((pages.get('plain') or {}).get('pages_per_cpu_s'))} = {_ratio_s(p)}",
         verdict(None if p is None else p >= pages.get("target", 0.8))),
    ]


def changes_section(results: dict[str, Any]) -> list[str]:
    """Issue 21: what changes to messages cost (bench/changes.py)."""
    changes = results.get("changes")
    if not changes:
        return []
    lines = ["## Changes to messages (issue 21)", "",
             "Each edit, delete and reaction is an entry of the room's log, delivered to every "
             "member like a message. A room of 100 where 30% of what the senders send are "
             "reactions or edits, against the same room sending messages only, at the same "
             "offered load; and history pages of a room whose messages carry their changes "
             "folded in, against a room of plain messages (`bench/changes.py`).", "",
             "| measurement | plain | with changes | ratio |", "|---|---|---|---|"]
    churn, pages = changes.get("churn") or {}, changes.get("pages") or {}
    if churn.get("status") == "ok":
        plain, mixed = churn["plain"], churn["changes"]
        lines.append(f"| server CPU per delivery, {churn['rate']:,} frames/s (median of "
                     f"{churn.get('rounds', 1)}) | {plain['cpu_us_per_delivery']:.2f} µs | "
                     f"{mixed['cpu_us_per_delivery']:.2f} µs | {_ratio_s(churn['ratio'])} |")

        def runs_s(part: dict[str, Any]) -> str:
            return ", ".join(
                f"{r['cpu_us_per_delivery']:.2f} µs "
                f"(p99 {_num((r.get('latency') or {}).get('p99'), '{:.0f}')} ms)"
                for r in part.get("runs", []) if r.get("cpu_us_per_delivery"))

        lines.append(f"| each run (a run starved of its core shows a long p99 and cheaper, "
                     f"bigger batches) | {runs_s(plain)} | {runs_s(mixed)} | |")
    if pages.get("status") == "ok":
        lines.append(f"| history pages of {pages['page']} per server CPU second | "
                     f"{pages['plain']['pages_per_cpu_s']:,.0f} | "
                     f"{pages['changed']['pages_per_cpu_s']:,.0f} | {_ratio_s(pages['ratio'])} |")
        lines.append(f"| history pages of {pages['page']} per second ({pages['clients']} "
                     f"clients) | {pages['plain']['pages_per_s']:,.0f} | "
                     f"{pages['changed']['pages_per_s']:,.0f} | {_ratio_s(pages['wall_ratio'])} |")
    for part in (churn, pages):
        if part.get("status") != "ok":
            lines.append(f"| not measured: {part.get('error')} | | | |")
    lines.append("")
    return lines


def store_section(results: dict[str, Any]) -> list[str]:
    """Storage throughput paragraph."""
    st = results.get("store")
    if not st:
        return []
    lines = ["## Embedded storage throughput", ""]
    if st.get("status") != "ok":
        lines += [f"Not measured: {st.get('error', 'unknown')}", ""]
        return lines
    lines += [
        "`rooms.engines.sqlite.SqliteStore` (synchronous=FULL, as the server runs it) driven "
        "directly, pinned to the server core. Simulated rooms each await their append before the "
        "next, as room actors do; a busy room appends everything that piled up in one call.",
        "",
        "| rooms | messages per append | messages/s | append p50 | append p99 |",
        "|---|---|---|---|---|",
    ]
    for sh in st.get("shapes", []):
        lines.append(
            f"| {sh['rooms']} | {sh['batch']} | {sh['messages_per_s']:,.0f} | "
            f"{sh['append_p50_ms']:.2f} ms | {sh['append_p99_ms']:.2f} ms |"
        )
    lines.append("")
    return lines


def loadgen_section(results: dict[str, Any]) -> list[str]:
    """Phases in which the load generator used more CPU than the server, or neared its limit."""
    rows: list[str] = []

    def row(title: str, server: str, name: str, ph: dict[str, Any]) -> str:
        near = ph.get("loadgen_util") is not None and ph["loadgen_util"] >= 0.9
        return (
            f"| {title} | {_label(server)} | {name} | {ph['server_util']:.0%} | "
            f"{ph['loadgen_util']:.0%} | {'yes' if near else 'no'} | "
            f"{'yes' if ph.get('loadgen_bound') else 'no'} |"
        )

    for sc in results["scenarios"].values():
        for server, entry in sc["servers"].items():
            if not _ok(entry):
                continue
            for ph in [entry.get("saturation"), *entry.get("open", [])]:
                if not ph or ph.get("loadgen_util") is None:
                    continue
                if ph.get("loadgen_above_server") or ph["loadgen_util"] >= 0.9:
                    rows.append(row(sc["title"], server, _phase_name(ph), ph))
    for server, e in results.get("handshakes", {}).items():
        if (
            _ok(e)
            and e.get("loadgen_util") is not None
            and (e.get("loadgen_above_server") or e["loadgen_util"] >= 0.9)
        ):
            rows.append(row("handshakes", server, "handshakes", e))
    lines = ["## Load generator CPU", ""]
    if not rows:
        lines += [
            "In every measured phase the load generator used less CPU than the server under "
            "test and stayed below 90% of its core.",
            "",
        ]
        return lines
    lines += [
        "Phases in which the load generator (alone on core 1) used more CPU than the server, or "
        "90% of its core or more. 'Bound': the loadgen core was above 90% while the server core "
        "was below 90%, so the throughput figure is the load generator's limit, not the "
        "server's. Where both cores are near 100% the throughput is a lower bound for the "
        "server. CPU per delivery stays exact either way (server CPU / deliveries counted).",
        "",
        "| scenario | server | phase | server core | loadgen core | loadgen ≥ 90% | bound |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    return lines


def failures_section(results: dict[str, Any]) -> list[str]:
    """Everything that failed, with the error and the server log tail."""
    items: list[tuple[str, dict[str, Any]]] = []
    for sc in results["scenarios"].values():
        for server, entry in sc["servers"].items():
            if entry.get("status") == "failed":
                items.append((f"{sc['title']} / {_label(server)}", entry))
    for section in ("memory", "handshakes"):
        for server, entry in results.get(section, {}).items():
            if entry.get("status") == "failed":
                items.append((f"{section} / {_label(server)}", entry))
    for section in ("split", "workers"):
        for key, entry in _deps(results.get(section)).items():
            if entry.get("status") in ("failed", "partial") and entry.get("error"):
                items.append((f"{section} / {key}", entry))
    if not items:
        return []
    lines = ["## Failures", ""]
    for title, e in items:
        lines += [f"**{title}**: {e.get('error')}", ""]
        tail = e.get("server_log_tail")
        if tail:
            lines += ["```", tail[-3000:], "```", ""]
    return lines


def plot_latency(results: dict[str, Any], path: Path) -> bool:
    """Latency (p50 dashed, p99 solid) against offered deliveries/s, one panel per scenario."""
    keys = [
        k
        for k, sc in results["scenarios"].items()
        if any(_ok(e) and e.get("open") for e in sc["servers"].values())
    ]
    if not keys:
        return False
    ncols = min(2, len(keys))
    nrows = (len(keys) + ncols - 1) // ncols
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(7.0, 6.0 * ncols), 4.6 * nrows), squeeze=False
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(keys) :]:
        ax.set_visible(False)
    for ax, key in zip(flat, keys, strict=False):
        sc = results["scenarios"][key]
        for server in results["servers"]:
            e = sc["servers"].get(server)
            if not _ok(e) or e is None:
                continue
            pts = sorted(
                (r["offered_deliveries_per_s"], r["latency"].get("p50"), r["latency"].get("p99"))
                for r in e.get("open", [])
                if r.get("latency", {}).get("count")
            )
            if not pts:
                continue
            xs = [p[0] for p in pts]
            color = COLORS.get(server)
            ax.plot(xs, [p[2] for p in pts], "o-", color=color, label=f"{_label(server)} p99")
            ax.plot(
                xs,
                [p[1] for p in pts],
                "s--",
                color=color,
                alpha=0.6,
                label=f"{_label(server)} p50",
            )
        ax.set_title(sc["title"])
        ax.set_xlabel("offered load (deliveries/s)")
        ax.set_ylabel("delivery latency (ms)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}")
        ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.EngFormatter())
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="both", which="both", labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        "Delivery latency vs offered load (open loop: 25/50/75% of each server's own "
        "saturation,\nplus one common load for all)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _cpu_open(results: dict[str, Any], key: str, server: str, frac: float | None) -> float | None:
    entry = results["scenarios"].get(key, {}).get("servers", {}).get(server)
    if not _ok(entry) or entry is None:
        return None
    res = _open_at(entry, frac)
    return None if res is None else res.get("cpu_us_per_delivery")


def plot_cpu(results: dict[str, Any], path: Path) -> bool:
    """Grouped bars: server CPU µs per delivery by scenario and server, at saturation and 50%."""
    keys = list(results["scenarios"])
    servers = list(results["servers"])
    if not keys:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 4.4 * len(keys)), 4.4), sharey=True)
    width = 0.8 / max(1, len(servers))
    any_bar = False

    def at_saturation(key: str, server: str) -> float | None:
        return _metric(results, key, server, "cpu")

    def at_common(key: str, server: str) -> float | None:
        return _cpu_open(results, key, server, None)

    panels: tuple[tuple[str, Callable[[str, str], float | None]], ...] = (
        ("at saturation (closed loop)", at_saturation),
        ("at the common load (open loop, same rate for all)", at_common),
    )
    for ax, (title, get) in zip(axes, panels, strict=True):
        for i, server in enumerate(servers):
            vals = [get(k, server) for k in keys]
            xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(keys))]
            heights = [v if v is not None else 0.0 for v in vals]
            bars = ax.bar(xs, heights, width, label=_label(server), color=COLORS.get(server))
            for b, v in zip(bars, vals, strict=True):
                if v is not None:
                    any_bar = True
                    ax.annotate(
                        f"{v:.1f}",
                        (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([results["scenarios"][k]["title"] for k in keys], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("server CPU µs per delivered message")
    axes[0].legend(fontsize=8)
    fig.suptitle("Server CPU per delivery by room size (lower is better)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return any_bar


def write_report(results: dict[str, Any], path: Path) -> Path:
    """Write ``path`` (Markdown) and its PNGs next to it; return ``path``."""
    stem = path.with_suffix("")
    lat_png = Path(f"{stem}-latency.png")
    cpu_png = Path(f"{stem}-cpu.png")
    meta = results["meta"]
    plan = results["plan"]
    fractions = list(plan["fractions"])
    quick_note = " (quick: fewer sizes, shorter windows)" if plan["name"] == "quick" else ""
    lines = [
        f"# roomchat benchmark — {meta['started']}",
        "",
        f"Mode: **{plan['name']}**{quick_note}. Duration {meta.get('duration_s', 0):.0f} s. "
        f"Command: `{meta['command']}`.",
        "",
        "Every server ran pinned to core 0 (`taskset -c 0`), the Node load generator to core 1 "
        "(except in the `--workers` comparison, which runs unpinned: see its section); "
        "each measurement used a fresh server process. Server CPU is utime+stime of the whole "
        "server process tree read from /proc at the window's edges, divided by the message "
        "objects counted at the clients in the same window. Saturation: closed loop, each sender "
        f"keeps a window of messages outstanding ({plan['warmup_s']:.0f} s warm-up, "
        f"{plan['measure_s']:.0f} s measured). Latency: open loop at fixed rates (fractions of "
        "each server's own saturation, and one common load for all: half the lowest "
        "saturation), measured from the scheduled send time to arrival at each "
        f"member ({plan['open_measure_s']:.0f} s measured per load; the latency pass runs on a "
        "fresh server after the saturation pass). Clients offer "
        "permessage-deflate as browsers do; the baselines run with compression off.",
        "",
    ]
    lines += targets_section(results)
    lines += ["## Results", ""]
    for key in results["scenarios"]:
        lines += scenario_section(results, key, fractions)
    lines += ratio_section(results)
    lines += split_section(results)
    lines += workers_section(results)
    lines += memory_section(results)
    lines += handshake_section(results)
    lines += storm_section(results)
    lines += changes_section(results)
    lines += store_section(results)
    lines += loadgen_section(results)
    plots: list[str] = []
    if plot_latency(results, lat_png):
        plots.append(f"![latency vs offered load]({lat_png.name})")
    if plot_cpu(results, cpu_png):
        plots.append(f"![CPU per delivery by room size]({cpu_png.name})")
    if plots:
        lines += ["## Plots", "", *[p + "\n" for p in plots]]
    lines += ["## Servers", "", "| server | what ran |", "|---|---|"]
    for server in results["servers"]:
        lines.append(f"| {_label(server)} | {results['server_notes'].get(server, '')} |")
    lines.append("")
    lines += failures_section(results)
    lines += ["## Machine", "", "| | |", "|---|---|"]
    for k, v in meta["machine"].items():
        lines.append(f"| {k} | {v} |")
    lines += [
        "",
        f"Raw results: `{path.with_suffix('.json').name}`; "
        f"process logs were in `{meta['log_dir']}`.",
        "",
    ]
    path.write_text("\n".join(lines))
    return path

"""The report: its targets table lists only baselines the run measured, and its notes say when
the load generator itself stalled."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import _flags, targets_section

REPORTS = Path(__file__).resolve().parents[2] / "bench" / "reports"


def test_targets_leave_out_baselines_the_run_did_not_measure() -> None:
    results = json.loads((REPORTS / "2026-11-26-2101-quick.json").read_text())
    assert results["servers"] == ["roomchat", "node-ws"]
    table = "\n".join(targets_section(results))
    assert "≤ 1.0x Node ws" in table
    assert "Python websockets" not in table
    results["servers"].append("py-websockets")  # in the run, but no figures: "not measured"
    table = "\n".join(targets_section(results))
    assert "≤ 1.0x Python websockets" in table and "not measured" in table


def test_a_phase_whose_load_generator_stalled_says_its_tail_may_be_the_clients() -> None:
    def entry(stall_ms: float | None, p99: float) -> dict[str, object]:
        phase: dict[str, object] = {"phase": "open", "label": "common", "latency": {"p99": p99}}
        if stall_ms is not None:
            phase["loadgen_loop_delay"] = {"p99_ms": 2.0, "max_ms": stall_ms,
                                           "gc": {"count": 30, "total_ms": 200.0,
                                                  "max_ms": 12.0, "over_10ms": 1}}
        return {"saturation": None, "open": [phase]}

    flagged = _flags(entry(stall_ms=31.7, p99=43.4))
    assert "stalled up to 32 ms, its longest GC 12 ms" in flagged and "(open common)" in flagged
    assert _flags(entry(stall_ms=11.1, p99=8.6)) != ""  # a stall longer than the p99 itself
    assert _flags(entry(stall_ms=9.0, p99=8.0)) == ""  # under 10 ms: ordinary
    assert _flags(entry(stall_ms=12.0, p99=40.0)) == ""  # small next to the tail: the server's
    assert _flags(entry(stall_ms=None, p99=40.0)) == ""  # results from before the field existed
    saturated = entry(stall_ms=62.0, p99=40.0)
    saturated["saturation"], saturated["open"] = {**saturated["open"][0], "phase": "closed"}, []  # type: ignore[index]
    assert _flags(saturated) == ""  # closed loop: the load generator is meant to be busy

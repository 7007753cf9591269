"""The report's targets table lists only baselines the run measured."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import targets_section

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

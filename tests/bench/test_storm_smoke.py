"""bench/storm.py end to end on a tiny plan: a real roomchat restarted under 40 clients that
reconnect with static/chat.js's policy and resume. Checks that the scenario works and its seq
check is clean, never how fast (performance is measured by ``make bench``)."""

from __future__ import annotations

from pathlib import Path

from bench.plan import PROTECTED, StormPlan
from bench.procs import Children
from bench.servers import ROOMCHAT
from bench.storm import run_storm
from bench.tokens import mint_tokens

TINY = StormPlan(clients=40, room_size=10, send_interval_ms=100, traffic_s=0.5, after_s=0.2,
                 drain_waves=2, drain_step_s=0.3, timeout_s=30.0, variants=(PROTECTED,),
                 baselines=())


def test_a_tiny_storm_brings_every_client_back_with_every_message(tmp_path: Path) -> None:
    lines: list[str] = []
    with Children(tmp_path / "logs") as kids:
        entry = run_storm(kids, ROOMCHAT, PROTECTED, TINY, mint_tokens(TINY.clients),
                          lines.append, quiet_wait_s=0.0)
    assert entry["status"] == "ok", (entry.get("error"), entry.get("server_log_tails"))
    storm, check = entry["storm"], entry["check"]
    assert storm["incomplete"] == 0 and storm["back"] == TINY.clients
    assert storm["closes"] == {"1012": TINY.clients}  # every socket closed by the drain
    assert storm["caught_up_s"]["count"] == TINY.clients
    assert entry["old_exit_code"] == 0
    # Messages flowed before, during and after the restart, and none was lost or repeated.
    assert check["sent"] > 0 and check["received"] > 0
    assert (check["gaps"], check["duplicates"], check["behind_at_end"]) == (0, 0, 0)

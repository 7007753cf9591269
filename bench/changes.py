"""Issue 21's two performance targets, on the embedded engine:

- **churn**: a room of 100 where 30% of what senders send are reactions or edits costs at most
  1.1x the server CPU per delivery of the same room with plain messages (each change is an entry
  of the room's log, delivered to every member like a message). Two runs of the Node load
  generator (``change_mix`` 0 and 0.3) at the same offered load, each on a fresh server pinned
  to the server core.
- **pages**: history pages (``GET /rooms/<room>/history?before=..&limit=50``) of a room whose
  messages carry their changes folded in (edits, reactions, tombstones: 30% of its log entries
  are changes) are served at least 0.8x as fast as pages of a room of plain messages. One
  server holds both rooms (stored before it starts); HTTP/1.1 keep-alive clients in this
  process (pinned to the load generator's core) ask for random pages in a closed loop, the two
  rooms taking turns in windows; the rate compared is pages per second of the server's CPU
  (what the server can serve), wall-clock pages per second beside it.

Usage: ``python -m bench.changes [--quick]`` (seconds; prints JSON), or as part of
``python -m bench.run`` (``--skip changes`` leaves it out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import LOADGEN_CPU, SERVER_CPU, OpenLoad, run_room_scenario
from bench.plan import QUICK, ROOM100, ROOM100_CHANGES, Plan
from bench.procs import Children, cpu_seconds, free_port, process_tree, wait_port
from bench.servers import JWT_SECRET, ROOMCHAT, ROOMCHAT_ENV, VENV_BIN
from bench.tokens import mint_tokens

CHURN_TARGET = 1.1
CHURN_RATE = 2000
"""Frames a second the room of 100's ten senders send in the churn scenario (200,000
deliveries a second): well below roomchat's saturation here."""
PAGES_TARGET = 0.8
MESSAGES = 3000
"""Messages in each room of the pages scenario."""
PAGE = 50
CLIENTS = 8
"""HTTP connections asking for pages at once."""


def run_churn(kids: Children, plan: Plan, tokens: list[str], log: Any,
              rounds: int = 3) -> dict[str, Any]:
    """CPU per delivery in a room of 100: plain messages, then 30% changes, each at the same
    offered load (``CHURN_RATE`` frames a second, open loop): what a delivery costs depends on
    how many messages share a batch, so the two are compared at one load, below saturation.
    ``rounds`` runs of each, taking turns, and the median of each kind is compared. On a
    machine shared with other CPU-heavy work the figures move both ways: a server starved
    of its core gathers bigger batches (its p99 shows it), and a delivery costs less then."""
    out: dict[str, Any] = {"target": CHURN_TARGET, "rate": CHURN_RATE, "rounds": rounds}
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "changes": []}
    for _ in range(rounds):
        for key, scenario in (("plain", ROOM100), ("changes", ROOM100_CHANGES)):
            log(f"churn: {scenario.title}, {CHURN_RATE:,} frames/s")
            result = run_room_scenario(kids, ROOMCHAT, scenario, plan=plan, tokens=tokens,
                                       log=log, loads=[OpenLoad("fixed", None, CHURN_RATE)])
            phase = (result.get("open") or [{}])[0]
            runs[key].append({"status": result.get("status"), "error": result.get("error"),
                              "cpu_us_per_delivery": phase.get("cpu_us_per_delivery"),
                              "deliveries_per_s": phase.get("deliveries_per_s"),
                              "server_util": phase.get("server_util"),
                              "errors": phase.get("errors"), "latency": phase.get("latency")})
    for key, measured in runs.items():
        figures = [r["cpu_us_per_delivery"] for r in measured if r["cpu_us_per_delivery"]]
        out[key] = {"cpu_us_per_delivery": statistics.median(figures) if figures else None,
                    "runs": measured}
    plain, mixed = (out[k]["cpu_us_per_delivery"] for k in ("plain", "changes"))
    out["ratio"] = mixed / plain if plain and mixed else None
    out["status"] = "ok" if out["ratio"] is not None else "failed"
    return out


def _prefill(data_dir: Path) -> dict[str, int]:
    """Two rooms of ``MESSAGES`` messages in the server's database: ``plain``, and ``changed``
    where 30% of the log's entries are changes (reactions by up to three people, edits, a few
    deletes), spread over the whole history. Returns each room's top seq."""
    from gateway.config import load_config
    from rooms.engines import open_engine
    from rooms.messages import Action, ChangeDraft, Draft

    url = load_config({}, data_dir=data_dir, jwt_secret=JWT_SECRET).resolved_store_url
    text = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod"
    rng = random.Random(21)
    emoji = ["\U0001f44d", "\U0001f389", "\u2764\ufe0f", "\U0001f602"]

    async def fill() -> dict[str, int]:
        engine = await open_engine(url)
        try:
            tops = {}
            for room in ("plain", "changed"):
                await engine.load(room, 0)
                for start in range(0, MESSAGES, 500):
                    await engine.append(room, [Draft(f"u{(start + i) % 7}", "User", None,
                                                     f"{text} {start + i}", 1)
                                               for i in range(500)],
                                        retention=0, dedup_window=0)
                if room == "changed":
                    # 3 changes for every 7 messages: 30% of the entries.
                    changes: list[ChangeDraft] = []
                    for _ in range(MESSAGES * 3 // 7):
                        target = rng.randint(1, MESSAGES)
                        roll = rng.random()
                        if roll < 0.7:
                            changes.append(ChangeDraft(
                                f"u{rng.randint(0, 2)}", "User", None, 2, Action.REACT, target,
                                emoji=rng.choice(emoji), on=True))
                        elif roll < 0.97:
                            changes.append(ChangeDraft(f"u{(target - 1) % 7}", "User", None, 2,
                                                       Action.EDIT, target,
                                                       text=f"{text} (edited)"))
                        else:
                            changes.append(ChangeDraft("mod", "Mod", None, 2, Action.DELETE,
                                                       target, moderator=True))
                    for start in range(0, len(changes), 500):
                        await engine.append(room, changes[start:start + 500], retention=0,
                                            dedup_window=0)
                tops[room] = await engine.top(room)
            return tops
        finally:
            await engine.close()

    return asyncio.run(fill())


async def _client(port: int, token: str, room: str, top: int, until: float,
                  rng: random.Random) -> int:
    """Ask for random pages of ``room`` on one keep-alive connection until ``until``; the
    number answered (each checked to hold a full page)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pages = 0
    try:
        while time.monotonic() < until:
            before = rng.randint(top // 2, top)  # pages deep enough to be full
            writer.write(f"GET /rooms/{room}/history?before={before}&limit={PAGE} HTTP/1.1\r\n"
                         f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"history page refused: {head[:200]!r}")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            body = await reader.readexactly(length)
            if body.count(b'"type":"message"') != PAGE:
                raise RuntimeError(f"a page without {PAGE} messages: {body[:200]!r}")
            pages += 1
    finally:
        writer.close()
    return pages


def _window(port: int, token: str, room: str, top: int, seconds: float,
            pids: list[int]) -> tuple[int, float, float]:
    """One measurement window: pages answered, wall seconds, server CPU seconds."""
    rng = random.Random(room)

    async def run() -> int:
        until = time.monotonic() + seconds
        counts = await asyncio.gather(*(_client(port, token, room, top, until, rng)
                                        for _ in range(CLIENTS)))
        return sum(counts)

    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    pages = asyncio.run(run())
    return pages, time.monotonic() - t0, cpu_seconds(pids) - cpu0


def run_pages(kids: Children, plan: Plan, log: Any, rounds: int = 3) -> dict[str, Any]:
    """Pages per second of server CPU: plain rooms against rooms with changes folded in."""
    import jwt

    data_dir = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    out: dict[str, Any] = {"target": PAGES_TARGET, "page": PAGE, "clients": CLIENTS,
                           "messages": MESSAGES}
    try:
        tops = _prefill(data_dir)
        out["tops"] = tops
        port = free_port()
        argv = [str(VENV_BIN / "roomchat"), "serve", "--bind", f"127.0.0.1:{port}",
                "--data-dir", str(data_dir)]
        child = kids.start("pages-server", argv, cpu=SERVER_CPU, env=ROOMCHAT_ENV,
                           cwd=data_dir)
        try:
            wait_port(port, child, 60)
            now = int(time.time())
            token = jwt.encode({"sub": "reader", "rooms": ["*"], "aud": "roomchat",
                                "iss": "roomchat", "iat": now, "exp": now + 3600},
                               JWT_SECRET, algorithm="HS256")
            pids = process_tree(child.pid)
            with_affinity = hasattr(os, "sched_setaffinity")
            if with_affinity:
                before = os.sched_getaffinity(0)
                os.sched_setaffinity(0, {LOADGEN_CPU})
            try:
                for room in ("plain", "changed"):  # warm up: caches, first pages
                    _window(port, token, room, tops[room], plan.warmup_s, pids)
                totals: dict[str, list[float]] = {room: [0, 0.0, 0.0] for room in tops}
                for _ in range(rounds):  # taking turns: the machine's other load hits both
                    for room in ("plain", "changed"):
                        pages, wall, cpu = _window(port, token, room, tops[room],
                                                   plan.measure_s / 2, pids)
                        total = totals[room]
                        total[0] += pages
                        total[1] += wall
                        total[2] += cpu
            finally:
                if with_affinity:
                    os.sched_setaffinity(0, before)
        finally:
            kids.stop(child)
        for room, (count, wall, cpu) in totals.items():
            out[room] = {"pages": count, "pages_per_s": count / wall,
                         "pages_per_cpu_s": count / cpu if cpu else None,
                         "server_util": cpu / wall,
                         "cpu_us_per_page": cpu * 1e6 / count if count else None}
            log(f"pages: {room}: {count / wall:,.0f} pages/s, "
                f"{out[room]['cpu_us_per_page'] or 0:,.0f} us of server CPU per page")
        plain, changed = out["plain"]["pages_per_cpu_s"], out["changed"]["pages_per_cpu_s"]
        out["ratio"] = changed / plain if plain and changed else None
        out["wall_ratio"] = out["changed"]["pages_per_s"] / out["plain"]["pages_per_s"]
        out["status"] = "ok" if out["ratio"] is not None else "failed"
    except Exception as exc:  # reported, not fatal: the run goes on
        out.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return out


def run_changes(kids: Children, plan: Plan, tokens: list[str], log: Any) -> dict[str, Any]:
    """Both scenarios; the report's ``changes`` section."""
    churn = run_churn(kids, plan, tokens, log)
    log(f"churn: {churn.get('ratio') or float('nan'):.2f}x the CPU per delivery of plain "
        f"messages (target <= {CHURN_TARGET}x)")
    pages = run_pages(kids, plan, log)
    log(f"pages: {pages.get('ratio') or float('nan'):.2f}x the pages per CPU second of plain "
        f"pages (target >= {PAGES_TARGET}x)")
    return {"churn": churn, "pages": pages}


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    parser = argparse.ArgumentParser(prog="python -m bench.changes", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick plan's windows")
    args = parser.parse_args(argv)
    from bench.plan import FULL
    from bench.servers import LOADGEN_DIR, npm_ci

    plan = QUICK if args.quick else FULL
    npm_ci(LOADGEN_DIR)
    log_dir = Path(tempfile.mkdtemp(prefix="roomchat-bench-changes-"))
    with Children(log_dir) as kids:
        result = run_changes(kids, plan, mint_tokens(ROOM100.members + 10), log)
    result["log_dir"] = str(log_dir)
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

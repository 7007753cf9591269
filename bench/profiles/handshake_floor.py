"""What a WebSocket handshake costs on bare Hypercorn, next to roomchat: the floor under any
handshake rate roomchat can reach while Hypercorn parses its HTTP/1.1 (issue 22, item 7).

    python -m bench.profiles.handshake_floor [--rounds 5] [--handshakes 2000] [--node]
        [--reconnect] [--no-deflate] [--env K=V ...] [--tree NAME=DIR ...] [--json FILE]

Runs the bench's handshake measurement (``bench.measure.run_handshakes``: raw clients, 64 in
flight, rooms of 10, each server fresh and pinned to the server core, the load generator to the
other) against roomchat and ``bench.profiles.floor --welcome`` (Hypercorn on uvloop serving an
ASGI app that accepts and sends one text frame the size of roomchat's welcome: no JWT, no
room, no access log) in alternation. A handshake ends when the client has the first frame
after the 101 (roomchat's welcome, the floor's frame). Prints the server's CPU per handshake
(utime+stime of its process tree from /proc, not the rate) and roomchat / floor per round,
then min / median / max over the rounds.

``--node`` adds Node ws (no welcome: its handshakes end at the 101). ``--reconnect`` measures
on the same servers, each set after the one before closed, as many handshakes with new tokens
(``fresh``) and then with the first set's tokens (``reconnect``: roomchat's cache of verified
tokens answers them). Each ``--env K=V[,K=V]`` adds a roomchat with those
settings (say ``ROOMCHAT_LOG_LEVEL=warning``: what the access log line costs).
``--no-deflate``: the clients offer no permessage-deflate (by default they do, as browsers
do; roomchat refuses it, bare Hypercorn accepts it and compresses its frame).
``--tree NAME=DIR`` adds roomchat from another checkout (before and after in one run).
Summaries: ``2026-11-26-handshake-py-spy.md``, ``bench/reports/2026-12-07-handshakes.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.measure import run_handshakes
from bench.plan import QUICK
from bench.procs import Children
from bench.servers import KINDS, LOADGEN_DIR, NODE_WS_DIR, VENV_BIN, ServerKind, npm_ci
from bench.tokens import mint_tokens


def _floor_argv(port: int, data_dir: Path) -> list[str]:
    return [str(VENV_BIN / "python"), "-m", "bench.profiles.floor", "--bind",
            f"127.0.0.1:{port}", "--welcome"]


FLOOR = ServerKind(
    key="hypercorn-floor",
    label="bare Hypercorn",
    argv=_floor_argv,
    env={},
    verifies_jwt=False,
    sends_welcome=True,
    notes="Hypercorn + uvloop, an ASGI app that accepts every WebSocket and sends one text frame",
)


def _tree_kind(name: str, tree: Path) -> ServerKind:
    """roomchat from another checkout (say ``git archive <commit> | tar -x -C DIR``), run by
    this venv's Python with DIR first on ``sys.path``: before and after in one run."""
    roomchat = KINDS["roomchat"]

    # The server starts in this checkout (its working directory, first on sys.path): the
    # other tree goes before it.
    start = (f"import sys; sys.path.insert(0, {str(tree)!r}); from gateway.cli import main; "
             "sys.exit(main())")

    def argv(port: int, data_dir: Path) -> list[str]:
        return [str(VENV_BIN / "python"), "-c", start, "serve", "--bind",
                f"127.0.0.1:{port}", "--data-dir", str(data_dir)]

    return dataclasses.replace(roomchat, key=f"roomchat@{name}", label=f"roomchat ({name})",
                               argv=argv)


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"{min(values):.0f} / {statistics.median(values):.0f} / {max(values):.0f}"
            if max(values) > 10 else
            f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--handshakes", type=int, default=2000)
    p.add_argument("--node", action="store_true", help="also measure Node ws")
    p.add_argument("--reconnect", action="store_true",
                   help="then as many handshakes again with the same tokens")
    p.add_argument("--no-deflate", action="store_true", help="clients offer no deflate")
    p.add_argument("--env", action="append", default=[], metavar="K=V[,K=V]",
                   help="also measure roomchat with these settings (repeatable: one roomchat "
                        "each)")
    p.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                   help="also measure roomchat from the checkout in DIR (repeatable)")
    p.add_argument("--no-worktree", action="store_true",
                   help="leave out the roomchat of this checkout (with --tree)")
    p.add_argument("--json", type=Path, help="write every round's results here")
    args = p.parse_args(argv)
    plan = dataclasses.replace(QUICK, handshakes=args.handshakes)
    npm_ci(LOADGEN_DIR)  # the load generator and the Node ws peer: a fresh clone has neither
    kinds = [KINDS["roomchat"], FLOOR]
    if args.node:
        npm_ci(NODE_WS_DIR)
        kinds.append(KINDS["node-ws"])
    tokens = mint_tokens(plan.handshakes * (3 if args.reconnect else 1) + 200)
    for item in args.tree:
        name, _, tree = item.partition("=")
        kinds.insert(len(kinds) - 1, _tree_kind(name, Path(tree).resolve()))
    if args.no_worktree:
        kinds.remove(KINDS["roomchat"])
    for number, settings in enumerate(args.env, 1):
        extra = dict(item.split("=", 1) for item in settings.split(","))
        roomchat = KINDS["roomchat"]
        kinds.insert(number, dataclasses.replace(
            roomchat, key=f"roomchat+{settings}", label=f"roomchat with {settings}",
            env={**roomchat.env, **extra}))

    def log(line: str) -> None:
        print(line, flush=True)

    rounds: list[dict[str, dict[str, Any]]] = []
    with Children(Path(tempfile.mkdtemp(prefix="handshake-floor-"))) as kids:
        for round_ in range(1, args.rounds + 1):
            got: dict[str, dict[str, Any]] = {}
            # Alternate the order each round: a drift of the machine's speed hits both alike.
            order = kinds if round_ % 2 else list(reversed(kinds))
            for kind in order:
                got[kind.key] = run_handshakes(
                    kids, kind, plan=plan, tokens=tokens, log=log,
                    deflate=not args.no_deflate, reconnect=args.reconnect)
            rounds.append(got)
            floor = got[FLOOR.key].get("server_cpu_us_per_handshake") or float("nan")
            for key, res in got.items():
                cpu = res.get("server_cpu_us_per_handshake") or float("nan")
                line = (f"round {round_}: {key}: {cpu:.0f} us of server CPU per handshake "
                        f"({cpu / floor:.2f}x the floor), "
                        f"{res.get('handshakes_per_s') or float('nan'):,.0f}/s, server "
                        f"{res.get('server_util', float('nan')):.0%} busy")
                for part in ("fresh", "reconnect"):
                    again = res.get(part)
                    if again:
                        cpu2 = again.get("server_cpu_us_per_handshake") or float("nan")
                        line += f"; {part} {cpu2:.0f} us ({cpu2 / floor:.2f}x)"
                print(line, flush=True)

    def series(key: str, part: str | None = None) -> list[float]:
        out = []
        for got in rounds:
            res = got.get(key, {})
            if part:
                res = res.get(part) or {}
            value = res.get("server_cpu_us_per_handshake")
            if value:
                out.append(float(value))
        return out

    def ratios(key: str, part: str | None = None) -> list[float]:
        out = []
        for got in rounds:
            res = got.get(key, {})
            if part:
                res = res.get(part) or {}
            value = res.get("server_cpu_us_per_handshake")
            floor = got.get(FLOOR.key, {}).get("server_cpu_us_per_handshake")
            if value and floor:
                out.append(float(value) / float(floor))
        return out

    print(f"\nserver CPU per handshake, {len(rounds)} rounds (min / median / max):")
    for kind in kinds:
        print(f"  {kind.key}: {_spread(series(kind.key))} us, "
              f"{_spread(ratios(kind.key))}x the floor")
        for part in ("fresh", "reconnect") if args.reconnect else ():
            print(f"  {kind.key} {part}: {_spread(series(kind.key, part))} us, "
                  f"{_spread(ratios(kind.key, part))}x the floor")
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

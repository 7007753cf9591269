"""What a WebSocket handshake costs on bare Hypercorn, next to roomchat and Node ws: the floor
under any handshake rate roomchat can reach while Hypercorn parses its HTTP/1.1.

    python -m bench.profiles.handshake_floor [--rounds 2] [--handshakes 1000] [--env K=V ...]

Runs the bench's handshake measurement (``bench.measure.run_handshakes``: raw clients, 64 in
flight, rooms of 10, each server fresh and pinned to the server core, the load generator to the
other) against roomchat, Node ws and ``bench.profiles.floor`` (Hypercorn on uvloop serving an
ASGI app that only accepts: no JWT, no room, no welcome, no access log) in alternation, and
prints handshakes/s and server CPU per handshake with the ratios to Node ws of the same round.
``--env`` adds a second roomchat with those settings (say ``ROOMCHAT_LOG_LEVEL=warning``: what
the access log line costs).
Summary: ``2026-11-26-handshake-py-spy.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
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
            f"127.0.0.1:{port}"]


FLOOR = ServerKind(
    key="hypercorn-floor",
    label="bare Hypercorn",
    argv=_floor_argv,
    env={},
    verifies_jwt=False,
    sends_welcome=False,
    notes="Hypercorn + uvloop, an ASGI app that accepts every WebSocket and does nothing else",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--handshakes", type=int, default=QUICK.handshakes)
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="also measure roomchat with this setting (repeatable)")
    args = p.parse_args(argv)
    plan = dataclasses.replace(QUICK, handshakes=args.handshakes)
    npm_ci(LOADGEN_DIR)  # the load generator and the Node ws peer: a fresh clone has neither
    npm_ci(NODE_WS_DIR)
    tokens = mint_tokens(plan.handshakes * 3 + 100)
    kinds = [KINDS["roomchat"], KINDS["node-ws"], FLOOR]
    if args.env:
        extra = dict(item.split("=", 1) for item in args.env)
        roomchat = KINDS["roomchat"]
        kinds.insert(1, dataclasses.replace(
            roomchat, key="roomchat+env", label=f"roomchat with {args.env}",
            env={**roomchat.env, **extra}))

    def log(line: str) -> None:
        print(line, flush=True)

    with Children(Path(tempfile.mkdtemp(prefix="handshake-floor-"))) as kids:
        for round_ in range(1, args.rounds + 1):
            got: dict[str, dict[str, Any]] = {}
            for kind in kinds:
                got[kind.key] = run_handshakes(kids, kind, plan=plan, tokens=tokens, log=log)
            node = got["node-ws"].get("handshakes_per_s") or float("nan")
            for key, res in got.items():
                rate = res.get("handshakes_per_s") or float("nan")
                cpu = res.get("server_cpu_us_per_handshake") or float("nan")
                print(f"round {round_}: {key}: {rate:,.0f} handshakes/s ({rate / node:.2f}x "
                      f"Node ws), {cpu:.0f} us of server CPU each, server "
                      f"{res.get('server_util', float('nan')):.0%} busy")
    return 0


if __name__ == "__main__":
    sys.exit(main())

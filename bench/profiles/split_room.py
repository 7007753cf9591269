"""Where a room split across processes spends its time: one room on Redis, served by one
process or by two (member k on process k % 2), an open-loop load, socket writes per process and
optional py-spy.

    python -m bench.profiles.split_room [--split] [--size 100] [--rate 739] [--seconds 8]
        [--py-spy OUT [--py-spy-gil]]

Starts the scale-out bench's deployment (``bench.scaleout``: Redis and every roomchat process
pinned to core 0, the load generator on core 1), connects ``size`` members who all send, offers
``rate`` messages/s for ``seconds`` and prints CPU per delivery, latency and, per serving
process, its ``write`` and ``read`` system calls per second (``/proc/PID/io``: a split room that
sends every member one frame per batch writes about as often per member as one process does).
``--py-spy`` records each serving process to ``OUT.PID`` (raw collapsed stacks). Summaries of
what this found are in ``2026-11-26-small-rooms.md`` (section 12).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.driver import Loadgen
from bench.measure import LOADGEN_CPU, _spec, enrich
from bench.procs import Children
from bench.scaleout import SPLIT, SPLIT_BASELINE, start_deployment, stop_deployment
from bench.servers import VENV_BIN
from bench.tokens import mint_tokens


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", action="store_true", help="two processes (default: one)")
    p.add_argument("--size", type=int, default=100, help="members, every one a sender")
    p.add_argument("--rate", type=float, default=739.0, help="messages/s")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--py-spy", metavar="OUT", help="record each serving process to OUT.PID")
    p.add_argument("--py-spy-gil", action="store_true", help="only the GIL holder")
    return p.parse_args(argv)


def _syscalls(pid: int) -> tuple[int, int]:
    """``(write, read)`` system calls so far (``syscw``, ``syscr`` of ``/proc/PID/io``)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscw"]), int(fields["syscr"])


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    deployment = SPLIT if args.split else SPLIT_BASELINE
    tokens = mint_tokens(args.size + 10)
    with Children(Path(tempfile.mkdtemp(prefix="split-room-"))) as kids:
        running = start_deployment(kids, deployment, "profile")
        rooms = [{"name": "split", "size": args.size, "senders": args.size}]
        lg = Loadgen(kids, "loadgen", _spec(running, tokens[: args.size], rooms), LOADGEN_CPU)
        connected = lg.command({"cmd": "connect"}, "connected", 300)
        print(f"{connected['ok']} connected to {deployment.key}")
        time.sleep(1)
        pids = running.serving_pids()
        spies = [
            subprocess.Popen(
                [str(VENV_BIN / "py-spy"), "record", "-r", "200", "-d",
                 str(int(args.seconds) + 1), "-f", "raw", "-o", f"{args.py_spy}.{pid}",
                 "-p", str(pid), *(["--gil"] if args.py_spy_gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid in (pids if args.py_spy else [])
        ]
        before = {pid: _syscalls(pid) for pid in pids}
        started = time.monotonic()
        res = enrich(lg.command({"cmd": "open", "rate": args.rate, "warmup_s": 1,
                                 "measure_s": args.seconds}, "result", args.seconds + 120))
        elapsed = time.monotonic() - started
        after = {pid: _syscalls(pid) for pid in pids}
        for spy in spies:
            spy.wait()
        lat = res["latency"]
        groups = res.get("group_cpu_us_per_delivery", {})
        print(f"at {args.rate:,.0f} messages/s: {res['cpu_us_per_delivery']:.2f} us/delivery "
              f"(roomchat {groups.get('roomchat', float('nan')):.2f}, Redis "
              f"{groups.get('redis', float('nan')):.2f}), server core {res['server_util']:.1%} "
              f"busy, latency p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} ms")
        for pid in pids:
            writes = (after[pid][0] - before[pid][0]) / elapsed
            reads = (after[pid][1] - before[pid][1]) / elapsed
            print(f"process {pid}: {writes:,.0f} writes/s, {reads:,.0f} reads/s")
        lg.command({"cmd": "close"}, "closed", 60)
        lg.quit()
        stop_deployment(kids, running)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where small rooms spend their time: one server, many rooms, an open-loop load, and optional
probes (py-spy, event-loop lag, garbage collections).

    python -m bench.profiles.small_rooms [--server roomchat] [--rooms 1000] [--size 10]
        [--senders 1] [--rate 623] [--seconds 15] [--py-spy OUT.txt] [--lag OUT.json]

Starts the server pinned to core 0 and the bench's load generator on core 1 (as ``bench.run``
does), connects ``rooms`` x ``size`` clients, reads the server's CPU at 1 message/s (the cost of
keeping the rooms and their heartbeats), then offers ``rate`` messages/s for ``seconds`` and
prints CPU per delivery and latency. ``--py-spy`` records the server meanwhile (raw collapsed
stacks; ``--py-spy-gil`` samples only the thread holding the GIL); ``--lag`` runs roomchat under
``bench.profiles.lagprobe`` and prints the loop lag and the collections inside the window.
Summaries of what this found are the ``*.md`` files next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from bench.driver import Loadgen
from bench.measure import LOADGEN_CPU, SERVER_CPU, _spec, enrich
from bench.procs import Children
from bench.servers import KINDS, VENV_BIN, start_server, stop_server
from bench.tokens import mint_tokens


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="roomchat", choices=sorted(KINDS))
    p.add_argument("--rooms", type=int, default=1000)
    p.add_argument("--size", type=int, default=10)
    p.add_argument("--senders", type=int, default=1, help="per room")
    p.add_argument("--rate", type=float, default=623.0, help="messages/s, all rooms together")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--py-spy", metavar="OUT", help="record the server with py-spy (raw format)")
    p.add_argument("--py-spy-gil", action="store_true", help="only the GIL holder")
    p.add_argument("--lag", metavar="OUT", help="run roomchat under bench.profiles.lagprobe")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds between the last connect and the load (bench.run: ~0.5)")
    p.add_argument("--metrics", action="store_true",
                   help="print roomchat's broadcast-latency and commit histograms at the end")
    p.add_argument("--skip-idle", action="store_true",
                   help="no 1 message/s reading before the load (as bench.run)")
    p.add_argument("--strace", metavar="OUT",
                   help="count the server's syscalls in the window (strace -c -f; slows it)")
    return p.parse_args(argv)


def _lag_summary(path: Path, start: float, end: float) -> str:
    data = json.loads(path.read_text())
    lags = sorted(ms for at, ms in data["lags"] if start <= at <= end)
    if not lags:
        return "no lag samples in the window"

    def q(p: float) -> float:
        return float(lags[min(len(lags) - 1, int(p * len(lags)))])

    lines = [f"loop lag ms: p50 {q(0.5):.1f} p99 {q(0.99):.1f} p99.9 {q(0.999):.1f} "
             f"max {lags[-1]:.1f} ({len(lags)} samples)"]
    by_gen: dict[int, list[float]] = defaultdict(list)
    for at, gen, ms, _ in data["gcs"]:
        if start <= at <= end:
            by_gen[gen].append(ms)
    for gen, pauses in sorted(by_gen.items()):
        lines.append(f"gc generation {gen}: {len(pauses)} collections, mean "
                     f"{sum(pauses) / len(pauses):.1f} ms, max {max(pauses):.1f} ms")
    return "\n".join(lines)


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of ``pid``'s main thread (the event loop: "loop")
    and of its other threads together ("threads": the store's writer and readers; Python
    does not give them names the kernel sees)."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = "loop" if task.name == str(pid) else "threads"
        fields = stat[stat.rindex(")") + 2:].split()
        cpu[name] += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return dict(cpu)


def _switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread of ``pid`` so far
    (``/proc/PID/task/*/status``: ``/proc/PID/status`` counts the main thread only)."""
    voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary


class _Window:
    """The server's context switches (and, with ``strace_out``, its syscalls) over the
    measured window: from ``warmup`` seconds after ``start()`` for ``seconds``."""

    def __init__(self, pid: int, warmup: float, seconds: float, strace_out: str | None) -> None:
        self.pid, self.warmup, self.seconds, self.strace_out = pid, warmup, seconds, strace_out
        self.samples: list[tuple[int, int]] = []
        self.cpu: list[dict[str, float]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        time.sleep(self.warmup)
        self.samples.append(_switches(self.pid))
        self.cpu.append(_thread_cpu(self.pid))
        if self.strace_out:
            subprocess.run(["timeout", "-s", "INT", str(self.seconds), "strace", "-c", "-f",
                            "-p", str(self.pid), "-o", self.strace_out],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        else:
            time.sleep(self.seconds)
        self.samples.append(_switches(self.pid))
        self.cpu.append(_thread_cpu(self.pid))

    def result(self) -> tuple[int, int] | None:
        self._thread.join()
        if len(self.samples) < 2:
            return None
        (v0, i0), (v1, i1) = self.samples
        return v1 - v0, i1 - i0

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds per thread name over the window."""
        if len(self.cpu) < 2:
            return {}
        first, last = self.cpu
        return {name: last[name] - first.get(name, 0.0) for name in last}


def _histograms(port: int) -> str:
    """The broadcast-latency and commit histograms from ``/metrics``, as shares per bucket."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    lines = []
    for name in ("roomchat_broadcast_latency_seconds", "roomchat_store_commit_seconds"):
        buckets = [(line.split('le="')[1].split('"')[0], float(line.rsplit(" ", 1)[1]))
                   for line in text.splitlines() if line.startswith(name + "_bucket{")]
        total = buckets[-1][1] if buckets else 0
        shares = ", ".join(f"<={le}s {count / total:.2%}" for le, count in buckets if total)
        lines.append(f"{name} ({total:.0f}): {shares}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    kind = KINDS[args.server]
    lag_out = Path(args.lag) if args.lag else None
    if lag_out is not None:
        if not args.server.startswith("roomchat"):
            print("--lag needs a roomchat server", file=sys.stderr)
            return 2

        def probed(port: int, data_dir: Path) -> list[str]:
            return [str(VENV_BIN / "python"), "-m", "bench.profiles.lagprobe", str(lag_out),
                    "serve", "--bind", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]

        kind = dataclasses.replace(kind, argv=probed)
    members = args.rooms * args.size
    tokens = mint_tokens(members + 10)
    with Children(Path(tempfile.mkdtemp(prefix="small-rooms-"))) as kids:
        server = start_server(kids, kind, "server", SERVER_CPU)
        rooms = [{"name": f"r-{i}", "size": args.size, "senders": args.senders}
                 for i in range(args.rooms)]
        lg = Loadgen(kids, "loadgen", _spec(server, tokens[:members], rooms), LOADGEN_CPU)
        connected = lg.command({"cmd": "connect"}, "connected", 300)
        print(f"{connected['ok']} connected in {connected['connect_ms'] / 1000:.1f} s")
        connected_at = time.time()
        time.sleep(args.settle)
        if not args.skip_idle:
            idle = enrich(lg.command({"cmd": "open", "rate": 1, "warmup_s": 0.5,
                                      "measure_s": 5}, "result", 60))
            print(f"at 1 message/s: server core {idle['server_util']:.1%} busy")
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(
                [str(VENV_BIN / "py-spy"), "record", *(["--gil"] if args.py_spy_gil else []),
                 "-r", "200", "-d", str(int(args.seconds)), "-f", "raw", "-o", args.py_spy,
                 "-p", str(server.child.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = time.time() + 1  # after the warm-up
        window = _Window(server.child.pid, 1.0, args.seconds, args.strace)
        window.start()
        res = enrich(lg.command({"cmd": "open", "rate": args.rate, "warmup_s": 1,
                                 "measure_s": args.seconds}, "result", args.seconds + 120))
        end = time.time()
        switches = window.result()
        lat = res["latency"]
        own = res.get("loadgen_loop_delay") or {}
        print(f"at {args.rate:,.0f} messages/s: {res['cpu_us_per_delivery']:.2f} us/delivery, "
              f"server core {res['server_util']:.1%} busy, latency p50 {lat['p50']:.2f} "
              f"p99 {lat['p99']:.2f} ms; load generator's own loop delay p99 "
              f"{own.get('p99_ms', float('nan')):.1f} max {own.get('max_ms', float('nan')):.1f} ms")
        print(f"other load: server core {res.get('foreign_util_server_core', 0):.1%}, "
              f"load generator core {res.get('foreign_util_loadgen_core', 0):.1%}; "
              f"load generator core {res['loadgen_util']:.1%} busy")
        if switches is not None and res.get("sent"):
            sent = res["sent"]
            print(f"server context switches per inbound message: voluntary "
                  f"{switches[0] / sent:.3f}, involuntary {switches[1] / sent:.3f} "
                  f"({sent} messages, {res['deliveries']} deliveries)")
            threads = window.thread_cpu()
            print("server CPU per inbound message by thread (us, clock ticks): " + ", ".join(
                f"{name} {seconds * 1e6 / sent:.1f}" for name, seconds in
                sorted(threads.items(), key=lambda kv: -kv[1]) if seconds))
        if args.strace:
            print(f"syscalls counted in {args.strace}: divide by the messages above")
        gc = own.get("gc") or {}
        if gc:
            print(f"load generator's garbage collections: {gc['count']}, "
                  f"{gc['total_ms']:.0f} ms in all, max {gc['max_ms']:.1f} ms, "
                  f"{gc['over_10ms']} of 10 ms or more")
        if spy is not None:
            spy.wait()
        if args.metrics:
            print(_histograms(server.port))
        lg.command({"cmd": "close"}, "closed", 60)
        lg.quit()
        stop_server(kids, server)
    if lag_out is not None:
        print(_lag_summary(lag_out, start, end))
        data = json.loads(lag_out.read_text())
        pauses = [f"+{at - connected_at:.1f}s gen{gen} {ms:.0f}ms"
                  for at, gen, ms, _ in data["gcs"] if at >= connected_at and ms >= 5]
        print("collections of 5 ms or more after the last connect:", ", ".join(pauses) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())

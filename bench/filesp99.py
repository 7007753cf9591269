"""Issue 23's performance target for uploads: a 25 MiB upload at full speed while a room of 100
chats at the common load keeps that room's p99 at most 1.2x the same run without the upload.

    .venv/bin/python -m bench.filesp99 [--rounds 3] [--quick]

Each round is three measurements on fresh servers, taking turns (the machine's other load
hits each): the ``room100`` scenario (1 room of 100, 10 senders) at the common load (``RATE``
messages a second, open loop, the Node load generator on the load-generator core, the server
pinned to the server core, as ``bench.run`` measures rooms), ``alone``; ``unpaced``: while this
process uploads ``UPLOAD_BYTES`` of random bytes (an ordinary file: no image work; images are
``bench/fileslag.py``'s) to ``POST /rooms/<room>/files`` over loopback as fast as the server
reads it, one upload after another for the whole measured window, with
``ROOMCHAT_UPLOAD_READ_RATE=0`` (the server reads as fast as it can: how it was before that
setting); and ``paced``: the same uploads with the setting's default. The uploader is a raw
socket (``sendall`` of one buffer: a few µs of its own CPU per upload) pinned to the load
generator's core. Each round gives the ratio of each loaded p99 to the ``alone`` one; the run
prints min, median and max of the ratios with the machine's load average, and the JSON of
every measurement.

Not a test: a shared machine moves the figures. The target is ratio <= ``TARGET``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.measure import LOADGEN_CPU, OpenLoad, _on_fresh_server, measure_rooms
from bench.plan import FULL, QUICK, ROOM100, Plan
from bench.procs import Children
from bench.servers import LOADGEN_DIR, ROOMCHAT, RunningServer, npm_ci
from bench.tokens import mint_tokens

TARGET = 1.2
RATE = 631
"""Messages a second the room's ten senders send: the ``room100`` common load of the last full
run (bench/reports/2026-11-27-0402.md: half the lowest saturation, 63,076 deliveries a
second)."""
UPLOAD_BYTES = 25 * 1024 * 1024
"""One upload: ``max_file_bytes``'s default, exactly (the largest file the server takes)."""

# The uploads are the load here, not a user's: lift the per-user upload rate and quota.
FILES_ENV = {
    "ROOMCHAT_UPLOAD_RATE": "1000",
    "ROOMCHAT_UPLOAD_BURST": "1000",
    "ROOMCHAT_MAX_USER_STORAGE_BYTES": str(1 << 40),
}


class Uploader:
    """Uploads ``UPLOAD_BYTES`` again and again to one server from a thread, between ``start``
    and ``stop``; records each upload's seconds and status."""

    def __init__(self, port: int, token: str, room: str) -> None:
        self.port = port
        self.token = token
        self.room = room
        self.body = os.urandom(UPLOAD_BYTES)
        self.done: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, delay: float) -> None:
        """Begin uploading after ``delay`` seconds (the warm-up), in a thread of its own."""
        self._thread = threading.Thread(target=self._run, args=(delay,), name="uploader",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let the upload under way finish, then return."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)

    def _run(self, delay: float) -> None:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {LOADGEN_CPU})  # this thread only (Linux: per task)
        if self._stop.wait(delay):
            return
        while not self._stop.is_set():
            started = time.monotonic()
            status = self._one()
            self.done.append((time.monotonic() - started, status))

    def _one(self) -> int:
        """One upload on a fresh connection; the answer's status."""
        head = (f"POST /rooms/{self.room}/files?name=big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {self.token}\r\n"
                f"Content-Type: application/octet-stream\r\n"
                f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
            sock.sendall(head)
            sock.sendall(self.body)
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        line = answer.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0

    def summary(self) -> dict[str, Any]:
        seconds = [s for s, status in self.done if status == 201]
        return {"uploads": len(self.done),
                "refused": [status for _, status in self.done if status != 201],
                "median_s": statistics.median(seconds) if seconds else None,
                "mib_per_s": (UPLOAD_BYTES / (1 << 20)) / statistics.median(seconds)
                if seconds else None}


MODES = {
    "alone": (False, {}),
    # Uploads as fast as the server reads them: ``upload_read_rate`` off, as before it existed.
    "unpaced": (True, {"ROOMCHAT_UPLOAD_READ_RATE": "0"}),
    # The same uploads, read at ``upload_read_rate``'s default (the client still sends as fast
    # as TCP lets it).
    "paced": (True, {}),
}
"""Each round's measurements: (uploading, the server's environment beside FILES_ENV)."""


def measure(kids: Children, plan: Plan, tokens: list[str], upload_token: str, log: Any,
            label: str) -> dict[str, Any]:
    """One fresh server, the room of 100 at ``RATE``, in one of ``MODES``."""
    uploading, env = MODES[label]
    kind = dataclasses.replace(ROOMCHAT, env={**ROOMCHAT.env, **FILES_ENV, **env})

    def body(server: RunningServer, out: dict[str, Any]) -> None:
        uploader = Uploader(server.port, upload_token, f"{ROOM100.key}-0")

        def begin(_: dict[str, Any]) -> None:
            if uploading:  # uploads from the open loop's warm-up on, through its window
                uploader.start(0.0)

        try:
            measure_rooms(kids, server, ROOM100, plan=plan, tokens=tokens, log=log,
                          label=label, saturate=False,
                          loads=[OpenLoad("common", None, RATE)], out=out,
                          after_connect=begin)
        finally:
            uploader.stop()
        if uploading:
            out["uploads"] = uploader.summary()
            log(f"  uploads: {out['uploads']}")

    return _on_fresh_server(kids, kind, f"files-{label}", plan, log, body)


def p99(result: dict[str, Any], which: str = "p99") -> float | None:
    """The open-loop phase's latency percentile ``which`` (ms), if it ran."""
    phase = (result.get("open") or [{}])[0]
    value = (phase.get("latency") or {}).get(which)
    return float(value) if value is not None else None


def run(rounds: int, plan: Plan, log: Any) -> dict[str, Any]:
    tokens = mint_tokens(ROOM100.members)
    (upload_token,) = mint_tokens(1, prefix="uploader")
    out: dict[str, Any] = {"target": TARGET, "rate": RATE, "upload_bytes": UPLOAD_BYTES,
                           "plan": plan.name, "rounds": [], "loadavg": [os.getloadavg()]}
    log_dir = Path(tempfile.mkdtemp(prefix="roomchat-bench-filesp99-"))
    out["log_dir"] = str(log_dir)
    with Children(log_dir) as kids:
        for number in range(rounds):
            measured: dict[str, Any] = {}
            labels = list(MODES)
            # Taking turns, each round starting with the next mode: the machine's other load
            # hits each, and no mode is always the first after the wait for quiet.
            for label in labels[number % 3:] + labels[:number % 3]:
                log(f"round {number + 1}: {label}")
                measured[label] = measure(kids, plan, tokens, upload_token, log, label)
            alone, alone50 = p99(measured["alone"]), p99(measured["alone"], "p50")
            for label in ("unpaced", "paced"):
                loaded, loaded50 = p99(measured[label]), p99(measured[label], "p50")
                measured[f"{label}_ratio"] = loaded / alone if alone and loaded else None
                measured[f"{label}_p50_ratio"] = loaded50 / alone50 \
                    if alone50 and loaded50 else None
            measured["loadavg"] = os.getloadavg()
            out["rounds"].append(measured)
            log(f"round {number + 1}: p99 alone {alone} ms, unpaced {p99(measured['unpaced'])} "
                f"ms ({measured['unpaced_ratio'] or float('nan'):.2f}x), paced "
                f"{p99(measured['paced'])} ms ({measured['paced_ratio'] or float('nan'):.2f}x); "
                f"load average {measured['loadavg']}")
    for key in ("unpaced_ratio", "paced_ratio", "unpaced_p50_ratio", "paced_p50_ratio"):
        ratios = [r[key] for r in out["rounds"] if r[key]]
        if ratios:
            out[key] = {"min": min(ratios), "median": statistics.median(ratios),
                        "max": max(ratios)}
    return out


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    parser = argparse.ArgumentParser(prog="python -m bench.filesp99",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the quick plan's windows")
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="seconds to wait for the machine's other load before each "
                             "measurement (bench.run waits up to 120)")
    args = parser.parse_args(argv)
    # No retry of a disturbed window: the uploader's own CPU on the load generator's core would
    # count as a disturbance in every window with uploads.
    plan = dataclasses.replace(QUICK if args.quick else FULL, quiet_wait_s=args.quiet_wait,
                               retries=0)
    npm_ci(LOADGEN_DIR)
    result = run(args.rounds, plan, log)
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

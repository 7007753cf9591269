"""What the chaos scenarios share: durations and the seed, process stop/restart, a chatter that
can stall, the audit of a room on the embedded (SQLite) store, RSS, and the results file.

The clients and the audit are the integration tests' too: ``tests.clients`` (``Chatter``,
``settle``, ``Member``, ``RawClient``) and ``tests.audit``; ``audit_embedded`` here is the
audit against the SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidMessage

from tests.audit import check_room, read_back
from tests.clients import Chatter, Member, Stored, Target
from tests.support import REPO, SLOW, Process, start_process

FULL = os.environ.get("ROOMCHAT_CHAOS_FULL", "") == "1"
"""``make chaos``: the long forms. Plain ``pytest`` (``make test``) runs the short ones."""

SOAK_SECONDS = float(os.environ.get("ROOMCHAT_CHAOS_SECONDS") or (300 if FULL else 30))
RESULTS = REPO / "test-artefacts" / "chaos" / "results.jsonl"

# The abuse caps (per IP, per user, handshake rate) are out of the way too: every client here
# comes from 127.0.0.1 and some reconnect often. (Unknown settings are ignored by older builds.)
LIFT_CAPS = {"ROOMCHAT_MAX_CONNECTIONS_PER_USER": "100000",
             "ROOMCHAT_MAX_CONNECTIONS_PER_IP": "100000",
             "ROOMCHAT_HANDSHAKE_RATE": "100000", "ROOMCHAT_HANDSHAKE_BURST": "100000",
             "ROOMCHAT_USER_JOINS_PER_MINUTE": "100000"}
# Embedded server settings for the scenarios: rate limits out of the way (the traffic is ours),
# heartbeats and timeouts short so evictions and drains happen within a test.
ENV = {"ROOMCHAT_RATE_BURST": "1000", "ROOMCHAT_RATE_PER_SEC": "1000",
       "ROOMCHAT_PING_INTERVAL": "2", "ROOMCHAT_PING_TIMEOUT": "2",
       "ROOMCHAT_TICK_INTERVAL": "0.2", "ROOMCHAT_DRAIN_TIMEOUT": "5",
       "ROOMCHAT_SEND_TIMEOUT": "2", "ROOMCHAT_CLOSE_TIMEOUT": "1", **LIFT_CAPS}


def pick(short: float, full: float) -> float:
    """``full`` under ``make chaos``, ``short`` otherwise."""
    return full if FULL else short


def seed(scenario: str) -> int:
    """The run's seed: ``ROOMCHAT_CHAOS_SEED`` replays one; printed so a failure can be."""
    value = int(os.environ.get("ROOMCHAT_CHAOS_SEED") or random.SystemRandom().randrange(10**9))
    print(f"{scenario}: seed {value} (replay with ROOMCHAT_CHAOS_SEED={value} "
          f"ROOMCHAT_CHAOS_SECONDS={SOAK_SECONDS:g}{' ROOMCHAT_CHAOS_FULL=1' if FULL else ''})")
    return value


def record(scenario: str, **numbers: Any) -> None:
    """Print the measured numbers and append them to test-artefacts/chaos/results.jsonl (the
    source of docs/reliability.md)."""
    line = {"scenario": scenario, "at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
            "full": FULL, **numbers}
    print(json.dumps(line))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as out:
        out.write(json.dumps(line) + "\n")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` (``VmRSS`` in /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def stop(proc: Process, sig: signal.Signals, timeout: float = 60) -> float:
    """Send ``sig`` and wait for the exit; the seconds it took. (Blocking: use a thread.)"""
    started = time.monotonic()
    proc.proc.send_signal(sig)
    proc.proc.wait(timeout * SLOW)
    return time.monotonic() - started


def restart(proc: Process, data_dir: Path, env: dict[str, str],
            args: list[str] | None = None) -> Process:
    """Start ``roomchat serve`` again on the same port and data dir. (Blocking: use a thread.)"""
    for attempt in range(20):
        try:
            return start_process(data_dir, port=proc.port, env=env, args=args)
        except RuntimeError:  # the port may still be held for a moment
            if attempt == 19:
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


class StallingChatter(Chatter):
    """A ``Chatter`` whose reader can be stopped (``stall``): it stops reading its socket
    entirely, so the server's sends to it back up as for a frozen phone."""

    def __init__(self, user: str, room: str) -> None:
        super().__init__(user, room)
        self.reading = asyncio.Event()
        self.reading.set()

    async def stall(self, seconds: float) -> None:
        self.reading.clear()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.reading.set()

    async def disconnect(self) -> None:
        self.reading.set()
        await super().disconnect()

    async def connect(self, target: Target) -> None:
        """``Chatter.connect``, also retrying a handshake cut by a kill -9 (no HTTP answer)."""
        give_up = time.monotonic() + 30 * SLOW
        while True:
            try:
                await super().connect(target)
                return
            except (InvalidMessage, ConnectionClosed):
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.2)

    async def _read(self, client: Member) -> None:
        try:
            while True:
                await self.reading.wait()
                self._handle(await client.recv(timeout=3600))
        except ConnectionClosed:
            if not self._closing:
                self.server_closes.append(client.ws.close_code)


def stored(data_dir: Path, room: str) -> list[tuple[int, Stored]]:
    """The room's rows in the embedded store, read straight from the SQLite file."""
    db = data_dir / "roomchat.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        rows = conn.execute("SELECT seq, user, client_id, text FROM messages WHERE room = ? "
                            "ORDER BY seq", (room,)).fetchall()
    return [(seq, (user, cid or None, text)) for seq, user, cid, text in rows]


async def audit_embedded(target: Target, data_dir: Path, room: str, chatters: list[Chatter],
                         *, context: str = "") -> int:
    """``tests.audit.audit`` for the embedded store: every chatter's seqs are exactly
    1..top (no gap, no duplicate across its reconnects), what it saw is what is stored,
    everything it sent was acked and is stored exactly once at its acked seq; the read-back
    (``after=0``) equals the SQLite file. Returns the room's top seq."""
    wire = await read_back(target, room)
    return check_room(room, wire, stored(data_dir, room), "SQLite", chatters, context=context)

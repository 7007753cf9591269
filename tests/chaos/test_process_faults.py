"""Scenarios 1 and 2: a real ``roomchat serve`` (embedded SQLite) killed with -9, or stopped with
SIGTERM, during steady traffic from 20 clients; restarted on the same data dir and port; the
clients resume with ``after=<last seq>`` and resend what is unacked with the same id."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.chaos.harness import (
    ENV,
    StallingChatter,
    audit_embedded,
    pick,
    record,
    restart,
    stop,
)
from tests.clients import Chatter, Target, chat, settle
from tests.support import SLOW, server_process

CLIENTS = 20
ROOMS = ["steady0", "steady1"]


async def _traffic_then(tmp_path: Path, sig: signal.Signals) -> None:
    data = tmp_path / "data"
    with server_process(data, env=ENV) as first:
        proc = first
        # StallingChatter: only for its connect, which also retries a handshake cut by the fault.
        try:
            chatters: list[Chatter] = [StallingChatter(f"c{i}", ROOMS[i % 2])
                                       for i in range(CLIENTS)]
            target: Target = proc
            for c in chatters:
                await c.connect(target)
            # Seconds of steady traffic on each side of the fault: the scenario's load (recorded
            # as traffic_seconds), not a wait for something to happen.
            before = pick(3, 15)
            after_restart = pick(3, 15)
            stop_event = asyncio.Event()
            loop = asyncio.get_running_loop()
            async with asyncio.TaskGroup() as tg:
                for c in chatters:
                    tg.create_task(chat(c, target, stop_event, 0.2))
                await asyncio.sleep(before)
                acked_before = {c.user: dict(c.acked) for c in chatters}
                assert all(acked_before.values()), "no traffic before the fault"
                exit_seconds = await asyncio.to_thread(stop, proc, sig)
                returncode = proc.proc.returncode
                killed_at = loop.time()
                proc = await asyncio.to_thread(restart, proc, data, ENV)
                restarted_in = loop.time() - killed_at
                async with asyncio.timeout(30 * SLOW):  # every client is back on the new process
                    while not all(c.connects >= 2 and c.open for c in chatters):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                resumed_in = loop.time() - killed_at
                await asyncio.sleep(after_restart)
                stop_event.set()
            await settle(chatters, [target], timeout=30)

            closes = [c.server_closes for c in chatters]
            if sig == signal.SIGTERM:
                drain = float(ENV["ROOMCHAT_DRAIN_TIMEOUT"])
                assert returncode == 0, proc.output()
                assert exit_seconds <= drain + 1.0 * SLOW, f"exit took {exit_seconds:.1f}s"
                assert all(c[:1] == [1012] for c in closes), f"not 1012 first: {closes}"
            else:
                assert returncode == -signal.SIGKILL
                assert all(c[:1] == [1006] for c in closes), closes
            for c in chatters:  # what was acked before the fault keeps its seq
                for cid, seq in acked_before[c.user].items():
                    assert c.acked[cid] == seq
            tops = [await audit_embedded(target, data, room, chatters) for room in ROOMS]
            record(f"{sig.name.lower()}-during-traffic", clients=CLIENTS, rooms=len(ROOMS),
                   messages=sum(len(c.sent) for c in chatters), stored=sum(tops),
                   deliveries=sum(len(c.seqs) for c in chatters),
                   duplicate_acks=sum(c.duplicate_acks for c in chatters),
                   exit_seconds=round(exit_seconds, 3), restart_seconds=round(restarted_in, 2),
                   all_resumed_seconds=round(resumed_in, 2),
                   traffic_seconds=before + after_restart)
            for c in chatters:
                await c.disconnect()
        finally:
            if proc is not first:  # restarted: ours to stop
                proc.kill_all()


async def test_kill_9_during_traffic_restart_and_resume(tmp_path: Path) -> None:
    await _traffic_then(tmp_path, signal.SIGKILL)


async def test_sigterm_during_traffic_1012_to_all_and_exit_within_the_drain_bound(
        tmp_path: Path) -> None:
    await _traffic_then(tmp_path, signal.SIGTERM)

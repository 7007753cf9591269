"""Scenario 3: a zombie client, either a real client process frozen with SIGSTOP or a socket that
never reads at all, is evicted with 4010 within ping interval + ping timeout (+ a tick); the
others see its leave and their own messages are not delayed meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.chaos.harness import ENV, percentile, record
from tests.clients import Member, RawClient, connect, room_path
from tests.support import REPO, SLOW, make_token, server_process, until

PING_INTERVAL, PING_TIMEOUT, TICK = 1.0, 1.0, 0.1
ZOMBIE_ENV = {**ENV, "ROOMCHAT_PING_INTERVAL": str(PING_INTERVAL),
              "ROOMCHAT_PING_TIMEOUT": str(PING_TIMEOUT), "ROOMCHAT_TICK_INTERVAL": str(TICK)}
ROOM = "zombies"


class Other:
    """A healthy member: sends a message every 0.1 s and times its acks; notes when the zombie
    leaves."""

    def __init__(self, client: Member, name: str) -> None:
        self.client = client
        self.name = name
        self.sent_at: dict[str, float] = {}
        self.latencies: list[float] = []
        self.left_at: float | None = None
        self.closed: int | None = None

    async def read(self, zombie: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                obj = await self.client.recv(timeout=3600)
                if obj["type"] == "ack":
                    self.latencies.append(loop.time() - self.sent_at.pop(obj["id"]))
                elif obj["type"] == "presence" and obj["user"] == zombie \
                        and obj["event"] == "leave":
                    self.left_at = loop.time()
        except ConnectionClosed:
            self.closed = self.client.ws.close_code

    async def write(self, stop: asyncio.Event, pause: float) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while not stop.is_set():
            n += 1
            cid = f"{self.name}-{n}"
            self.sent_at[cid] = loop.time()
            await self.client.say(cid, id=cid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)


@pytest.mark.parametrize(("kind", "pause"), [
    ("sigstop", 0.1), ("unread_socket", 0.1), ("sigstop", 1.0)])
async def test_a_zombie_is_evicted_in_time_and_delays_nobody(
        tmp_path: Path, kind: str, pause: float) -> None:
    with server_process(tmp_path, env=ZOMBIE_ENV) as srv:
        others = []
        for i in range(5):
            client, _ = await connect(srv, f"other{i}", ROOM, after=None)
            others.append(Other(client, f"other{i}"))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        zombie = "zombie"
        url = srv.url(ROOM, make_token(zombie))
        proc: subprocess.Popen[bytes] | None = None
        raw: RawClient | None = None
        async with asyncio.TaskGroup() as tg:
            for o in others:
                tg.create_task(o.read(zombie))
                tg.create_task(o.write(stop, pause))
            try:
                if kind == "sigstop":
                    proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
                        [sys.executable, "-m", "tests.chaos.zombie_client", url],
                        stdout=subprocess.PIPE, cwd=REPO)
                    assert proc.stdout is not None
                    ready = await asyncio.to_thread(proc.stdout.readline)
                    assert ready == b"ready\n", ready
                    # Alive (answering pings) for longer than the eviction bound: not evicted.
                    await asyncio.sleep(2 * (PING_INTERVAL + PING_TIMEOUT))
                    assert all(o.left_at is None for o in others), "a live client was evicted"
                    proc.send_signal(signal.SIGSTOP)
                else:
                    raw = await RawClient.connect(srv.port, room_path(ROOM, make_token(zombie)))
                frozen_at = loop.time()
                async with asyncio.timeout(15 * SLOW):
                    while not all(o.left_at is not None for o in others):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.5)  # keep timing the others a little after the eviction
            finally:
                stop.set()
                if proc is not None:
                    proc.send_signal(signal.SIGCONT)
            await until(lambda: not any(o.sent_at for o in others), 5, "the last acks")
            closed_by_server = [o.closed for o in others]
            for o in others:  # ends the readers
                await o.client.ws.close()
        eviction = max(o.left_at or 0.0 for o in others) - frozen_at
        if proc is not None:
            # It exits at once (zombie_client.py: max_queue); 30 s is for a loaded machine.
            out, _ = await asyncio.to_thread(proc.communicate, timeout=30 * SLOW)
            zombie_close = out.decode().strip()
        else:
            assert raw is not None
            await raw.read_to_end(10)
            raw.close()
            zombie_close = f"closed {raw.close_code}"
        latencies = [x for o in others for x in o.latencies]
        record(f"zombie-{kind}", others_pause=pause, ping_interval=PING_INTERVAL,
               ping_timeout=PING_TIMEOUT,
               tick=TICK, eviction_seconds=round(eviction, 3), zombie_saw=zombie_close,
               others=len(others), acks=len(latencies),
               others_ack_p50_ms=round(percentile(latencies, 50) * 1000, 1),
               others_ack_p99_ms=round(percentile(latencies, 99) * 1000, 1),
               others_ack_max_ms=round(max(latencies) * 1000, 1))
        assert zombie_close == "closed 4010", zombie_close
        assert closed_by_server == [None] * len(others), closed_by_server
        assert not any(o.sent_at for o in others), "messages never acked"
        assert max(latencies) < 0.5 * SLOW, f"others delayed: {max(latencies):.3f}s"
        bound = PING_INTERVAL + PING_TIMEOUT + TICK + 0.5 * SLOW
        assert eviction <= bound, f"evicted after {eviction:.2f}s > {bound:.2f}s"

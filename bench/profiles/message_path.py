"""Micro-benchmarks of the parts of a room's message path issue 22 items 3, 4 and 7 change,
run in-process on uvloop, CPU per operation (``time.process_time``).

    PYTHONPATH=<tree> python bench/profiles/message_path.py wake|verify [--n N]

- ``wake``: one actor wake as the room's loop does it: a frame put into an ``Inbox`` wakes a
  waiter that waits for the same deadline again, plus the three observer hooks a batch calls
  (``frames_received``, ``messages_delivered``, ``broadcast_latency``) on ``gateway.metrics``.
- ``verify``: ``TokenVerifier.verify`` of one token (per verification; a cache, when the tree
  has one, is hit after the first).

Run it against two trees (``git archive`` of the commit before) in alternation to compare.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any


async def _wake(n: int) -> float:
    from gateway.metrics import Metrics
    from rooms.clock import LoopClock
    from rooms.inbox import InboundFrame, Inbox
    from rooms.protocol import Pong

    clock = LoopClock()
    inbox = Inbox(limit=100, clock=clock)
    metrics = Metrics()
    deadline = clock.now() + 3600
    frame = InboundFrame(1, Pong(), 0.0)

    async def room() -> None:
        for _ in range(n):
            await inbox.wait_until(deadline)
            inbox.frames.clear()
            metrics.frames_received(1)
            metrics.messages_delivered(10)
            metrics.broadcast_latency(0.0007)

    task = asyncio.create_task(room())
    await asyncio.sleep(0)
    start = time.process_time()
    while not task.done():
        inbox.put_frame(frame)
        await asyncio.sleep(0)
    return (time.process_time() - start) / n


def _verify(n: int) -> float:
    from dataclasses import replace

    from gateway.auth import make_issuer, make_verifier
    from gateway.config import Config

    config = replace(Config(), jwt_secret="x" * 40)
    token = make_issuer(config).issue("alice", rooms=["lobby"], ttl=3600)
    verifier = make_verifier(config)
    verifier.verify(token)
    start = time.process_time()
    for _ in range(n):
        verifier.verify(token)
    return (time.process_time() - start) / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["wake", "verify"])
    p.add_argument("--n", type=int, default=200_000)
    args = p.parse_args()
    import uvloop
    per: Any = uvloop.run(_wake(args.n)) if args.what == "wake" else _verify(args.n)
    print(f"{per * 1e6:.3f}")


if __name__ == "__main__":
    main()

"""Micro-benchmarks of the parts of a room's message path issue 22 items 3, 4 and 7 change,
run in-process on uvloop, CPU per operation (``time.process_time``).

    PYTHONPATH=<tree> python bench/profiles/message_path.py wake|verify [--n N]

- ``wake``: one actor wake as the room's loop does it: a frame put into an ``Inbox`` wakes a
  waiter that waits for the same deadline again, plus the three observer hooks a batch calls
  (``frames_received``, ``messages_delivered``, ``broadcast_latency``) on ``gateway.metrics``.
- ``verify``: ``TokenVerifier.verify`` of one token (per verification; a cache, when the tree
  has one, is hit after the first).
- ``fanout``: ``Fanout.deliver`` of one broadcast (a ~150-byte message) to ``--members``
  sessions whose transports are ``FrameWriter``s on the direct path, per delivery (issue 22,
  item 3). The TCP transport under them is a stub whose ``write`` keeps nothing: this is the
  Python work per member, not the kernel's ``write``. Each writer is set up as an accepted,
  plain, directly read connection leaves it (Hypercorn's stream open, ``_plain``, and
  ``_live`` where the tree has it).

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


class _StubTransport:
    """The calls ``FrameWriter`` makes on a TCP transport, doing nothing."""

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        pass


async def _fanout(n: int, members: int) -> float:
    from types import SimpleNamespace

    from hypercorn.protocol.ws_stream import ASGIWebsocketState
    from wsproto.connection import ConnectionState

    from gateway.hypercorn_ext.fastsend import FrameWriter
    from rooms.fanout import Fanout
    from rooms.observer import NullObserver
    from rooms.session import Session, SessionState
    from rooms.state import Broadcast

    async def send(message: Any) -> None:
        pass

    loop = asyncio.get_running_loop()
    fanout = Fanout("bench", NullObserver())
    for i in range(members):
        writer = FrameWriter(send)
        transport = _StubTransport()
        stream = SimpleNamespace(state=ASGIWebsocketState.CONNECTED, closed=False,
                                 connection=SimpleNamespace(state=ConnectionState.OPEN))
        writer._target = (stream, SimpleNamespace(transport=transport))  # type: ignore[assignment]
        writer._plain = True
        if "_live" in FrameWriter.__slots__:
            writer._live = transport  # type: ignore[assignment]  # as read_directly sets it
        session = Session(i + 1, f"u{i}", f"U{i}", writer, outbox_limit=1000,
                          max_frame_messages=64, send_timeout=10, close_timeout=1)
        session.state = SessionState.ACTIVE
        session._waiter = loop.create_future()  # an idle writer: live frames go at once
        fanout.sessions[session.id] = session
    payload = ('{"type":"message","room":"bench","seq":123456,"id":"c-123456","user":"u1",'
               '"name":"U1","text":"lorem ipsum dolor sit amet, consectetur","ts":1796666478372}')
    effects: list[Any] = [Broadcast(payload)]
    state: Any = None  # (deliver reads it only to evict a session that overflowed)
    fanout.deliver(state, effects, 0)
    start = time.process_time()
    for _ in range(n):
        fanout.deliver(state, effects, 0)
    return (time.process_time() - start) / (n * members)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["wake", "verify", "fanout"])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--members", type=int, default=10, help="fanout: sessions in the room")
    args = p.parse_args()
    import uvloop
    per: Any
    if args.what == "wake":
        per = uvloop.run(_wake(args.n))
    elif args.what == "fanout":
        per = uvloop.run(_fanout(args.n, args.members))
    else:
        per = _verify(args.n)
    print(f"{per * 1e6:.3f}")


if __name__ == "__main__":
    main()

"""Session outbox and writer against an in-memory transport (the socket is the edge)."""

from __future__ import annotations

import asyncio
import time

import orjson

from rooms.config import RoomConfig
from rooms.protocol import CloseCode, SendMessage
from rooms.session import Session, SessionState
from rooms.state import Appended, Broadcast, JoinPlan, RoomState, Send


class MemoryTransport:
    def __init__(self) -> None:
        self.frames: list[str] = []
        self.closed: tuple[int, str] | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, data: str) -> None:
        await self.gate.wait()
        self.frames.append(data)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class NoStore:
    async def read(self, *args: object) -> list[object]:
        raise AssertionError("no replay expected")


async def start(session: Session) -> None:
    await session.run_writer(JoinPlan("W", 0, 0, False), "r", NoStore(), 10)  # type: ignore[arg-type]


def make(transport: MemoryTransport, **kw: float) -> Session:
    return Session(1, "u", "U", transport, outbox_limit=int(kw.get("limit", 5)),
                   max_frame_messages=int(kw.get("frame", 3)),
                   send_timeout=kw.get("send_timeout", 10.0), close_timeout=1.0)


def test_a_committed_batch_is_one_broadcast() -> None:
    state = RoomState("r", RoomConfig(rate_burst=10))
    state.join(1, "u", "U", after=None, expires_at=1e9, now=0, wall_ms=0)
    for text in ("a", "b", "c"):
        state.receive(1, SendMessage(text, None), 0, 0)
    batch = state.take_pending()
    broadcast, *acks = state.committed(batch, [Appended(seq) for seq in (1, 2, 3)])
    assert isinstance(broadcast, Broadcast) and broadcast.count == 3
    assert [orjson.loads(x)["text"] for x in broadcast.payload.split("\n")] == ["a", "b", "c"]
    assert [type(a) for a in acks] == [Send] * 3


async def test_outbox_counts_objects_and_coalesces_frames() -> None:
    transport = MemoryTransport()
    session = make(transport, limit=5, frame=3)
    transport.gate.clear()  # the writer blocks on its first send
    writer = asyncio.create_task(start(session))
    await asyncio.sleep(0)
    assert session.offer("a\nb", 2) and session.offer("c") and session.offer("d\ne", 2)
    assert session.queued == 5
    assert not session.offer("f")  # 6 > 5 objects: the caller evicts with 4009
    transport.gate.set()
    while session.queued:  # noqa: ASYNC110 (stepping the writer, not waiting on time)
        await asyncio.sleep(0)
    session.close_nowait(CloseCode.NORMAL, "bye")
    await writer
    # welcome, then at most 3 objects per frame unless one batch is larger
    assert transport.frames == ["W", "a\nb\nc", "d\ne"]
    assert transport.closed == (1000, "bye")
    assert session.state is SessionState.CLOSED


async def test_an_empty_outbox_takes_one_batch_larger_than_the_limit() -> None:
    session = make(MemoryTransport(), limit=2)
    assert session.offer("1\n2\n3", 3)
    assert not session.offer("4")


async def test_abort_interrupts_a_stalled_send() -> None:
    transport = MemoryTransport()
    session = make(transport, send_timeout=0.05)
    transport.gate.clear()
    writer = asyncio.create_task(start(session))
    await asyncio.sleep(0.1)
    assert session.stalled(time.monotonic())
    session.abort(CloseCode.SLOW_CONSUMER, "slow consumer")
    await asyncio.wait_for(writer, 1)  # returned normally: the cancellation was ours
    assert transport.closed == (4009, "slow consumer")
    assert not writer.cancelled()


async def test_outside_cancellation_is_not_swallowed() -> None:
    transport = MemoryTransport()
    session = make(transport)
    transport.gate.clear()
    writer = asyncio.create_task(start(session))
    await asyncio.sleep(0.01)
    writer.cancel()
    try:
        await writer
    except asyncio.CancelledError:
        pass
    assert writer.cancelled()

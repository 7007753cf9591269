"""Session outbox and writer against an in-memory transport (the socket is the edge)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest

from rooms.config import RoomConfig
from rooms.messages import Appended, Entry, StoredMessage
from rooms.protocol import CloseCode, SendMessage
from rooms.session import Session, SessionState
from rooms.state import Broadcast, JoinPlan, RoomState, Send
from tests.support import until


class MemoryTransport:
    def __init__(self) -> None:
        self.frames: list[str] = []
        self.closed: tuple[int, str] | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.close_gate = asyncio.Event()  # closed: the close frame can't be written
        self.close_gate.set()
        self.aborted = False
        self.one_at_a_time = False  # each opening of the gate lets one frame through

    async def send(self, data: str) -> None:
        await self.gate.wait()
        if self.one_at_a_time:
            self.gate.clear()
        self.frames.append(data)

    async def close(self, code: int, reason: str) -> None:
        await self.close_gate.wait()
        self.closed = (code, reason)

    def abort(self) -> None:
        self.aborted = True
        self.gate.set()  # like a dropped socket: nothing blocks any more
        self.close_gate.set()


class NoStore:
    async def read(self, *args: object) -> list[object]:
        raise AssertionError("no replay expected")


async def start(session: Session) -> None:
    await session.run_writer(JoinPlan("W", 0, 0, False), "r", NoStore(), 10)  # type: ignore[arg-type]


def make(transport: MemoryTransport, **kw: float) -> Session:
    return Session(1, "u", "U", transport, outbox_limit=int(kw.get("limit", 5)),
                   max_frame_messages=int(kw.get("frame", 3)),
                   send_timeout=kw.get("send_timeout", 10.0),
                   close_timeout=kw.get("close_timeout", 1.0))


class History:
    """Stored messages 1..count, as a store's ``read`` returns them."""

    def __init__(self, count: int) -> None:
        self.messages = [StoredMessage("r", seq, "w", "W", None, f"m{seq}", 0)
                         for seq in range(1, count + 1)]

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[Entry]:
        await asyncio.sleep(0)
        found: list[Entry] = [m for m in self.messages if after < m.seq <= upto]
        return found[:limit]

    async def history(self, room: str, *, after: int = 0, before: int, limit: int,
                      newest: bool = False) -> list[StoredMessage]:
        await asyncio.sleep(0)
        found = [m for m in self.messages if after < m.seq < before]
        return found[-limit:] if newest else found[:limit]


def blocked(session: Session) -> Callable[[], bool]:
    """For ``until``: whether the session's writer is in a send that has not returned."""
    return lambda: session.sending_since is not None


def seqs(frames: list[str]) -> list[int]:
    objects = [orjson.loads(line) for frame in frames[1:] for line in frame.split("\n")]
    return [o["seq"] for o in objects if o["type"] == "message"]


def live(seq: int) -> str:
    return StoredMessage("r", seq, "w", "W", None, f"m{seq}", 0).to_wire()


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
    session = make(transport, send_timeout=10.0)
    transport.gate.clear()
    writer = asyncio.create_task(start(session))
    await until(blocked(session), what="the writer to block in a send")
    since = session.sending_since
    assert since is not None
    assert not session.stalled(since + 10.0)  # stalled only past send_timeout (now injected)
    assert session.stalled(since + 10.001)
    session.abort(CloseCode.SLOW_CONSUMER, "slow consumer")
    await asyncio.wait_for(writer, 1)  # returned normally: the cancellation was ours
    assert transport.closed == (4009, "slow consumer")
    assert not writer.cancelled()


async def test_outside_cancellation_is_not_swallowed() -> None:
    transport = MemoryTransport()
    session = make(transport)
    transport.gate.clear()
    writer = asyncio.create_task(start(session))
    await until(blocked(session), what="the writer to block in a send")
    writer.cancel()
    try:
        await writer
    except asyncio.CancelledError:
        pass
    assert writer.cancelled()


@pytest.mark.parametrize(("code", "flush"), [
    (CloseCode.SERVICE_RESTART, True), (CloseCode.HEARTBEAT_TIMEOUT, True),
    (CloseCode.TOKEN_EXPIRED, True), (CloseCode.SLOW_CONSUMER, False)])
async def test_a_close_during_the_replay_sends_nothing_past_the_gap(
        code: CloseCode, flush: bool) -> None:
    # Issue 13, bug 1: 600 stored, a slow reader replaying with after=0, 20 live messages, a
    # close. The client must see a contiguous prefix; it resumes after its last seq.
    transport = MemoryTransport()
    session = make(transport, limit=100, frame=256, close_timeout=5.0)
    writer = asyncio.create_task(session.run_writer(
        JoinPlan("W", 0, 600, True), "r", History(600), 256))
    while not transport.frames:  # noqa: ASYNC110 (stepping the writer)
        await asyncio.sleep(0)
    transport.gate.clear()  # the client stops reading during the first replay page
    await until(blocked(session), what="the first replay page to block")
    assert session.replaying
    for seq in range(601, 621):
        assert session.offer(live(seq))
    session.close_nowait(code, "bye", flush=flush)
    transport.gate.set()  # ...and reads again
    await asyncio.wait_for(writer, 2)
    got = seqs(transport.frames)
    assert got == list(range(1, len(got) + 1)) and len(got) < 600
    assert transport.closed == (code, "bye") and not transport.aborted


async def test_a_close_after_the_replay_still_flushes() -> None:
    transport = MemoryTransport()
    session = make(transport, limit=100, frame=256)
    writer = asyncio.create_task(session.run_writer(
        JoinPlan("W", 0, 5, True), "r", History(5), 256))
    while session.replaying or len(transport.frames) < 2:  # noqa: ASYNC110
        await asyncio.sleep(0)
    assert session.progress_at is None
    session.offer(live(6))
    session.close_nowait(CloseCode.SERVICE_RESTART, "bye")
    await asyncio.wait_for(writer, 2)
    assert seqs(transport.frames) == [1, 2, 3, 4, 5, 6]


async def test_progress_at_moves_with_each_replay_page() -> None:
    transport = MemoryTransport()
    session = make(transport, frame=10)
    assert session.progress_at is None and not session.replaying
    transport.gate.clear()
    transport.one_at_a_time = True  # (the last page follows the one before it at once)
    writer = asyncio.create_task(session.run_writer(
        JoinPlan("W", 0, 30, True), "r", History(30), 10))
    marks: list[float] = []
    for _ in range(4):  # the welcome, then 3 pages of 10
        await until(blocked(session), what="the next page to block")
        transport.gate.set()
        while len(transport.frames) == len(marks):  # noqa: ASYNC110
            await asyncio.sleep(0)
        transport.gate.clear()
        progress = session.progress_at
        if len(marks) < 3:
            assert progress is not None and session.replaying
            assert not marks or progress > marks[-1]
            marks.append(progress)
        else:
            assert progress is None and not session.replaying
    transport.gate.set()
    session.close_nowait(CloseCode.NORMAL, "bye")
    await asyncio.wait_for(writer, 2)


@pytest.mark.parametrize("flush", [True, False])
async def test_the_closing_phase_is_bounded_then_aborts(flush: bool) -> None:
    # Issues 13, bugs 2 and 4: a client that stopped reading holds neither the flush nor the
    # close frame beyond close_timeout; the transport is then dropped.
    transport = MemoryTransport()
    session = make(transport, limit=100, close_timeout=0.2)
    writer = asyncio.create_task(start(session))
    while not transport.frames:  # noqa: ASYNC110
        await asyncio.sleep(0)
    transport.gate.clear()
    transport.close_gate.clear()
    session.offer("stuck")
    await until(blocked(session), what="the send of 'stuck' to block")
    session.offer("queued")
    started = time.monotonic()
    session.close_nowait(CloseCode.SERVICE_RESTART, "restart", flush=flush)
    await asyncio.wait_for(writer, 2)
    assert time.monotonic() - started < 0.5
    assert transport.aborted and transport.closed is None
    assert not writer.cancelled()


async def test_an_unsent_close_frame_is_bounded_after_an_abort() -> None:
    transport = MemoryTransport()
    session = make(transport, send_timeout=0.05, close_timeout=0.2)
    transport.gate.clear()
    transport.close_gate.clear()
    writer = asyncio.create_task(start(session))
    await until(blocked(session), what="the writer to block in a send")
    session.abort(CloseCode.SLOW_CONSUMER, "slow consumer")
    await asyncio.wait_for(writer, 1)
    assert transport.aborted and not writer.cancelled()


async def test_an_idle_session_keeps_neither_its_welcome_nor_an_outbox() -> None:
    # Memory per idle connection (bench/profiles/): the welcome (a room's member list) is sent
    # once, and an empty outbox is dropped, not kept allocated.
    transport = MemoryTransport()
    session = make(transport, limit=5, frame=3)
    writer = asyncio.create_task(session.run_writer(
        JoinPlan("W" * 5000, 0, 0, False), "r", NoStore(), 10))  # type: ignore[arg-type]
    assert session.offer("a")
    while session.queued or not transport.frames:  # noqa: ASYNC110 (stepping the writer)
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.frames == ["W" * 5000, "a"]
    assert session._plan is None and session._outbox is None
    assert session.offer("b") and session.offer("c")  # a new burst gets an outbox again
    while session.queued:  # noqa: ASYNC110 (stepping the writer)
        await asyncio.sleep(0)
    session.close_nowait(CloseCode.NORMAL, "bye")
    await writer
    assert transport.frames[2:] == ["b\nc"]


async def test_a_fresh_join_sends_the_newest_messages_then_live_ones() -> None:
    """Not a recovered resume: the newest ``fresh`` messages up to the welcome's seq (in their
    current state, from ``history``), in frames of at most ``max_frame_messages``, then live
    objects; nothing of the raw log before."""
    transport = MemoryTransport()
    session = make(transport, frame=4)
    writer = asyncio.create_task(session.run_writer(
        JoinPlan("W", 30, 30, False, fresh=10), "r", History(40), 500))
    while len(transport.frames) < 4:  # noqa: ASYNC110 (the welcome, then 3 frames)
        await asyncio.sleep(0)
    session.offer(live(31))
    session.close_nowait(CloseCode.SERVICE_RESTART, "bye")
    await asyncio.wait_for(writer, 2)
    assert [len(f.split("\n")) for f in transport.frames[1:4]] == [4, 4, 2]
    assert seqs(transport.frames) == [*range(21, 31), 31]


@pytest.mark.parametrize(("plan", "stored", "upto", "seqs"), [
    # A resume: its replay's last entry is the welcome's seq...
    (JoinPlan('{"type":"welcome","seq":30}', 4, 30, True, ends=True), range(1, 31), 30,
     list(range(5, 31))),
    # ...unless the log's newest entries were removed (an erasure's XDEL, edits of a deleted
    # message): then the last one stored, found below empty windows of a page each.
    (JoinPlan('{"type":"welcome","seq":30}', 0, 30, True, ends=True), range(1, 15), 14,
     list(range(1, 15))),
    (JoinPlan('{"type":"welcome","seq":30}', 20, 30, True, ends=True), range(1, 15), 0, []),
    # A fresh join: the newest messages, its last one.
    (JoinPlan('{"type":"welcome","seq":30}', 30, 30, False, fresh=5, ends=True), range(1, 29),
     28, [24, 25, 26, 27, 28]),
    (JoinPlan('{"type":"welcome","seq":0}', 0, 0, False, fresh=5, ends=True), (), 0, []),
])
async def test_the_welcome_says_where_the_replay_ends(
        plan: JoinPlan, stored: range, upto: int, seqs: list[int]) -> None:
    """``replay_upto``: the seq of the replay's last entry, known before the welcome is sent
    (its last page is read first and sent last), so a client knows when the replay is done
    even when it stops below the welcome's seq."""
    transport = MemoryTransport()
    session = make(transport, frame=4)
    history = History(30)
    history.messages = [m for m in history.messages if m.seq in stored]
    writer = asyncio.create_task(session.run_writer(plan, "r", history, 4))
    await until(lambda: session.replaying is False and bool(transport.frames)
                and session.state is SessionState.ACTIVE and not blocked(session)())
    session.close_nowait(CloseCode.NORMAL, "bye")
    await asyncio.wait_for(writer, 2)
    welcome, *replay = transport.frames
    assert orjson.loads(welcome)["replay_upto"] == upto
    got = [orjson.loads(line)["seq"] for frame in replay for line in frame.split("\n")]
    assert got == seqs
    assert all(len(frame.split("\n")) <= 4 for frame in replay)

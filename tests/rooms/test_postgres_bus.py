"""What is the PostgreSQL LISTEN/NOTIFY bus's own (``rooms.engines.postgres_bus``): notices cut
to PostgreSQL's payload limit, entries too big for any notice announced as a pointer and read
from the log, a bounded publishing queue, foreign notices on a room's channel, and presence
withdrawn. The bus's contract with the rest (feed, presence, resync on reconnect, lost
publishes) is the engine suite's, case ``postgres+postgres`` (tests/rooms/test_engine.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
import psycopg
import pytest

from rooms.engine import Ban, Engine
from rooms.engines import open_engine
from rooms.engines.postgres_bus import PAYLOAD_MAX, NotifyBus, channel, entry_notices
from rooms.engines.split import SplitEngine
from rooms.messages import Draft, WireMessage
from tests.engines import Listener, wait_for
from tests.support import SLOW, until


def wires(first: int, count: int, size: int = 10) -> list[WireMessage]:
    return [WireMessage(first + i, orjson.dumps({"seq": first + i, "t": "x" * size}).decode())
            for i in range(count)]


def parse(notice: str) -> tuple[str, str, list[str]]:
    """(kind + node, room, the lines after the room)."""
    head, quoted, *rest = notice.split("\n")
    return head, orjson.loads(quoted), rest


# -- notices, pure ---------------------------------------------------------------------------


def test_a_small_batch_is_one_notice_and_gaps_cut_it() -> None:
    batch = [*wires(1, 3), *wires(7, 2)]
    notices = entry_notices("n1", "room\n\"x", batch)
    assert [parse(n) for n in notices] == [
        ("mn1", "room\n\"x", ["1", *(m.wire for m in batch[:3])]),
        ("mn1", "room\n\"x", ["7", *(m.wire for m in batch[3:])])]


def test_notices_stay_within_the_payload_limit_at_its_edge() -> None:
    one = entry_notices("n", "r", wires(1, 1))[0]
    exact = len(one.encode())
    assert entry_notices("n", "r", wires(1, 1), limit=exact) == [one]  # at the limit: inline
    # One byte less: the entry fits in no notice, a pointer goes instead.
    assert entry_notices("n", "r", wires(1, 1), limit=exact - 1) == ['Mn\n"r"\n1\n1']
    # A long run is cut into notices of consecutive seqs, each at most the limit.
    batch = wires(1, 200, size=300)  # ~64 KB
    notices = entry_notices("n", "r", batch)
    assert len(notices) > 1
    assert all(len(n.encode()) <= PAYLOAD_MAX for n in notices)
    seqs: list[int] = []
    for n in notices:
        _, _, (first, *lines) = parse(n)
        seqs += range(int(first), int(first) + len(lines))
        assert lines == [m.wire for m in batch[int(first) - 1:int(first) - 1 + len(lines)]]
    assert seqs == list(range(1, 201))


def test_entries_too_big_for_a_notice_become_one_pointer_between_inline_ones() -> None:
    big = wires(2, 2, size=PAYLOAD_MAX)
    batch = [*wires(1, 1), *big, *wires(4, 1)]
    notices = entry_notices("n", "r", batch)
    assert [parse(n)[0] for n in notices] == ["mn", "Mn", "mn"]
    assert parse(notices[1])[2] == ["2", "3"]
    assert parse(notices[2])[2] == ["4", batch[3].wire]


def test_a_channel_is_an_identifier_whatever_the_room() -> None:
    for room in ("a", "Ünï \U0001f600" * 40, 'x"; DROP TABLE rooms; --'):
        name = channel(room)
        assert name.startswith("rc_") and len(name) == 19 and name[3:].isalnum()
    assert channel("a") != channel("b")


# -- on a real PostgreSQL ----------------------------------------------------------------------


@pytest.fixture
async def two(postgres_url: str) -> AsyncIterator[tuple[Engine, Engine]]:
    a = await open_engine(postgres_url, bus_url=postgres_url)
    b = await open_engine(postgres_url, bus_url=postgres_url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def bus_of(engine: Engine) -> NotifyBus:
    assert isinstance(engine, SplitEngine) and isinstance(engine.bus, NotifyBus)
    return engine.bus


async def subscribed(engine: Engine, room: str) -> Listener:
    """A listener of ``room`` on ``engine``, once its LISTEN is done (the first resync)."""
    heard = Listener()
    engine.subscribe(room, heard)
    await until(lambda: heard.resyncs >= 1, timeout=10, what=f"LISTEN {room}")
    return heard


async def test_a_big_batch_arrives_inline_and_a_huge_entry_as_a_pointer(
        two: tuple[Engine, Engine]) -> None:
    """A batch of 100 messages of 300 bytes (~40 KB) reaches the other process whole, in
    order, over several notices; a message of 9,000 bytes cannot be a notice: the room is told
    to resync (it reads it from the log), and the next small message is inline again."""
    a, b = two
    heard = await subscribed(b, "big")
    await a.load("big", 0)
    batch = [Draft("u", "U", f"i{i}", f"{i:03} " + "y" * 300, 1000 + i) for i in range(100)]
    await a.append("big", batch, retention=0, dedup_window=0)
    await wait_for(heard.arrived, lambda: len(heard.messages) == 100, timeout=10 * SLOW)
    assert [m.seq for m in heard.messages] == list(range(1, 101))
    assert [orjson.loads(m.wire)["text"] for m in heard.messages] == [d.text for d in batch]

    resyncs = heard.resyncs
    await a.append("big", [Draft("u", "U", "huge", "z" * 9000, 2000)], retention=0,
                   dedup_window=0)
    await until(lambda: heard.resyncs == resyncs + 1, timeout=10, what="the pointer's resync")
    assert bus_of(b).pointers == 1 and len(heard.messages) == 100
    assert (await b.read("big", 100, 101, 1))[0].to_wire() == (
        await a.read("big", 100, 101, 1))[0].to_wire()  # what the room reads instead
    await a.append("big", [Draft("u", "U", "after", "small", 2001)], retention=0,
                   dedup_window=0)
    await wait_for(heard.arrived, lambda: len(heard.messages) == 101, timeout=10 * SLOW)
    assert heard.messages[-1].seq == 102


async def test_markers_bans_and_withdrawn_presence_reach_the_other_process(
        two: tuple[Engine, Engine]) -> None:
    a, b = two
    heard = await subscribed(b, "mb")
    await a.load("mb", 0)
    await a.append("mb", [Draft("bob", "Bob", "x", "hi", 1)], retention=0, dedup_window=0)
    assert await a.mark_read("mb", "bob", 1) == 1
    await a.ban("mb", Ban("eve", None, "spam " * 3000))  # a reason past the payload's limit
    await wait_for(heard.arrived, lambda: bool(heard.reads) and bool(heard.banned),
                   timeout=10 * SLOW)
    assert heard.reads == [("bob", 1)]
    assert heard.banned[0][0] == "eve" and ("spam " * 3000).startswith(heard.banned[0][1])
    assert len(heard.banned[0][1]) > 7000  # cut to fit, not dropped
    assert (await a.banned("mb", "eve")) == Ban("eve", None, "spam " * 3000)  # whole in the log

    # Presence: a's member appears, then a withdraws it; each change is announced.
    assert (await a.sync("mb", {"ann": "Ann"}, 30)).others == {}
    await wait_for(heard.arrived, lambda: heard.presence >= 1, timeout=10 * SLOW)
    assert (await b.sync("mb", {"bo": "Bo"}, 30)).others == {"ann": "Ann"}
    seen = heard.presence
    assert (await a.sync("mb", {}, 30)).others == {"bo": "Bo"}
    await wait_for(heard.arrived, lambda: heard.presence > seen, timeout=10 * SLOW)
    assert (await b.sync("mb", {"bo": "Bo"}, 30)).others == {}
    assert await a.presence("mb") == {"bo": "Bo"}


async def test_foreign_notices_on_a_rooms_channel_do_not_stop_the_feed(
        two: tuple[Engine, Engine], postgres_url: str) -> None:
    a, b = two
    heard = await subscribed(b, "f")
    junk = ["", "x", "mnode", 'mnode\n"f"\nnot-a-seq\n{}', 'mnode\n"other room"\n1\n{}',
            "mnode\nnot json\n1\n{}", 'rnode\n"f"\nbob\nseven', 'Mnode\n["f"]\n1\n2']
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        for payload in junk:
            await conn.execute("SELECT pg_notify(%s, %s)", (channel("f"), payload))
        await conn.execute("SELECT pg_notify(%s, %s)",
                           (channel("f"), 'rsomeone-else\n"f"\nbob\n8'))
    await wait_for(heard.arrived, lambda: bool(heard.reads), timeout=10 * SLOW)
    assert heard.reads == [("bob", 8)] and heard.messages == []
    await a.load("f", 0)
    await a.append("f", [Draft("u", "U", "x", "still here", 1)], retention=0, dedup_window=0)
    await wait_for(heard.arrived, lambda: len(heard.messages) == 1, timeout=10 * SLOW)


async def test_a_full_queue_drops_and_counts_and_never_blocks(postgres_url: str) -> None:
    """Publishing goes through a bounded queue onto the bus's own task: past its bound a
    notice is dropped and counted (the receivers repair from the log); the caller neither waits
    nor gets an error, also after ``close``."""
    sender = await NotifyBus.open(postgres_url, queue_limit=2)
    receiver = await NotifyBus.open(postgres_url)
    try:
        heard = Listener()
        receiver.subscribe("q", heard)
        await until(lambda: heard.resyncs == 1, timeout=10, what="LISTEN q")
        started = time.monotonic()
        for seq in range(1, 6):  # one turn of the loop: the task sends nothing meanwhile
            sender.entries("q", [WireMessage(seq, f'{{"seq":{seq}}}')])
        assert time.monotonic() - started < 1.0  # (no wait: a bound for a block, not a speed)
        assert (sender.dropped, sender.published) == (3, 0)
        await wait_for(heard.arrived, lambda: len(heard.messages) == 2, timeout=10 * SLOW)
        assert [m.seq for m in heard.messages] == [1, 2]
        # Counted once the sending transaction's commit returns, which may be after the
        # receiver heard it (fresh-clone run 38).
        await until(lambda: sender.published == 2, timeout=10, what="the notices counted")
        assert sender.dropped == 3
    finally:
        await receiver.close()
        await sender.close()
    sender.entries("q", [WireMessage(9, "{}")])  # after close: ignored, no error
    assert not sender.healthy


async def test_an_unreachable_bus_is_one_line_and_leaves_the_log_closed(
        postgres_url: str) -> None:
    from rooms.errors import StoreError

    gone = "postgresql://postgres:pw-sekret@127.0.0.1:1/nothing"
    with pytest.raises(StoreError) as failed:
        await open_engine(postgres_url, bus_url=gone, timeout=1)
    assert str(failed.value).startswith("cannot reach PostgreSQL (the bus): ")
    assert "\n" not in str(failed.value)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:

        async def log_disconnected() -> bool:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()")
            row = await cursor.fetchone()
            return row is not None and row[0] == 0

        # The log opened first; its pool was closed when the bus failed (the backends end
        # a moment after their clients close).
        await until(log_disconnected, timeout=10, what="the log's connections closed")


async def test_a_failed_publish_marks_the_bus_unhealthy_until_postgres_answers(
        postgres_url: str) -> None:
    """The pool's connections killed under the bus (a restart of PostgreSQL, a proxy dropping
    them): the next publish fails, is dropped and counted, and the bus says it is unhealthy
    (new rooms are refused) until its probe gets an answer on a new connection; then notices
    go again. The LISTEN connection is left alone here (the engine suite kills that one)."""
    bus = await NotifyBus.open(postgres_url)
    try:
        bus.entries("h", [WireMessage(1, "{}")])
        await until(lambda: bus.published == 1, timeout=10, what="the first notice sent")
        # The LISTEN connection connects on a task of its own: before it has, its pid is None,
        # `pid <> NULL` matches no backend, nothing was killed and the next publish went
        # through (2 runs in ~80 at load 5+).
        await until(lambda: bus.listener_pid is not None, timeout=10, what="the bus listening")
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                "application_name = %s AND pid <> %s AND datname = current_database()",
                ("roomchat-bus", bus.listener_pid))

            async def pool_backends_gone() -> bool:
                # pg_terminate_backend only signals: a backend still alive at the next
                # publish would answer it (fresh-clone run 36, at load 11).
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND "
                    "pid <> %s AND datname = current_database()",
                    ("roomchat-bus", bus.listener_pid))
                row = await cursor.fetchone()
                return row is not None and row[0] == 0

            await until(pool_backends_gone, timeout=10, what="the pool's backends ended")
        bus.entries("h", [WireMessage(2, "{}")])
        await until(lambda: bus.dropped == 1, timeout=10, what="the failed notice counted")
        assert not bus.healthy
        await until(lambda: bus.healthy, timeout=10, what="the bus healthy again")
        bus.entries("h", [WireMessage(3, "{}")])
        await until(lambda: bus.published == 2, timeout=10, what="notices sent again")
    finally:
        await bus.close()

"""The engine contract, run against every engine (embedded SQLite, Redis on a real
redis-server started per test, PostgreSQL on a real server started per test session with a
fresh database per test, the PostgreSQL log with a Redis bus, and memory), plus what only a
shared engine does (on Redis and on PostgreSQL with the Redis bus). Durability
(what survives closing and opening again) is the durable engines' contract only: the memory
engine promises the opposite, and its own test says so."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import asyncio as aioredis

from rooms.attachments import FileRef
from rooms.changes import excerpt, fold
from rooms.engine import Ban, Engine
from rooms.engines import open_engine
from rooms.engines.redis import RedisEngine, _Appends
from rooms.errors import LogReset, StoreError, Unstorable
from rooms.messages import (
    Action,
    Appended,
    ChangeDraft,
    DeletedBy,
    Draft,
    Entry,
    LogRules,
    Reaction,
    Refusal,
    Reply,
    StoredChange,
    StoredMessage,
    Unread,
    WireMessage,
)
from tests.engines import Listener, drafts, wait_for
from tests.redis_cluster import RedisCluster
from tests.redis_server import redis_server
from tests.support import SLOW, until


def change(user: str, action: Action, target: int, *, text: str = "", emoji: str = "",
           on: bool = False, moderator: bool = False, id: str | None = None,
           ts: int = 2000) -> ChangeDraft:
    return ChangeDraft(user, user.upper(), id, ts, action, target, text, emoji, on, moderator)


def wire(entry: Entry | WireMessage | None) -> dict[str, Any]:
    assert entry is not None
    parsed: dict[str, Any] = orjson.loads(entry.to_wire())
    return parsed


@dataclass(frozen=True)
class Urls:
    """What an engine of the suite is opened with: a store URL, and a bus URL beside it."""

    store: str
    bus: str | None = None
    cluster: RedisCluster | None = None  # the store is this Redis Cluster

    async def open(self) -> Engine:
        return await open_engine(self.store, bus_url=self.bus)


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Urls]:
    if kind == "embedded":
        yield Urls(f"sqlite://{tmp_path / 'db.sqlite3'}")
    elif kind == "memory":
        yield Urls("memory://")
    elif kind == "postgres":
        yield Urls(request.getfixturevalue("postgres_url"))
    elif kind == "postgres+redis":  # the PostgreSQL log, the Redis bus beside it
        with redis_server(tmp_path / "redis") as bus:
            yield Urls(request.getfixturevalue("postgres_url"), bus)
    elif kind == "postgres+postgres":  # the PostgreSQL log, its LISTEN/NOTIFY as the bus
        url = request.getfixturevalue("postgres_url")
        yield Urls(url, url)
    elif kind == "redis-cluster":
        # The session's cluster (tests/redis_cluster.py), flushed: 3 masters, so a test's
        # rooms and users land on different nodes.
        cluster = request.getfixturevalue("redis_cluster")
        yield Urls(cluster.url, cluster=cluster)
    else:
        with redis_server(tmp_path / "redis") as url:
            yield Urls(url)


@pytest.fixture(params=["embedded", "redis", "redis-cluster", "memory", "postgres",
                        "postgres+redis", "postgres+postgres"])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Urls]:
    yield from _url(request.param, tmp_path, request)


@pytest.fixture(params=["embedded", "redis", "redis-cluster", "postgres"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Urls]:
    """The engines whose data survives closing and opening again (not ``memory://``)."""
    yield from _url(request.param, tmp_path, request)


@pytest.fixture
async def engine(engine_url: Urls) -> AsyncIterator[Engine]:
    opened = await engine_url.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_append_allocates_consecutive_seqs_and_reads_back(engine: Engine) -> None:
    assert (await engine.load("a", 10)).last_seq == 0
    assert await engine.append("a", drafts(3), retention=0, dedup_window=10) == [
        Appended(1), Appended(2), Appended(3)]
    assert await engine.append("a", drafts(2, ids=False), retention=0, dedup_window=10) == [
        Appended(4), Appended(5)]
    page = await engine.read("a", 1, 4, 10)
    assert [m.seq for m in page] == [2, 3, 4]
    assert page[0] == StoredMessage("a", 2, "u", "U", "id1", "t1", 1001)
    snapshot = await engine.load("a", 10)
    assert (snapshot.last_seq, snapshot.oldest_seq) == (5, 1)
    assert (await engine.sync("a", {}, 10)).top == 5
    assert await engine.top("a") == 5
    assert await engine.top("nothing") == 0


async def test_text_roundtrips_exactly(engine: Engine) -> None:
    text = 'quotes " \\ newline\n tab\t emoji \U0001f600 bidi \u202e nul-free <b>'
    await engine.load("t", 0)
    await engine.append("t", [Draft("ü", "Ünïcode \U0001f600", "x", text, 1)], retention=0,
                        dedup_window=10)
    (m,) = await engine.read("t", 0, 1, 1)
    assert (m.user, m.name, m.text) == ("ü", "Ünïcode \U0001f600", text)


async def test_retention_prunes_oldest(engine: Engine) -> None:
    await engine.load("r", 0)
    for _ in range(4):
        await engine.append("r", drafts(50, ids=False), retention=100, dedup_window=0)
    snapshot = await engine.load("r", 0)
    assert snapshot.last_seq == 200
    assert 100 <= 200 - snapshot.oldest_seq + 1 <= 200  # SQLite prunes in ~1% steps


async def test_data_survives_reopen(durable_url: Urls) -> None:
    first = await durable_url.open()
    await first.load("a", 10)
    await first.append("a", drafts(3), retention=0, dedup_window=10)
    await first.close()
    with pytest.raises(StoreError):
        await first.read("a", 0, 3, 3)
    again = await durable_url.open()
    try:
        assert (await again.load("a", 10)).last_seq == 3
        assert [m.seq for m in await again.read("a", 0, 3, 10)] == [1, 2, 3]
    finally:
        await again.close()


async def test_bad_urls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported store URL"):
        await open_engine("mongodb://nope")
    with pytest.raises(StoreError, match="cannot reach Redis"):
        await open_engine("redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="memory:// takes nothing after it"):
        await open_engine("memory:///var/lib/roomchat")


async def test_the_memory_engine_keeps_nothing_across_a_restart() -> None:
    """What ``memory://`` promises instead of durability: a new engine (a restart) has no
    history, marker, ban, stash or revocation, and a new epoch, so clients resuming from the
    old one are told their history is gone; a closed one answers ``StoreError``."""
    first = await open_engine("memory://")
    old = (await first.load("a", 10)).epoch
    assert len(old) == 16 and int(old, 16) >= 0
    assert await first.append("a", drafts(3), retention=0, dedup_window=10, epoch=old) == [
        Appended(1), Appended(2), Appended(3)]
    with pytest.raises(LogReset) as reset:  # the epoch is checked like the others'
        await first.append("a", drafts(1, start=3), retention=0, dedup_window=10,
                           epoch="0123456789abcdef", floor=3)
    assert (reset.value.epoch, reset.value.top) == (old, 3)
    await first.mark_read("a", "u", 2)
    await first.ban("a", Ban("b", None, "spam"))
    await first.stash("k", b"v", 60)
    await first.revoke("r", 1.0)
    await first.close()
    with pytest.raises(StoreError):
        await first.read("a", 0, 3, 3)
    again = await open_engine("memory://")
    try:
        snapshot = await again.load("a", 10)
        assert (snapshot.last_seq, snapshot.recent_ids) == (0, ())
        assert snapshot.epoch != old and (await again.sync("a", {}, 10)).epoch == snapshot.epoch
        assert await again.read("a", 0, 3, 3) == []
        assert await again.markers("u") == {} and await again.banned("a", "b") is None
        assert await again.take("k") is None and await again.revocations(0) == []
        with pytest.raises(LogReset):  # a room that knew the old epoch starts afresh
            await again.append("a", drafts(1), retention=0, dedup_window=10, epoch=old)
    finally:
        await again.close()


async def test_the_memory_engine_prunes_to_exactly_the_retention() -> None:
    """Memory is bounded by ``history_retention``: the log and its indexes keep the last
    ``retention`` seqs (pruned at every append, not in steps), changes go with their message,
    and the ordered lists drop their pruned head."""
    from rooms.engines.memory import COMPACT_AT, MemoryEngine

    engine = MemoryEngine()
    await engine.load("r", 0)
    for _ in range(3 * COMPACT_AT // 50):
        await engine.append("r", drafts(49, ids=False), retention=100, dedup_window=0)
        await engine.append("r", [change("u", Action.REACT, (await engine.top("r")) - 1,
                                         emoji=THUMBS, on=True)],
                            retention=100, dedup_window=0)
    top = await engine.top("r")
    assert (await engine.load("r", 0)).oldest_seq == top - 99
    log = engine._logs["r"]
    assert len(log.entries) == 100 and set(log.entries) == set(range(top - 99, top + 1))
    assert len(log.order.seqs) - log.order.head == 100 and len(log.order.seqs) < 2 * COMPACT_AT
    assert min(log.changes) >= top - 99 and min(log.last_change) >= top - 99
    assert [m.seq for m in await engine.history("r", before=top + 1, limit=3, newest=True)] == [
        top - 3, top - 2, top - 1]
    await engine.close()


async def test_delete_leaves_a_tombstone_in_reads(engine: Engine) -> None:
    await engine.load("d", 10)
    await engine.append("d", drafts(5), retention=0, dedup_window=10)
    results = await engine.append("d", [
        change("u", Action.DELETE, 2),  # the author's
        change("u", Action.DELETE, 2),  # again, in the same batch: it is a tombstone now
        change("mod", Action.DELETE, 5, moderator=True),
        change("mod", Action.DELETE, 9, moderator=True),  # nothing there
        change("eve", Action.DELETE, 4),  # neither the author nor a moderator
        change("u", Action.DELETE, 6),  # the seq of a change entry, not of a message
    ], retention=0, dedup_window=10)
    assert results == [Appended(6), Appended(0, refused=Refusal.ALREADY_DELETED), Appended(7),
                       Appended(0, refused=Refusal.NOT_FOUND),
                       Appended(0, refused=Refusal.FORBIDDEN),
                       Appended(0, refused=Refusal.NOT_FOUND)]
    assert [wire(r.entry) for r in results if r.entry is not None] == [
        {"type": "change", "room": "d", "seq": 6, "action": "delete", "target": 2, "id": None,
         "user": "u", "name": "U", "ts": 2000, "by": "author"},
        {"type": "change", "room": "d", "seq": 7, "action": "delete", "target": 5, "id": None,
         "user": "mod", "name": "MOD", "ts": 2000, "by": "moderator"}]
    page = await engine.history("d", before=10, limit=10)
    assert [(m.seq, m.text, m.deleted) for m in page] == [
        (1, "t0", False), (2, "", True), (3, "t2", False), (4, "t3", False), (5, "", True)]
    assert page[1] == StoredMessage("d", 2, "u", "U", "id1", "", 1001)
    assert wire(page[1])["deleted"] is True
    assert "deleted" not in wire(page[0])
    # The raw log: messages (in their current state) and the delete entries, in seq order.
    assert [(type(e).__name__, e.seq) for e in await engine.read("d", 0, 7, 10)] == [
        ("StoredMessage", 1), ("StoredMessage", 2), ("StoredMessage", 3),
        ("StoredMessage", 4), ("StoredMessage", 5), ("StoredChange", 6), ("StoredChange", 7)]
    # Pages that end at or before a tombstone, or start after one.
    assert [m.seq for m in await engine.read("d", 0, 5, 2)] == [1, 2]
    assert [m.seq for m in await engine.read("d", 2, 5, 2)] == [3, 4]
    assert [m.seq for m in await engine.read("d", 3, 7, 2)] == [4, 5]
    # The deleted message's id is still known (embedded: to the room's snapshot), and seqs go on.
    assert ("u", "id1", 2) in (await engine.load("d", 10)).recent_ids or engine.shared
    assert await engine.append("d", drafts(1, start=7), retention=0,
                               dedup_window=10) == [Appended(8)]


async def test_erase_tombstones_every_message_of_a_user_in_every_room(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from rooms import engine as contract
    from rooms.engines import redis as redis_engine

    # Steps of two (pages of three on Redis): every erasure below takes several.
    monkeypatch.setattr(contract, "ERASE_STEP", 2)
    monkeypatch.setattr(contract, "ERASE_PAUSE", 0.0)
    monkeypatch.setattr(redis_engine, "ERASE_PAGE", 3)
    for room in ("e1", "e2", "e3"):
        await engine.load(room, 10)
    await engine.append("e1", drafts(3, user="u") + drafts(2, user="v"), retention=0,
                        dedup_window=10)  # u: 1-3, v: 4-5
    await engine.append("e1", drafts(1, user="u", start=3), retention=0, dedup_window=10)  # 6
    await engine.append("e2", drafts(2, user="v") + drafts(2, user="u"), retention=0,
                        dedup_window=10)  # v: 1-2, u: 3-4
    await engine.append("e3", drafts(2, user="v"), retention=0, dedup_window=10)
    # A moderator got one first (seq 7): not erased twice.
    assert await engine.append("e1", [change("mod", Action.DELETE, 2, moderator=True)],
                               retention=0, dedup_window=10) == [Appended(7)]
    steps: list[tuple[str, list[int]]] = []
    assert await engine.erase("u", lambda room, seqs: steps.append((room, seqs))) == {
        "e1": [1, 3, 6], "e2": [3, 4]}
    # Told step by step, each step one room and at most ERASE_STEP seqs.
    assert sorted(seq for room, seqs in steps if room == "e1" for seq in seqs) == [1, 3, 6]
    assert sorted(seq for room, seqs in steps if room == "e2" for seq in seqs) == [3, 4]
    assert all(1 <= len(seqs) <= 2 for _, seqs in steps) and len(steps) >= 3
    e1 = await engine.history("e1", before=100, limit=10)
    assert [(m.seq, m.user, m.text, m.deleted) for m in e1] == [
        (1, "u", "", True), (2, "u", "", True), (3, "u", "", True), (4, "v", "t0", False),
        (5, "v", "t1", False), (6, "u", "", True)]
    assert e1[5] == StoredMessage("e1", 6, "u", "U", "id3", "", 1003)  # all but the text kept
    # Each erased message got a delete entry of its own (seqs 8-10), from the erased user,
    # by "moderator": a resume replays them.
    deletes = [e for e in await engine.read("e1", 6, 100, 10) if isinstance(e, StoredChange)]
    assert [(e.seq, e.target, e.user, e.by) for e in deletes] == [
        (7, 2, "mod", DeletedBy.MODERATOR), (8, 1, "u", DeletedBy.MODERATOR),
        (9, 3, "u", DeletedBy.MODERATOR), (10, 6, "u", DeletedBy.MODERATOR)]
    assert [(m.seq, m.text) for m in await engine.history("e2", before=100, limit=10)] == [
        (1, "t0"), (2, "t1"), (3, ""), (4, "")]
    assert [m.text for m in await engine.history("e3", before=100, limit=10)] == ["t0", "t1"]
    assert await engine.erase("u") == {}  # idempotent
    assert await engine.erase("nobody") == {}
    assert await engine.top("e1") == 10  # seqs go on after the erasure's entries
    assert await engine.append("e1", drafts(1, user="u", start=9), retention=0,
                               dedup_window=10) == [Appended(11)]


THUMBS, HEART, GRIN = "\U0001f44d", "\u2764\ufe0f", "\U0001f600"


async def test_erase_takes_back_the_users_reactions(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: an erasure takes back the user's reactions on others' messages with a
    react-off entry each (members online and resumes fold them), and their earlier reaction
    entries leave the log: a replay from the start names no emoji of theirs."""
    from rooms import engine as contract
    from rooms.engines import redis as redis_engine

    monkeypatch.setattr(contract, "ERASE_STEP", 2)  # several steps
    monkeypatch.setattr(contract, "ERASE_PAUSE", 0.0)
    monkeypatch.setattr(redis_engine, "ERASE_PAGE", 3)
    for room in ("r", "q", "t"):
        await engine.load(room, 0)
    append = engine.append
    await append("r", [Draft("v", "V", None, "theirs", 1), Draft("u", "U", None, "mine", 2),
                       change("u", Action.REACT, 1, emoji=THUMBS, on=True),  # 3
                       change("u", Action.REACT, 1, emoji=HEART, on=True),  # 4
                       change("w", Action.REACT, 1, emoji=THUMBS, on=True),  # 5
                       change("u", Action.REACT, 2, emoji=THUMBS, on=True),  # 6: on their own
                       change("u", Action.REACT, 1, emoji=GRIN, on=True),  # 7
                       change("u", Action.REACT, 1, emoji=GRIN, on=False),  # 8: taken back
                       Draft("w", "W", None, "later", 9)],  # 9
                 retention=0, dedup_window=0)
    # q: only a reaction of theirs; t: their take-back is the room's last entry.
    await append("q", [Draft("v", "V", None, "q1", 1),
                       change("u", Action.REACT, 1, emoji=THUMBS, on=True)],
                 retention=0, dedup_window=0)
    await append("t", [Draft("v", "V", None, "t1", 1),
                       change("u", Action.REACT, 1, emoji=THUMBS, on=True),
                       change("u", Action.REACT, 1, emoji=THUMBS, on=False)],
                 retention=0, dedup_window=0)
    # What a client held having seen the log up to each seq.
    pre = await engine.read("r", 0, 100, 100)
    held: list[dict[int, StoredMessage]] = [{}]
    for entry in pre:
        copy = dict(held[-1])
        if isinstance(entry, StoredMessage):
            copy[entry.seq] = replace(entry, reactions=())  # as it was when it came
        else:
            copy[entry.target] = fold(copy[entry.target], entry)
        held.append(copy)
    assert held[7][1].reactions == (Reaction(THUMBS, ("u", "w")), Reaction(HEART, ("u",)),
                                    Reaction(GRIN, ("u",)))
    steps: list[tuple[str, list[int]]] = []
    assert await engine.erase("u", lambda room, seqs: steps.append((room, seqs))) == {
        "r": [2]}
    assert steps == [("r", [2])]  # only deletes are reported; reactions are not messages

    r = await engine.history("r", before=100, limit=10)
    assert [(m.seq, m.text, m.reactions) for m in r] == [
        (1, "theirs", (Reaction(THUMBS, ("w",)),)), (2, "", ()), (9, "later", ())]
    assert [m.reactions for m in await engine.history("q", before=100, limit=10)] == [()]
    # The log: the delete (10), then a take-back for each message and emoji they reacted with
    # (11-13; their message 2 is deleted: nothing to take back there), the grin too: a client
    # that saw it put (7) must see it taken back, now that their own take-back (8) is gone.
    log = await engine.read("r", 0, 100, 100)
    theirs = [(e.seq, e.action, e.target, e.emoji, e.on) for e in log
              if isinstance(e, StoredChange) and e.user == "u"]
    assert theirs == [(10, Action.DELETE, 2, "", False), (11, Action.REACT, 1, THUMBS, False),
                      (12, Action.REACT, 1, HEART, False), (13, Action.REACT, 1, GRIN, False)]
    assert [e.seq for e in log] == [1, 2, 5, 9, 10, 11, 12, 13]
    # A resume from anywhere before the erasure folds to history.
    for after, copy in enumerate(held):
        state = dict(copy)
        for entry in await engine.read("r", after, 100, 100):
            if isinstance(entry, StoredMessage):
                state[entry.seq] = entry
            elif entry.target in state:
                state[entry.target] = fold(state[entry.target], entry)
        assert list(state.values()) == r, after
    assert [(e.seq, e.user, getattr(e, "on", None)) for e in await engine.read("q", 0, 10, 10)
            ] == [(1, "v", None), (3, "u", False)]
    # t: their take-back was the room's last entry; a take-back of the erasure follows it.
    assert [(e.seq, e.user) for e in await engine.read("t", 0, 10, 10)] == [(1, "v"), (4, "u")]
    assert await engine.top("t") == 4
    assert await append("t", [Draft("v", "V", None, "t2", 1)], retention=0,
                        dedup_window=0) == [Appended(5, entry=StoredMessage(
                            "t", 5, "v", "V", None, "t2", 1))]
    # Again: the take-backs stay (clients that resumed past what they replace need them).
    assert await engine.erase("u") == {}
    assert await engine.read("r", 0, 100, 100) == log


async def test_erased_text_leaves_the_sqlite_files(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    engine = await open_engine(f"sqlite://{path}")
    try:
        await engine.load("s", 0)
        for step in range(10):  # long texts too: rows that spill into overflow pages
            await engine.append("s", [
                Draft("u" if i % 2 else "v", "N", None, f"secret-{step}-{i}-" + "z" * 3000 * i,
                      1) for i in range(4)], retention=0, dedup_window=0)
        erased = await engine.erase("u")
        assert len(erased["s"]) == 20
        files = await asyncio.to_thread(
            lambda: b"".join(p.read_bytes() for p in tmp_path.glob("db.sqlite3*")))
        assert b"secret-9-0-" in files  # what was kept is there (a check of the check)
        assert not [f"secret-{s}-{i}-" for s in range(10) for i in (1, 3)
                    if f"secret-{s}-{i}-".encode() in files]
    finally:
        await engine.close()


async def test_bans_are_kept_until_lifted_or_over(engine: Engine) -> None:
    import time

    from rooms.engine import Ban

    assert await engine.banned("b", "eve") is None
    await engine.ban("b", Ban("eve", None, "spam"))
    await engine.ban("b", Ban("mallory", time.time() + 0.3, ""))
    assert await engine.banned("b", "eve") == Ban("eve", None, "spam")
    assert (await engine.banned("b", "mallory")) is not None
    assert await engine.banned("other", "eve") is None
    assert await engine.unban("b", "eve")
    assert not await engine.unban("b", "eve")
    assert await engine.banned("b", "eve") is None
    await asyncio.sleep(0.4)
    assert await engine.banned("b", "mallory") is None
    assert not await engine.unban("b", "mallory")


# -- only a shared engine ------------------------------------------------------------------


@pytest.fixture(params=["redis", "redis-cluster", "postgres+redis", "postgres+postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Urls]:
    """The engines several processes share: one Redis, a Redis Cluster, and the PostgreSQL
    log with the Redis bus and with its own LISTEN/NOTIFY."""
    yield from _url(request.param, tmp_path, request)


@pytest.fixture
async def two_nodes(shared_url: Urls) -> AsyncIterator[tuple[Engine, Engine]]:
    """Two processes' engines on one shared store (as two gateway processes have them)."""
    a = await shared_url.open()
    b = await shared_url.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_two_nodes_share_seqs_dedup_and_the_live_feed(
        two_nodes: tuple[Engine, Engine]) -> None:
    a, b = two_nodes
    heard = Listener()
    b.subscribe("room", heard)
    await heard.subscribed()  # the SSUBSCRIBE is sent asynchronously
    await a.load("room", 10)
    await b.load("room", 10)
    assert await a.append("room", drafts(2), retention=0, dedup_window=10) == [
        Appended(1), Appended(2)]
    assert await b.append("room", drafts(1, user="v"), retention=0, dedup_window=10) == [
        Appended(3)]
    # The same (user, id) retried through the other node: the original's seq.
    assert await b.append("room", drafts(1), retention=0, dedup_window=10) == [
        Appended(1, duplicate=True)]
    await wait_for(heard.arrived, lambda: len(heard.messages) == 2)
    assert [m.seq for m in heard.messages] == [1, 2]  # b's own batch is not echoed to b
    # Serialised once, by append.lua, exactly as the protocol's `message` object.
    assert orjson.loads(heard.messages[0].wire) == {
        "type": "message", "room": "room", "seq": 1, "id": "id0", "user": "u", "name": "U",
        "text": "t0", "ts": 1000}


async def test_erasure_rewrites_the_stream_leaving_no_erased_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """XDEL only flags an entry: its bytes stay in the stream's node (a DUMP, an RDB, a
    rewritten AOF hold them) until every entry of the node is gone. An erasure rewrites the
    streams it removed entries from, in steps; with AOF on it asks Redis to rewrite the AOF."""
    from rooms.engines import redis as redis_engine

    monkeypatch.setattr(redis_engine, "REWRITE_STEP", 7)  # many steps
    with redis_server(tmp_path / "redis", aof=True) as url:
        engine = await RedisEngine.open(url)
        raw = aioredis.from_url(url)
        try:
            await engine.load("w", 0)
            await engine.append("w", [
                Draft("u" if i % 5 == 0 else "v", "N", None, f"{'SECRET' if i % 5 == 0 else 'kept'}"
                      f"-{i}-" + "z" * 40, 1000 + i) for i in range(60)],
                retention=0, dedup_window=0)
            await engine.append("w", [change("u", Action.REACT, 2, emoji=THUMBS, on=True)],
                                retention=0, dedup_window=0)
            info = await raw.xinfo_stream("roomchat:{w}:log")
            await raw.config_set("rdbcompression", "no")  # (the AOF's base is an RDB)
            erased = await engine.erase("u")
            assert erased == {"w": [i + 1 for i in range(60) if i % 5 == 0]}
            dump = await raw.dump("roomchat:{w}:log")
            assert dump is not None and b"SECRET" not in dump
            assert await raw.ttl("roomchat:{w}:log") == -1  # the copy's expiry went
            assert await raw.keys("roomchat:{w}:log:*") == []
            after = await raw.xinfo_stream("roomchat:{w}:log")
            # Ids and counters kept: 61 entries, then 12 deletes and a take-back.
            assert after["last-generated-id"] == b"0-74"
            assert after["entries-added"] == info["entries-added"] + 13
            assert [m.text for m in await engine.history("w", before=100, limit=100)
                    if not m.deleted] == [f"kept-{i}-" + "z" * 40 for i in range(60) if i % 5]
            assert await engine.append("w", drafts(1), retention=0,
                                       dedup_window=0) == [Appended(75, entry=StoredMessage(
                                           "w", 75, "u", "U", "id0", "t0", 1000))]
            # The AOF was rewritten: what is on disk no longer says it either.
            async def rewritten() -> bool:
                p = await raw.info("persistence")
                return not (p["aof_rewrite_in_progress"] or p["aof_rewrite_scheduled"])

            await until(rewritten, what="the AOF rewrite")
            files = b"".join(f.read_bytes() for f in (tmp_path / "redis").rglob("*")
                             if f.is_file())
            assert b"kept-1-" in files and b"SECRET" not in files
        finally:
            await raw.aclose()
            await engine.close()


async def test_stream_rewrite_steps_keep_appends_and_trims_and_restart_on_deletes(
        tmp_path: Path) -> None:
    """rewrite.lua under what other clients do between its steps: appends are copied, the
    oldest entries trimmed (retention) are trimmed from the copy too, a delete anywhere else
    drops the copy (it could bring the entry back), and so does a copy that expired."""
    with redis_server(tmp_path / "redis") as url:
        engine = await RedisEngine.open(url)
        raw = aioredis.from_url(url)
        log, copy, state = "roomchat:{s}:log", "roomchat:{s}:log:rewrite:t", "roomchat:{s}:state"

        async def step(after: Any, most: int, began: Any,
                       ttl: int = 60_000) -> tuple[Any, Any, Any]:
            status, after, began = await engine._rewrite_step(
                keys=[log, copy, state], args=[after, most, began, ttl])
            return status, after, began

        async def entries() -> list[Any]:
            return list(await raw.xrange(log) or ())

        try:
            for i in range(1, 11):
                await raw.xadd(log, {"text": f"t{i}"}, id=f"0-{i}")
            await raw.xdel(log, "0-5")
            status, after, began = await step("", 3, "")
            assert (status, after) == (b"more", b"0-3")
            await raw.xadd(log, {"text": "t11"}, id="0-11")  # an append
            await raw.xtrim(log, minid="0-3", approximate=False)  # retention: 1 and 2 go
            status, after, began = await step(after, 3, began)
            assert (status, after) == (b"more", b"0-7")
            want = await entries()
            status, after, began = await step(after, 3, began)
            assert status == b"more"
            assert (await step(after, 3, began))[0] == b"done"
            assert await entries() == want and want[0][0] == b"0-3" and want[-1][0] == b"0-11"
            assert len(want) == 8  # 3, 4, 6-11

            # A delete of an entry copied already: begin again.
            status, after, began = await step("", 2, "")
            await raw.xdel(log, "0-4")
            assert await step(after, 2, began) == (b"again", b"", b"")
            assert await raw.exists(copy) == 0
            # A copy that expired under a slow caller: never finished.
            status, after, began = await step("", 2, "", ttl=1)
            await asyncio.sleep(0.05)
            assert (await step(after, 2, began))[0] == b"again"
            assert await raw.xlen(log) == 7
            # In one call, from the start.
            assert (await step("", 0, ""))[0] == b"done"
            assert [i for i, _ in await entries()] == [
                b"0-3", b"0-6", b"0-7", b"0-8", b"0-9", b"0-10", b"0-11"]
            assert (await step("", 0, ""))[0] == b"done"
            await raw.delete(log)
            assert (await step("", 5, ""))[0] == b"gone"
        finally:
            await raw.aclose()
            await engine.close()


async def test_erase_is_announced_to_other_nodes_in_pages(
        two_nodes: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    from rooms import engine as contract
    from rooms.engines import redis as redis_engine

    monkeypatch.setattr(redis_engine, "ERASE_PAGE", 4)  # several pages, and a SCAN in steps
    monkeypatch.setattr(contract, "ERASE_STEP", 3)  # several announcements per page
    a, b = two_nodes
    heard = Listener()
    b.subscribe("x", heard)
    await heard.subscribed()
    for room in ("x", *(f"y{i}" for i in range(10))):
        await a.load(room, 0)
        await a.append(room, [Draft("u" if i % 3 else "v", "N", None, f"t{i}", i)
                              for i in range(11)], retention=0, dedup_window=0)
    erased = await a.erase("u")
    want = [i + 1 for i in range(11) if i % 3]  # seqs 2, 3, 5, 6, 8, 9, 11
    assert erased == {room: want for room in ("x", *(f"y{i}" for i in range(10)))}
    await wait_for(heard.arrived, lambda: len(heard.messages) == 11 + len(want))
    # Only x's (b serves x alone): its 11 messages, then a delete entry each (seqs 12-18).
    deletes = [orjson.loads(m.wire) for m in heard.messages[11:]]
    assert [(m.seq, d["seq"], d["action"], d["target"]) for m, d in
            zip(heard.messages[11:], deletes, strict=True)] == [
        (12 + i, 12 + i, "delete", seq) for i, seq in enumerate(want)]
    assert [m.seq for m in await b.history("x", before=100, limit=20)
            if not m.deleted] == [1, 4, 7, 10]


async def test_dedup_window_forgets_old_ids(redis_and_raw: tuple[RedisEngine, Any]) -> None:
    """The Redis log deduplicates over the window only (PostgreSQL over the whole log: the
    contract's "among the last ``dedup_window``" is a least)."""
    a, _ = redis_and_raw
    await a.load("w", 3)
    await a.append("w", drafts(5), retention=0, dedup_window=3)
    again = await a.append("w", drafts(1) + drafts(1, start=4), retention=0, dedup_window=3)
    assert again == [Appended(6), Appended(5, duplicate=True)]


async def test_presence_is_shared_and_expires(two_nodes: tuple[Engine, Engine]) -> None:
    a, b = two_nodes
    heard = Listener()
    b.subscribe("p", heard)
    await heard.subscribed()
    # alice's entry lives 2 s: 0.5 s ran out between two syncs at load 7 (fresh-clone run 33).
    assert (await a.sync("p", {"alice": "Alice"}, 2.0)).others == {}
    await wait_for(heard.arrived, lambda: heard.presence >= 1)
    assert (await b.sync("p", {"bob": "Bob"}, 10)).others == {"alice": "Alice"}
    assert (await a.sync("p", {"alice": "Alice"}, 2.0)).others == {"bob": "Bob"}
    await asyncio.sleep(2.2)  # a stops refreshing (as if killed): its entry expires
    assert (await b.sync("p", {"bob": "Bob"}, 10)).others == {}
    assert (await a.sync("p", {}, 10)).others == {"bob": "Bob"}


async def test_rooms_wait_for_a_pooled_connection(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        engine = await RedisEngine.open(url, max_connections=2)
        try:
            await asyncio.gather(*(engine.load(f"r{i}", 0) for i in range(200)))
            await asyncio.gather(*(engine.append(f"r{i}", drafts(3), retention=0,
                                                 dedup_window=10) for i in range(200)))
            snaps = await asyncio.gather(*(engine.load(f"r{i}", 0) for i in range(200)))
            assert {s.last_seq for s in snaps} == {3}
        finally:
            await engine.close()


async def test_appends_of_one_loop_turn_share_one_round_trip(tmp_path: Path) -> None:
    """Many small rooms each append alone: what they issue in one turn of the event loop goes to
    Redis as one pipeline, and each room still gets its own results."""
    with redis_server(tmp_path / "redis") as url:
        engine = await RedisEngine.open(url)
        try:
            rooms = [f"r{i}" for i in range(50)]
            await asyncio.gather(*(engine.load(room, 10) for room in rooms))
            before = engine._appends.round_trips
            first = await asyncio.gather(*(engine.append(room, drafts(2), retention=0,
                                                         dedup_window=10) for room in rooms))
            assert engine._appends.round_trips == before + 1
            assert first == [[Appended(1), Appended(2)]] * 50
            again = await asyncio.gather(*(engine.append(room, drafts(3), retention=0,
                                                         dedup_window=10) for room in rooms))
            assert engine._appends.round_trips == before + 2
            # id0 and id1 were stored by the first round: duplicates; id2 is new.
            assert again == [[Appended(1, True), Appended(2, True), Appended(3)]] * 50
        finally:
            await engine.close()


async def test_a_failing_append_fails_alone_and_a_lost_script_is_reloaded(
        tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        engine = await RedisEngine.open(url)
        raw = aioredis.from_url(url)
        try:
            for room in ("good1", "bad", "good2"):
                await engine.load(room, 10)
            # A log that is not a stream (WRONGTYPE): append.lua fails for this room only.
            await raw.set("roomchat:{bad}:log", "not a stream")
            results = await asyncio.gather(
                *(engine.append(room, drafts(1), retention=0, dedup_window=10)
                  for room in ("good1", "bad", "good2")), return_exceptions=True)
            assert results[0] == [Appended(1)] and results[2] == [Appended(1)]
            assert isinstance(results[1], StoreError)
            # As after a restart of Redis: the script is gone; every call of the next pipeline
            # gets NOSCRIPT, and each is run again through a call that loads it.
            await raw.script_flush()
            again = await asyncio.gather(*(engine.append(room, drafts(1, start=1), retention=0,
                                                         dedup_window=10)
                                           for room in ("good1", "good2")))
            assert again == [[Appended(2)], [Appended(2)]]
            assert [m.seq for m in await engine.read("good1", 0, 10, 10)] == [1, 2]
        finally:
            await engine.close()
            await raw.aclose()


async def test_close_during_a_script_reload_answers_every_waiter(tmp_path: Path) -> None:
    """Cancelled while one call of a flush reloads its script: the calls after it are answered
    too (StoreError), not left waiting."""
    reloading = asyncio.Event()

    class StuckScript:
        sha = "0" * 40  # unknown to Redis: every call of the pipeline gets NOSCRIPT

        async def __call__(self, keys: list[str], args: list[str | int]) -> list[int]:
            reloading.set()
            await asyncio.Event().wait()  # the reload never ends
            raise AssertionError("unreachable")

    with redis_server(tmp_path / "redis") as url:
        client = aioredis.from_url(url)
        appends = _Appends(client, StuckScript())
        try:
            futures = [appends.submit([f"k{i}"], [i]) for i in range(3)]
            await asyncio.wait_for(reloading.wait(), 5)
            await appends.close()
            for future in futures:
                with pytest.raises(StoreError, match="store is closed"):
                    await asyncio.wait_for(future, 1)
        finally:
            await client.aclose()


async def test_close_fails_the_appends_in_flight(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        engine = await RedisEngine.open(url)
        await asyncio.gather(*(engine.load(f"r{i}", 10) for i in range(20)))
        pending = [asyncio.create_task(engine.append(f"r{i}", drafts(1), retention=0,
                                                     dedup_window=10)) for i in range(20)]
        await asyncio.sleep(0)  # submitted: the flush is scheduled, its round trip not done
        await engine.close()
        async with asyncio.timeout(5):  # none is left waiting for a reply that never comes
            results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(r == [Appended(1)] or isinstance(r, StoreError) for r in results), results
        assert engine._appends._flushes == set()


def _calls(engine: RedisEngine) -> dict[str, Callable[[], Awaitable[object]]]:
    """One call of each of the engine's operations that talk to Redis."""
    return {
        "load": lambda: engine.load("r", 10),
        "append": lambda: engine.append("r", drafts(1), retention=0, dedup_window=10),
        "read": lambda: engine.read("r", 0, 10, 10),
        "history": lambda: engine.history("r", before=10, limit=10, newest=True),
        "unread": lambda: engine.unread("r", "u", scan=100),
        "mark_read": lambda: engine.mark_read("r", "u", 1),
        "markers": lambda: engine.markers("u"),
        "erase": lambda: engine.erase("nobody"),
        "ban": lambda: engine.ban("r", Ban("eve", None, "spam")),
        "unban": lambda: engine.unban("r", "eve"),
        "banned": lambda: engine.banned("r", "eve"),
        "top": lambda: engine.top("r"),
        "presence": lambda: engine.presence("r"),
        "sync": lambda: engine.sync("r", {"u": "U"}, 20),
        "stash": lambda: engine.stash("k", b"v", 10),
        "take": lambda: engine.take("k"),
        "revoke": lambda: engine.revoke("mallory", 1.0),
        "revocations": lambda: engine.revocations(0.0),
    }


def test_a_connection_closed_under_redis_py_is_a_store_error_on_uvloop(tmp_path: Path) -> None:
    """The server runs on uvloop, where a write on a transport that closed under redis-py (Redis
    crashing while it connects) raises ``RuntimeError``, not a ``RedisError``.

    The contract, whichever redis-py is installed: each operation on a connection that died
    under redis-py either succeeds having run once (redis-py >= 8.2 checks a pooled connection
    before handing it out and reconnects a dead one, so the command is sent only on the new
    one) or fails with ``StoreError`` (a room retries that); it never raises anything else,
    which would crash its room (1011, seen in tests/integration/test_scaleout_faults.py), and
    the next call works. The second half makes the write itself fail with uvloop's
    ``RuntimeError`` (a connection that closes after the pool's check), which no redis-py
    version turns into its own error: it must be a ``StoreError`` too."""
    import uvloop
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.connection import Connection

    class ClosingUnderRedisPy(Connection):
        """A connection whose next write meets a transport uvloop has already closed."""

        armed = False

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if ClosingUnderRedisPy.armed:
                ClosingUnderRedisPy.armed = False
                await self.disconnect(nowait=True)
                raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; "
                                   "the handler is closed")
            await super().send_packed_command(command, check_health)

    async def main(url: str) -> None:
        engine = await RedisEngine.open(url, max_connections=1)  # the one a call must use
        wrong = []
        try:
            for name, call in _calls(engine).items():
                pool = engine._redis.connection_pool
                connection = await pool.get_connection()
                connection._writer.transport.abort()  # closed under redis-py, which is not told
                await asyncio.sleep(0.01)
                await pool.release(connection)
                try:
                    await call()  # either outcome is the contract; anything else is not
                except StoreError:
                    pass
                except Exception as exc:  # listed below
                    wrong.append(f"{name}: {exc!r}")
                await call()  # the dead connection is gone: the next one works
        finally:
            await engine.close()
        assert not wrong, wrong

        pool = BlockingConnectionPool.from_url(url, max_connections=1, timeout=None,
                                               connection_class=ClosingUnderRedisPy)
        engine = RedisEngine(url, Redis(connection_pool=pool), None)
        try:
            for name, call in _calls(engine).items():
                ClosingUnderRedisPy.armed = True
                try:
                    await call()
                except StoreError:
                    pass
                except Exception as exc:  # listed below
                    wrong.append(f"{name}: {exc!r}")
                else:
                    wrong.append(f"{name}: no error from a write on a closed transport")
                await call()
        finally:
            await engine.close()
        assert not wrong, wrong

    with redis_server(tmp_path / "redis") as url:
        uvloop.run(main(url))


async def test_stash_is_single_use_and_expires(engine: Engine) -> None:
    await engine.stash("t1", b"claims", 30)
    await engine.stash("t2", b"short", 0.2)
    results = await asyncio.gather(*(engine.take("t1") for _ in range(5)))
    assert results.count(b"claims") == 1 and results.count(None) == 4
    await asyncio.sleep(0.3)
    assert await engine.take("t2") is None
    assert await engine.take("never") is None


async def test_revocations_are_listed_since_a_time(engine: Engine) -> None:
    await engine.revoke("alice", 100.0)
    await engine.revoke("bob", 200.0)
    await engine.revoke("alice", 50.0)  # an older revocation never moves it back
    assert await engine.revocations(0) == [("alice", 100.0), ("bob", 200.0)]
    assert await engine.revocations(100.0) == [("bob", 200.0)]


async def test_a_stash_survives_reopening(durable_url: Urls) -> None:
    first = await durable_url.open()
    await first.stash("t", b"v", 30)
    await first.close()
    again = await durable_url.open()
    try:
        assert await again.take("t") == b"v"
        assert await again.take("t") is None
    finally:
        await again.close()


async def test_the_feed_carries_exact_wire_objects(
        two_nodes: tuple[Engine, Engine]) -> None:
    a, b = two_nodes
    heard = Listener()
    b.subscribe("w", heard)
    await heard.subscribed()
    await a.load("w", 10)
    texts = ['quotes " \\ and / slash', "line\nbreak\ttab \x01", "emoji \U0001f600 ü 李",
             "\u202e bidi", "<b>not html</b>"]
    await a.append("w", [Draft("ü", "Ünï \U0001f600", None if i % 2 else f"x{i}", t, 17 + i)
                         for i, t in enumerate(texts)], retention=0, dedup_window=10)
    await wait_for(heard.arrived, lambda: len(heard.messages) == len(texts))
    got = [orjson.loads(m.wire) for m in heard.messages]
    want = [StoredMessage("w", i + 1, "ü", "Ünï \U0001f600", None if i % 2 else f"x{i}", t,
                          17 + i).to_wire() for i, t in enumerate(texts)]
    assert got == [orjson.loads(w) for w in want]
    assert all("\n" not in m.wire for m in heard.messages)


async def test_a_ban_written_while_bans_load_is_not_lost(engine: Engine) -> None:
    """A room's bans read while a ban is being written must not hide it afterwards (the
    embedded engine keeps each room's bans in memory)."""
    import time

    from rooms.engine import Ban

    await engine.banned("race", "nobody")  # the room's bans, loaded
    lookup = asyncio.ensure_future(engine.banned("race", "eve"))
    await engine.ban("race", Ban("eve", None, "spam"))
    await lookup  # whichever answer it got, the next one is the truth
    assert await engine.banned("race", "eve") == Ban("eve", None, "spam")
    loading = asyncio.ensure_future(engine.banned("race2", "x"))  # a first load, racing
    # 2 s: at load 10 a 0.2 s ban was over before the check after the load (fresh-clone run 38).
    over_at = time.time() + 2.0
    await engine.ban("race2", Ban("eve", over_at, ""))
    await loading
    assert await engine.banned("race2", "eve") is not None
    await asyncio.sleep(max(0.0, over_at - time.time()) + 0.1)
    assert await engine.banned("race2", "eve") is None  # over, without any write


async def test_a_sync_names_the_given_members_who_are_banned(engine: Engine) -> None:
    """A shared engine's ``sync`` names the given members who are banned (so a lost ban
    announcement is caught up); deletes need no catching up: they are log entries."""
    from rooms.engine import Ban

    await engine.load("t", 10)
    await engine.ban("t", Ban("eve", None, "spam"))
    synced = await engine.sync("t", {"eve": "Eve", "bob": "Bob"}, 10)
    if engine.shared:
        assert synced.banned == (("eve", "spam"),)
    else:  # one process: every ban reaches the room directly
        assert synced.banned == ()


class _Socket:
    """A transport that writes each frame at once, as ``gateway.hypercorn_ext.fastsend`` does for
    a socket with room in its buffer: every ``offer`` is a frame of its own, so frames count
    offers."""

    def __init__(self) -> None:
        self.frames: list[list[dict[str, object]]] = []
        self.wrote = asyncio.Event()

    def send_now(self, data: str) -> bool:
        self.frames.append([orjson.loads(line) for line in data.split("\n")])
        self.wrote.set()
        return True

    async def send(self, data: str) -> None:
        self.send_now(data)

    async def close(self, code: int, reason: str) -> None:
        pass


async def test_other_processes_messages_share_the_frame_of_this_process_batch(
        two_nodes: tuple[Engine, Engine]) -> None:
    """A member gets the messages another process stored and its own process's next batch in
    one frame, not one frame each (in a room split across two processes that halves the
    frames: one per member per batch)."""
    import time

    from rooms.actor import RoomActor
    from rooms.config import RoomConfig
    from rooms.protocol import SendMessage
    from rooms.session import Session
    from rooms.state import RoomState

    a, b = two_nodes
    gate, in_flight = asyncio.Event(), asyncio.Event()
    real_append = a.append
    calls = 0

    async def append(*args: object, **kw: object) -> list[Appended]:
        nonlocal calls
        calls += 1
        if calls == 1:  # hold this process's first batch in flight
            in_flight.set()
            await gate.wait()
        return await real_append(*args, **kw)  # type: ignore[arg-type]

    a.append = append  # type: ignore[method-assign]
    subscribed, repaired = asyncio.Event(), asyncio.Event()

    class Actor(RoomActor):
        def resync(self) -> None:
            super().resync()
            subscribed.set()

        async def _sync(self, state: RoomState, wall_ms: int, *, full: bool,
                        markers: bool = False) -> bool:
            reached = await super()._sync(state, wall_ms, full=full, markers=markers)
            if subscribed.is_set() and not self._inbox.repair:
                repaired.set()  # a sync begun after the resync asked for it is over
            return reached

    actor = Actor("mix", RoomConfig(rate_burst=100), a)
    running = asyncio.create_task(actor.run())
    socket = _Socket()
    ann = Session(1, "ann", "Ann", socket, outbox_limit=100, max_frame_messages=100,
                  send_timeout=10, close_timeout=1)
    plan = await actor.join(ann, after=None, expires_at=time.time() + 3600)
    writer = asyncio.create_task(ann.run_writer(plan, "mix", a, 10))
    try:
        async with asyncio.timeout(10):
            await wait_for(socket.wrote, lambda: bool(socket.frames))  # the welcome
            # The subscription's confirmation makes the room repair from the log: done while
            # mine-0 is in flight (it comes up to the engine's POLL later; seen under load),
            # that repair would deliver 1 and 2 in a frame of their own. Nor is the call
            # enough: a room busy with the join's own sync (presence) when it came runs the
            # repair after its next batch, mine-0 (seen with the PostgreSQL bus, at load 4).
            await repaired.wait()
            actor.frame_nowait(1, SendMessage("mine-0", "m0"))
            await in_flight.wait()
            # Meanwhile another process stores a message (seq 1, before ours) and its pub/sub
            # copy reaches this room (handed over as the engine's listener does), and ann sends
            # again: both wait in the actor's inbox for the batch in flight.
            await b.load("mix", 10)
            theirs = Draft("bob", "Bob", None, "theirs", 1)
            assert await b.append("mix", [theirs], retention=0, dedup_window=10) == [
                Appended(1)]
            actor.remote_messages([WireMessage(1, theirs.stored("mix", 1).to_wire())])
            actor.frame_nowait(1, SendMessage("mine-1", "m1"))
            gate.set()
            await wait_for(
                socket.wrote,
                lambda: sum(o["type"] == "message" for f in socket.frames for o in f) >= 3)
    finally:
        running.cancel()
        writer.cancel()
        await asyncio.gather(running, writer, return_exceptions=True)
    frames = [[(o["type"], o.get("seq")) for o in f] for f in socket.frames[1:]]
    # mine-0 (seq 2) waits behind bob's seq 1, which arrives by pub/sub while it is in flight:
    # the next iteration delivers 1 and 2 with mine-1 (seq 3), then the acks, in one frame.
    assert frames == [[("message", 1), ("message", 2), ("message", 3), ("ack", 2),
                       ("ack", 3)]], frames


# -- only the embedded engine ----------------------------------------------------------------


async def test_joins_arriving_together_read_a_rooms_bans_once(tmp_path: Path) -> None:
    """The members of a room come back together (a reconnect storm): one read of its bans
    serves all of them; a ban written meanwhile is seen by a join that asks after it; a read
    that fails or is cancelled leaves the others to read for themselves."""
    from rooms.engine import Ban
    from rooms.engines.embedded import EmbeddedEngine

    engine = await EmbeddedEngine.open(tmp_path / "db.sqlite3")
    try:
        real_bans = engine.store.bans
        reads: list[str] = []
        gate = asyncio.Event()

        async def bans(room: str) -> dict[str, tuple[float | None, str]]:
            reads.append(room)
            await gate.wait()
            return await real_bans(room)

        engine.store.bans = bans  # type: ignore[method-assign]
        await engine.ban("r", Ban("eve", None, "spam"))
        asking = [asyncio.ensure_future(engine.banned("r", user))
                  for user in ("ann", "bob", "eve", "cy")]
        await asyncio.sleep(0.05)
        assert reads == ["r"]  # one read in flight, the others wait for it
        # A ban written now: a join asking after it must not take the read begun before it.
        await engine.ban("r", Ban("mallory", None, "flood"))
        later = asyncio.ensure_future(engine.banned("r", "mallory"))
        await asyncio.sleep(0.05)
        assert reads == ["r", "r"]
        gate.set()
        results = await asyncio.gather(*asking)
        assert [b.user if b else None for b in results] == [None, None, "eve", None]
        assert (await later) == Ban("mallory", None, "flood")

        # The reader is cancelled (its client left): a waiter reads for itself.
        gate.clear()
        await engine.ban("s", Ban("eve", None, "x"))
        first = asyncio.ensure_future(engine.banned("s", "ann"))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(engine.banned("s", "eve"))
        await asyncio.sleep(0.05)
        first.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        assert (await second) == Ban("eve", None, "x")
        assert first.cancelled()
        assert reads.count("s") == 2
    finally:
        await engine.close()


# -- one faulty draft (issue 20, high): behind the front door's validation -----------------


async def test_a_rooms_load_brings_its_bans_and_markers_for_its_first_joins(
        tmp_path: Path) -> None:
    """A room's start reads its bans and read markers with its snapshot, in one hand-off to
    a reader thread: its first joins then read nothing (issue 22, item 7). A ban or a marker
    written while that read is in flight is not hidden by it: the next join reads again."""
    from rooms.engine import Ban
    from rooms.engines.embedded import EmbeddedEngine

    engine = await EmbeddedEngine.open(tmp_path / "db.sqlite3")
    try:
        await engine.ban("r", Ban("eve", None, "spam"))
        await engine.mark_read("r", "ann", 0)
        engine._bans.clear()
        engine._markers.clear()
        calls: list[str] = []
        gate, called = asyncio.Event(), asyncio.Event()
        gate.set()
        for name in ("bans", "room_markers", "load_room"):
            real = getattr(engine.store, name)

            async def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
                calls.append(_name)
                called.set()
                await gate.wait()
                return await _real(*args)

            setattr(engine.store, name, counted)
        await engine.load("r", 0)
        assert calls == ["load_room"]
        assert await engine.banned("r", "eve") == Ban("eve", None, "spam")
        assert await engine.banned("r", "bob") is None
        assert (await engine.unread("r", "bob", scan=0)).read == 0
        assert calls == ["load_room"], "the first joins read nothing more"

        # A ban written while the load's read is in flight: the load keeps nothing of it.
        calls.clear()
        gate.clear()
        called.clear()
        loading = asyncio.ensure_future(engine.load("r2", 0))
        async with asyncio.timeout(10):
            await called.wait()  # the load's read is under way (held at the gate)
        await engine.ban("r2", Ban("mallory", None, "flood"))
        gate.set()
        await loading
        assert await engine.banned("r2", "mallory") == Ban("mallory", None, "flood")
        assert calls == ["load_room", "bans"]
    finally:
        await engine.close()


async def test_an_unstorable_draft_fails_its_append_alone(engine: Engine) -> None:
    """Drafts no store can encode (lone surrogates, which ``rooms.text`` refuses at the front
    door) fail their own append with ``Unstorable`` naming them, store nothing, and leave the
    appends of other rooms sent at the same moment (one SQLite group commit, one Redis
    pipeline) stored."""
    rooms = [f"r{i}" for i in range(10)]
    for room in [*rooms, "bad"]:
        await engine.load(room, 10)
    batch = [*drafts(1), Draft("u", "U", "x1", "poison \ud800", 1),
             Draft("u", "Eve \udfff", "x2", "fine", 2), *drafts(1, start=1)]
    results = await asyncio.gather(
        *(engine.append(room, drafts(2), retention=0, dedup_window=10) for room in rooms[:5]),
        engine.append("bad", batch, retention=0, dedup_window=10),
        *(engine.append(room, drafts(2), retention=0, dedup_window=10) for room in rooms[5:]),
        return_exceptions=True)
    error = results.pop(5)
    assert isinstance(error, Unstorable), error
    assert error.indexes == (1, 2)
    assert results == [[Appended(1), Appended(2)]] * 10
    assert await engine.top("bad") == 0 and await engine.read("bad", 0, 10, 10) == []
    # The rest of the batch, again: stored with the first seqs, as if the others never were.
    assert await engine.append("bad", [batch[0], batch[3]], retention=0, dedup_window=10) == [
        Appended(1), Appended(2)]


async def test_a_room_refuses_an_unstorable_message_and_stores_the_rest(
        engine: Engine) -> None:
    """Bypassing the front door's validation (frames and publishes handed to the actor
    directly): the sender of the faulty message gets an ``invalid_message`` error with its
    id, the messages batched with it are stored and acked in order, a server-API publish gets
    ``Unstorable``, and the room keeps running (no retry loop, no ``unavailable``, no 1011)."""
    import time

    from rooms.actor import RoomActor, RoomLifecycle
    from rooms.config import RoomConfig
    from rooms.protocol import SendMessage
    from rooms.session import Session

    actor = RoomActor("poison", RoomConfig(rate_burst=100), engine)
    running = asyncio.create_task(actor.run())
    socket = _Socket()
    ann = Session(1, "ann", "Ann", socket, outbox_limit=100, max_frame_messages=100,
                  send_timeout=10, close_timeout=1)
    plan = await actor.join(ann, after=None, expires_at=time.time() + 3600)
    writer = asyncio.create_task(ann.run_writer(plan, "poison", engine, 10))

    def objects() -> list[dict[str, object]]:
        return [o for f in socket.frames for o in f]

    try:
        async with asyncio.timeout(10):
            await wait_for(socket.wrote, lambda: bool(socket.frames))  # the welcome
            for frame in (SendMessage("one", "m1"), SendMessage("poison \ud800", "bad"),
                          SendMessage("two", "m2")):
                assert actor.frame_nowait(1, frame)  # one wake-up: one batch
            await wait_for(socket.wrote, lambda: sum(o["type"] == "ack" for o in objects()) == 2)
            with pytest.raises(Unstorable):
                await actor.publish("api", "API", "p1", "also \udc00 bad")
            assert await actor.publish("api", "API", "p2", "three") == Appended(3)
            assert actor.lifecycle is RoomLifecycle.RUNNING
    finally:
        running.cancel()
        writer.cancel()
        await asyncio.gather(running, writer, return_exceptions=True)
    seen = [(o["type"], o.get("id"), o.get("seq"), o.get("code")) for o in objects()[1:]]
    assert ("error", "bad", None, "invalid_message") in seen
    assert [s for s in seen if s[0] != "error"] == [
        ("message", "m1", 1, None), ("message", "m2", 2, None), ("ack", "m1", 1, None),
        ("ack", "m2", 2, None), ("message", "p2", 3, None)]
    assert [m.text for m in await engine.read("poison", 0, 10, 10)] == ["one", "two", "three"]


# -- malformed data already in Redis (issue 20, item 9) -------------------------------------


@pytest.fixture
async def redis_and_raw(tmp_path: Path) -> AsyncIterator[tuple[RedisEngine, Any]]:
    """The engine, and a plain client to write what roomchat never would."""
    with redis_server(tmp_path / "redis") as url:
        engine = await RedisEngine.open(url)
        raw = aioredis.from_url(url)
        try:
            yield engine, raw
        finally:
            await engine.close()
            await raw.aclose()


def warnings_about(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "roomchat.redis" and key in r.getMessage()]


async def test_a_malformed_ban_is_read_as_a_ban_with_one_warning(
        redis_and_raw: tuple[RedisEngine, Any], caplog: pytest.LogCaptureFixture) -> None:
    engine, raw = redis_and_raw
    await raw.set("roomchat:{b}:ban:eve", b"garbage")
    await raw.set("roomchat:{b}:ban:mal", b"nan\0\xff\xfe")
    await raw.set("roomchat:{b}:ban:bob", b"1e999\0spam")
    for _ in range(3):
        assert await engine.banned("b", "eve") == Ban("eve", None, "")
        assert await engine.banned("b", "mal") == Ban("mal", None, "")
        assert await engine.banned("b", "bob") == Ban("bob", None, "spam")
    assert len(warnings_about(caplog, "roomchat:{b}:ban:eve")) == 1  # once, however often read
    synced = await engine.sync("b", {"eve": "Eve", "mal": "Mal", "ann": "Ann"}, 10)
    assert synced.banned == (("eve", ""), ("mal", ""))


async def test_log_entries_that_are_not_messages_are_left_out_with_one_warning(
        redis_and_raw: tuple[RedisEngine, Any], caplog: pytest.LogCaptureFixture) -> None:
    engine, raw = redis_and_raw
    await engine.load("s", 10)
    await engine.append("s", drafts(2), retention=0, dedup_window=10)
    await raw.xadd("roomchat:{s}:log", {"user": "u", "name": "U"}, id="0-3")  # no text, no ts
    await raw.xadd("roomchat:{s}:log", {"user": "u", "text": b"\xff", "ts": "1"}, id="0-4")
    await raw.xadd("roomchat:{s}:log", {"user": "u", "name": "\x1b[2J", "id": "x\ny",
                                         "text": "mended", "ts": "5"}, id="0-5")
    await raw.set("roomchat:{s}:seq", 5)
    # A tombstone as versions before change entries kept them (moved into the state hash when
    # first read; a field that is no seq is dropped then), and a state that is no JSON.
    await raw.hset("roomchat:{s}:deleted", mapping={"9": "u\0U\0\0" + "1", "seven": "x"})
    await raw.hset("roomchat:{s}:state", "2", "{not json")
    await raw.zadd("roomchat:{s}:changed", {"2": 2})
    for _ in range(2):
        page = await engine.read("s", 0, 10, 10)
        assert [(m.seq, m.name, m.id, getattr(m, "text", None)) for m in page] == [
            (1, "U", "id0", "t0"), (2, "U", "id1", "t1"), (5, "u", None, "mended"),
            (9, "U", None, "")]
    assert len(warnings_about(caplog, "0-3")) == 1 and len(warnings_about(caplog, "0-4")) == 1
    assert len(warnings_about(caplog, "roomchat:{s}:state field 2")) == 1
    assert await raw.exists("roomchat:{s}:deleted") == 0
    # A full page of such entries: the read goes on to the next page.
    assert [m.seq for m in await engine.read("s", 2, 8, 2)] == [5]
    assert [m.seq for m in await engine.history("s", before=10, limit=10)] == [1, 2, 5, 9]
    # A delete of one: not a message (no script error), nothing stored.
    assert await engine.append("s", [change("mod", Action.DELETE, 3, moderator=True)],
                               retention=0, dedup_window=10) == [
        Appended(0, refused=Refusal.NOT_FOUND)]
    # Seqs go on after the log's top, bad entries included.
    assert await engine.append("s", drafts(1, start=5), retention=0, dedup_window=10) == [
        Appended(6)]


async def test_a_seq_counter_that_is_not_a_number_is_repaired(
        redis_and_raw: tuple[RedisEngine, Any], caplog: pytest.LogCaptureFixture) -> None:
    engine, raw = redis_and_raw
    await engine.load("c", 10)
    await engine.append("c", drafts(3), retention=0, dedup_window=10)
    await raw.set("roomchat:{c}:seq", "three")
    assert (await engine.load("c", 10)).last_seq == 3  # from the log
    assert await engine.top("c") == 3
    assert warnings_about(caplog, "roomchat:{c}:seq")
    assert (await engine.sync("c", {}, 10)).top == 3  # and sync repairs it
    assert await raw.get("roomchat:{c}:seq") == b"3"
    await raw.set("roomchat:{c}:seq", "-1")
    await raw.hset("roomchat:{c}:ids", "u\0id0", "one")  # a dedup entry that is not a seq
    assert await engine.append("c", drafts(1), retention=0, dedup_window=10) == [Appended(4)]
    assert await raw.get("roomchat:{c}:seq") == b"4"


async def test_presence_entries_roomchat_did_not_write_are_removed(
        redis_and_raw: tuple[RedisEngine, Any], caplog: pytest.LogCaptureFixture) -> None:
    engine, raw = redis_and_raw
    key = "roomchat:{p}:presence"
    await raw.hset(key, mapping={"no separator": "1\0x", "other\0bob": "soon\0Bob",
                                 "other\0eve": "99999999999999\0Eve",
                                 b"other\0\xff": "99999999999999\0X"})
    assert await engine.presence("p") == {"eve": "Eve"}
    synced = await engine.sync("p", {"ann": "Ann"}, 10)
    assert synced.others == {"eve": "Eve"}
    assert sorted(await raw.hkeys(key)) == sorted([b"other\0\xff", b"other\0eve",
                                                   f"{engine.node}\0ann".encode()])
    assert warnings_about(caplog, key)


async def test_foreign_pub_sub_messages_do_not_stop_the_feed(
        redis_and_raw: tuple[RedisEngine, Any]) -> None:
    engine, raw = redis_and_raw
    heard = Listener()
    engine.subscribe("f", heard)
    await heard.subscribed()
    channel = "roomchat:{f}:ch"
    for junk in (b"m\xff\xfe\nnope", b"p\xff", b"r\xff\nbob\n\xc2\xb2", b"rx\nbob\nseven",
                 b"b\xff", b"\xff"):
        await raw.spublish(channel, junk)
    await raw.spublish(channel, b"rsomeone-else\nbob\n8")
    await wait_for(heard.arrived, lambda: bool(heard.reads))
    assert heard.reads == [("bob", 8)]


# -- a store that hangs (issue 20, item 5) --------------------------------------------------


async def test_an_append_cancelled_in_flight_is_stored_once(engine: Engine) -> None:
    """A room's deadline may cancel its append while the write goes on; appending the same
    batch again answers with the seqs it got (as duplicates where the engine deduplicates),
    storing nothing twice, and the next batch follows them."""
    await engine.load("c", 10)
    await engine.load("big", 10)
    # Keep the store busy (SQLite's writer, Redis's pipeline) so the append is in flight: for
    # well over the 1 ms below, and well within the engine's timeout on a loaded machine
    # (20,000 took PostgreSQL 2.3 s at load 7 and passed its 5 s timeout once).
    busy = asyncio.ensure_future(engine.append(
        "big", drafts(5_000, ids=False), retention=0, dedup_window=0))
    await asyncio.sleep(0)
    cancelled = asyncio.ensure_future(engine.append("c", drafts(2), retention=0,
                                                    dedup_window=10))
    await asyncio.sleep(0.001)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    again = await engine.append("c", drafts(2), retention=0, dedup_window=10)
    assert [r.seq for r in again] == [1, 2]
    assert await engine.append("c", drafts(1, start=2), retention=0, dedup_window=10) == [
        Appended(3)]
    assert [m.id for m in await engine.read("c", 0, 10, 10)] == ["id0", "id1", "id2"]
    await busy


async def test_a_hung_redis_fails_every_call_within_the_timeout(tmp_path: Path) -> None:
    """A Redis that stops answering (SIGSTOP: connections open, nothing answered) made every
    call wait redis-py's own socket timeout, 5 s. Each call now fails with ``StoreError``
    within the engine's timeout, and works again once Redis does."""
    from tests.redis_server import RedisServer

    with RedisServer(tmp_path / "redis", aof=False) as redis:
        engine = await RedisEngine.open(redis.url, timeout=0.25)
        try:
            await engine.load("r", 10)
            redis.pause()
            loop = asyncio.get_running_loop()
            slow = {}
            for name, call in _calls(engine).items():
                started = loop.time()
                with pytest.raises(StoreError, match=r"within 0\.25s|Timeout"):
                    await call()
                slow[name] = loop.time() - started
            # Well under redis-py's own 5 s, with room for a loaded machine (each call's
            # deadline is 0.25 s; a parallel suite once saw one take longer than 0.75 s).
            assert max(slow.values()) < 2.5 * SLOW, slow
            assert not engine.healthy
            redis.resume()
            # The subscriber's health probe notices.
            await until(lambda: engine.healthy, 5, "the engine to see Redis again")
            assert await engine.append("r", drafts(1), retention=0, dedup_window=10) == [
                Appended(1)]
        finally:
            redis.resume()
            await engine.close()


async def test_a_join_checked_before_a_ban_is_not_admitted_after_it(engine: Engine) -> None:
    """Issue 20, item 2, step by step: a join's ban check said "not banned", then the ban was
    stored and carried out (the user's sessions closed) before the room reached the join. The
    join is checked again and refused, instead of admitted after the eviction."""
    import time

    from rooms.actor import RoomActor
    from rooms.config import RoomConfig
    from rooms.errors import Banned
    from rooms.session import Session

    actor = RoomActor("race", RoomConfig(), engine)
    running = asyncio.create_task(actor.run())
    checked, go_on = asyncio.Event(), asyncio.Event()
    real_banned = engine.banned

    async def slow_banned(room: str, user: str) -> Ban | None:
        answer = await real_banned(room, user)
        if not checked.is_set():  # the first check: answered, then held before the inbox
            checked.set()
            await go_on.wait()
        return answer

    engine.banned = slow_banned  # type: ignore[method-assign]
    eve = Session(1, "eve", "Eve", _Socket(), outbox_limit=10, max_frame_messages=10,
                  send_timeout=10, close_timeout=1)
    try:
        async with asyncio.timeout(10):
            joining = asyncio.ensure_future(actor.join(eve, after=None,
                                                       expires_at=time.time() + 60))
            await checked.wait()
            await engine.ban("race", Ban("eve", None, "spam"))
            actor.ban_nowait("eve", "spam")  # as the server API does once it is stored
            await asyncio.sleep(0.05)  # the room carries it out
            go_on.set()
            with pytest.raises(Banned, match="spam"):
                await joining
            assert actor.presence() == []
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


# -- epochs: a log that went backwards (issue 20, item 3) -----------------------------------


async def test_the_epoch_is_stable_durable_and_checked(durable_url: Urls) -> None:
    """Every engine names its logs' epoch (load, sync), keeps it across restarts, and refuses
    an append from a caller that knows another one (``LogReset``: nothing stored)."""
    first = await durable_url.open()
    try:
        epoch = (await first.load("e", 10)).epoch
        assert len(epoch) == 16 and int(epoch, 16) >= 0
        assert (await first.sync("e", {}, 10)).epoch == epoch
        assert await first.append("e", drafts(2), retention=0, dedup_window=10,
                                  epoch=epoch, floor=0) == [Appended(1), Appended(2)]
        with pytest.raises(LogReset) as reset:
            await first.append("e", drafts(1, start=2), retention=0, dedup_window=10,
                               epoch="0123456789abcdef", floor=2)
        assert (reset.value.epoch, reset.value.top) == (epoch, 2)
        assert await first.top("e") == 2
    finally:
        await first.close()
    again = await durable_url.open()
    try:
        assert (await again.load("e", 10)).epoch == epoch
    finally:
        await again.close()


@pytest.fixture
async def lossy(shared_url: Urls) -> AsyncIterator[tuple[Engine, Callable[[], Awaitable[None]]]]:
    """A shared engine, and what makes its store lose every room's log: Redis's FLUSHALL (a
    restart without the AOF), PostgreSQL's rooms and entries emptied (a restore of a backup
    older than what clients saw)."""
    engine = await shared_url.open()

    async def wipe() -> None:
        if shared_url.cluster is not None:
            await asyncio.to_thread(shared_url.cluster.flush)
        elif shared_url.bus is None:
            raw = aioredis.from_url(shared_url.store)
            try:
                await raw.flushall()
            finally:
                await raw.aclose()
        else:
            import psycopg

            async with await psycopg.AsyncConnection.connect(shared_url.store,
                                                             autocommit=True) as conn:
                await conn.execute("TRUNCATE entries, rooms")

    try:
        yield engine, wipe
    finally:
        await engine.close()


async def test_a_log_that_lost_its_data_goes_on_after_the_floor_under_a_new_epoch(
        lossy: tuple[Engine, Callable[[], Awaitable[None]]]) -> None:
    """The store lost its data while a room is live: its next append, which says what the
    room has seen stored (``floor``), is refused with a new epoch, and the log goes on after
    the floor: seq 1 is never allocated twice."""
    engine, wipe = lossy
    snapshot = await engine.load("f", 10)
    assert await engine.append("f", drafts(5), retention=0, dedup_window=10,
                               epoch=snapshot.epoch, floor=0) == [Appended(i) for i in range(1, 6)]
    await wipe()
    with pytest.raises(LogReset) as reset:
        await engine.append("f", drafts(1, user="v"), retention=0, dedup_window=10,
                            epoch=snapshot.epoch, floor=5)
    assert reset.value.epoch != snapshot.epoch and reset.value.top == 5
    assert await engine.read("f", 0, 10, 10) == []  # nothing stored by the refused call
    assert await engine.append("f", drafts(1, user="v"), retention=0, dedup_window=10,
                               epoch=reset.value.epoch, floor=5) == [Appended(6)]
    assert [m.seq for m in await engine.read("f", 0, 10, 10)] == [6]
    assert (await engine.sync("f", {}, 10, floor=6)).epoch == reset.value.epoch  # settled


async def test_a_sync_or_a_load_finds_the_lost_log_too(
        lossy: tuple[Engine, Callable[[], Awaitable[None]]], shared_url: Urls) -> None:
    """A room with nothing to append learns of it at its next sync; a room started again on a
    process that served it before goes on after what that process saw; a process that never
    saw the room can only start it again at seq 1, under a new epoch (clients compare it)."""
    engine, wipe = lossy
    before = (await engine.load("s", 10)).epoch
    await engine.append("s", drafts(3), retention=0, dedup_window=10)
    await wipe()
    synced = await engine.sync("s", {"ann": "Ann"}, 10, floor=3)
    assert (synced.top, synced.epoch != before) == (3, True)
    await wipe()
    snapshot = await engine.load("s", 10)  # no floor given: this process remembers seq 3
    assert (snapshot.last_seq, snapshot.resume_floor) == (3, 3)
    assert snapshot.epoch not in (before, synced.epoch)
    await wipe()
    stranger = await shared_url.open()
    try:
        fresh = await stranger.load("s", 10)
        assert (fresh.last_seq, fresh.resume_floor) == (0, 0)
        assert fresh.epoch not in (before, synced.epoch, snapshot.epoch)
    finally:
        await stranger.close()


async def test_a_lost_publish_is_repaired_from_the_log(
        two_nodes: tuple[Engine, Engine]) -> None:
    """A batch stored and never announced (on the split engine: a process killed between the
    log's commit and the publish; on any: a pub/sub message lost) reaches the members on the
    other process through the next one's seq jump: the room reads the gap from the log after
    ``gap_repair_delay``, long before its next sync (``sync_interval``, 5 s)."""
    import time

    from rooms.actor import RoomActor
    from rooms.config import RoomConfig
    from rooms.session import Session

    a, b = two_nodes
    actor = RoomActor("lost", RoomConfig(rate_burst=100), b)
    running = asyncio.create_task(actor.run())
    socket = _Socket()
    ann = Session(1, "ann", "Ann", socket, outbox_limit=100, max_frame_messages=100,
                  send_timeout=10, close_timeout=1)
    plan = await actor.join(ann, after=None, expires_at=time.time() + 3600)
    writer = asyncio.create_task(ann.run_writer(plan, "lost", b, 10))

    def seqs() -> list[object]:
        return [o.get("seq") for f in socket.frames for o in f if o["type"] == "message"]

    try:
        async with asyncio.timeout(2):  # less than a sync: the gap repair did it
            await wait_for(socket.wrote, lambda: bool(socket.frames))  # the welcome
            await asyncio.sleep(0.3)  # b's subscription confirmed, its resync done
            await a.load("lost", 10)
            with _unannounced(a):
                await a.append("lost", [Draft("bob", "Bob", "b1", "lost", 1)], retention=0,
                               dedup_window=10)
            await a.append("lost", [Draft("bob", "Bob", "b2", "after", 2)], retention=0,
                           dedup_window=10)
            await wait_for(socket.wrote, lambda: len(seqs()) >= 2)
    finally:
        running.cancel()
        writer.cancel()
        await asyncio.gather(running, writer, return_exceptions=True)
    assert seqs() == [1, 2]


@contextlib.contextmanager
def _unannounced(engine: Engine) -> Iterator[None]:
    """Appends of ``engine`` inside are stored and never published (as if its process died
    right after the commit; Redis: as if the pub/sub message was lost on the way)."""
    from rooms.engines.split import SplitEngine

    if isinstance(engine, SplitEngine):
        bus: Any = engine.bus
        real = bus.entries
        bus.entries = lambda room, messages: None
        try:
            yield
        finally:
            bus.entries = real
    else:  # append.lua publishes: the channel is renamed for the call instead
        import rooms.engines.redis as redis_engine

        real_keys = redis_engine._keys

        def keys(room: str) -> tuple[str, str, str, str, str, str]:
            *rest, _ = real_keys(room)
            return (*rest, f"roomchat:{{{room}}}:nowhere")  # type: ignore[return-value]

        redis_engine._keys = keys
        try:
            yield
        finally:
            redis_engine._keys = real_keys


async def test_a_bus_whose_queue_is_full_drops_and_counts_and_never_blocks(
        tmp_path: Path) -> None:
    """Publishing goes through a bounded queue onto the bus's own task: past its bound a
    notice is dropped and counted (the receivers repair from the log), and the caller neither
    waits nor gets an error, also with Redis gone."""
    from rooms.engines.redis_bus import RedisBus

    with redis_server(tmp_path / "redis") as url:
        sender = await RedisBus.open(url, queue_limit=2)
        receiver = await RedisBus.open(url)
        heard = Listener()
        receiver.subscribe("q", heard)
        await heard.subscribed()
        try:
            for seq in range(1, 6):  # one turn of the loop: the task sends nothing meanwhile
                sender.entries("q", [WireMessage(seq, f'{{"seq":{seq}}}')])
            assert (sender.dropped, sender.published) == (3, 0)
            await wait_for(heard.arrived, lambda: len(heard.messages) == 2)
            assert [m.seq for m in heard.messages] == [1, 2]
            assert (sender.dropped, sender.published) == (3, 2)
        finally:
            await receiver.close()
    # Redis is gone: publishing still returns at once; what cannot go is dropped and counted.
    sender.read_moved("q", "u", 3)
    sender.banned("q", "u", "spam")
    await until(lambda: sender.dropped == 5, what="the failed notices counted")
    await until(lambda: not sender.healthy, what="the bus marked unhealthy")
    await sender.close()
    sender.entries("q", [WireMessage(9, "{}")])  # after close: ignored, no error


async def test_a_lost_subscription_reconnects_and_every_room_resyncs(
        two_nodes: tuple[Engine, Engine], shared_url: Urls) -> None:
    """The subscriber connection killed (as by a network cut): the engine connects again with
    backoff, subscribes its rooms again, and each room resyncs (what was published meanwhile
    is in the log); the feed then carries on."""
    a, b = two_nodes
    heard = {room: Listener() for room in ("k1", "k2")}
    for room, listener in heard.items():
        b.subscribe(room, listener)
    await until(lambda: all(h.resyncs == 1 for h in heard.values()), what="subscribed")
    if shared_url.cluster is not None:
        assert await asyncio.to_thread(shared_url.cluster.kill_pubsub) >= 1
    elif shared_url.bus is not None and shared_url.bus.startswith("postgresql://"):
        import psycopg

        split: Any = b
        pid = split.bus.listener_pid
        async with await psycopg.AsyncConnection.connect(shared_url.bus,
                                                         autocommit=True) as conn:
            await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    else:
        raw = aioredis.from_url(shared_url.bus or shared_url.store)
        try:
            await raw.client_kill_filter(_type="pubsub")
        finally:
            await raw.aclose()
    await until(lambda: all(h.resyncs == 2 for h in heard.values()), what="resubscribed")
    feed: Any = getattr(b, "bus", b)
    assert feed.reconnects == 1
    await a.load("k1", 10)
    await a.append("k1", drafts(1), retention=0, dedup_window=10)
    await wait_for(heard["k1"].arrived, lambda: len(heard["k1"].messages) == 1)


async def test_a_log_behind_the_floor_with_its_epoch_kept_gets_a_new_one(
        redis_and_raw: tuple[RedisEngine, Any]) -> None:
    """A failover to a replica that lagged: the epoch key is there, the log is not as far as
    the room has seen. The log goes on after the floor under a new epoch."""
    engine, raw = redis_and_raw
    epoch = (await engine.load("l", 10)).epoch
    await engine.append("l", drafts(5), retention=0, dedup_window=10, epoch=epoch)
    await raw.set("roomchat:{l}:seq", 3)
    await raw.xdel("roomchat:{l}:log", "0-4", "0-5")
    with pytest.raises(LogReset) as reset:
        await engine.append("l", drafts(1, start=5), retention=0, dedup_window=10,
                            epoch=epoch, floor=5)
    assert reset.value.epoch != epoch and reset.value.top == 5
    assert await engine.append("l", drafts(1, start=5), retention=0, dedup_window=10,
                               epoch=reset.value.epoch, floor=5) == [Appended(6)]


async def test_a_ban_the_store_cannot_hold_is_refused_and_the_room_carries_on(
        engine: Engine) -> None:
    """Issue 20 (high), beyond messages: a moderator's ban frame with a lone surrogate in its
    reason or user id, handed to the room past the front door, reached the engine raw and
    crashed the room (UnicodeEncodeError is no StoreError: 1011). The moderator now gets
    ``invalid_message``, nothing is stored, and the room goes on."""
    import time

    from rooms.actor import RoomActor, RoomLifecycle
    from rooms.config import RoomConfig
    from rooms.protocol import BanUser, SendMessage
    from rooms.session import Session

    actor = RoomActor("mods", RoomConfig(rate_burst=100), engine)
    running = asyncio.create_task(actor.run())
    socket = _Socket()
    mod = Session(1, "mod", "Mod", socket, outbox_limit=100, max_frame_messages=100,
                  send_timeout=10, close_timeout=1, moderator=True)
    plan = await actor.join(mod, after=None, expires_at=time.time() + 3600)
    writer = asyncio.create_task(mod.run_writer(plan, "mods", engine, 10))

    def objects() -> list[dict[str, object]]:
        return [o for f in socket.frames for o in f]

    try:
        async with asyncio.timeout(10):
            await wait_for(socket.wrote, lambda: bool(socket.frames))
            actor.frame_nowait(1, BanUser("eve", "spam \ud800", id="b1"))
            actor.frame_nowait(1, BanUser("ev\udfffe", "spam", id="b2"))
            await wait_for(socket.wrote,
                           lambda: sum(o["type"] == "error" for o in objects()) == 2)
            actor.frame_nowait(1, SendMessage("still here", "m1"))
            await wait_for(socket.wrote, lambda: any(o["type"] == "ack" for o in objects()))
            assert actor.lifecycle is RoomLifecycle.RUNNING
    finally:
        running.cancel()
        writer.cancel()
        await asyncio.gather(running, writer, return_exceptions=True)
    errors = [(o["id"], o["code"]) for o in objects() if o["type"] == "error"]
    assert errors == [("b1", "invalid_message"), ("b2", "invalid_message")]
    assert await engine.banned("mods", "eve") is None


async def test_a_room_loaded_again_counts_a_write_that_landed_after_its_caller_left(
        tmp_path: Path) -> None:
    """The embedded engine allocates seqs itself: a room whose append was cancelled and which
    then stopped (its outage timeout) is loaded again after that write, not before it, so the
    new actor does not allocate its seqs a second time."""
    from rooms.engines.embedded import EmbeddedEngine

    engine = await EmbeddedEngine.open(tmp_path / "db.sqlite3")
    try:
        await engine.load("gone", 10)
        await engine.load("big", 0)
        busy = asyncio.ensure_future(engine.append("big", drafts(20_000, ids=False),
                                                   retention=0, dedup_window=0))
        await asyncio.sleep(0)
        cancelled = asyncio.ensure_future(engine.append("gone", drafts(2), retention=0))
        await asyncio.sleep(0.001)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert (await engine.load("gone", 10)).last_seq == 2  # waited for the write
        assert await engine.append("gone", drafts(1, start=2), retention=0) == [Appended(3)]
        await busy
    finally:
        await engine.close()


# -- changes: edits, deletes, reactions, replies (issue 21) ----------------------------------

RULES = LogRules(edit_window=0, max_reactions=2, reply_excerpt_chars=5)


async def test_changes_are_entries_that_fold_into_the_current_state(engine: Engine) -> None:
    await engine.load("c", 10)
    assert await engine.append("c", [
        Draft("ann", "Ann", "m1", "hello there", 1000),
        Draft("bob", "Bob", "m2", "hi ann", 1001, mentions=("ann", "carol")),
    ], retention=0, dedup_window=10, rules=RULES) == [Appended(1), Appended(2)]
    results = await engine.append("c", [
        change("ann", Action.EDIT, 1, text="hello world", id="e1", ts=3000),  # 3
        change("bob", Action.REACT, 1, emoji="\U0001f44d", on=True, ts=3001),  # 4
        change("ann", Action.REACT, 1, emoji="\U0001f44d", on=True, ts=3002),  # 5
        change("bob", Action.REACT, 1, emoji="\U0001f44d", on=True),  # again: nothing to do
        change("bob", Action.REACT, 1, emoji="\U0001f389", on=True, ts=3003),  # 6
        change("bob", Action.REACT, 1, emoji="\U0001f525", on=True),  # a third emoji: too many
        change("bob", Action.EDIT, 1, text="mine now"),  # not his
        change("bob", Action.REACT, 1, emoji="\U0001f44d", on=False, ts=3004),  # 7
        change("carol", Action.REACT, 1, emoji="\U0001f525", on=False),  # not there: nothing
        Draft("carol", "Carol", "m3", "agreed", 3005, reply_to=1),  # 8
        Draft("carol", "Carol", None, "to a change", 3006, reply_to=3),  # not a message
        change("ann", Action.REACT, 3, emoji="\U0001f44d", on=True),  # not a message either
        change("ann", Action.REACT, 99, emoji="\U0001f44d", on=True),  # nothing there
    ], retention=0, dedup_window=10, rules=RULES)
    assert results == [
        Appended(3), Appended(4), Appended(5), Appended(5, noop=True), Appended(6),
        Appended(0, refused=Refusal.TOO_MANY_REACTIONS), Appended(0, refused=Refusal.FORBIDDEN),
        Appended(7), Appended(7, noop=True), Appended(8), Appended(0, refused=Refusal.NOT_FOUND),
        Appended(0, refused=Refusal.NOT_FOUND), Appended(0, refused=Refusal.NOT_FOUND)]
    # Each stored entry comes back as stored, in the protocol's shape.
    assert [wire(r.entry) for r in results if r.entry is not None] == [
        {"type": "change", "room": "c", "seq": 3, "action": "edit", "target": 1, "id": "e1",
         "user": "ann", "name": "ANN", "ts": 3000, "text": "hello world"},
        {"type": "change", "room": "c", "seq": 4, "action": "react", "target": 1, "id": None,
         "user": "bob", "name": "BOB", "ts": 3001, "emoji": "\U0001f44d", "on": True},
        {"type": "change", "room": "c", "seq": 5, "action": "react", "target": 1, "id": None,
         "user": "ann", "name": "ANN", "ts": 3002, "emoji": "\U0001f44d", "on": True},
        {"type": "change", "room": "c", "seq": 6, "action": "react", "target": 1, "id": None,
         "user": "bob", "name": "BOB", "ts": 3003, "emoji": "\U0001f389", "on": True},
        {"type": "change", "room": "c", "seq": 7, "action": "react", "target": 1, "id": None,
         "user": "bob", "name": "BOB", "ts": 3004, "emoji": "\U0001f44d", "on": False},
        {"type": "message", "room": "c", "seq": 8, "id": "m3", "user": "carol",
         "name": "Carol", "text": "agreed", "ts": 3005,
         "reply_to": {"seq": 1, "user": "ann", "name": "Ann", "excerpt": "hell\u2026"}}]
    first = StoredMessage("c", 1, "ann", "Ann", "m1", "hello world", 1000, edited=3000,
                          reactions=(Reaction("\U0001f44d", ("ann",)),
                                     Reaction("\U0001f389", ("bob",))))
    second = StoredMessage("c", 2, "bob", "Bob", "m2", "hi ann", 1001,
                           mentions=("ann", "carol"))
    reply = StoredMessage("c", 8, "carol", "Carol", "m3", "agreed", 3005,
                          Reply(1, "ann", "Ann", "hell\u2026"))
    # Pages: messages only, in their current state.
    assert await engine.history("c", before=100, limit=10) == [first, second, reply]
    assert await engine.history("c", before=100, limit=2, newest=True) == [second, reply]
    assert await engine.history("c", after=1, before=8, limit=10) == [second]
    assert wire(first) == {
        "type": "message", "room": "c", "seq": 1, "id": "m1", "user": "ann", "name": "Ann",
        "text": "hello world", "ts": 1000, "edited": 3000,
        "reactions": [{"emoji": "\U0001f44d", "users": ["ann"]},
                      {"emoji": "\U0001f389", "users": ["bob"]}]}
    assert wire(second)["mentions"] == ["ann", "carol"]
    # The raw log: every entry, messages in their current state.
    log = await engine.read("c", 0, 100, 100)
    assert [e.seq for e in log] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert log[0] == first and log[1] == second and log[7] == reply
    assert [wire(e) for e in log[2:7]] == [wire(r.entry) for r in results[:8]
                                          if r.entry is not None]
    # A client that folds the raw entries over the messages as first stored ends with the
    # current state; so does one that folds them over the current state (idempotent).
    as_stored = {1: StoredMessage("c", 1, "ann", "Ann", "m1", "hello there", 1000)}
    for e in log:
        if isinstance(e, StoredChange):
            as_stored[1] = fold(as_stored[1], e)
            assert fold(fold(first, e), e) == fold(first, e)
    assert as_stored[1] == first


async def test_a_delete_takes_the_text_everywhere_and_refuses_what_follows(
        engine: Engine) -> None:
    await engine.load("x", 10)
    await engine.append("x", [Draft("ann", "Ann", None, "secret one", 1000)], retention=0,
                        dedup_window=10)
    await engine.append("x", [
        change("ann", Action.EDIT, 1, text="secret two"),  # 2
        Draft("bob", "Bob", None, "what secret?", 1001, reply_to=1),  # 3
        change("bob", Action.REACT, 1, emoji="\u2764\ufe0f", on=True),  # 4
        change("ann", Action.DELETE, 1),  # 5
        change("ann", Action.EDIT, 1, text="back"),
        change("bob", Action.REACT, 1, emoji="\u2764\ufe0f", on=False),
        Draft("bob", "Bob", None, "to a tombstone", 1002, reply_to=1),
        change("mod", Action.DELETE, 1, moderator=True),
    ], retention=0, dedup_window=10, rules=RULES)
    assert [(r.seq, r.refused) for r in await engine.append("x", [
        change("ann", Action.EDIT, 1, text="back")], retention=0, dedup_window=10)] == [
        (0, Refusal.ALREADY_DELETED)]
    page = await engine.history("x", before=100, limit=10)
    assert page == [StoredMessage("x", 1, "ann", "Ann", None, "", 1000),
                    StoredMessage("x", 3, "bob", "Bob", None, "what secret?", 1001,
                                  Reply(1, "ann", "Ann", ""))]  # the excerpt went with it
    assert wire(page[0]) == {"type": "message", "room": "x", "seq": 1, "id": None,
                             "user": "ann", "name": "Ann", "text": "", "ts": 1000,
                             "deleted": True}
    # The edit's text left the log too (removed, or kept with an empty text).
    log = await engine.read("x", 0, 100, 100)
    assert [e.text for e in log if isinstance(e, StoredChange) and e.action is Action.EDIT] \
        in ([], [""])
    assert not any("secret" in e.to_wire() for e in log if e.seq != 3)
    assert [e.seq for e in log if isinstance(e, StoredChange)
            and e.action is not Action.EDIT] == [4, 5]


async def test_the_edit_window(engine: Engine) -> None:
    await engine.load("w", 10)
    await engine.append("w", [Draft("ann", "Ann", None, "typo", 1000)], retention=0,
                        dedup_window=10)
    rules = LogRules(edit_window=1.5)
    assert await engine.append("w", [
        change("ann", Action.EDIT, 1, text="fixed", ts=2500),  # 1.5 s after: still in time
        change("ann", Action.EDIT, 1, text="late", ts=2501),
    ], retention=0, dedup_window=10, rules=rules) == [
        Appended(2), Appended(0, refused=Refusal.EDIT_WINDOW_PASSED)]
    assert (await engine.history("w", before=9, limit=1))[0].text == "fixed"


async def test_retention_prunes_changes_with_their_messages(engine: Engine) -> None:
    await engine.load("r", 0)
    await engine.append("r", [Draft("ann", "Ann", None, f"m{i}", i) for i in range(1, 5)],
                        retention=0, dedup_window=0)
    await engine.append("r", [change("bob", Action.REACT, 1, emoji="\U0001f44d", on=True),
                              change("ann", Action.EDIT, 4, text="m4!")], retention=0,
                        dedup_window=0)  # 5, 6
    for _ in range(4):  # 200 more entries, pruned to 100
        await engine.append("r", drafts(50, ids=False), retention=100, dedup_window=0)
    oldest = (await engine.load("r", 0)).oldest_seq
    assert 106 - 100 < oldest <= 206 - 100 + 3  # SQLite prunes in ~1% steps
    assert [e.seq for e in await engine.read("r", 0, 8, 10)] == list(range(oldest, 9))
    assert await engine.append("r", [change("bob", Action.REACT, 1, emoji="\U0001f44d",
                                            on=False)], retention=100, dedup_window=0) == [
        Appended(0, refused=Refusal.NOT_FOUND)]


async def test_changes_are_deduplicated_by_user_and_id(engine: Engine) -> None:
    await engine.load("u", 10)
    await engine.append("u", [Draft("ann", "Ann", "m1", "hi", 1)], retention=0,
                        dedup_window=10)
    edit = change("ann", Action.EDIT, 1, text="hi!", id="e1")
    assert await engine.append("u", [edit], retention=0, dedup_window=10) == [Appended(2)]
    again = await engine.append("u", [edit], retention=0, dedup_window=10)
    if engine.shared:  # Redis deduplicates itself; the embedded engine leaves it to the room
        assert again == [Appended(2, duplicate=True)]
    assert ("ann", "e1", 2) in (await engine.load("u", 10)).recent_ids or engine.shared


async def test_read_markers_and_unread_counts(engine: Engine) -> None:
    await engine.load("m", 10)
    await engine.append("m", [
        Draft("ann", "Ann", None, "one", 1),  # 1
        Draft("bob", "Bob", None, "two", 2, mentions=("ann",)),  # 2
        Draft("bob", "Bob", None, "three", 3),  # 3
        change("bob", Action.REACT, 1, emoji="\U0001f44d", on=True),  # 4: not a message
        Draft("carol", "Carol", None, "@ann four", 4, mentions=("carol", "ann")),  # 5
        Draft("bob", "Bob", None, "five", 5),  # 6, deleted below
        change("bob", Action.DELETE, 6),  # 7
    ], retention=0, dedup_window=10)
    # No marker: nothing unread (never read, never here), and nothing scanned.
    assert await engine.unread("m", "ann", scan=100) == Unread()
    assert await engine.mark_read("m", "ann", 2) == 2
    assert await engine.mark_read("m", "ann", 1) == 2  # never back
    assert await engine.unread("m", "ann", scan=100) == Unread(2, 2, 1)
    assert await engine.unread("m", "ann", scan=2) == Unread(2, 2, 1, capped=True)
    assert await engine.unread("m", "ann", scan=1) == Unread(2, 1, 1, capped=True)
    await engine.mark_read("m", "bob", 1)
    assert await engine.unread("m", "bob", scan=100) == Unread(1, 1, 0)  # 5 (3, 6: his)
    assert await engine.unread("m", "ann", scan=0) == Unread(2)
    await engine.mark_read("other", "ann", 9)
    assert await engine.markers("ann") == {"m": 2, "other": 9}
    assert await engine.markers("nobody") == {}


async def test_history_pages_skip_changes_and_find_tombstones(engine: Engine) -> None:
    """Pages of messages over a log where changes sit between them and deleted messages left
    the stream (Redis): every page holds exactly the messages it should."""
    await engine.load("h", 0)
    model: dict[int, str] = {}
    seq = 0
    for i in range(60):
        seq += 1
        await engine.append("h", [Draft("ann", "Ann", None, f"m{seq}", seq)], retention=0,
                            dedup_window=0)
        model[seq] = f"m{seq}"
        target = seq
        for j in range(i % 3):  # 0, 1 or 2 changes after each message
            seq += 1
            action = change("ann", Action.DELETE, target) if (i + j) % 7 == 0 else change(
                "bob", Action.REACT, target, emoji="\U0001f44d", on=j == 0)
            (result,) = await engine.append("h", [action], retention=0, dedup_window=0)
            if result.entry is None:
                seq -= 1
            elif action.action is Action.DELETE:
                model[target] = ""
    everything = [(m.seq, m.text) for m in await engine.history("h", before=10**6, limit=999)]
    assert everything == sorted(model.items())
    for limit in (1, 7, 25):
        for before in (1, 2, 17, 50, seq, seq + 5):
            want = [s for s in sorted(model) if s < before]
            newest = await engine.history("h", before=before, limit=limit, newest=True)
            assert [m.seq for m in newest] == want[-limit:], (before, limit)
            oldest = await engine.history("h", after=before // 3, before=before, limit=limit)
            assert [m.seq for m in oldest] == [s for s in want if s > before // 3][:limit]
    # The raw log, page by page, holds every entry once.
    after, seen = 0, []
    while page := await engine.read("h", after, seq, 9):
        seen += [e.seq for e in page]
        after = page[-1].seq
    assert seen == sorted(set(seen)) and set(model) <= set(seen)


@pytest.mark.parametrize("text", ["h\u00e9llo w\u00f6rld", "\U0001f600" * 9, "a\U0001f468\u200d"
                                  "\U0001f469\u200d\U0001f467b" * 3, "short", "\u674e" * 8])
async def test_an_excerpt_is_cut_at_the_same_character_by_every_engine(
        engine: Engine, text: str) -> None:
    """Redis cuts in Lua, counting UTF-8 lead bytes; SQLite's writer in Python: the same
    excerpt, never half a character."""
    await engine.load("q", 10)
    await engine.append("q", [Draft("ann", "Ann", None, text, 1)], retention=0,
                        dedup_window=10)
    (answer,) = await engine.append("q", [Draft("bob", "Bob", None, "re", 2, reply_to=1)],
                                    retention=0, dedup_window=10,
                                    rules=LogRules(reply_excerpt_chars=6))
    assert wire(answer.entry)["reply_to"]["excerpt"] == excerpt(text, 6)
    (stored,) = await engine.history("q", after=1, before=3, limit=1)
    assert stored.reply_to == Reply(1, "ann", "Ann", excerpt(text, 6))


async def test_the_embedded_engine_reads_a_rooms_markers_once(tmp_path: Path) -> None:
    """Every join asks for the user's unread counts: the embedded engine keeps each room's
    markers in memory (it writes them all), so only a user with a marker costs a read (the
    count after it); a marker written is seen at once."""
    from rooms.engines.embedded import EmbeddedEngine

    engine = await EmbeddedEngine.open(tmp_path / "db.sqlite3")
    try:
        await engine.load("m", 0)
        await engine.append("m", [Draft("bob", "Bob", None, f"t{i}", i) for i in range(5)],
                            retention=0, dedup_window=0)
        loads: list[str] = []
        real = engine.store.room_markers

        async def counted(room: str) -> dict[str, int]:
            loads.append(room)
            return await real(room)

        engine.store.room_markers = counted  # type: ignore[method-assign]
        for user in ("ann", "carl", "ann"):
            assert await engine.unread("m", user, scan=100) == Unread()
        assert loads == [], "the room's load read them (with its snapshot)"
        assert await engine.mark_read("m", "ann", 2) == 2
        assert await engine.unread("m", "ann", scan=100) == Unread(2, 3, 0)
        assert await engine.mark_read("m", "ann", 1) == 2
        assert await engine.unread("m", "ann", scan=100) == Unread(2, 3, 0)
        assert loads == []
        engine._markers.clear()  # forgotten (more rooms than the cache holds): read once
        for user in ("ann", "carl"):
            await engine.unread("m", user, scan=100)
        assert loads == ["m"]
    finally:
        await engine.close()


PHOTO = FileRef("A" * 22, "photo.jpg", 12345, "image/jpeg", 640, 480, True)
NOTES = FileRef("B" * 22, "notes.pdf", 999, "application/octet-stream")


async def test_messages_carry_their_files_through_every_read(engine: Engine) -> None:
    """A message's files (metadata only) are stored with it and come back in its entry, in
    ``read`` and in ``history``; a message may be files alone (empty text). An edit keeps
    them, a delete takes them with the text; a files-only message counts as unread and is
    erased like any other."""
    await engine.load("f", 10)
    results = await engine.append("f", [
        Draft("ann", "Ann", "m1", "look", 1000, files=(PHOTO, NOTES)),
        Draft("ann", "Ann", "m2", "", 1001, files=(NOTES,)),
        Draft("bob", "Bob", "m3", "nice", 1002),
    ], retention=0, dedup_window=10, rules=RULES)
    assert [r.seq for r in results] == [1, 2, 3]
    photo = {"id": "A" * 22, "name": "photo.jpg", "size": 12345, "type": "image/jpeg",
             "width": 640, "height": 480, "thumb": True}
    notes = {"id": "B" * 22, "name": "notes.pdf", "size": 999,
             "type": "application/octet-stream"}
    expected = [
        {"type": "message", "room": "f", "seq": 1, "id": "m1", "user": "ann", "name": "Ann",
         "text": "look", "ts": 1000, "files": [photo, notes]},
        {"type": "message", "room": "f", "seq": 2, "id": "m2", "user": "ann", "name": "Ann",
         "text": "", "ts": 1001, "files": [notes]}]
    assert [wire(r.entry) for r in results[:2]] == expected
    assert [wire(e) for e in await engine.read("f", 0, 2, 10)] == expected
    assert [wire(m) for m in await engine.history("f", before=3, limit=10)] == expected
    await engine.mark_read("f", "bob", 1)
    assert (await engine.unread("f", "bob", scan=100)).unread == 1  # the files-only one
    seen = await engine.read("f", 0, 3, 10)  # what a client held before going away

    edited = await engine.append("f", [change("ann", Action.EDIT, 2, text="the notes",
                                              ts=3000)],
                                 retention=0, dedup_window=10, rules=RULES)
    assert edited[0].seq == 4
    (after_edit,) = await engine.history("f", after=1, before=3, limit=10)
    assert wire(after_edit)["files"] == [notes] and after_edit.text == "the notes"
    deleted = await engine.append("f", [change("ann", Action.DELETE, 1, ts=3001)],
                                  retention=0, dedup_window=10, rules=RULES)
    assert deleted[0].seq == 5
    (tombstone,) = await engine.history("f", before=2, limit=10)
    assert wire(tombstone) == {"type": "message", "room": "f", "seq": 1, "id": "m1",
                               "user": "ann", "name": "Ann", "text": "", "ts": 1000,
                               "deleted": True}
    # Erasure deletes a files-only message too (its text is empty, it is no tombstone).
    await engine.append("f", [Draft("ann", "Ann", "m4", "", 1003, files=(PHOTO,))],
                        retention=0, dedup_window=10, rules=RULES)
    erased = await engine.erase("ann")
    assert erased == {"f": [2, 6]}
    assert all(m.deleted for m in await engine.history("f", before=7, limit=10)
               if m.user == "ann")
    # That client, away for the edit, the delete and the erasure, resumes with after=3 and
    # ends with the server's copy of every message, files (and their absence) included.
    held = {m.seq: m for m in seen if isinstance(m, StoredMessage)}
    for entry in await engine.read("f", 3, 100, 100):
        if isinstance(entry, StoredMessage):
            held[entry.seq] = entry
        else:
            held[entry.target] = fold(held[entry.target], entry)
    assert [wire(held[seq]) for seq in sorted(held)] == [
        wire(m) for m in await engine.history("f", before=100, limit=100)]

"""The embedded engine's SQLite log (the engine contract itself is in test_engine.py)."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rooms.engines.sqlite import SqliteStore
from rooms.errors import StoreError, Unstorable
from rooms.messages import Appended, Draft, StoredMessage

MessageStore = SqliteStore


def msgs(first: int, count: int, user: str = "u") -> list[Draft]:
    """Drafts that the store gives seqs ``first``... when appended after seq ``first - 1``
    (their ids and texts name those seqs)."""
    return [Draft(user, "U", f"id{seq}" if seq % 2 else None, f"t{seq}", seq)
            for seq in range(first, first + count)]


def stored(room: str, first: int, count: int, user: str = "u") -> list[StoredMessage]:
    return [d.stored(room, first + i) for i, d in enumerate(msgs(first, count, user))]


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "db.sqlite3"


@pytest.fixture
async def store(store_url: Path) -> AsyncIterator[MessageStore]:
    opened = await SqliteStore.open(store_url)
    try:
        yield opened
    finally:
        await opened.close()


async def test_append_read_load_roundtrip(store: MessageStore) -> None:
    await store.append("a", msgs(1, 5), retention=0)
    await store.append("b", msgs(1, 2), retention=0)
    assert [m.seq for m in await store.read("a", 1, 4, 10)] == [2, 3, 4]
    assert [m.text for m in await store.read("a", 0, 5, 2)] == ["t1", "t2"]
    assert await store.read("a", 5, 5, 10) == []
    assert (await store.read("b", 0, 9, 9))[1] == stored("b", 2, 1)[0]
    snap = await store.load("a", dedup_window=3)
    assert (snap.last_seq, snap.oldest_seq) == (5, 1)
    assert snap.recent_ids == (("u", "id3", 3), ("u", "id5", 5))
    empty = await store.load("nobody", dedup_window=3)
    assert (empty.last_seq, empty.oldest_seq, empty.recent_ids) == (0, 1, ())


async def test_text_roundtrips_exactly(store: MessageStore) -> None:
    text = "<b>é🙂\n\t\"quotes\"</b> ' ; DROP TABLE messages; --"
    await store.append("r", [Draft("ü", "Ünïcode", "i", text, 1)], retention=0)
    (back,) = await store.read("r", 0, 1, 1)
    assert (back.text, back.user, back.name) == (text, "ü", "Ünïcode")


async def test_retention_prunes_oldest(store: MessageStore) -> None:
    await store.append("a", msgs(1, 10), retention=4)
    snap = await store.load("a", dedup_window=0)
    assert (snap.last_seq, snap.oldest_seq) == (10, 7)
    assert [m.seq for m in await store.read("a", 0, 10, 100)] == [7, 8, 9, 10]


async def test_the_writer_allocates_seqs_after_the_rooms_top(store: MessageStore) -> None:
    """Any caller may append to a room (its actor, an erasure): the seqs are the log's."""
    first, second = await asyncio.gather(store.append("a", msgs(1, 2), retention=0),
                                         store.append("a", msgs(3, 2), retention=0))
    assert [r.seq for r in first + second] == [1, 2, 3, 4]
    assert [m.text for m in await store.read("a", 0, 10, 10)] == ["t1", "t2", "t3", "t4"]


async def test_concurrent_rooms(store: MessageStore) -> None:
    await asyncio.gather(*(store.append(f"r{i}", msgs(1, 3), retention=0) for i in range(50)))
    snaps = await asyncio.gather(*(store.load(f"r{i}", 0) for i in range(50)))
    assert {snap.last_seq for snap in snaps} == {3}


async def test_data_survives_reopen(store_url: Path) -> None:
    first = await SqliteStore.open(store_url)
    await first.append("a", msgs(1, 3), retention=0)
    await first.close()
    with pytest.raises(StoreError):
        await first.read("a", 0, 5, 5)
    again = await SqliteStore.open(store_url)
    try:
        assert (await again.load("a", 10)).last_seq == 3
    finally:
        await again.close()


async def test_sqlite_group_commit_spans_rooms(tmp_path: Path) -> None:
    commits: list[int] = []
    store = await SqliteStore.open(tmp_path / "db", synchronous="NORMAL",
                                   on_commit=lambda s, n: commits.append(n))
    try:
        # A big first append keeps the writer busy while the 50 small ones queue up behind it.
        await asyncio.gather(store.append("big", msgs(1, 20_000), retention=0),
                             *(store.append(f"r{i}", msgs(1, 3), retention=0)
                               for i in range(50)))
        assert sum(commits) == 20_150
        assert len(commits) < 10  # the queued rooms share transactions
    finally:
        await store.close()


async def test_the_appends_of_one_loop_turn_are_one_commit(tmp_path: Path) -> None:
    """Issue 22, item 2: the appends submitted in one loop turn go to the writer thread in
    at most two hand-offs (the first at once, the rest at the end of the turn), so they take
    at most two commits (the writer used to be woken per room, and took them in as many
    commits as it happened to wake up for: a wake, a transaction and a completion callback
    per few rooms)."""
    commits: list[int] = []
    store = await SqliteStore.open(tmp_path / "db", synchronous="NORMAL",
                                   on_commit=lambda s, n: commits.append(n))
    # A turn of a loaded server's loop outlasts the GIL's switch interval (5 ms), and the
    # writer thread then runs in the middle of it: a short interval makes that happen here.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for turn in range(5):  # an idle writer each time: the previous turn's commit is done
            before = len(commits)
            results = await asyncio.gather(*(store.append(f"r{i}", msgs(3 * turn + 1, 3),
                                                          retention=0) for i in range(200)))
            assert all([r.seq for r in result] == [3 * turn + 1, 3 * turn + 2, 3 * turn + 3]
                       for result in results)
            # The first goes at once (a lone message waits for nothing), the rest together at
            # the end of the turn: in its own commit, or in the first's if the writer had not
            # started it yet.
            assert commits[before:] in ([3, 597], [600]), commits[before:]
    finally:
        sys.setswitchinterval(interval)
        await store.close()


async def test_a_failing_answer_hook_fails_its_own_append_alone(tmp_path: Path) -> None:
    """The appends of one commit are answered by one callback on the loop: a ``landed`` hook
    that raises fails its own append (``StoreError``), and every other room still gets its
    answer (it used to leave its own future unresolved forever)."""
    store = await SqliteStore.open(tmp_path / "db", synchronous="NORMAL")
    told: list[str] = []

    def hook(room: str, results: list[Appended] | None, error: BaseException | None) -> None:
        told.append(room)
        if room == "r1":
            raise RuntimeError("a room's own bug")

    try:
        futures = [store.submit(f"r{i}", msgs(1, 2), 0, landed=functools.partial(hook, f"r{i}"))
                   for i in range(3)]
        outcomes = await asyncio.wait_for(
            asyncio.gather(*futures, return_exceptions=True), timeout=10)
        assert told == ["r0", "r1", "r2"]
        assert isinstance(outcomes[1], StoreError), outcomes[1]
        assert [r.seq for r in outcomes[0]] == [1, 2]  # type: ignore[union-attr]
        assert [r.seq for r in outcomes[2]] == [1, 2]  # type: ignore[union-attr]
        assert (await store.load("r1", 0)).last_seq == 2  # stored: only the answer failed
    finally:
        await store.close()


async def test_bad_store_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await SqliteStore.open(tmp_path / "db", synchronous="OFF")


async def test_database_files_are_private_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "data" / "db.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await store.append("p", msgs(1, 3), retention=0)
        modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert modes and all(mode == 0o600 for mode in modes.values()), modes
    finally:
        await store.close()


async def test_an_unstorable_message_fails_its_own_append_alone(tmp_path: Path) -> None:
    """Issue 20 (high): a message SQLite cannot encode (a lone surrogate, a 70-bit integer)
    used to fail the whole group commit, every room batched with it included. Now its own
    append fails with ``Unstorable`` naming the faulty messages, stores nothing, and the
    appends committed in the same transaction are stored."""
    commits: list[int] = []
    store = await SqliteStore.open(tmp_path / "db", synchronous="NORMAL",
                                   on_commit=lambda s, n: commits.append(n))
    try:
        good, lone, huge = msgs(1, 3)
        poisoned = [good, replace(lone, text="poison \ud800"), replace(huge, ts=2**70)]
        # A big first append keeps the writer busy: everything else queues up behind it and is
        # committed together, the poisoned append among them.
        results = await asyncio.gather(
            store.append("big", msgs(1, 20_000), retention=0),
            *(store.append(f"r{i}", msgs(1, 3), retention=0) for i in range(20)),
            store.append("bad", poisoned, retention=0),
            *(store.append(f"s{i}", msgs(1, 3), retention=0) for i in range(20)),
            return_exceptions=True)
        error = results.pop(21)
        assert isinstance(error, Unstorable), error
        assert error.indexes == (1, 2)
        assert all(isinstance(r, list) and len(r) in (3, 20_000) for r in results)
        assert len(commits) < 10 and sum(commits) == 20_000 + 40 * 3  # shared transactions
        assert await store.read("bad", 0, 10, 10) == []  # all or none: nothing of it
        assert await store.append("bad", [good, lone], retention=0) == [  # the rest, again
            Appended(1), Appended(2)]
        assert [m.seq for m in await store.read("bad", 0, 10, 10)] == [1, 2]
        assert (await store.load("s19", 0)).last_seq == 3
    finally:
        await store.close()


async def test_a_database_has_one_epoch_until_a_restore_gives_it_another(
        tmp_path: Path) -> None:
    """The epoch of every log in one database (docs/protocol.md, "Epochs"): made with it,
    kept across restarts, replaced by ``new_epoch`` (what ``roomchat restore`` calls), also in
    a backup taken before databases had one."""
    import sqlite3

    from rooms.engines.sqlite import new_epoch

    path = tmp_path / "db.sqlite3"
    store = await SqliteStore.open(path)
    epoch = store.epoch
    assert len(epoch) == 16
    await store.append("a", msgs(1, 2), retention=0)
    assert (await store.load("a", 0)).epoch == epoch
    await store.close()
    again = await SqliteStore.open(path)
    assert again.epoch == epoch
    await again.close()
    assert new_epoch(path) not in ("", epoch)
    renewed = await SqliteStore.open(path)
    try:
        assert renewed.epoch != epoch and (await renewed.load("a", 0)).last_seq == 2
    finally:
        await renewed.close()
    old = tmp_path / "old.sqlite3"  # no meta table
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE messages (room TEXT, seq INTEGER)")
    conn.close()
    assert len(new_epoch(old)) == 16


async def test_a_database_of_an_older_version_gets_the_new_columns(tmp_path: Path) -> None:
    """A database written before change entries existed (no kind, target, current-state
    columns) opens, and its messages read back, then take changes like new ones."""
    import sqlite3

    from rooms.messages import Action, ChangeDraft

    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE messages (room TEXT NOT NULL, seq INTEGER NOT NULL, user TEXT "
                 "NOT NULL, name TEXT NOT NULL, client_id TEXT, text TEXT NOT NULL, ts INTEGER "
                 "NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID")
    conn.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?)",
                     [("a", 1, "u", "U", "c1", "old one", 5), ("a", 2, "v", "V", None, "", 6)])
    conn.commit()
    conn.close()
    store = await SqliteStore.open(path)
    try:
        assert await store.read("a", 0, 9, 9) == [
            StoredMessage("a", 1, "u", "U", "c1", "old one", 5),
            StoredMessage("a", 2, "v", "V", None, "", 6)]  # an old tombstone stays one
        (done,) = await store.append("a", [ChangeDraft("u", "U", "e", 7, Action.EDIT, 1,
                                                       text="new")], retention=0)
        assert done.seq == 3
        assert [m.text for m in await store.history("a", before=9, limit=9)] == ["new", ""]
    finally:
        await store.close()


async def test_a_database_from_before_files_gets_the_files_column(tmp_path: Path) -> None:
    """A database of the version before files (every column but ``files``) opens; its
    messages and tombstones read back as they were, and new messages carry files."""
    import sqlite3

    from rooms.attachments import FileRef
    from rooms.engines.sqlite import _COLUMNS

    path = tmp_path / "before-files.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE messages (room TEXT NOT NULL, seq INTEGER NOT NULL, user TEXT "
                 "NOT NULL, name TEXT NOT NULL, client_id TEXT, text TEXT NOT NULL, ts INTEGER "
                 "NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID")
    for name, declaration in _COLUMNS:
        if name != "files":
            conn.execute(f"ALTER TABLE messages ADD COLUMN {name} {declaration}")
    conn.executemany("INSERT INTO messages (room, seq, user, name, client_id, text, ts) "
                     "VALUES (?,?,?,?,?,?,?)",
                     [("a", 1, "u", "U", "c1", "old one", 5), ("a", 2, "v", "V", None, "", 6)])
    conn.commit()
    conn.close()
    store = await SqliteStore.open(path)
    try:
        old = await store.history("a", before=9, limit=9)
        assert old == [StoredMessage("a", 1, "u", "U", "c1", "old one", 5),
                       StoredMessage("a", 2, "v", "V", None, "", 6)]
        assert old[1].deleted
        ref = FileRef("A" * 22, "a.txt", 3, "text/plain")
        (done,) = await store.append("a", [Draft("u", "U", "c2", "", 7, files=(ref,))],
                                     retention=0)
        assert done.seq == 3
        (new,) = await store.history("a", after=2, before=9, limit=9)
        assert new.files == (ref,) and not new.deleted
    finally:
        await store.close()

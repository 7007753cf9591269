"""SqliteStore against a real database file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rooms.errors import StoreError
from rooms.state import StoredMessage
from rooms.store import SqliteStore


def msgs(room: str, first: int, count: int, user: str = "u") -> list[StoredMessage]:
    return [StoredMessage(room, seq, user, "U", f"id{seq}" if seq % 2 else None, f"t{seq}", seq)
            for seq in range(first, first + count)]


async def test_append_read_load_roundtrip(tmp_path: Path) -> None:
    commits: list[int] = []
    store = await SqliteStore.open(tmp_path / "db", on_commit=lambda s, n: commits.append(n))
    try:
        await store.append(msgs("a", 1, 5), retention=0)
        await store.append(msgs("b", 1, 2), retention=0)
        assert [m.seq for m in await store.read("a", 1, 4, 10)] == [2, 3, 4]
        assert [m.text for m in await store.read("a", 0, 5, 2)] == ["t1", "t2"]
        snap = await store.load("a", dedup_window=3)
        assert (snap.last_seq, snap.oldest_seq) == (5, 1)
        assert snap.recent_ids == (("u", "id3", 3), ("u", "id5", 5))
        empty = await store.load("nobody", dedup_window=3)
        assert (empty.last_seq, empty.oldest_seq, empty.recent_ids) == (0, 1, ())
        assert sum(commits) == 7
    finally:
        await store.close()
    with pytest.raises(StoreError):
        await store.read("a", 0, 5, 5)


async def test_retention_prunes_oldest(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "db")
    try:
        await store.append(msgs("a", 1, 10), retention=4)
        snap = await store.load("a", dedup_window=0)
        assert (snap.last_seq, snap.oldest_seq) == (10, 7)
    finally:
        await store.close()


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    commits: list[int] = []
    store = await SqliteStore.open(tmp_path / "db", synchronous="NORMAL",
                                   on_commit=lambda s, n: commits.append(n))
    try:
        await asyncio.gather(*(store.append(msgs(f"r{i}", 1, 3), retention=0)
                               for i in range(50)))
        assert sum(commits) == 150
        assert len(commits) < 50  # group commit: several rooms per transaction
    finally:
        await store.close()


async def test_failed_commit_raises_and_stores_nothing(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "db")
    try:
        await store.append(msgs("a", 1, 2), retention=0)
        with pytest.raises(StoreError):
            await store.append([*msgs("a", 3, 2), *msgs("a", 2, 1)], retention=0)  # seq 2 again
        assert [m.seq for m in await store.read("a", 0, 10, 10)] == [1, 2]
    finally:
        await store.close()


async def test_data_survives_reopen(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "db")
    await store.append(msgs("a", 1, 3), retention=0)
    await store.close()
    again = await SqliteStore.open(tmp_path / "db")
    try:
        assert (await again.load("a", 10)).last_seq == 3
    finally:
        await again.close()


async def test_bad_synchronous_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await SqliteStore.open(tmp_path / "db", synchronous="OFF")

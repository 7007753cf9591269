"""The catalog over every blob store: usage, attach, orphans and erasure (what the rich-messages
path and ``roomchat erase`` will call), with the clock stepped, not slept."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from files.blobstore import BlobStore
from files.catalog import (
    ATTACH_MARGIN,
    Catalog,
    attach_refusal,
    blob_key,
    message_key,
    owner_key,
    pending_key,
    thumb_key,
)
from files.errors import FileNotFound, NotAttachable
from files.meta import FileMeta, new_file_id

TTL = 3600.0
T0 = 1_000_000.0


async def add(catalog: Catalog, user: str = "alice", room: str = "lobby", size: int = 10,
              created: float = T0, thumb: bool = False) -> FileMeta:
    meta = FileMeta(id=new_file_id(), room=room, user=user, name="a.bin", size=size,
                    type="application/pdf", created=created, thumb=thumb)
    spool = catalog.blobs.spool
    original = spool / f"o-{meta.id}"
    original.write_bytes(b"x" * size)
    small = None
    if thumb:
        small = spool / f"t-{meta.id}"
        small.write_bytes(b"t")
    await catalog.add(meta, original, small)
    return meta


async def all_keys(blobs: BlobStore) -> set[str]:
    found: set[str] = set()
    for folder in ("meta/", "thumb/", "pending/", "blob/"):
        found |= {e.key for e in await blobs.list(folder)}
    return found


async def test_add_get_usage(blobs: BlobStore) -> None:
    catalog = Catalog(blobs)
    meta = await add(catalog, size=10, thumb=True)
    await add(catalog, size=5)
    await add(catalog, user="bob", size=7)
    assert await catalog.get(meta.id) == meta
    assert await catalog.get(new_file_id()) is None
    assert await catalog.get("../../etc/passwd") is None  # no store is asked
    assert await catalog.usage("alice") == 15  # thumbnails are not counted
    assert await catalog.usage("bob") == 7
    assert await catalog.usage("carol") == 0


async def test_attach(blobs: BlobStore) -> None:
    catalog = Catalog(blobs)
    meta = await add(catalog)
    attached = await catalog.attach(meta.id, "lobby", 7, now=T0 + 10, ttl=TTL)
    assert attached.seq == 7 and (await catalog.get(meta.id)) == attached
    assert await blobs.stat(pending_key(meta.id)) is None
    # The same message again (a retry): fine. Another message, room, user or id: refused.
    assert await catalog.attach(meta.id, "lobby", 7, now=T0 + 20, ttl=TTL) == attached
    with pytest.raises(NotAttachable, match="attached to message 7"):
        await catalog.attach(meta.id, "lobby", 8, now=T0 + 20, ttl=TTL)
    other = await add(catalog)
    with pytest.raises(NotAttachable, match="another room"):
        await catalog.attach(other.id, "team", 8, now=T0 + 20, ttl=TTL)
    with pytest.raises(FileNotFound):
        await catalog.attach(other.id, "lobby", 8, now=T0 + 20, ttl=TTL, user="bob")
    with pytest.raises(FileNotFound):
        await catalog.attach(new_file_id(), "lobby", 8, now=T0 + 20, ttl=TTL)
    assert (await catalog.attach(other.id, "lobby", 8, now=T0 + 20, ttl=TTL,
                                 user="alice")).seq == 8


async def test_attach_refuses_what_the_collector_may_take(blobs: BlobStore) -> None:
    catalog = Catalog(blobs)
    meta = await add(catalog)
    with pytest.raises(NotAttachable, match="too old"):
        await catalog.attach(meta.id, "lobby", 1, now=T0 + TTL - ATTACH_MARGIN + 1, ttl=TTL)
    assert (await catalog.attach(meta.id, "lobby", 1, now=T0 + TTL - ATTACH_MARGIN - 1,
                                 ttl=TTL)).seq == 1


async def test_orphans_are_collected_after_the_ttl(blobs: BlobStore) -> None:
    """The markers' times (the real clock) say who may be old; the collector runs "later" by
    being given a later ``now``."""
    catalog = Catalog(blobs)
    now = time.time()
    orphan = await add(catalog, created=now)
    attached = await add(catalog, thumb=True, created=now)
    await catalog.attach(attached.id, "lobby", 3, now=now, ttl=TTL)
    orphan_with_thumb = await add(catalog, thumb=True, created=now)
    # Written by a process whose clock is far ahead: its own time says it is young.
    ahead = await add(catalog, created=now + 2 * TTL)
    assert await catalog.collect_orphans(now=now + 10, ttl=TTL) == []  # too young
    collected = await catalog.collect_orphans(now=now + TTL + 10, ttl=TTL)
    assert sorted(collected) == sorted([orphan.id, orphan_with_thumb.id])
    assert await catalog.get(orphan.id) is None
    assert await all_keys(blobs) == {
        f"meta/{attached.id}.json", thumb_key(attached.id),
        blob_key(owner_key("alice"), attached.id),
        f"meta/{ahead.id}.json", pending_key(ahead.id), blob_key(owner_key("alice"), ahead.id)}


async def test_what_a_crash_left_is_collected(blobs: BlobStore, tmp_path: Path) -> None:
    """An upload that died after its bytes but before its metadata: the marker names them."""
    meta = FileMeta(id=new_file_id(), room="lobby", user="alice", name="a", size=1,
                    type="image/png", created=T0)
    await blobs.put_bytes(pending_key(meta.id), owner_key("alice").encode())
    await blobs.put_bytes(blob_key(owner_key("alice"), meta.id), b"x")
    await blobs.put_bytes(thumb_key(meta.id), b"t")
    await blobs.put_bytes(pending_key(new_file_id()), b"../../not-an-owner")  # no harm done
    catalog = Catalog(blobs)
    assert meta.id in await catalog.collect_orphans(now=T0 * 10_000, ttl=TTL)
    assert await all_keys(blobs) == set()


async def test_erase_in_a_room_or_everywhere(blobs: BlobStore) -> None:
    catalog = Catalog(blobs)
    in_lobby = await add(catalog, thumb=True)
    await catalog.attach(in_lobby.id, "lobby", 1, now=T0, ttl=TTL)
    in_team = await add(catalog, room="team")
    bobs = await add(catalog, user="bob")
    assert await catalog.erase("alice", "lobby") == [in_lobby.id]
    assert await catalog.get(in_lobby.id) is None and await catalog.get(in_team.id) == in_team
    assert await catalog.erase("alice") == [in_team.id]
    assert await catalog.erase("alice") == []  # a retry is harmless
    assert await all_keys(blobs) == {
        f"meta/{bobs.id}.json", pending_key(bobs.id), blob_key(owner_key("bob"), bobs.id)}


async def test_a_messages_files_go_with_its_delete_and_with_pruning(blobs: BlobStore) -> None:
    """``attach`` indexes a file under its message; ``delete_message`` and ``prune`` find
    them there (and only theirs), leaving nothing of them in the store."""
    catalog = Catalog(blobs)
    one, two = await add(catalog, thumb=True), await add(catalog)
    later, elsewhere = await add(catalog), await add(catalog, room="team")
    unattached = await add(catalog)
    for meta, seq in ((one, 3), (two, 3), (later, 9)):
        await catalog.attach(meta.id, "lobby", seq, now=T0 + 1, ttl=TTL)
    await catalog.attach(elsewhere.id, "team", 3, now=T0 + 1, ttl=TTL)
    assert await catalog.delete_message("lobby", 4) == []
    assert sorted(await catalog.delete_message("lobby", 3)) == sorted([one.id, two.id])
    assert await catalog.get(one.id) is None and await catalog.get(two.id) is None
    assert await catalog.delete_message("lobby", 3) == []  # a repeat is harmless
    assert await catalog.prune("lobby", 9) == []
    assert await catalog.prune("lobby", 10) == [later.id]
    assert await catalog.get(elsewhere.id) is not None  # another room's message 3: kept
    assert await all_keys(blobs) == {
        f"meta/{m.id}.json" for m in (elsewhere, unattached)} | {
        blob_key(owner_key("alice"), m.id) for m in (elsewhere, unattached)} | {
        pending_key(unattached.id)}
    assert [e.key for e in await blobs.list("msg/")] == [
        message_key("team", 3, elsewhere.id)]
    # Erasure takes the index entry with the file.
    await catalog.erase("alice")
    assert await blobs.list("msg/") == []


async def test_attach_refusal_says_why_before_a_message_is_stored(blobs: BlobStore) -> None:
    catalog = Catalog(blobs)
    meta = await add(catalog)
    assert attach_refusal(meta, "lobby", "alice", now=T0 + 1, ttl=TTL) is None
    assert isinstance(attach_refusal(None, "lobby", "alice", now=T0, ttl=TTL), FileNotFound)
    assert isinstance(attach_refusal(meta, "lobby", "bob", now=T0, ttl=TTL), FileNotFound)
    assert isinstance(attach_refusal(meta, "team", "alice", now=T0, ttl=TTL), NotAttachable)
    edge = T0 + TTL - ATTACH_MARGIN
    assert attach_refusal(meta, "lobby", "alice", now=edge, ttl=TTL) is None
    assert isinstance(attach_refusal(meta, "lobby", "alice", now=edge + 1, ttl=TTL),
                      NotAttachable)
    attached = await catalog.attach(meta.id, "lobby", 5, now=T0 + 1, ttl=TTL)
    refusal = attach_refusal(attached, "lobby", "alice", now=T0 + 2, ttl=TTL)
    assert isinstance(refusal, NotAttachable) and "message 5" in str(refusal)

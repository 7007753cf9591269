"""The blob store contract, run against every store (a directory and a real S3 server)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from files.blobstore import BlobStore, open_blobstore
from files.errors import BlobStoreError


async def _collect(store: BlobStore, key: str, begin: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, begin, end)])


async def test_put_get_stat_read_list_delete(blobs: BlobStore) -> None:
    assert await blobs.get_bytes("meta/x.json") is None
    assert await blobs.stat("blob/u/x") is None
    before = time.time() - 5
    await blobs.put_bytes("meta/x.json", b'{"a":1}')
    spooled = blobs.spool / "upload"
    spooled.write_bytes(b"0123456789" * 100_000)  # 1 MB: more than one read chunk
    await blobs.put_file("blob/u/x", spooled)
    assert not spooled.exists()  # consumed
    assert await blobs.get_bytes("meta/x.json") == b'{"a":1}'
    entry = await blobs.stat("blob/u/x")
    assert entry is not None and entry.size == 1_000_000 and entry.modified >= before
    assert await _collect(blobs, "blob/u/x", 0, 1_000_000) == b"0123456789" * 100_000
    assert await _collect(blobs, "blob/u/x", 5, 12) == b"5678901"
    await blobs.put_bytes("blob/u/y", b"yy")
    await blobs.put_bytes("blob/v/z", b"z")
    listed = sorted((e.key, e.size) for e in await blobs.list("blob/u/"))
    assert listed == [("blob/u/x", 1_000_000), ("blob/u/y", 2)]
    assert await blobs.list("blob/nobody/") == []
    await blobs.delete("blob/u/x")
    await blobs.delete("blob/u/x")  # twice: nothing to delete is not an error
    assert await blobs.stat("blob/u/x") is None
    with pytest.raises(BlobStoreError):
        await _collect(blobs, "blob/u/x", 0, 10)


async def test_a_write_replaces_whole(blobs: BlobStore) -> None:
    await blobs.put_bytes("meta/k.json", b"first version, longer")
    await blobs.put_bytes("meta/k.json", b"second")
    assert await blobs.get_bytes("meta/k.json") == b"second"


@pytest.mark.parametrize("key", ["../etc/passwd", "meta/../../x", "blob/u/a b", "/abs/x",
                                 "meta/x\x00y", "Meta/x", "blob//x", "blob/" + "a" * 65])
async def test_keys_of_no_known_form_are_refused(blobs: BlobStore, key: str) -> None:
    """Keys are made from checked ids; a malformed one is a bug, refused before any I/O."""
    with pytest.raises(ValueError, match="not a blob key"):
        await blobs.put_bytes(key, b"x")
    with pytest.raises(ValueError, match="not a blob key"):
        await blobs.get_bytes(key)


async def test_the_spool_sweep_removes_only_old_files(blobs: BlobStore) -> None:
    (blobs.spool / "old").write_bytes(b"x")
    (blobs.spool / "new").write_bytes(b"x")
    os.utime(blobs.spool / "old", (time.time() - 7200, time.time() - 7200))
    assert await blobs.sweep_spool(time.time() - 3600) == 1
    assert sorted(p.name for p in blobs.spool.iterdir()) == ["new"]


async def test_a_closed_store_refuses(blobs: BlobStore) -> None:
    await blobs.close()
    with pytest.raises(BlobStoreError, match="closed"):
        await blobs.get_bytes("meta/x.json")


async def test_urls_of_no_known_form_are_refused(tmp_path: Path) -> None:
    for url in ("ftp://x/y", "file://relative/dir", "s3://", "s3://bucket?color=red"):
        with pytest.raises(ValueError):
            await open_blobstore(url, spool=tmp_path)


async def test_an_unwritable_directory_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BlobStoreError, match="cannot write files under"):
        await open_blobstore((blocker / "files").as_uri(), spool=tmp_path)


async def test_a_missing_bucket_is_one_line(s3_endpoint: str, tmp_path: Path) -> None:
    url = f"s3://no-such-bucket?endpoint={s3_endpoint}&region=us-east-1"
    with pytest.raises(BlobStoreError, match="bucket 'no-such-bucket' cannot be read"):
        await open_blobstore(url, spool=tmp_path)

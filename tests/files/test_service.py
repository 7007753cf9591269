"""``FileService.receive`` and the collector over a real directory store, fed chunk by chunk as
a request body would be: refusals leave nothing behind."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from files.blobstore import open_blobstore
from files.catalog import pending_key
from files.errors import EmptyFile, FileTooLarge, QuotaExceeded, UploadStalled
from files.meta import FileMeta
from files.service import FileLimits, FileService
from tests.imagefiles import GPS_IFD, image, jpeg_with_gps, opened

MiB = 1024 * 1024
LIMITS = FileLimits(max_file_bytes=3 * MiB, max_user_storage_bytes=8 * MiB,
                    max_image_pixels=50_000_000, file_orphan_ttl=3600.0, image_workers=1,
                    upload_idle_timeout=5.0)


class Clock:
    """Unix seconds, stepped by the test (the store's file times are the real clock's)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[FileService]:
    blobs = await open_blobstore((tmp_path / "files").as_uri(), spool=tmp_path / "spool")
    files = FileService(blobs, LIMITS)
    try:
        yield files
    finally:
        await files.close()


def left_behind(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class Body:
    """A request body: ``chunks`` of ``size`` bytes, counting how many were read."""

    def __init__(self, data: bytes | None = None, *, size: int = 64 * 1024,
                 chunks: int = 0) -> None:
        self.data, self.size, self.chunks, self.read = data, size, chunks, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.data is not None:
            for start in range(0, len(self.data), self.size):
                self.read += 1
                yield self.data[start:start + self.size]
            return
        for _ in range(self.chunks) if self.chunks else itertools.count():
            self.read += 1
            yield b"\0" * self.size


async def receive(service: FileService, body: Body, declared: int | None = None,
                  user: str = "alice") -> FileMeta:
    return await service.receive(aiter(body), room="lobby", user=user, name="f",
                                 declared=declared)


async def test_an_upload_too_large_is_refused_mid_stream(service: FileService,
                                                         tmp_path: Path) -> None:
    body = Body(size=MiB)  # endless
    with pytest.raises(FileTooLarge, match=str(3 * MiB)):
        await receive(service, body)
    assert body.read == 4  # the fourth MiB passed the limit: not one more chunk was read
    assert left_behind(tmp_path / "files") == []


async def test_the_size_limit_at_its_edge(service: FileService, tmp_path: Path) -> None:
    meta = await receive(service, Body(size=MiB, chunks=3))
    assert meta.size == 3 * MiB
    with pytest.raises(FileTooLarge):
        await receive(service, Body(b"\0" * (3 * MiB + 1), size=MiB))


async def test_a_declared_size_too_large_reads_nothing(service: FileService) -> None:
    body = Body(size=MiB)
    with pytest.raises(FileTooLarge):
        await receive(service, body, declared=3 * MiB + 1)
    assert body.read == 0


async def test_the_quota(service: FileService, tmp_path: Path) -> None:
    for _ in range(2):
        await receive(service, Body(size=MiB, chunks=3))
    await receive(service, Body(size=MiB, chunks=2))  # exactly the 8 MiB quota
    before = left_behind(tmp_path / "files")
    with pytest.raises(QuotaExceeded):
        await receive(service, Body(b"x"))
    with pytest.raises(QuotaExceeded):
        await receive(service, Body(size=MiB), declared=MiB)
    assert left_behind(tmp_path / "files") == before
    await receive(service, Body(b"x"), user="bob")  # a quota is per user


async def test_a_stalled_upload_is_dropped(tmp_path: Path) -> None:
    blobs = await open_blobstore((tmp_path / "files").as_uri(), spool=tmp_path)
    service = FileService(blobs, replace(LIMITS, upload_idle_timeout=0.05))

    async def stalls() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.sleep(10)
        yield b"never"

    try:
        with pytest.raises(UploadStalled, match=r"0\.05 s"):
            await service.receive(stalls(), room="lobby", user="alice", name="f")
        assert left_behind(tmp_path / "files") == []
    finally:
        await service.close()


async def test_an_empty_upload_is_refused(service: FileService, tmp_path: Path) -> None:
    with pytest.raises(EmptyFile):
        await receive(service, Body(b""))
    assert left_behind(tmp_path / "files") == []


async def test_an_image_is_stored_re_encoded(service: FileService, tmp_path: Path) -> None:
    meta = await service.receive(aiter(Body(jpeg_with_gps((640, 480)), size=1000)),
                                 room="lobby", user="alice", name="me.jpg")
    assert (meta.type, meta.width, meta.height, meta.thumb) == ("image/jpeg", 480, 640, True)
    stored = b"".join([c async for c in service.read(meta, False, 0, meta.size)])
    assert GPS_IFD not in opened(stored).getexif()
    assert len(stored) == meta.size
    files = left_behind(tmp_path / "files")
    assert len(files) == 4 and not any(f.startswith("tmp/") for f in files)
    plain = await service.receive(aiter(Body(b"%PDF-1.4 not really")), room="lobby",
                                  user="alice", name="doc.pdf")
    assert (plain.type, plain.width, plain.thumb) == ("application/pdf", None, False)


async def test_a_cancelled_upload_leaves_nothing(service: FileService, tmp_path: Path) -> None:
    big = image("PNG", (3000, 3000))  # long enough to be cancelled while in the worker
    task = asyncio.create_task(service.receive(aiter(Body(big)), room="lobby", user="alice",
                                               name="big.png"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(1.0)  # the worker finishes what it started, then its files go
    assert left_behind(tmp_path / "files") == []


async def test_the_collector_takes_orphans_on_its_own(tmp_path: Path) -> None:
    blobs = await open_blobstore((tmp_path / "files").as_uri(), spool=tmp_path)
    clock = Clock()
    limits = FileLimits(max_file_bytes=MiB, max_user_storage_bytes=MiB,
                        max_image_pixels=1000, file_orphan_ttl=2.0, image_workers=1,
                        upload_idle_timeout=1.0)
    service = FileService(blobs, limits, clock=clock)
    try:
        kept = await service.receive(aiter(Body(b"kept")), room="lobby", user="a", name="k")
        await service.attach(kept.id, "lobby", 1)
        orphan = await service.receive(aiter(Body(b"orphan")), room="lobby", user="a",
                                       name="o")
        assert await blobs.stat(pending_key(orphan.id)) is not None
        assert service.collect_interval() == 1.0
        clock.now += 10
        collector = asyncio.create_task(service.run_collector())
        try:
            for _ in range(100):
                if await service.catalog.get(orphan.id) is None:
                    break
                await asyncio.sleep(0.1)
        finally:
            collector.cancel()
            await asyncio.wait([collector])
        assert await service.catalog.get(orphan.id) is None
        assert await service.catalog.get(kept.id) is not None
    finally:
        await service.close()

"""``FileService``: an upload from its first byte to a stored file, and everything else the
gateway asks of files (reads, attach, erasure, the orphan collector). It knows nothing of HTTP:
the gateway hands it the request body as chunks and maps its errors (``files.errors``).

An upload is spooled to a local file as it arrives (here at most ``SPOOL_BUFFER`` bytes wait
for the disk; in front of this, Quart's request buffer holds what arrived while a write waited,
at most ``MAX_CONTENT_LENGTH``, and ``gateway.files.UploadPace`` bounds how fast it arrives),
refused as soon as it passes ``max_file_bytes``
(the partial file is removed at once), typed from its bytes (``files.sniff``), and, for an
image, decoded and re-encoded in a bounded pool of worker processes (``files.images``) before
it is stored (``files.catalog``): the original an image came as is never stored.

Worker processes, not threads: Pillow releases the GIL while it decodes and encodes, but not
while it copies or frees a large image; with threads the event loop waited up to 36 ms now and
then during a 42-megapixel image, with processes at most ~4 ms (``bench/fileslag.py``). A
process also keeps a decoder's crash or its memory away from the server. They are forked from
a ``forkserver`` (never from this threaded process), started on the first image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from files.blobstore import BlobStore
from files.catalog import Catalog, attach_refusal
from files.errors import (
    BadImage,
    BlobStoreError,
    EmptyFile,
    FileNotFound,
    FileTooLarge,
    NotAttachable,
    QuotaExceeded,
    UploadStalled,
)
from files.images import THUMB_TYPE, Processed, process_image
from files.meta import IMAGE_TYPES, FileMeta, new_file_id
from files.sniff import SNIFF_BYTES, sniff

log = logging.getLogger("roomchat.files")

SPOOL_BUFFER = 1024 * 1024
"""Bytes of an upload gathered in memory before one write to the spool file (in a thread)."""
SPOOL_GRACE = 3600.0
"""Seconds after its last write that a spool file left by a crashed upload may be removed."""


@dataclass(frozen=True, slots=True)
class FileLimits:
    """The settings ``FileService`` enforces (``gateway.config``: same names)."""

    max_file_bytes: int
    max_user_storage_bytes: int
    max_image_pixels: int
    file_orphan_ttl: float
    image_workers: int
    upload_idle_timeout: float


class FileService:
    """Files of every room, over one ``BlobStore``. ``clock``: Unix seconds (upload times,
    orphan ages). Call ``close`` when done (it closes the blob store)."""

    def __init__(self, blobs: BlobStore, limits: FileLimits,
                 clock: Callable[[], float] = time.time) -> None:
        if limits.image_workers < 1:
            raise ValueError("image_workers must be at least 1")
        self.blobs = blobs
        self.catalog = Catalog(blobs)
        self.limits = limits
        self._clock = clock
        self._images: ProcessPoolExecutor | None = None  # started on the first image
        # At most one image per worker is handed to the pool; the others wait here, on the
        # loop, holding only their spooled file (the pool's own queue is unbounded).
        self._image_slots = asyncio.Semaphore(limits.image_workers)
        self._pool_lock = asyncio.Lock()

    # -- uploads -------------------------------------------------------------------------------

    async def receive(self, chunks: AsyncIterator[bytes], *, room: str, user: str, name: str,
                      declared: int | None = None) -> FileMeta:
        """Store the upload whose body ``chunks`` yields (``declared``: its Content-Length, if
        sent) as a new file of ``room`` by ``user``, not yet attached to a message.

        Raises ``FileTooLarge`` (before reading when ``declared`` says so, else as soon as the
        body passes the limit), ``QuotaExceeded``, ``EmptyFile``, ``UploadStalled``,
        ``ImageTooLarge``, ``BadImage`` or ``BlobStoreError``; nothing of a refused upload is
        left in the spool or the store. The caller must stop reading the body then.
        """
        limits = self.limits
        if declared is not None and declared > limits.max_file_bytes:
            raise FileTooLarge(limits.max_file_bytes)
        used = await self.catalog.usage(user)
        if used + max(1, declared or 0) > limits.max_user_storage_bytes:
            raise QuotaExceeded(limits.max_user_storage_bytes)
        token = secrets.token_hex(12)
        spool = self.blobs.spool
        upload = spool / f"up-{token}"
        made = [upload]
        try:
            size = await self._spool(chunks, upload)
            if size == 0:
                raise EmptyFile("the file is empty")
            kind = await asyncio.to_thread(_sniff, upload)
            stored, thumb = upload, None
            processed: Processed | None = None
            if kind in IMAGE_TYPES:
                stored, thumb = spool / f"img-{token}", spool / f"thumb-{token}"
                made += [stored, thumb]
                processed = await self._process(upload, stored, thumb, kind)
                await asyncio.to_thread(upload.unlink)  # the original, EXIF and all: gone now
                size = (await asyncio.to_thread(stored.stat)).st_size
            if used + size > limits.max_user_storage_bytes:
                raise QuotaExceeded(limits.max_user_storage_bytes)
            meta = FileMeta(id=new_file_id(), room=room, user=user, name=name, size=size,
                            type=kind, created=self._clock(),
                            width=processed.width if processed else None,
                            height=processed.height if processed else None,
                            thumb=thumb is not None)
            await self.catalog.add(meta, stored, thumb)
            return meta
        finally:
            await asyncio.to_thread(_remove, made)

    async def _spool(self, chunks: AsyncIterator[bytes], path: Path) -> int:
        """Write the body to ``path`` as it comes; its size. Raises ``FileTooLarge`` the moment
        it passes the limit, ``UploadStalled`` after ``upload_idle_timeout`` without a byte."""
        limit, idle = self.limits.max_file_bytes, self.limits.upload_idle_timeout
        fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        handle = os.fdopen(fd, "wb", buffering=0)
        size = 0
        pending: list[bytes] = []
        waiting = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        chunk = await anext(chunks, None)
                except TimeoutError:
                    raise UploadStalled(f"no byte of the upload came for {idle:g} s") from None
                if chunk is None:
                    break
                size += len(chunk)
                if size > limit:
                    raise FileTooLarge(limit)
                pending.append(chunk)
                waiting += len(chunk)
                if waiting >= SPOOL_BUFFER:
                    await asyncio.to_thread(handle.write, b"".join(pending))
                    pending.clear()
                    waiting = 0
            if pending:
                await asyncio.to_thread(handle.write, b"".join(pending))
        finally:
            await asyncio.to_thread(handle.close)
        return size

    async def _pool(self) -> ProcessPoolExecutor:
        """The image workers, started in a thread the first time: starting the forkserver
        (a Python process that imports Pillow) took 0.2-0.6 s, which on the loop stalled
        everything else that long (measured)."""
        async with self._pool_lock:
            if self._images is None:
                self._images = await asyncio.to_thread(_start_pool, self.limits.image_workers)
            return self._images

    async def _process(self, source: Path, output: Path, thumb: Path, kind: str) -> Processed:
        """``process_image`` in the image pool, one per worker at a time. A worker that dies
        (a decoder's crash, killed for its memory) refuses that image as ``BadImage``; the
        next image gets a new pool."""
        async with self._image_slots:
            pool = await self._pool()
            future = asyncio.get_running_loop().run_in_executor(
                pool, process_image, source, output, thumb, kind, self.limits.max_image_pixels)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                # The worker cannot be stopped: once it is done, remove what it wrote (the
                # caller's cleanup may run before it writes).
                future.add_done_callback(lambda _: _remove([output, thumb]))
                raise
            except BrokenProcessPool:
                log.warning("files: an image worker died; starting new ones")
                if self._images is pool:
                    self._images = None
                    pool.shutdown(wait=False, cancel_futures=True)
                raise BadImage("the image could not be processed") from None

    # -- reads ---------------------------------------------------------------------------------

    async def find(self, room: str, file_id: str) -> FileMeta:
        """The file ``file_id`` of ``room``. Raises ``FileNotFound`` for a file of another room
        too (one answer: nobody learns which ids exist elsewhere)."""
        meta = await self.catalog.get(file_id)
        if meta is None or meta.room != room:
            raise FileNotFound(f"no file {file_id} in room {room}")
        return meta

    def read(self, meta: FileMeta, thumb: bool, begin: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``begin`` to ``end`` of the file (or its thumbnail)."""
        return self.blobs.read(self.catalog.blob_key(meta, thumb), begin, end)

    async def thumb_size(self, meta: FileMeta) -> int:
        """The thumbnail's size in bytes. Raises ``FileNotFound`` when it has none."""
        entry = await self.blobs.stat(self.catalog.blob_key(meta, thumb=True)) \
            if meta.thumb else None
        if entry is None:
            raise FileNotFound(f"file {meta.id} has no thumbnail")
        return entry.size

    thumb_type = THUMB_TYPE

    # -- lifecycle of stored files -------------------------------------------------------------

    async def attach(self, file_id: str, room: str, seq: int,
                     user: str | None = None) -> FileMeta:
        """``Catalog.attach`` with this service's clock and ``file_orphan_ttl``."""
        return await self.catalog.attach(file_id, room, seq, now=self._clock(),
                                         ttl=self.limits.file_orphan_ttl, user=user)

    def attach_refusal(self, meta: FileMeta | None, room: str,
                       user: str) -> FileNotFound | NotAttachable | None:
        """``catalog.attach_refusal`` with this service's clock and ``file_orphan_ttl``: why
        ``meta`` (looked up with ``catalog.get``) cannot go with ``user``'s next message in
        ``room``, or None."""
        return attach_refusal(meta, room, user, now=self._clock(),
                              ttl=self.limits.file_orphan_ttl)

    async def delete_message(self, room: str, seq: int) -> list[str]:
        """Delete the files of message ``seq`` of ``room`` (it was deleted); the ids."""
        return await self.catalog.delete_message(room, seq)

    async def prune(self, room: str, below: int) -> list[str]:
        """Delete the files of ``room``'s messages below seq ``below`` (pruned); the ids."""
        return await self.catalog.prune(room, below)

    async def erase(self, user: str, room: str | None = None) -> list[str]:
        """Delete every file of ``user`` (in ``room`` only, when given); the ids deleted."""
        return await self.catalog.erase(user, room)

    async def collect(self) -> list[str]:
        """One run of the orphan collector: uploads never attached within ``file_orphan_ttl``,
        and spool files that crashed uploads left. The ids collected."""
        now, ttl = self._clock(), self.limits.file_orphan_ttl
        collected = await self.catalog.collect_orphans(now=now, ttl=ttl)
        await self.blobs.sweep_spool(now - max(ttl, SPOOL_GRACE))
        return collected

    def collect_interval(self) -> float:
        """Seconds between two runs of the collector: a quarter of the TTL, 1 s to 1 h."""
        return min(3600.0, max(1.0, self.limits.file_orphan_ttl / 4))

    async def run_collector(self) -> None:
        """Collect orphans every ``collect_interval`` seconds until cancelled (the gateway owns
        this task). A failed run is logged; the next one retries."""
        while True:
            await asyncio.sleep(self.collect_interval())
            try:
                collected = await self.collect()
            except BlobStoreError as exc:
                log.warning("files: the orphan collector failed: %s", exc)
                continue
            if collected:
                log.info("files: collected %d uploads never attached to a message",
                         len(collected))

    async def close(self) -> None:
        """Close the blob store; images being processed finish in their workers, which then
        exit."""
        if self._images is not None:
            self._images.shutdown(wait=False, cancel_futures=True)
            self._images = None
        await self.blobs.close()


def _start_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` image processes forked from a forkserver that has imported
    Pillow; blocks until the forkserver and one worker run (call it in a thread)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["files.images"])
    pool = ProcessPoolExecutor(workers, mp_context=context)
    pool.submit(int).result()
    return pool


def _sniff(path: Path) -> str:
    """The type of the file at ``path`` (in a worker thread: puremagic scans its table of
    signatures in Python, ~0.2 ms a file)."""
    with path.open("rb") as handle:
        return sniff(handle.read(SNIFF_BYTES))


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

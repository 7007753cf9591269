"""``file:///path``: a blob store in a local directory, one file per key (``files.blobstore``).

Several processes may share the directory (a volume mounted by every instance; on one host or
a network file system with atomic rename): every write lands in ``tmp/`` under a random name,
is flushed to disk, and is renamed onto its key, so a reader opens a whole file or none and
two writers of one key leave one of the two. All disk work runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from files.blobstore import CHUNK_BYTES, Entry, check_key, check_prefix, sweep_folder
from files.errors import BlobStoreError

TMP = "tmp"


class LocalBlobStore:
    """Blobs under ``root``; ``root/tmp`` is the spool and the staging area of every write."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> LocalBlobStore:
        """Raises ``ValueError`` for a URL without an absolute path, ``BlobStoreError`` when
        the directory cannot be made or written."""
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"files URL {url!r}: give an absolute path, file:///path/to/dir")
        store = cls(Path(unquote(parts.path)), url)
        await asyncio.to_thread(store._prepare)
        return store

    def _prepare(self) -> None:
        try:
            (self.root / TMP).mkdir(parents=True, exist_ok=True)
            probe = self.root / TMP / f"probe-{secrets.token_hex(8)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise BlobStoreError(f"cannot write files under {self.root}: {exc}") from None

    @property
    def spool(self) -> Path:
        return self.root / TMP

    def _path(self, key: str) -> Path:
        if self._closed:
            raise BlobStoreError("the blob store is closed")
        return self.root / check_key(key)

    async def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)

        def move() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)  # the bytes are on disk before the name is
            finally:
                os.close(fd)
            os.replace(path, target)
            _sync_dir(target.parent)

        try:
            await asyncio.to_thread(move)
        except OSError as exc:
            raise BlobStoreError(f"cannot store {key}: {exc}") from None

    async def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)

        def write() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = self.spool / f"w-{secrets.token_hex(12)}"
            try:
                fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(staged, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    staged.unlink()
            _sync_dir(target.parent)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise BlobStoreError(f"cannot store {key}: {exc}") from None

    async def get_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BlobStoreError(f"cannot read {key}: {exc}") from None

    async def stat(self, key: str) -> Entry | None:
        path = self._path(key)
        try:
            found = await asyncio.to_thread(path.stat)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BlobStoreError(f"cannot read {key}: {exc}") from None
        return Entry(key, found.st_size, found.st_mtime)

    async def read(self, key: str, begin: int, end: int) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except OSError as exc:
            raise BlobStoreError(f"cannot read {key}: {exc}") from None
        try:
            await asyncio.to_thread(handle.seek, begin)
            left = end - begin
            while left > 0:
                chunk = await asyncio.to_thread(handle.read, min(CHUNK_BYTES, left))
                if not chunk:
                    raise BlobStoreError(f"{key} is shorter than it was")
                left -= len(chunk)
                yield chunk
        except OSError as exc:
            raise BlobStoreError(f"cannot read {key}: {exc}") from None
        finally:
            await asyncio.to_thread(handle.close)

    async def list(self, prefix: str) -> list[Entry]:
        if self._closed:
            raise BlobStoreError("the blob store is closed")
        folder = self.root / check_prefix(prefix)

        def scan() -> list[Entry]:
            found: list[Entry] = []
            for parent, _, names in os.walk(folder):  # a missing folder walks nothing
                for name in names:
                    path = Path(parent, name)
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                        info = path.lstat()
                        key = path.relative_to(self.root).as_posix()
                        found.append(Entry(key, info.st_size, info.st_mtime))
            return found

        try:
            return await asyncio.to_thread(scan)
        except OSError as exc:
            raise BlobStoreError(f"cannot list {prefix}: {exc}") from None

    async def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as exc:
            raise BlobStoreError(f"cannot delete {key}: {exc}") from None

    async def sweep_spool(self, older_than: float) -> int:
        return await sweep_folder(self.spool, older_than)

    async def close(self) -> None:
        self._closed = True


def _sync_dir(folder: Path) -> None:
    """Flush a directory's entries (a renamed-in name survives a power loss)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

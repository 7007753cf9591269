"""The blob store: bytes by key, chosen by URL like the engines (each implementation imported
only when used), and nothing else. What the keys mean (metadata, thumbnails, who owns what,
orphans) is ``files.catalog``'s business.

- ``file:///path/to/dir`` — ``files.local.LocalBlobStore``: one file per key under the
  directory. Several processes may share it (one volume mounted by every instance): every
  write goes to a temporary name in ``DIR/tmp`` and is renamed into place, so a reader sees a
  whole file or none.
- ``s3://bucket[/prefix][?endpoint=URL&region=NAME]`` — ``files.s3.S3BlobStore``: one object
  per key, through boto3 (the ``s3`` extra) in worker threads; credentials come from boto3's
  usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role).

Keys are ``[a-z]+(/[A-Za-z0-9_-]{1,64})+`` with an optional ``.json``: made by the catalog
from checked ids, never from what a client sent, and checked again here (``check_key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from files.errors import BlobStoreError

__all__ = ["BlobStore", "Entry", "check_key", "check_prefix", "open_blobstore", "sweep_folder"]

_KEY = re.compile(r"[a-z]+(/[A-Za-z0-9_-]{1,64})+(\.json)?")
_PREFIX = re.compile(r"[a-z]+(/[A-Za-z0-9_-]{1,64})*/")
CHUNK_BYTES = 256 * 1024
"""Bytes per read when serving a blob (one worker-thread hop each)."""


def check_key(key: str) -> str:
    """``key`` if it is a well-formed store key; raises ``ValueError`` otherwise (a bug)."""
    if _KEY.fullmatch(key) is None:
        raise ValueError(f"not a blob key: {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is a folder of keys (``"pending/"``, ``"blob/<owner>/"``); raises
    ``ValueError`` otherwise (a bug)."""
    if _PREFIX.fullmatch(prefix) is None:
        raise ValueError(f"not a blob folder: {prefix!r}")
    return prefix


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored blob: its key, size in bytes and last write (Unix seconds)."""

    key: str
    size: int
    modified: float


class BlobStore(Protocol):
    """Bytes by key. Every method raises ``files.errors.BlobStoreError`` when the store fails
    (and after ``close``); a missing key is not an error (``None``, or nothing to delete)."""

    url: str

    @property
    def spool(self) -> Path:
        """A local directory for uploads on their way in (``put_file`` takes files from it);
        for ``file://`` on the store's own volume, so that ``put_file`` is a rename."""
        ...

    async def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` (in ``spool``) under ``key``, replacing any blob there;
        the file is consumed (moved or uploaded, then removed). Whole or not at all."""
        ...

    async def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, whole or not at all."""
        ...

    async def get_bytes(self, key: str) -> bytes | None:
        """A small blob's bytes (metadata), or None."""
        ...

    async def stat(self, key: str) -> Entry | None:
        ...

    def read(self, key: str, begin: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``begin`` to ``end`` (exclusive) of the blob, in chunks. Raises
        ``BlobStoreError`` if the blob is gone by then."""
        ...

    async def list(self, prefix: str) -> list[Entry]:
        """Every blob whose key starts with ``prefix`` (a folder: ``"pending/"``), in its
        sub-folders too."""
        ...

    async def delete(self, key: str) -> None:
        ...

    async def sweep_spool(self, older_than: float) -> int:
        """Remove what crashed uploads left in ``spool`` (last written before ``older_than``,
        Unix seconds); how many were removed."""
        ...

    async def close(self) -> None:
        ...


async def sweep_folder(folder: Path, older_than: float) -> int:
    """Remove the files of ``folder`` last written before ``older_than`` (Unix seconds)."""

    def sweep() -> int:
        removed = 0
        with os.scandir(folder) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime < older_than:
                        os.unlink(entry.path)
                        removed += 1
        return removed

    try:
        return await asyncio.to_thread(sweep)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise BlobStoreError(f"cannot sweep {folder}: {exc}") from None


async def open_blobstore(url: str, *, spool: Path) -> BlobStore:
    """The store ``url`` names. ``spool``: where an S3 store spools uploads (a local folder,
    made if missing; a ``file://`` store uses its own ``tmp/``). Raises ``ValueError`` for a
    URL of no known form and ``BlobStoreError`` when the store cannot be reached or written."""
    if url.startswith("file://"):
        from files.local import LocalBlobStore

        return await LocalBlobStore.open(url)
    if url.startswith("s3://"):
        from files.s3 import S3BlobStore

        return await S3BlobStore.open(url, spool=spool)
    raise ValueError(f"unsupported files URL {url!r}: use file:///path/to/dir or s3://bucket")

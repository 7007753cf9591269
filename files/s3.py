"""``s3://bucket[/prefix][?endpoint=URL&region=NAME]``: a blob store in an S3 bucket (or any
S3-compatible server: MinIO, Ceph, moto), one object per key (``files.blobstore``).

boto3 is synchronous and computes checksums of what it sends, so every call runs in this
store's own bounded pool of worker threads (``THREADS``), never on the event loop. Uploads
are spooled to a local folder first (the request is read to the end and checked before
anything is sent) and then sent with boto3's managed transfer (multipart above 8 MiB).
Credentials: boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, an instance or task role). The bucket must exist: it is checked at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from files.blobstore import CHUNK_BYTES, Entry, check_key, check_prefix, sweep_folder
from files.errors import BlobStoreError

THREADS = 8
"""Worker threads (and pooled connections) of one store: S3 calls in flight at once."""
TIMEOUT = 30.0
"""Seconds boto3 waits to connect and for each read from S3."""

_T = TypeVar("_T")


class S3BlobStore:
    def __init__(self, client: Any, bucket: str, prefix: str, url: str, spool: Path,
                 executor: ThreadPoolExecutor) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix
        self.url = url
        self._spool = spool
        self._executor = executor
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, spool: Path) -> S3BlobStore:
        """Raises ``ValueError`` for a malformed URL (or boto3 missing: the ``s3`` extra) and
        ``BlobStoreError`` when the bucket cannot be reached."""
        parts = urlsplit(url)
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not bucket:
            raise ValueError(f"files URL {url!r}: name the bucket, s3://bucket[/prefix]")
        query = parse_qs(parts.query)
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise ValueError(f"files URL {url!r}: unknown parameter {sorted(unknown)[0]!r} "
                             "(endpoint and region are known)")
        try:
            import boto3
            from botocore.config import Config as BotoConfig
            from botocore.exceptions import ClientError
        except ImportError:
            raise ValueError("s3:// files need boto3: pip install 'roomchat[s3]'") from None
        # botocore logs where it found credentials at INFO, on every start: not news.
        logging.getLogger("botocore.credentials").setLevel(logging.WARNING)
        endpoint = query.get("endpoint", [None])[-1]
        region = query.get("region", [None])[-1]
        executor = ThreadPoolExecutor(THREADS, thread_name_prefix="roomchat-s3")
        opened = False
        try:
            client = await asyncio.get_running_loop().run_in_executor(executor, functools.partial(
                boto3.session.Session().client, "s3", endpoint_url=endpoint, region_name=region,
                config=BotoConfig(max_pool_connections=THREADS, connect_timeout=TIMEOUT,
                                  read_timeout=TIMEOUT, retries={"mode": "standard"})))
            store = cls(client, bucket, prefix, url, spool, executor)
            await store._call(client.head_bucket, Bucket=bucket)
            await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)
            opened = True
        except ClientError:  # head_bucket's 404 or 403: not ours to read
            raise BlobStoreError(f"S3 bucket {bucket!r} cannot be read; create it, or give "
                                 "credentials that may") from None
        finally:
            if not opened:
                executor.shutdown(wait=False)
        return store

    @property
    def spool(self) -> Path:
        return self._spool

    def _key(self, key: str) -> str:
        if self._closed:
            raise BlobStoreError("the blob store is closed")
        check_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    async def _call(self, method: Callable[..., _T], /, **kwargs: Any) -> _T:
        """``method(**kwargs)`` in the store's threads; S3's and the network's errors become
        ``BlobStoreError`` (a missing key is the caller's to catch: ``_missing``)."""
        from botocore.exceptions import BotoCoreError, ClientError

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor,
                                              functools.partial(method, **kwargs))
        except ClientError as exc:
            if _missing(exc):
                raise
            raise BlobStoreError(f"S3 refused {method.__name__}: {exc}") from None
        except (BotoCoreError, OSError) as exc:
            raise BlobStoreError(f"S3 failed ({method.__name__}): {exc}") from None

    async def put_file(self, key: str, path: Path) -> None:
        name = self._key(key)
        try:
            await self._call(self._client.upload_file, Filename=str(path), Bucket=self._bucket,
                             Key=name)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self._call(self._client.put_object, Bucket=self._bucket, Key=self._key(key),
                         Body=data)

    async def get_bytes(self, key: str) -> bytes | None:
        name = self._key(key)

        def get() -> bytes:
            answer = self._client.get_object(Bucket=self._bucket, Key=name)
            with contextlib.closing(answer["Body"]) as body:
                return bytes(body.read())

        try:
            return await self._call(get)
        except Exception as exc:
            if _missing(exc):
                return None
            raise

    async def stat(self, key: str) -> Entry | None:
        try:
            answer = await self._call(self._client.head_object, Bucket=self._bucket,
                                      Key=self._key(key))
        except Exception as exc:
            if _missing(exc):
                return None
            raise
        return Entry(key, int(answer["ContentLength"]), answer["LastModified"].timestamp())

    async def read(self, key: str, begin: int, end: int) -> AsyncIterator[bytes]:
        if end <= begin:
            return
        try:
            answer = await self._call(self._client.get_object, Bucket=self._bucket,
                                      Key=self._key(key), Range=f"bytes={begin}-{end - 1}")
        except Exception as exc:
            if _missing(exc):
                raise BlobStoreError(f"{key} is gone") from None
            raise
        body = answer["Body"]
        try:
            left = end - begin
            while left > 0:
                chunk = await self._call(body.read, amt=min(CHUNK_BYTES, left))
                if not chunk:
                    raise BlobStoreError(f"{key} is shorter than it was")
                left -= len(chunk)
                yield chunk
        finally:
            body.close()

    async def list(self, prefix: str) -> list[Entry]:
        if self._closed:
            raise BlobStoreError("the blob store is closed")
        check_prefix(prefix)
        full = f"{self._prefix}/{prefix}" if self._prefix else prefix
        strip = len(self._prefix) + 1 if self._prefix else 0

        def scan() -> list[Entry]:
            found: list[Entry] = []
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=full)
            for page in pages:
                for item in page.get("Contents", []):
                    found.append(Entry(item["Key"][strip:], int(item["Size"]),
                                       item["LastModified"].timestamp()))
            return found

        return await self._call(scan)

    async def delete(self, key: str) -> None:
        await self._call(self._client.delete_object, Bucket=self._bucket, Key=self._key(key))

    async def sweep_spool(self, older_than: float) -> int:
        return await sweep_folder(self._spool, older_than)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Calls in flight finish in their threads; nothing waits for them here.
        self._executor.shutdown(wait=False, cancel_futures=True)


def _missing(exc: BaseException) -> bool:
    """Whether boto3's error says the key (or object) does not exist."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in {"NoSuchKey", "404", "NotFound"}

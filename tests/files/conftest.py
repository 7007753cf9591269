"""Fixtures of the files tests: every blob store, the real thing (a directory; a bucket on a
real S3-compatible server process)."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from files.blobstore import BlobStore, open_blobstore
from tests.s3_server import S3_ENV, make_bucket, s3_server

_buckets = itertools.count(1)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One moto S3 server for the session (each test gets its own bucket)."""
    saved = {name: os.environ.get(name) for name in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        with s3_server() as endpoint:
            yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def s3_url(endpoint: str) -> str:
    """A fresh bucket's files URL."""
    return make_bucket(endpoint, f"roomchat-test-{next(_buckets)}")


@pytest.fixture(params=["file", "s3"])
def blob_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store of each kind."""
    if request.param == "file":
        return (tmp_path / "files").as_uri()
    endpoint: str = request.getfixturevalue("s3_endpoint")
    return s3_url(endpoint)


@pytest.fixture
async def blobs(blob_url: str, tmp_path: Path) -> AsyncIterator[BlobStore]:
    store = await open_blobstore(blob_url, spool=tmp_path / "spool")
    try:
        yield store
    finally:
        await store.close()

"""A real S3-compatible server process (moto's server mode, the ``moto[server]`` test
dependency) on a free port, and the environment boto3 needs to reach it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from tests.support import SLOW, free_port

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}
"""Credentials moto accepts (any), for this process's boto3 and servers' (``start_process``)."""


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Yield ``http://127.0.0.1:<port>`` of a fresh moto server; kill it afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env={**os.environ, **S3_ENV})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30 * SLOW
        while True:
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the moto S3 server did not start (exit {proc.poll()})")
            time.sleep(0.1)
        yield endpoint
    finally:
        proc.kill()
        proc.wait()


def make_bucket(endpoint: str, bucket: str) -> str:
    """Create ``bucket`` on the server; the files URL that names it."""
    import boto3

    client: Any = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                               aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}?endpoint={endpoint}&region=us-east-1"


def bucket_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every object's key in ``bucket`` (under ``prefix``) on the server at ``endpoint``."""
    import boto3

    client: Any = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                               aws_access_key_id="testing", aws_secret_access_key="testing")
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for obj in listed.get("Contents", [])]

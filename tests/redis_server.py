"""A real ``redis-server`` on a free port, per test. Missing redis-server is a failure, never a
skip: ``make test`` installs it (scripts/install-system-deps.sh)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support import SLOW, free_port


@contextlib.contextmanager
def redis_server(workdir: Path, *, aof: bool = False) -> Iterator[str]:
    """Yield ``redis://127.0.0.1:<port>/0`` for a fresh server; kill it afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is missing: run scripts/install-system-deps.sh "
                           "(make test does)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--daemonize", "no", "--protected-mode", "yes"]
    args += (["--appendonly", "yes", "--appendfsync", "always"] if aof
             else ["--appendonly", "no"])
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10 * SLOW
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()

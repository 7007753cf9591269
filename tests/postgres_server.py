"""A real PostgreSQL 15 for the tests: one cluster per test session (``initdb`` in a temporary
directory, ``postgres`` on a free port), a fresh database per test. Never the system service.
Missing binaries are a failure, never a skip: ``make test`` installs them
(scripts/install-system-deps.sh).

As root, the server runs as ``nobody`` (PostgreSQL refuses to run as root): the cluster's
directory is that user's, and the tests connect over TCP with ``trust`` authentication."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support import SLOW, free_port

BIN_DIRS = ("/usr/lib/postgresql/15/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                                  reverse=True))
INSTALL = ("PostgreSQL is missing (initdb and postgres, looked for in /usr/lib/postgresql/*/bin):"
           " run scripts/install-system-deps.sh (make test does), or apt-get install postgresql")
RUN_AS = "nobody"
"""The user the cluster runs as when the tests run as root."""


def bin_dir() -> Path:
    """Where ``initdb`` and ``postgres`` are. Raises ``RuntimeError`` with the install line."""
    for found in BIN_DIRS:
        if os.access(Path(found) / "initdb", os.X_OK) and os.access(Path(found) / "postgres",
                                                                     os.X_OK):
            return Path(found)
    raise RuntimeError(INSTALL)


class PostgresServer:
    """``with PostgresServer() as pg: url = pg.database()``: a cluster of its own, stopped
    (fast shutdown) and removed on exit."""

    def __init__(self, *settings: str, durable: bool = True) -> None:
        """``settings``: more ``name=value`` server settings (``-c``), for a benchmark.

        ``durable=False`` (the tests' cluster): ``fsync=off``, and databases copied file by file
        (``STRATEGY FILE_COPY``, whose checkpoints then cost nothing) instead of through the
        WAL. Every commit is still written before it is acknowledged, so a killed server or
        client loses nothing; only a crash of the machine could, which no test makes. It
        halved what a test's database costs (create and drop: ~0.6 s of a contract test's
        ~0.8 s at load 12; the PostgreSQL cases of test_engine and test_postgres: 64 s -> 44 s
        on one worker)."""
        self.settings = settings
        self.durable = durable
        self.bin = bin_dir()
        self.port = free_port()
        self._root = Path(tempfile.mkdtemp(prefix="roomchat-pg-"))
        self.data = self._root / "data"
        self._proc: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._template: str | None = None
        # As root: the tools run as ``RUN_AS``. The server itself is started with setuid in the
        # child (``Popen(user=...)``, what ``runuser`` does) rather than under ``runuser``: then
        # its pid is the postmaster's and the fast-shutdown signal reaches it (``runuser`` did
        # not pass SIGINT on, and the server outlived the session).
        self._as: list[str] = []
        self._user: str | None = None
        if os.geteuid() == 0:
            self._as, self._user = ["runuser", "-u", RUN_AS, "--"], RUN_AS
            shutil.chown(self._root, RUN_AS)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}"
        self.log = self._root / "server.log"

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self._as, *args], cwd=self._root, capture_output=True,
                              check=False)

    def start(self) -> None:
        done = self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                         "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')[-500:]}")
        with open(self.log, "wb") as log:  # a file, not a pipe nobody reads: it would fill
            self._proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data),
                 "-p", str(self.port), "-k", str(self._root), "-h", "127.0.0.1",
                 "-c", f"fsync={'on' if self.durable else 'off'}", "-c", "max_connections=200",
                 "-c", "shared_buffers=32MB",
                 *(arg for setting in self.settings for arg in ("-c", setting))],
                cwd=self._root, stdout=subprocess.DEVNULL, stderr=log, user=self._user,
                group=self._user and "nogroup", extra_groups=[] if self._user else None)
        deadline = time.monotonic() + 20 * SLOW
        while True:
            ready = self._run(str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1",
                              "-p", str(self.port), "-U", "postgres")
            if ready.returncode == 0:
                return
            if self._proc.poll() is not None or time.monotonic() > deadline:
                error = self.log.read_text(errors="replace")[-500:]
                raise RuntimeError(f"postgres did not start (exit {self._proc.poll()}): {error}")
            time.sleep(0.05)

    def database(self, *, migrated: bool = False) -> str:
        """A new database, its URL: empty, or (``migrated``) a copy of one with roomchat's
        schema applied (made once per cluster: migrating each test's database took ~0.5 s,
        a copy ~0.1 s)."""
        import psycopg

        template = self._migrated() if migrated else "template0"
        name = f"t{next(self._names)}"
        strategy = "" if self.durable else " STRATEGY FILE_COPY"
        with psycopg.connect(f"{self.url}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}{strategy}")
        return f"{self.url}/{name}"

    def _migrated(self) -> str:
        if self._template is None:
            import psycopg

            from rooms.engines.postgres_schema import migrate

            url = self.database()

            async def run() -> None:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await migrate(conn)

            # In a thread of its own: the caller may be inside a running event loop.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, run()).result()
            self._template = url.rsplit("/", 1)[1]
        return self._template

    def drop(self, url: str) -> None:
        """Remove the database at ``url`` (made by ``database``), closing its connections."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(f"{self.url}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    @contextlib.contextmanager
    def fresh(self, *, migrated: bool = False) -> Iterator[str]:
        """A new database for one test (as ``database``), dropped after it."""
        url = self.database(migrated=migrated)
        try:
            yield url
        finally:
            self.drop(url)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: sessions ended, no checkpoint wait
            try:
                proc.wait(10 * SLOW)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

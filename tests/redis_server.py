"""A real ``redis-server`` on a free port, per test. Missing redis-server is a failure, never a
skip: ``make test`` installs it (scripts/install-system-deps.sh)."""

from __future__ import annotations

import contextlib
import shutil
import signal
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


class RedisServer:
    """A ``redis-server`` that a test can stop and start again on the same port and dir (an
    outage, a crash, a restart that reloads the AOF). Use as a context manager: it is started
    on entry and killed on exit."""

    def __init__(self, workdir: Path, *, aof: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: run scripts/install-system-deps.sh "
                               "(make test does)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                      str(workdir), "--save", "", "--daemonize", "no", "--protected-mode", "yes"]
        self._args += (["--appendonly", "yes", "--appendfsync", "always"] if aof
                       else ["--appendonly", "no"])
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start (again) and return once it accepts connections and has loaded its data."""
        if self.running:
            return
        self._proc = proc = subprocess.Popen(self._args, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10 * SLOW
        while True:
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), 0.2) as sock:
                # Accepting is not enough: until the AOF is loaded Redis answers -LOADING.
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (exit {proc.poll()})")
            time.sleep(0.05)

    def stop(self, *, crash: bool = True) -> None:
        """Stop: ``crash`` is SIGKILL (nothing flushed beyond what was fsynced), otherwise a
        clean SIGTERM shutdown."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused server could not shut down cleanly
        if crash:
            proc.kill()
        else:
            proc.terminate()
        proc.wait()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing is answered, as with
        a hung Redis or a network partition."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

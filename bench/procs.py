"""Child processes for the benchmark: start pinned to a core, find free ports, read /proc, and kill.

Every process the benchmark starts goes through :class:`Children`, a context manager that kills
them all (their whole process group) when it exits, however it exits. Processes start in a new
session so that the group holds the child and anything it forks, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Enough descriptors for 10,000+ WebSockets on each side plus slack.
NOFILE = 65536


class ChildError(RuntimeError):
    """A child process failed to start or become ready; the message holds its log tail."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _nofile_limit() -> int:
    """The descriptor limit children get: NOFILE, capped at the hard limit.

    (Even root may not raise the hard limit in a sandbox without CAP_SYS_RESOURCE.)
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return NOFILE
    return min(NOFILE, hard)


def pinned(cpu: int | None, argv: Sequence[str]) -> list[str]:
    """Prefix ``argv`` with ``prlimit`` (raised descriptor limit) and ``taskset -c <cpu>``.

    Both exec the next program, so the child's pid is the program's own.
    """
    n = _nofile_limit()
    prefix = ["prlimit", f"--nofile={n}:{n}"]
    if cpu is None:
        return [*prefix, *argv]
    return [*prefix, "taskset", "-c", str(cpu), *argv]


@dataclass
class Child:
    """One started process (and its process group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None

    @property
    def pid(self) -> int:
        """The child's pid (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's log file, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def tree(self) -> list[int]:
        """Pids of the child and all its live descendants."""
        return process_tree(self.pid)

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM the group, wait up to ``grace_s``, then SIGKILL it; always reaps the child."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        # Even after the leader exited, forked children may remain in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


@dataclass
class Children:
    """Owner of every child process; ``with Children() as kids:`` kills all of them on exit."""

    log_dir: Path
    started: list[Child] = field(default_factory=list)

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pipes: bool = False,
    ) -> Child:
        """Start ``argv`` pinned to ``cpu`` in a new session, stdout/stderr to a log file.

        With ``pipes`` stdin and stdout are pipes (stderr still goes to the log).
        The caller must eventually call :meth:`Child.stop` or leave it to :meth:`stop_all`.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                pinned(cpu, argv),
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log,
                stderr=log,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(name, popen, log_path)
        self.started.append(child)
        return child

    def stop(self, child: Child) -> None:
        """Stop one child now and forget it."""
        child.stop()
        if child in self.started:
            self.started.remove(child)

    def stop_all(self) -> None:
        """Stop every child still owned, newest first."""
        while self.started:
            self.started.pop().stop()


def process_tree(root: int) -> list[int]:
    """Pids of ``root`` and its live descendants (from /proc/*/stat parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        parents.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if not Path(f"/proc/{pid}").exists():
            continue
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the given processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def rss_bytes(pids: Sequence[int]) -> int:
    """Sum of VmRSS over the given processes, in bytes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def wait_port(
    port: int, child: Child, timeout_s: float, ready: Callable[[], bool] | None = None
) -> None:
    """Wait until 127.0.0.1:``port`` accepts TCP connections (and ``ready()`` if given).

    Raises:
        ChildError: the child exited or the port did not open within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise ChildError(
                f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            if ready is None or ready():
                return
        time.sleep(0.05)
    raise ChildError(f"{child.name} did not open port {port} in {timeout_s}s:\n{child.log_tail()}")


def _core_ticks() -> dict[int, tuple[int, int]]:
    """(busy, total) ticks per core from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        v = [int(x) for x in rest.split()]
        total = sum(v[:8])
        out[int(name[3:])] = (total - v[3] - v[4], total)
    return out


def core_busy(interval_s: float = 0.5) -> dict[int, float]:
    """Fraction of each core that was busy during the next ``interval_s``."""
    a = _core_ticks()
    time.sleep(interval_s)
    b = _core_ticks()
    return {
        core: (b[core][0] - a[core][0]) / max(1, b[core][1] - a[core][1]) for core in b if core in a
    }


def wait_for_quiet(
    max_wait_s: float, log: Callable[[str], None], threshold: float = 0.15
) -> dict[str, float]:
    """Wait (up to ``max_wait_s``) until no core is more than ``threshold`` busy.

    Between measurements none of our processes run, so any load is someone else's (the machine
    is shared). Returns the seconds waited and the last busy fractions seen.
    """
    t0 = time.monotonic()
    busy = core_busy()
    logged = False
    while max(busy.values(), default=0.0) > threshold and time.monotonic() - t0 < max_wait_s:
        if not logged:
            pretty = ", ".join(f"core {c} {b:.0%}" for c, b in sorted(busy.items()))
            log(f"  machine busy ({pretty}): waiting up to {max_wait_s:.0f}s for quiet")
            logged = True
        busy = core_busy(1.0)
    out = {"waited_s": time.monotonic() - t0}
    out.update({f"core{c}_busy": b for c, b in busy.items()})
    return out


@contextlib.contextmanager
def timer() -> Iterator[Callable[[], float]]:
    """``with timer() as elapsed: ...`` — ``elapsed()`` gives seconds since entry."""
    t0 = time.monotonic()
    yield lambda: time.monotonic() - t0

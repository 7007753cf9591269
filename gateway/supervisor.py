"""``roomchat serve --workers N``: the supervisor owns the listening socket and the N worker
processes serving it (start, restart with backoff, one-at-a-time replacement on SIGHUP, SIGTERM
drain); ``run_worker`` is the worker's side of that contract.

The supervisor binds the socket once (in ``gateway.preflight``) and every worker inherits it, so
the kernel spreads connections over whichever workers are accepting, and a worker that stops or
restarts never closes the port: connections wait in the shared backlog. A stopping worker closes
its copy of the socket before it drains (gateway.server), so a SIGHUP replacement hands every new
connection to a worker that serves it; on SIGTERM the supervisor closes its copy too, and the
port refuses connections while the workers drain. Each worker is the
normal single-process server (``python -m gateway serve ... --worker-fds L,C``). It reports
readiness by writing a line on its end of a socket pair (fd C); when the supervisor disappears,
the worker sees EOF on that socket and shuts down instead of serving unsupervised.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.config import Config
from rooms.backoff import backoff_delay

log = logging.getLogger("roomchat.supervisor")

READY_LINE = b"ready\n"
MIN_BACKOFF = 0.5
"""Seconds before restarting a worker that died; doubled for each quick death in a row."""
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0
"""A worker that served this many seconds before dying restarts at ``MIN_BACKOFF`` again."""
START_TIMEOUT = 60.0
"""Seconds a replacement worker gets to report ready before SIGHUP gives up on it."""
KILL_MARGIN = 5.0
"""Seconds past ``drain_timeout`` a stopping worker gets before it is killed (SIGKILL)."""


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned, not yet serving
    READY = "ready"  # its server reported that it serves
    STOPPING = "stopping"  # sent SIGTERM: draining its sockets with 1012
    EXITED = "exited"


@dataclass(eq=False)
class Worker:
    """One worker process, watched from the event loop without threads: its pidfd becomes
    readable when it exits, its control socket when it reports ready."""

    slot: int
    proc: subprocess.Popen[bytes]
    control: socket.socket
    started_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    state: WorkerState = WorkerState.STARTING
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once it is ready or has exited, whichever comes first."""
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stop_requested: bool = False
    _pidfd: int = -1

    @property
    def pid(self) -> int:
        return self.proc.pid

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pidfd = os.pidfd_open(self.proc.pid)
        loop.add_reader(self._pidfd, self._on_exit, loop)
        self.control.setblocking(False)
        loop.add_reader(self.control.fileno(), self._on_control, loop)

    def stop(self) -> None:
        """Ask it to drain and exit (SIGTERM); no-op once it has exited."""
        if self.state is WorkerState.EXITED:
            return
        self.stop_requested = True
        self.state = WorkerState.STOPPING
        self.proc.send_signal(signal.SIGTERM)  # safe: not yet reaped, so the pid is still its

    def kill(self) -> None:
        if self.state is not WorkerState.EXITED:
            self.proc.kill()

    def describe_exit(self) -> str:
        code = self.proc.returncode
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def _on_control(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            data = self.control.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EOF: it is exiting; the pidfd says when it is gone
            loop.remove_reader(self.control.fileno())
            return
        if READY_LINE.strip() in data and self.state is WorkerState.STARTING:
            self.state = WorkerState.READY
            self.ready_at = time.monotonic()
            self.settled.set()
            log.info("worker %d (pid %d) ready in %.2fs", self.slot, self.pid,
                     self.ready_at - self.started_at)

    def _on_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if self.control.fileno() != -1:
            loop.remove_reader(self.control.fileno())
            self.control.close()
        self.proc.wait()  # reaps it at once: the pidfd said it has exited
        self.state = WorkerState.EXITED
        self.settled.set()
        self.exited.set()


class Supervisor:
    """Keeps ``config.workers`` workers serving ``sock`` until SIGTERM/SIGINT.

    ``serve_args`` are the ``roomchat serve`` arguments each worker is started with.
    """

    def __init__(self, config: Config, sock: socket.socket, serve_args: Sequence[str]) -> None:
        self.config = config
        self.sock = sock
        self.serve_args = list(serve_args)
        self._slots: list[Worker | None] = [None] * config.workers
        # One lock per slot: a restart and a SIGHUP replacement never start two workers for it.
        self._locks = [asyncio.Lock() for _ in range(config.workers)]
        self._live: set[Worker] = set()

    def run(self) -> int:
        """Blocking: supervise until SIGTERM/SIGINT, then drain every worker. Returns 0."""
        return asyncio.run(self.supervise())

    async def supervise(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        replace = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, replace.set)
        log.info("supervisor %d: %d workers on %s", os.getpid(), self.config.workers,
                 self.config.bind)
        try:
            async with asyncio.TaskGroup() as tasks:
                keepers = [tasks.create_task(self._keep(slot), name=f"worker-slot-{slot}")
                           for slot in range(self.config.workers)]
                keepers.append(tasks.create_task(self._replace_on(replace), name="sighup"))
                await stop.wait()
                # Nothing may start a worker from here on: stop the keepers first.
                for task in keepers:
                    task.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            # No worker starts any more: drop our copy of the socket before the drain. Each
            # worker closes its own as it starts draining, so the port stops taking connections
            # (they are refused, and a proxy retries them elsewhere) instead of queueing them
            # in a backlog nobody accepts from until we exit, then resetting them.
            self.sock.close()
            await self._stop_all()
        log.info("supervisor %d: stopped", os.getpid())
        return 0

    # -- one slot -------------------------------------------------------------------------

    async def _keep(self, slot: int) -> None:
        """Keep a worker running in ``slot``; one that dies is logged and restarted, after a
        backoff that doubles while it keeps dying young (never a tight crash loop)."""
        quick_deaths = 0
        while True:
            async with self._locks[slot]:
                worker = self._slots[slot]
                if worker is None:
                    try:
                        worker = self._slots[slot] = self._start(slot)
                    except OSError as exc:  # e.g. out of processes or fds: try again later
                        log.error("cannot start worker %d: %s", slot, exc)
                        worker = None
            if worker is not None:
                await worker.exited.wait()
                self._live.discard(worker)
                async with self._locks[slot]:
                    restart = self._slots[slot] is worker
                    if restart:
                        self._slots[slot] = None
                if worker.stop_requested:
                    continue  # replaced on purpose (SIGHUP): its successor holds the slot
                uptime = time.monotonic() - worker.started_at
                if not restart:
                    log.error("worker %d (pid %d) %s after %.1fs; its replacement serves",
                              slot, worker.pid, worker.describe_exit(), uptime)
                    continue
                served = time.monotonic() - worker.ready_at if worker.ready_at else 0.0
                quick_deaths = 0 if served >= STABLE_AFTER else quick_deaths
            quick_deaths += 1
            # No jitter: one supervisor restarts its own workers; nothing to spread.
            delay = backoff_delay(quick_deaths - 1, base=MIN_BACKOFF, cap=MAX_BACKOFF)
            if worker is not None:
                log.error("worker %d (pid %d) %s after %.1fs; restarting it in %.1fs",
                          slot, worker.pid, worker.describe_exit(), uptime, delay)
            await asyncio.sleep(delay)

    def _start(self, slot: int) -> Worker:
        ours, theirs = socket.socketpair()
        listen_fd, control_fd = self.sock.fileno(), theirs.fileno()
        args = [sys.executable, "-m", "gateway", *self.serve_args,
                "--worker-fds", f"{listen_fd},{control_fd}"]
        try:
            proc = subprocess.Popen(args, pass_fds=(listen_fd, control_fd))
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()  # the worker has its copy; ours would hide its EOF
        worker = Worker(slot, proc, ours)
        worker.watch(asyncio.get_running_loop())
        self._live.add(worker)
        log.info("worker %d (pid %d) starting", slot, worker.pid)
        return worker

    # -- SIGHUP: replace every worker, one at a time ----------------------------------------

    async def _replace_on(self, requested: asyncio.Event) -> None:
        while True:
            await requested.wait()
            requested.clear()
            await self._replace_all()

    async def _replace_all(self) -> None:
        """For each slot: start a new worker, wait until it serves, then drain the old one. The
        port never has fewer than N ready workers minus the one draining."""
        started = time.monotonic()
        log.info("SIGHUP: replacing %d workers one at a time", len(self._slots))
        for slot in range(len(self._slots)):
            async with self._locks[slot]:
                old = self._slots[slot]
                try:
                    new = self._start(slot)
                except OSError as exc:
                    log.error("SIGHUP: cannot start a new worker %d (%s); stopping the "
                              "replacement", slot, exc)
                    return
                try:
                    async with asyncio.timeout(START_TIMEOUT):
                        await new.settled.wait()
                except TimeoutError:
                    pass
                if new.state is not WorkerState.READY:
                    log.error("SIGHUP: new worker %d (pid %d) did not become ready (%s); "
                              "keeping the old one and stopping the replacement", slot, new.pid,
                              new.describe_exit() if new.state is WorkerState.EXITED
                              else f"not ready after {START_TIMEOUT:.0f}s")
                    await self._stop_workers([new])
                    return
                self._slots[slot] = new
                if old is not None:
                    await self._stop_workers([old])
                log.info("worker %d replaced: pid %s -> %d", slot,
                         old.pid if old else "none", new.pid)
        log.info("SIGHUP: all workers replaced in %.2fs", time.monotonic() - started)

    # -- stopping ---------------------------------------------------------------------------

    async def _stop_workers(self, workers: list[Worker]) -> None:
        """SIGTERM each (each drains its sockets with 1012) and wait; SIGKILL any still running
        ``drain_timeout`` + ``KILL_MARGIN`` seconds later."""
        for worker in workers:
            worker.stop()
        bound = self.config.drain_timeout + KILL_MARGIN
        try:
            async with asyncio.timeout(bound):
                for worker in workers:
                    await worker.exited.wait()
        except TimeoutError:
            for worker in workers:
                if worker.state is not WorkerState.EXITED:
                    log.warning("worker %d (pid %d) still running %.0fs after SIGTERM; killing",
                                worker.slot, worker.pid, bound)
                    worker.kill()
            for worker in workers:
                await worker.exited.wait()
        for worker in workers:
            self._live.discard(worker)

    async def _stop_all(self) -> None:
        live = [worker for worker in self._live if worker.state is not WorkerState.EXITED]
        log.info("stopping %d workers (each closes its sockets with 1012)", len(live))
        await self._stop_workers(live)


def run_worker(config: Config, listen_fd: int, control_fd: int) -> None:
    """Blocking: serve ``listen_fd`` as one worker of a supervisor (see the module docstring)."""
    # SIGHUP is the supervisor's signal (replace workers); a hangup of the terminal's process
    # group must not kill workers without a drain.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    control = socket.socket(fileno=control_fd)

    def report_ready() -> None:
        control.sendall(READY_LINE)  # blocking is fine: a few bytes into an empty buffer
        control.setblocking(False)
        loop = asyncio.get_running_loop()
        loop.add_reader(control.fileno(), supervisor_gone, loop)

    def supervisor_gone(loop: asyncio.AbstractEventLoop) -> None:
        try:
            if control.recv(64):
                return  # the supervisor sends nothing today; ignore rather than fail
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(control.fileno())
        log.warning("the supervisor is gone; shutting down")
        os.kill(os.getpid(), signal.SIGTERM)  # the normal drain, as if it had sent SIGTERM

    from gateway.server import run

    run(config, fd=listen_fd, ready=report_ready)

"""A real Redis Cluster on free ports: ``redis-server --cluster-enabled yes`` per node and
``redis-cli --cluster create``, as an operator would build one. Missing redis-server or
redis-cli is a failure, never a skip: ``make test`` installs them
(scripts/install-system-deps.sh).

Creating a cluster takes about a second, so the contract suite shares one per test session
(``flush`` between tests); a test that changes its shape (kills a master, moves a slot and
does not move it back) makes its own."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support import SLOW, free_port

NODE_TIMEOUT_MS = 1000
"""``cluster-node-timeout``: how long a master may be unreachable before its replica takes
over (Redis's default, 15 s, would make a failover test slow)."""
BUS_OFFSET = 10_000
"""A node's cluster bus listens on its port plus this."""


def _node(port: int) -> redis.Redis:
    """A plain client of one node (no redirections followed: these are admin commands)."""
    return redis.Redis(port=port, socket_timeout=5 * SLOW, decode_responses=True)


def _free_node_port() -> int:
    """A free port whose cluster bus port (``port + 10000``, Redis's fixed offset) is free
    too; ``--cluster-port`` would need Redis 7.2's tooling, so the pair is searched for."""
    for _ in range(200):
        port = free_port()
        if port + BUS_OFFSET >= 65536:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports for a cluster node")


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is missing: run scripts/install-system-deps.sh "
                           "(make test does)")
    return found


class RedisCluster:
    """``masters`` masters (and ``replicas`` replicas per master) on 127.0.0.1, each node a
    ``redis-server`` process of ours in ``workdir``. Use as a context manager: created and
    ready (``cluster_state:ok`` on every node, every slot covered) on entry, every node killed
    on exit. ``url`` is the engine's URL for it (one seed node; the client finds the rest)."""

    def __init__(self, workdir: Path, *, masters: int = 3, replicas: int = 0,
                 aof: bool = False) -> None:
        self._workdir = workdir
        self._count = masters * (1 + replicas)
        self._replicas = replicas
        self._aof = aof
        self.ports: list[int] = []
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The store URL, naming a node that is alive now as the seed."""
        return f"redis://127.0.0.1:{self.alive()[0]}/0?cluster=1"

    def __enter__(self) -> RedisCluster:
        try:
            for _ in range(self._count):
                self._start_node(_free_node_port())
            subprocess.run([_binary("redis-cli"), "--cluster", "create",
                            *(f"127.0.0.1:{port}" for port in self.ports),
                            "--cluster-replicas", str(self._replicas), "--cluster-yes"],
                           capture_output=True, check=True, timeout=30 * SLOW)
            self.wait_ok()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs.values():
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
        self._procs.clear()

    def _start_node(self, port: int) -> None:
        workdir = self._workdir / str(port)
        workdir.mkdir(parents=True, exist_ok=True)
        args = [_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(workdir), "--save", "", "--daemonize", "no",
                "--protected-mode", "yes", "--cluster-enabled", "yes",
                "--cluster-config-file", str(workdir / "nodes.conf"),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                # A replica's first sync at once, not after Redis 7's 5 s wait for others.
                "--repl-diskless-sync-delay", "0"]
        args += (["--appendonly", "yes", "--appendfsync", "always"] if self._aof
                 else ["--appendonly", "no"])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._procs[port] = proc
        self.ports.append(port)
        deadline = time.monotonic() + 10 * SLOW
        while True:
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", port), 0.2):
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server (cluster node) did not start "
                                   f"(exit {proc.poll()})")
            time.sleep(0.05)

    def alive(self) -> list[int]:
        return [port for port, proc in self._procs.items() if proc.poll() is None]

    def wait_ok(self, timeout: float = 20.0, *, gone: int | None = None) -> None:
        """Return once every live node says ``cluster_state:ok``, all agree on who serves
        every slot (after a create, a failover or a slot's move) and every replica has synced
        with its master (a replica of a killed one: the failover is over); with ``gone`` (a killed
        node's port), once none of them names it as serving a slot any more (its replica was
        promoted)."""
        deadline = time.monotonic() + timeout * SLOW
        while True:
            try:
                states, views = set(), set()
                for port in self.alive():
                    with _node(port) as node:
                        replication = node.info("replication")
                        if replication["role"] == "slave":
                            # A replica that has not synced cannot take over its master.
                            states.add(f"replica link {replication['master_link_status']}")
                        info = node.execute_command("CLUSTER", "INFO")
                        states.add(info.split("\r\n", 1)[0])
                        views.add(repr(sorted(
                            (low, high, owner[1])
                            for low, high, owner, *_ in node.execute_command("CLUSTER", "SLOTS")
                        )))
                settled = {"cluster_state:ok", "replica link up"}
                if "cluster_state:ok" in states <= settled and len(views) == 1 and (
                        gone is None or f", {gone})" not in next(iter(views))):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ready")
            time.sleep(0.1)

    def masters(self) -> dict[str, int]:
        """node id -> port of each live master that serves slots."""
        with _node(self.alive()[0]) as node:
            lines = node.execute_command("CLUSTER", "NODES").splitlines()
        found = {}
        for line in lines:  # id address flags master ping pong epoch link slots...
            fields = line.split()
            flags = fields[2].split(",")
            if "master" in flags and "fail" not in flags and len(fields) > 8:
                found[fields[0]] = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        return found

    def node_id(self, port: int) -> str:
        with _node(port) as node:
            return str(node.execute_command("CLUSTER", "MYID"))

    def slot_owner(self, slot: int) -> int:
        """The port of the master serving ``slot``."""
        with _node(self.alive()[0]) as node:
            for low, high, owner, *_ in node.execute_command("CLUSTER", "SLOTS"):
                if low <= slot <= high:
                    return int(owner[1])
        raise RuntimeError(f"no master serves slot {slot}")

    def keyslot(self, key: str) -> int:
        with _node(self.ports[0]) as node:
            return int(node.execute_command("CLUSTER", "KEYSLOT", key))

    def flush(self) -> None:
        """Remove every key from every master (replicas follow)."""
        for port in self.masters().values():
            with _node(port) as node:
                node.flushall()

    def kill_pubsub(self) -> int:
        """Close every subscriber connection on every live node (a network cut of the feed);
        the number closed."""
        closed = 0
        for port in self.alive():
            with _node(port) as node:
                closed += int(node.client_kill_filter(_type="pubsub"))
        return closed

    def migrate_slot(self, slot: int, to: int, *, pause: float = 0.0) -> int:
        """Move ``slot`` from its master to the master on port ``to`` the way
        ``redis-cli --cluster reshard`` does: IMPORTING/MIGRATING, then ``MIGRATE`` the keys
        one at a time, ``pause`` seconds after each (so traffic meets the slot half moved:
        ASK redirections, and TRYAGAIN for a script whose keys are on both sides), then
        ``SETSLOT NODE`` everywhere. Returns how many keys moved."""
        source = self.slot_owner(slot)
        if source == to:
            raise ValueError(f"slot {slot} is already on {to}")
        source_id, target_id = self.node_id(source), self.node_id(to)
        with _node(source) as src, _node(to) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            moved = 0
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1):
                src.execute_command("MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                if pause:
                    time.sleep(pause)
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for port in self.masters().values():
            with _node(port) as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_ok()
        return moved

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (a crashed master: its replica takes over after
        ``NODE_TIMEOUT_MS``)."""
        proc = self._procs[port]
        proc.kill()
        proc.wait()


def _holds(ranges: list[str], slot: int) -> bool:
    for item in ranges:
        if item.startswith("["):
            continue  # a slot being moved, not served
        low, _, high = item.partition("-")
        if int(low) <= slot <= int(high or low):
            return True
    return False


@contextlib.contextmanager
def redis_cluster(workdir: Path, **kw: int | bool) -> Iterator[RedisCluster]:
    """A fresh cluster (``RedisCluster``'s arguments), killed afterwards."""
    with RedisCluster(workdir, **kw) as cluster:  # type: ignore[arg-type]
        yield cluster

"""The compose deployment for real: infra/compose.yaml started with podman-compose (two roomchat
containers on Redis with AOF, Caddy in front with its internal CA), the Redis and Caddy images
built locally and selected by compose.yaml's variables. Clients chat in a room through Caddy
on HTTPS; the container the room lives on is killed; its clients reconnect with ``after`` to
the other one and the room carries on; the killed container is started again and new joins
land on it while the others stay. Nothing acked is lost and the room is never split: every
member sees one gapless sequence, whichever container it is on. Run with
``make test-containers``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

from tests.clients import Member
from tests.infra.harness import INFRA, client_context, get, request, wait_for_status
from tests.infra.podman import (
    CADDY_IMAGE,
    IMAGE,
    POSTGRES_IMAGE,
    REDIS_IMAGE,
    engine_env,
    images_built,
    inspect,
    logs,
    only_with_engine,
    podman,
    wait_healthy,
)
from tests.support import SECRET, SLOW, free_port, make_token

pytestmark = only_with_engine

COMPOSE = INFRA / "compose.yaml"
ON_POSTGRES = INFRA / "compose.postgres.yaml"
PODMAN_COMPOSE = Path(sys.executable).parent / "podman-compose"
ROOM = "compose"
INSTANCES = ("roomchat-a", "roomchat-b")


@dataclass
class Deployment:
    project: str
    env: dict[str, str]
    https: int
    ca: Path
    files: tuple[Path, ...] = (COMPOSE,)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def compose(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        files = [arg for path in self.files for arg in ("-f", str(path))]
        result = subprocess.run([str(PODMAN_COMPOSE), "-p", self.project, *files, *args],
                                capture_output=True, text=True, env=self.env,
                                timeout=timeout * SLOW, check=False)
        assert result.returncode == 0, f"podman-compose {args}:\n{result.stdout}\n{result.stderr}"
        return result

    def context(self) -> ssl.SSLContext:
        return client_context(self.ca)

    def url(self, path: str) -> str:
        return f"https://localhost:{self.https}{path}"

    def ws_url(self, user: str, **query: Any) -> str:
        extra = "".join(f"&{k}={v}" for k, v in query.items())
        return f"wss://localhost:{self.https}/rooms/{ROOM}/ws?token={make_token(user)}{extra}"

    def sockets(self, service: str) -> int:
        """Room sockets the service's container accepted (its JSON access log)."""
        count = 0
        for line in logs(self.container(service)).splitlines():
            with contextlib.suppress(ValueError):
                msg = str(json.loads(line).get("msg", ""))
                count += f'"GET /rooms/{ROOM}/ws 1.1" 101' in msg
        return count


@contextlib.contextmanager
def deployed(project: str, state: Path, files: tuple[Path, ...] = (COMPOSE,),
             first: tuple[str, ...] = (), **extra_env: str) -> Iterator[Deployment]:
    """``podman-compose up -d`` of ``files`` with the local images, published on free
    loopback ports; yields once both instances pass their health check and Caddy answers on
    HTTPS. ``first``: services started and found healthy before the others, as their
    ``depends_on: service_healthy`` says (podman-compose ignores it with podman < 4.6: an
    instance started before PostgreSQL accepts connections exits in one line and is
    restarted, and may be caught between the two). Logs of every container go to ``state``
    on the way out, then ``down -v``."""
    state.mkdir(parents=True, exist_ok=True)
    https = free_port()
    env = engine_env()
    env.update(ROOMCHAT_JWT_SECRET=SECRET, ROOMCHAT_DOMAIN="localhost", ROOMCHAT_TLS="internal",
               ROOMCHAT_REDIS_IMAGE=REDIS_IMAGE, ROOMCHAT_CADDY_IMAGE=CADDY_IMAGE,
               ROOMCHAT_PUBLISH_HTTP=f"127.0.0.1:{free_port()}",
               ROOMCHAT_PUBLISH_HTTPS=f"127.0.0.1:{https}", **extra_env)
    deployment = Deployment(project, env, https, state / "root.crt", files)
    deployment.compose("down", "-v", "-t", "0")  # leftovers of an interrupted run
    try:
        if first:
            deployment.compose("up", "-d", "--no-build", *first)
            for service in first:
                wait_healthy(deployment.container(service))
        deployment.compose("up", "-d", "--no-build")
        for service in INSTANCES:
            wait_healthy(deployment.container(service))
        # Caddy writes its local CA when it starts; copy it out once it exists.
        deadline = time.monotonic() + 20 * SLOW
        while podman("cp", f"{deployment.container('caddy')}:"
                     "/data/caddy/pki/authorities/local/root.crt", str(deployment.ca),
                     check=False).returncode != 0:
            assert time.monotonic() < deadline, logs(deployment.container("caddy"))
            time.sleep(0.2)
        wait_for_status(deployment.url("/readyz"), context=deployment.context(), timeout=30)
        yield deployment
    finally:
        services = (*INSTANCES, "caddy", "redis", *(["postgres"] if ON_POSTGRES in files else []))
        for service in services:
            (state / f"{service}.log").write_text(logs(deployment.container(service)))
        deployment.compose("down", "-v", "-t", "15")


@dataclass
class Chatter(Member):
    """A member that records every message and ack it reads."""

    user: str = ""
    welcome: dict[str, Any] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)
    acks: dict[str, int] = field(default_factory=dict)

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        obj = await super().recv(timeout)
        if obj["type"] == "message":
            self.seqs.append(obj["seq"])
            self.texts[obj["seq"]] = obj["text"]
        elif obj["type"] == "ack":
            self.acks[obj["id"]] = obj["seq"]
        return obj

    @property
    def last_seq(self) -> int:
        """Where to resume: the last message seen, or the room's seq at the welcome."""
        seq: int = max([self.welcome.get("seq", 0), *self.seqs])
        return seq

    async def say_acked(self, text: str) -> int:
        """Send ``text`` (its own id) and read until it is acked: its seq."""
        await self.say(text, id=text)
        async with asyncio.timeout(10 * SLOW):
            while text not in self.acks:
                await self.recv()
        return self.acks[text]

    async def until(self, seq: int) -> None:
        """Read until this member has seen message ``seq`` (replayed or live)."""
        async with asyncio.timeout(10 * SLOW):
            while max(self.seqs, default=0) < seq:
                await self.recv()


async def join(deployment: Deployment, user: str, deadline: float, **query: Any) -> Chatter:
    """Join ``ROOM`` through Caddy, retrying refused handshakes (as the page does) until
    ``deadline``."""
    while True:
        try:
            ws = await websockets.connect(deployment.ws_url(user, **query),
                                          ssl=deployment.context(), compression=None,
                                          open_timeout=10 * SLOW, max_size=2**24)
            break
        except (OSError, websockets.InvalidStatus, websockets.InvalidHandshake,
                TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{user} could not join: {exc!r}") from exc
            await asyncio.sleep(0.2)
    client = Chatter(ws, user=user)
    client.members = set()
    welcome = await client.recv()
    assert welcome["type"] == "welcome", welcome
    client.welcome = welcome
    client.members = {m["user"] for m in welcome["members"]}
    return client


async def closed(client: Chatter, timeout: float = 15.0) -> int | None:
    """Read (and record) until the connection closes: the close code."""
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await client.recv(timeout)
    return client.ws.close_code


async def test_compose_kill_and_restart_an_instance_keeps_one_room(tmp_path: Path) -> None:
    build_seconds = images_built()
    started = time.monotonic()
    project = f"roomchat-test-{os.getpid()}"
    with deployed(project, tmp_path) as deployment:
        up_seconds = time.monotonic() - started
        redis = deployment.container("redis")
        aof = podman("exec", redis, "redis-cli", "CONFIG", "GET", "appendonly").stdout.split()
        fsync = podman("exec", redis, "redis-cli", "CONFIG", "GET", "appendfsync").stdout.split()
        assert aof == ["appendonly", "yes"] and fsync == ["appendfsync", "always"]
        for service in INSTANCES:
            container = inspect(deployment.container(service))
            assert container["Image"] == inspect(IMAGE, "image")["Id"]
            assert container["HostConfig"]["ReadonlyRootfs"] is True
            # compose.yaml's own health check (the image's is dropped in OCI format)
            assert "/healthz" in " ".join(container["Config"]["Healthcheck"]["Test"])
        status, headers, _ = await asyncio.to_thread(
            get, deployment.url("/rooms/lobby"), deployment.context())
        assert status == 200 and headers["x-frame-options"] == "DENY"  # Caddy's headers

        # 1. Four members through Caddy: all on the instance the room hashes to.
        deadline = time.monotonic() + 20 * SLOW
        users = ["u0", "u1", "u2", "u3"]
        first = [await join(deployment, user, deadline) for user in users]
        counts = {s: deployment.sockets(s) for s in INSTANCES}
        home = max(counts, key=lambda s: counts[s])
        other = next(s for s in INSTANCES if s != home)
        assert counts == {home: 4, other: 0}, counts
        acked: dict[str, int] = {}
        for client in first[:2]:
            for i in range(3):
                text = f"p1-{client.user}-{i}"
                acked[text] = await client.say_acked(text)
        for client in first:
            await client.until(6)
        # A file uploaded through the room's instance (to the shared files volume)...
        notes = b"minutes of the meeting\n" * 500
        status, _, body = await asyncio.to_thread(
            request, "POST", deployment.url(f"/rooms/{ROOM}/files?name=notes.txt"),
            deployment.context(), 10.0, {"Authorization": f"Bearer {make_token('u0')}"}, notes)
        assert status == 201, body
        uploaded = json.loads(body)

        # 2. Kill the room's container: Caddy drops its sockets (1006); the clients reconnect
        # with `after` and land on the other one. u1 had two messages in flight: it resends
        # them with their ids, and the stored one is acked as a duplicate, not stored twice.
        acked["p2-u1-0"] = await first[1].say_acked("p2-u1-0")
        await first[1].say("p2-u1-1", id="p2-u1-1")  # not waited for
        killed_at = time.monotonic()
        podman("kill", deployment.container(home))
        codes = await asyncio.gather(*(closed(c) for c in first))
        assert set(codes) == {1006}, codes
        # Usually ~0.4 s. With aardvark-dns 1.4 (Debian 12) the kill's network
        # teardown can stall podman's DNS for the other containers too (containers/aardvark-dns
        # #389): Caddy then fails to resolve the survivor, marks it down for fail_duration,
        # and clients get back after ~15 s (1 run in 7 here).
        deadline = time.monotonic() + 45 * SLOW
        second = [await join(deployment, c.user, deadline, after=c.last_seq) for c in first]
        resumed = time.monotonic() - killed_at
        assert all(c.welcome["recovered"] is True for c in second)
        assert deployment.sockets(other) == 4
        # ...is served by the other instance once the room moved there.
        status, _, body = await asyncio.to_thread(
            get, deployment.url(uploaded["url"]), deployment.context())
        assert (status, body) == (200, notes)
        for text in ("p2-u1-0", "p2-u1-1"):
            acked[text] = await second[1].say_acked(text)
        for client in (second[0], second[2]):
            for i in range(2):
                text = f"p2-{client.user}-{i}"
                acked[text] = await client.say_acked(text)
        total = max(acked.values())
        assert total == len(acked) == 12, acked  # nothing stored twice
        for before, after in zip(first, second, strict=True):
            await after.until(total)
            seqs = before.seqs + after.seqs
            assert seqs == list(range(1, total + 1)), (after.user, seqs)

        # 3. Start it again: once Caddy sees it healthy, new joins for the room hash back to it
        # while the moved sockets stay where they are. One room across both containers.
        podman("start", deployment.container(home))
        restarted_at = time.monotonic()
        await asyncio.to_thread(wait_healthy, deployment.container(home))
        deadline = time.monotonic() + 40 * SLOW
        newcomers: list[Chatter] = []
        while True:
            seen_before = deployment.sockets(home)
            probe = await join(deployment, f"u{4 + len(newcomers)}", deadline, after=0)
            await asyncio.sleep(0.2)  # the access line is written around the upgrade
            if deployment.sockets(home) > seen_before:
                newcomers.append(probe)
                if len(newcomers) == 2:
                    break
            else:
                await probe.ws.close()
                assert time.monotonic() < deadline, "new joins never went back to the restarted"
                await asyncio.sleep(0.5)
        rehomed = time.monotonic() - restarted_at
        assert deployment.sockets(other) >= 4
        everyone = [*second, *newcomers]
        for client in newcomers:
            await client.until(total)
            assert client.seqs == list(range(1, total + 1)), client.seqs  # full history
        writers = [second[0], newcomers[0], second[3]]  # on both containers
        for i in range(2):
            for client in writers:
                text = f"p3-{client.user}-{i}"
                acked[text] = await client.say_acked(text)
        total = max(acked.values())
        assert total == len(acked) == 18, acked
        for client in everyone:
            await client.until(total)
            assert client.seqs == list(range(client.seqs[0], total + 1)), (client.user,
                                                                          client.seqs)
        for client in everyone:
            await client.ws.close()

        # Nothing acked is lost: a fresh member's full history holds every acked text at the
        # seq its ack named.
        reader = await join(deployment, "reader", time.monotonic() + 10 * SLOW, after=0)
        await reader.until(total)
        await reader.ws.close()
        assert {text: seq for seq, text in reader.texts.items()} == acked
        for service in INSTANCES:
            assert "Traceback" not in logs(deployment.container(service)), service
    print(f"\ncompose: images {build_seconds:.1f}s; up -> healthy through Caddy "
          f"{up_seconds:.1f}s; kill -> all resumed {resumed:.2f}s; restart -> new joins "
          f"back {rehomed:.1f}s; total {time.monotonic() - started:.1f}s")


async def test_compose_on_the_postgres_log_and_the_redis_bus(tmp_path: Path) -> None:
    """compose.yaml with compose.postgres.yaml: both instances store in PostgreSQL and tell
    each other through Redis. Members chat through Caddy, the room's container is killed,
    they resume on the other with ``after`` and go on; every acked message is in PostgreSQL
    at the seq its ack named (none in Redis, which holds no stream), and a member's search
    (PostgreSQL's full-text index) finds one through Caddy."""
    build_seconds = images_built()
    started = time.monotonic()
    project = f"roomchat-pg-test-{os.getpid()}"
    with deployed(project, tmp_path, (COMPOSE, ON_POSTGRES), first=("redis", "postgres"),
                  ROOMCHAT_POSTGRES_IMAGE=POSTGRES_IMAGE,
                  ROOMCHAT_POSTGRES_PASSWORD=secrets.token_hex(16)) as deployment:
        up_seconds = time.monotonic() - started
        postgres = deployment.container("postgres")
        assert inspect(postgres)["Image"] == inspect(POSTGRES_IMAGE, "image")["Id"]

        def stored() -> dict[str, int]:
            """The room's messages in PostgreSQL: text -> seq."""
            out = podman("exec", postgres, "psql", "-U", "roomchat", "-d", "roomchat", "-tA",
                         "-F", "\t", "-c", f"SELECT seq, text FROM entries WHERE room = "
                         f"'{ROOM}' AND kind = 0 ORDER BY seq").stdout
            return {text: int(seq) for seq, text in
                    (line.split("\t", 1) for line in out.splitlines() if line)}

        deadline = time.monotonic() + 20 * SLOW
        first = [await join(deployment, user, deadline) for user in ("u0", "u1", "u2")]
        counts = {s: deployment.sockets(s) for s in INSTANCES}
        home = max(counts, key=lambda s: counts[s])
        other = next(s for s in INSTANCES if s != home)
        assert counts == {home: 3, other: 0}, counts
        acked: dict[str, int] = {}
        for client in first[:2]:
            for i in range(3):
                text = f"pg1-{client.user}-{i}"
                acked[text] = await client.say_acked(text)
        for client in first:
            await client.until(6)

        podman("kill", deployment.container(home))
        codes = await asyncio.gather(*(closed(c) for c in first))
        assert set(codes) == {1006}, codes
        deadline = time.monotonic() + 45 * SLOW  # aardvark-dns: see the test above
        second = [await join(deployment, c.user, deadline, after=c.last_seq) for c in first]
        assert all(c.welcome["recovered"] is True for c in second)
        assert deployment.sockets(other) == 3
        for client in second:
            for i in range(2):
                text = f"pg2-{client.user}-{i}"
                acked[text] = await client.say_acked(text)
        total = max(acked.values())
        assert total == len(acked) == 12, acked
        for before, after in zip(first, second, strict=True):
            await after.until(total)
            assert before.seqs + after.seqs == list(range(1, total + 1)), after.user
        for client in second:
            await client.ws.close()

        assert stored() == acked  # every acked message, at its seq, in the log
        redis = deployment.container("redis")
        keys = podman("exec", redis, "redis-cli", "--scan").stdout.split()
        types = {key: podman("exec", redis, "redis-cli", "TYPE", key).stdout.strip()
                 for key in keys}
        assert "stream" not in types.values(), types  # the bus only: no history in Redis
        status, _, body = await asyncio.to_thread(
            request, "GET", deployment.url(f"/rooms/{ROOM}/search?q=pg2-u2-1"),
            deployment.context(), 10.0, {"Authorization": f"Bearer {make_token('u0')}"})
        assert status == 200, body
        found = json.loads(body)["results"]
        assert [r["message"]["seq"] for r in found] == [acked["pg2-u2-1"]], found
        for service in (*INSTANCES, "postgres"):
            assert "Traceback" not in logs(deployment.container(service)), service
    print(f"\ncompose on PostgreSQL + Redis: images {build_seconds:.1f}s; up -> healthy "
          f"through Caddy {up_seconds:.1f}s; total {time.monotonic() - started:.1f}s")

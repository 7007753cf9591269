"""The roomchat image, built from infra/Dockerfile and run with podman as compose runs it:
read-only root, uid 10001, every capability dropped, one volume for /data. Health endpoints
and the image's HEALTHCHECK, a chat round trip with acks, ``podman stop`` draining (1012)
within the grace period, acked messages surviving a new container on the same volume, and
no JWT secret in the image. Run with ``make test-containers``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson
import pytest
import websockets

from tests.infra.harness import chat_once, get, join, wait_for_status
from tests.infra.podman import (
    IMAGE,
    PYTHON_IMAGE,
    WHEELS,
    engine_env,
    healthcheck,
    images_built,
    inspect,
    logs,
    only_with_engine,
    podman,
    remove,
)
from tests.s3_server import S3_ENV, bucket_keys, make_bucket, s3_server
from tests.support import REPO, SECRET, SLOW, free_port, make_token

pytestmark = only_with_engine

GRACE = 15  # compose.yaml's stop_grace_period; the drain itself is bounded by 10 s
# What compose.yaml's x-roomchat block asks of every instance.
HARDENED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges"]


@pytest.fixture(scope="module")
def image() -> str:
    seconds = images_built()
    print(f"\nimages built (or found cached) in {seconds:.1f}s")
    return IMAGE


@dataclass
class Running:
    name: str
    port: int
    started_in: float  # `podman run` until /healthz answered 200

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ws(self, room: str, token: str | None = None, **query: object) -> str:
        extra = "".join(f"&{k}={v}" for k, v in query.items())
        return (f"ws://127.0.0.1:{self.port}/rooms/{room}/ws"
                f"?token={token or make_token('alice')}{extra}")

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *argv, check=check)


def start(image: str, name: str, volume: str, *, secret: str | None = SECRET,
          port: int | None = None) -> Running:
    """``podman run -d`` the image hardened as in compose.yaml, /data on ``volume``, published
    on a free loopback port; returns once /healthz answers 200 from the host."""
    port = port or free_port()
    env = ["-e", f"ROOMCHAT_JWT_SECRET={secret}"] if secret else []
    started = time.monotonic()
    podman("run", "-d", "--name", name, *HARDENED, "-v", f"{volume}:/data",
           "-p", f"127.0.0.1:{port}:8000", *env, image)
    try:
        wait_for_status(f"http://127.0.0.1:{port}/healthz", timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(name)}") from None
    return Running(name, port, time.monotonic() - started)


@contextlib.contextmanager
def cleanup(tag: str) -> Iterator[tuple[str, str]]:
    """A unique container name and volume name; both removed afterwards."""
    name, volume = f"roomchat-test-{tag}-{time.monotonic_ns()}", f"roomchat-test-{tag}-data"
    remove(name)
    podman("volume", "rm", "--force", volume, check=False)
    try:
        yield name, volume
    finally:
        remove(name)
        podman("volume", "rm", "--force", volume, check=False)


def test_image_runs_read_only_as_10001_without_capabilities_and_chats(image: str) -> None:
    info = inspect(image, "image")
    assert info["Config"]["User"] == "roomchat:roomchat"
    # Built with --format docker: the HEALTHCHECK is in the image (an OCI image drops it;
    # compose.yaml repeats it at the service level for that case).
    assert "/healthz" in " ".join(info["Healthcheck"]["Test"]), info.get("Healthcheck")
    size = info["Size"]

    with cleanup("hardened") as (name, volume):
        running = start(image, name, volume)
        host = inspect(name)["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert running.exec("id", "-u").stdout.strip() == "10001"
        assert running.exec("id", "-g").stdout.strip() == "10001"
        status = running.exec("cat", "/proc/1/status").stdout
        caps = {line.split(":")[0]: int(line.split()[1], 16)
                for line in status.splitlines() if line.startswith("Cap")}
        assert caps and not any(caps.values()), caps  # effective, permitted, bounding...
        assert "NoNewPrivs:\t1" in status
        for path in ("/opt/roomchat/x", "/etc/x", "/x"):
            denied = running.exec("touch", path, check=False)
            assert denied.returncode != 0 and "Read-only file system" in denied.stderr, path
        running.exec("touch", "/data/writable", "/tmp/writable")  # the volume and the tmpfs

        assert healthcheck(name), logs(name)  # the image's own HEALTHCHECK command
        for path, body in (("/healthz", b'"ok"'), ("/readyz", b'"ready"')):
            status_code, _, answer = get(running.http(path))
            assert status_code == 200 and body in answer, (path, status_code, answer)

        async def chat() -> None:
            alice, _ = await join(running.ws("box", make_token("alice")))
            bob, _ = await join(running.ws("box", make_token("bob")))
            try:
                ack = await chat_once(alice, "hello from a container", "m1")
                assert ack["seq"] == 1
                ack = await chat_once(bob, "hello back", "m2")
                assert ack["seq"] == 2
            finally:
                await alice.close()
                await bob.close()

        asyncio.run(chat())
        assert "Traceback" not in logs(name)
    print(f"\nimage {image}: {size / 1e6:.0f} MB; start (podman run -> /healthz 200) "
          f"{running.started_in:.2f}s")


def test_the_image_keeps_files_in_an_s3_bucket(image: str) -> None:
    """The image has the ``s3`` extra: with ``ROOMCHAT_FILES_URL=s3://...`` (a bucket of the
    moto S3 server the tests start on this host; the container on the host's network to reach
    it) an upload lands in the bucket and downloads back."""
    with s3_server() as endpoint, cleanup("s3") as (name, volume):
        files_url = make_bucket(endpoint, "image-files")
        port = free_port()
        env = [f"--env={key}={value}" for key, value in
               {**S3_ENV, "ROOMCHAT_JWT_SECRET": SECRET, "ROOMCHAT_FILES_URL": files_url}.items()]
        podman("run", "-d", "--name", name, *HARDENED, "--network", "host",
               "-v", f"{volume}:/data", *env, image, "--bind", f"127.0.0.1:{port}")
        try:
            wait_for_status(f"http://127.0.0.1:{port}/healthz", timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs(name)}") from None
        data = b"minutes of the meeting\n" * 1000
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/rooms/box/files?name=notes.txt", data=data,
            method="POST", headers={"Authorization": f"Bearer {make_token('alice')}"})
        with urllib.request.urlopen(request, timeout=30 * SLOW) as answer:
            assert answer.status == 201
            uploaded = orjson.loads(answer.read())
        keys = bucket_keys(endpoint, "image-files")
        assert f"meta/{uploaded['id']}.json" in keys
        assert any(k.startswith("blob/") and k.endswith(uploaded["id"]) for k in keys), keys
        status, _, body = get(f"http://127.0.0.1:{port}{uploaded['url']}")
        assert (status, body) == (200, data)
        assert "Traceback" not in logs(name)


async def _stop_while_connected(running: Running) -> tuple[list[int | None], float, int]:
    """Two clients in a room, one with three acked messages; ``podman stop`` meanwhile:
    (the clients' close codes, the seconds stop took, the container's exit code)."""
    alice, _ = await join(running.ws("durable", make_token("alice")))
    bob, _ = await join(running.ws("durable", make_token("bob")))
    for i in range(3):
        await chat_once(alice, f"kept {i}", f"k{i}")
    result: dict[str, float] = {}

    def stop() -> None:
        started = time.monotonic()
        podman("stop", "--time", str(GRACE), running.name, timeout=GRACE + 30)
        result["took"] = time.monotonic() - started

    stopper = threading.Thread(target=stop)
    stopper.start()

    async def closed(ws: websockets.ClientConnection) -> int | None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout((GRACE + 5) * SLOW):
                while True:
                    await ws.recv()
        return ws.close_code

    codes = list(await asyncio.gather(closed(alice), closed(bob)))
    await asyncio.to_thread(stopper.join)
    exit_code: int = inspect(running.name)["State"]["ExitCode"]
    return codes, result["took"], exit_code


def test_stop_drains_with_1012_and_a_new_container_on_the_volume_keeps_acked_messages(
        image: str) -> None:
    with cleanup("durable") as (name, volume):
        first = start(image, name, volume)
        codes, took, exit_code = asyncio.run(_stop_while_connected(first))
        assert codes == [1012, 1012], codes  # service restart: reconnect and resume
        assert took < GRACE, f"podman stop took {took:.1f}s: killed, not drained"
        assert exit_code == 0, logs(name)
        remove(name)  # an upgrade: a new container, the same volume

        second = start(image, name, volume, port=first.port)
        seen = asyncio.run(_messages_after(second, "durable"))
        assert seen == [(1, "kept 0"), (2, "kept 1"), (3, "kept 2")], seen
    print(f"\npodman stop with two sockets open: drained in {took:.2f}s")


async def _messages_after(running: Running, room: str, after: int = 0) -> list[tuple[int, str]]:
    """Join with ``after`` and collect the replayed messages until the room goes quiet."""
    ws, _ = await join(running.ws(room, make_token("reader"), after=after))
    seen: list[tuple[int, str]] = []
    try:
        with contextlib.suppress(TimeoutError):
            while True:
                async with asyncio.timeout(1.0 * SLOW):
                    frame = await ws.recv()
                for line in str(frame).split("\n"):
                    obj = orjson.loads(line)
                    if obj["type"] == "message":
                        seen.append((obj["seq"], obj["text"]))
    finally:
        await ws.close()
    return seen


def _files(image: str) -> dict[str, str]:
    """Every regular file of ``image`` (a created, never started container, exported):
    path -> sha256. Byte-code caches are left out: their headers hold build-time stamps."""
    name = f"roomchat-test-export-{time.monotonic_ns()}"
    podman("create", "--name", name, image)
    files: dict[str, str] = {}
    try:
        proc = subprocess.Popen(["podman", "export", name], stdout=subprocess.PIPE,
                                env=engine_env())
        stream: IO[bytes] | None = proc.stdout
        assert stream is not None
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.isfile() and not member.name.endswith(".pyc"):
                    data = tar.extractfile(member)
                    assert data is not None
                    files[member.name] = hashlib.sha256(data.read()).hexdigest()
        assert proc.wait(timeout=120 * SLOW) == 0
    finally:
        remove(name)
    return files


def _build(context: Path, tag: str, *options: str) -> float:
    """Build infra/Dockerfile from ``context`` as scripts/build-container-images.sh does
    (Debian Python base, offline wheels): the seconds it took."""
    started = time.monotonic()
    podman("build", "-q", "--format", "docker", *options,
           "--build-arg", f"PYTHON_IMAGE={PYTHON_IMAGE}",
           "--volume", f"{WHEELS}:/wheelhouse:ro",
           "--build-arg", "WHEELHOUSE=/wheelhouse",
           "-t", tag, "-f", str(context / "infra" / "Dockerfile"), str(context), timeout=600)
    return time.monotonic() - started


def test_no_secret_in_the_image_and_the_environment_secret_is_used(
        image: str, tmp_path: Path) -> None:
    # Two builds of one tree, the second without the layer cache: anything generated at build
    # time (a secret, a key) would differ between them. The tree is a snapshot: the checkout
    # may change while the test runs.
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("pyproject.toml", "README.md", ".dockerignore", "infra/Dockerfile"):
        (tree / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / part, tree / part)
    for part in ("rooms", "gateway", "files", "static"):
        shutil.copytree(REPO / part, tree / part, ignore=ignore)
    tags = [f"localhost/roomchat-test:build-{n}" for n in (1, 2)]
    try:
        _build(tree, tags[0])
        rebuilt_in = _build(tree, tags[1], "--no-cache")
        one, two = _files(tags[0]), _files(tags[1])
    finally:
        podman("rmi", "--force", *tags, check=False)
    for files in (one, two):
        secrets = [path for path in files if path.endswith("jwt-secret")]
        assert not secrets, secrets
        assert not [path for path in files if path.startswith("data/")], "files in /data"
    assert one.keys() == two.keys(), one.keys() ^ two.keys()
    differ = sorted(path for path in one if one[path] != two[path])
    assert not differ, f"files that differ between two builds of the same tree: {differ}"

    with cleanup("secret") as (name, volume):
        running = start(image, name, volume, secret=SECRET)

        async def tokens() -> None:
            ws, _ = await join(running.ws("lobby", make_token("alice", secret=SECRET)))
            await ws.close()
            other = make_token("mallory", secret="another-secret-long-enough-for-hs256-0000")
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(running.ws("lobby", other), open_timeout=10 * SLOW)
            assert refused.value.response.status_code == 401

        asyncio.run(tokens())
        # The database and the default files location (ROOMCHAT_FILES_URL unset): no secret.
        assert running.exec("ls", "-A", "/data").stdout.split() == [
            "files", "roomchat.sqlite3", "roomchat.sqlite3-shm", "roomchat.sqlite3-wal"]
        remove(name)

        # Without ROOMCHAT_JWT_SECRET the secret is generated on the volume, never the image.
        running = start(image, name, volume, secret=None)
        mode = running.exec("stat", "-c", "%a %u", "/data/jwt-secret").stdout.split()
        assert mode == ["600", "10001"], mode
        assert "generated a new JWT secret" in logs(name)
    print(f"\nsecond build without cache: {rebuilt_in:.1f}s; {len(one)} files, none differ")


"""Podman for the container tests: the images scripts/build-container-images.sh builds, and
small wrappers around the ``podman`` command line. The container tests run with
``make test-containers`` (which sets ROOMCHAT_TEST_CONTAINERS=1, installs the engine and builds
the images); a plain ``pytest`` does not collect them (tests/infra/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from functools import cache
from typing import Any

import pytest

from tests.support import REPO, SLOW

CONTAINERS_CONF = REPO / "scripts" / "containers" / "containers.conf"
BUILD_SCRIPT = REPO / "scripts" / "build-container-images.sh"
IMAGE = "localhost/roomchat:latest"
PYTHON_IMAGE = "localhost/roomchat-python:3.11"
REDIS_IMAGE = "localhost/roomchat-redis:7"
POSTGRES_IMAGE = "localhost/roomchat-postgres:15"
CADDY_IMAGE = "localhost/roomchat-caddy:2.11"
WHEELS = REPO / "var" / "containers" / "wheels"

ENABLED = os.environ.get("ROOMCHAT_TEST_CONTAINERS") == "1"
only_with_engine = pytest.mark.skipif(
    not ENABLED, reason="container tests: run `make test-containers` (podman, built images)")


def engine_env() -> dict[str, str]:
    """This process's environment with podman's settings for this sandbox (runc, ulimits),
    unless the caller chose a CONTAINERS_CONF, and no ROOMCHAT_* that could leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_")}
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def podman(*args: str, check: bool = True, timeout: float = 60.0,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS``; raise with its output if it fails and ``check``."""
    result = subprocess.run(["podman", *args], capture_output=True, text=True,
                            timeout=timeout * SLOW, env=env or engine_env(), check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {result.returncode}\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


@cache
def images_built() -> float:
    """Build (or find cached) every image once per test session: the build's seconds."""
    started = time.monotonic()
    result = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True,
                            timeout=900 * SLOW, env=engine_env(), check=False)
    assert result.returncode == 0, f"{BUILD_SCRIPT} failed:\n{result.stdout}\n{result.stderr}"
    return time.monotonic() - started


def inspect(name: str, kind: str = "container") -> dict[str, Any]:
    """``podman <kind> inspect NAME`` as a dict."""
    (found,) = json.loads(podman(kind, "inspect", name).stdout)
    info: dict[str, Any] = found
    return info


def logs(name: str) -> str:
    """Everything the container wrote to stdout and stderr so far."""
    result = podman("logs", name, check=False)
    return result.stdout + result.stderr


def remove(*names: str) -> None:
    """Remove containers (running or not) by name, ignoring ones that do not exist, with
    their anonymous volumes (the images declare VOLUME /data)."""
    if names:
        podman("rm", "--force", "--ignore", "--volumes", "--time", "0", *names, check=False)


def healthcheck(name: str) -> bool:
    """Run the container's configured health check once. Podman normally runs it from a
    systemd timer, which a sandbox without systemd lacks: tests run it themselves."""
    return podman("healthcheck", "run", name, check=False).returncode == 0


def wait_healthy(name: str, timeout: float = 30.0) -> float:
    """Run the health check until it passes: the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout * SLOW
    while not healthcheck(name):
        state = inspect(name)["State"]
        assert state["Running"], f"{name} exited ({state['ExitCode']}):\n{logs(name)}"
        assert time.monotonic() < deadline, f"{name} never became healthy:\n{logs(name)}"
        time.sleep(0.2)
    return time.monotonic() - started

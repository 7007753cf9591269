"""infra/Dockerfile, infra/compose.yaml and infra/roomchat.env.example, checked without a Docker
engine: they parse, name only real flags, settings, files and services, and the image's
entrypoint and health check work against a wheel installed in a plain venv. The image and the
compose deployment built and run for real: test_container_image.py and test_compose.py
(``make test-containers``)."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from functools import cache
from pathlib import Path

from gateway.config import load_config
from tests.infra.harness import CADDYFILE, COMPOSE, INFRA, SETTINGS, compose, default, get, stop
from tests.support import REPO, SECRET, SLOW, free_port

DOCKERFILE = INFRA / "Dockerfile"
ENV_EXAMPLE = INFRA / "roomchat.env.example"


@cache
def serve_flags() -> frozenset[str]:
    """The long options of ``roomchat serve``, from its own ``--help``."""
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--help"],
                            capture_output=True, text=True, check=True, timeout=30 * SLOW)
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", result.stdout))


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def exec_form(keyword: str) -> list[str]:
    """The JSON (exec form) argument list of the last ``keyword`` (HEALTHCHECK: after CMD)."""
    (*_, args) = [a for k, a in dockerfile() if k == keyword]
    if keyword == "HEALTHCHECK":
        args = args[args.index("CMD ") + 4:]
    argv: list[str] = json.loads(args)
    return argv


# ---- Dockerfile ------------------------------------------------------------------------------

def test_dockerfile_is_multi_stage_non_root_and_holds_no_secret() -> None:
    steps = dockerfile()
    stages = [args for k, args in steps if k == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build"), stages
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in steps
    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM"):]
    assert ("COPY", "--from=build /opt/roomchat /opt/roomchat") in final
    (user,) = [args for k, args in final if k == "USER"]
    assert user.split(":")[0] not in {"root", "0"}
    assert ("VOLUME", "/data") in final and ("EXPOSE", "8000") in final
    assert exec_form("ENTRYPOINT") == ["roomchat", "serve", "--bind", "0.0.0.0:8000",
                                       "--data-dir", "/data"]
    assert exec_form("CMD") == []
    for keyword, args in steps:
        if keyword in {"ENV", "ARG"}:
            assert not re.search(r"SECRET|PASSWORD|TOKEN|PRIVATE", args, re.I), args
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert not source.startswith(("var", ".env", ".venv")), source


def test_dockerfile_builds_every_package_with_the_extras_deployments_use() -> None:
    """The build stage copies every package the wheel holds (pyproject's list: an image built
    without ``files/`` did not start), and installs the extras docs/production.md's
    deployments need: redis (ROOMCHAT_STORE_URL=redis://), s3 (ROOMCHAT_FILES_URL=s3://),
    postgres (ROOMCHAT_STORE_URL=postgresql://, infra/compose.postgres.yaml),
    fast; the offline build's wheelhouse (scripts/build-container-images.sh) holds them too."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    steps = dockerfile()
    build = steps[:max(i for i, (k, _) in enumerate(steps) if k == "FROM")]
    copied = {shlex.split(args)[0].rstrip("/") for k, args in build if k == "COPY"}
    assert set(packages) <= copied, set(packages) - copied
    wanted = {"fast", "redis", "s3", "postgres"}
    assert wanted <= set(pyproject["project"]["optional-dependencies"])
    runs = " ".join(args for k, args in build if k == "RUN")
    for target in (r"'\.\[([a-z0-9,]+)\]'", r"'roomchat\[([a-z0-9,]+)\]'"):
        (extras,) = re.findall(target, runs)
        assert set(extras.split(",")) == wanted, (target, extras)
    script = (REPO / "scripts" / "build-container-images.sh").read_text()
    (extras,) = re.findall(r'^extras="([a-z0-9,]+)"', script, re.M)
    assert "pip wheel -q --wheel-dir \"$wheels\" \".[$extras]\"" in script
    assert set(extras.split(",")) == wanted


def test_dockerfile_entrypoint_flags_are_real() -> None:
    flags = {arg for arg in exec_form("ENTRYPOINT") if arg.startswith("--")}
    assert flags <= serve_flags(), flags - serve_flags()


def _plain_venv(tmp_path: Path) -> Path:
    """A venv with the roomchat wheel installed (not the editable checkout); third-party
    dependencies are borrowed from this venv through a .pth line (no download)."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(REPO)], check=True, timeout=120 * SLOW)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60 * SLOW)
    python = venv / "bin" / "python"
    (wheel,) = wheels.glob("roomchat-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=120 * SLOW)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # A plain path line: the dev venv's own .pth files (the editable install) are not run.
    (Path(purelib) / "deps-from-dev-venv.pth").write_text(sysconfig.get_paths()["purelib"])
    where = subprocess.run([str(python), "-c", "import gateway; print(gateway.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert where.startswith(str(venv)), f"gateway imported from {where}, not the wheel"
    return venv


def test_entrypoint_and_healthcheck_work_from_a_wheel(tmp_path: Path) -> None:
    venv = _plain_venv(tmp_path)
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    # The entrypoint as Docker runs it, plus compose's appended command, with the container's
    # address and volume mapped to this machine.
    container = {"0.0.0.0:8000": f"127.0.0.1:{port}", "/data": str(data)}
    entrypoint = [container.get(arg, arg) for arg in exec_form("ENTRYPOINT")]
    entrypoint[0] = str(venv / "bin" / entrypoint[0])
    command = entrypoint + compose()["x-roomchat"]["command"]

    help_run = subprocess.run([*entrypoint[:2], "--help"], capture_output=True, text=True,
                              timeout=30 * SLOW, check=False)
    assert help_run.returncode == 0 and "--data-dir" in help_run.stdout, help_run.stderr

    healthcheck = [arg.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                   for arg in exec_form("HEALTHCHECK")]
    assert healthcheck[0] == "python"
    healthcheck[0] = str(venv / "bin" / "python")

    def healthy() -> bool:
        return subprocess.run(healthcheck, capture_output=True, timeout=30 * SLOW,
                              check=False).returncode == 0

    assert not healthy(), "the health check must fail while nothing listens"
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=data,
                                env={"PATH": str(venv / "bin"), "ROOMCHAT_JWT_SECRET": SECRET})
    try:
        deadline = time.monotonic() + 20 * SLOW
        while not healthy():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the health check never passed\n" + log.read_text()
            time.sleep(0.2)
        status, headers, _ = get(f"http://127.0.0.1:{port}/rooms/lobby")
        assert status == 200 and headers["content-type"].startswith("text/html")  # packaged
        assert (data / "roomchat.sqlite3").exists()
        proc.send_signal(signal.SIGTERM)  # `docker stop`
        assert proc.wait(timeout=15 * SLOW) == 0
    finally:
        stop(proc)
    lines = log.read_text().splitlines()
    assert lines and all(json.loads(line)["level"] for line in lines)  # --log-json


# ---- compose.yaml ----------------------------------------------------------------------------

def test_compose_services_flags_files_and_volumes_are_real() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) == {"roomchat-a", "roomchat-b", "caddy", "redis"}
    declared_volumes = set(spec["volumes"])
    data_volumes = []
    files_volumes: set[str] = set()
    entry_bind = exec_form("ENTRYPOINT")[exec_form("ENTRYPOINT").index("--bind") + 1]
    for name in ("roomchat-a", "roomchat-b"):
        service = services[name]
        context = (INFRA / service["build"]["context"]).resolve()
        assert context == REPO
        assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        flags = {arg for arg in service["command"] if arg.startswith("--")}
        assert flags <= serve_flags(), flags - serve_flags()
        env = service["environment"]
        assert env["ROOMCHAT_JWT_SECRET"] == "${ROOMCHAT_JWT_SECRET:?set it}"
        assert set(env) <= SETTINGS, set(env) - SETTINGS
        assert [e["path"] for e in service["env_file"]] == ["./roomchat.env"]
        mounts = {target: source for source, target in
                  (volume.split(":") for volume in service["volumes"])}
        assert set(mounts) == {"/data", "/files"}
        assert set(mounts.values()) <= declared_volumes
        data_volumes.append(mounts["/data"])
        # Files are shared like messages: one volume mounted by both, named by the files URL
        # unless the operator gives another (an s3:// bucket).
        files_volumes.add(mounts["/files"])
        assert default(env["ROOMCHAT_FILES_URL"], "ROOMCHAT_FILES_URL") == "file:///files"
        assert service["expose"] == [entry_bind.rsplit(":", 1)[1]]
        # History is shared through Redis, so a room that fails over keeps it.
        assert env["ROOMCHAT_STORE_URL"] == "redis://redis:6379/0"
        assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}
        # The image's HEALTHCHECK, repeated for engines and image formats that drop it.
        assert service["healthcheck"]["test"] == ["CMD", *exec_form("HEALTHCHECK")]
    assert len(set(data_volumes)) == 2, "each instance needs its own data directory"
    assert len(files_volumes) == 1 and not files_volumes & set(data_volumes), \
        "both instances need one files location"

    caddy = services["caddy"]
    assert default(caddy["image"], "ROOMCHAT_CADDY_IMAGE").startswith("caddy:2.11")
    upstreams = caddy["environment"]["ROOMCHAT_UPSTREAMS"].split()
    assert upstreams == ["roomchat-a:8000", "roomchat-b:8000"]
    assert {u.rsplit(":", 1)[1] for u in upstreams} == {entry_bind.rsplit(":", 1)[1]}
    caddyfile = CADDYFILE.read_text()
    for variable in caddy["environment"]:
        assert "{$" + variable in caddyfile, f"the Caddyfile does not read {variable}"
    mounts = dict(v.split(":", 1) for v in caddy["volumes"])
    assert (INFRA / "Caddyfile").samefile(INFRA / next(
        src for src, dst in mounts.items() if dst.startswith("/etc/caddy/Caddyfile")))
    assert {"caddy-data", "caddy-config"} <= set(mounts) <= declared_volumes | {"./Caddyfile"}
    assert {"${ROOMCHAT_PUBLISH_HTTP:-80}:80", "${ROOMCHAT_PUBLISH_HTTPS:-443}:443",
            "${ROOMCHAT_PUBLISH_HTTPS:-443}:443/udp"} <= set(caddy["ports"])
    assert caddy["depends_on"] == {name: {"condition": "service_healthy"}
                                   for name in ("roomchat-a", "roomchat-b")}

    redis = services["redis"]
    assert default(redis["image"], "ROOMCHAT_REDIS_IMAGE").startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"  # acked = durable
    assert redis["volumes"] == ["redis-data:/data"] and "ports" not in redis


def test_compose_holds_no_secret_value() -> None:
    text = COMPOSE.read_text()
    for match in re.finditer(r"(\w*(?:SECRET|PASSWORD|KEY)\w*):\s*(\S+)", text):
        assert match.group(2).startswith("${"), match.group(0)


# ---- roomchat.env.example --------------------------------------------------------------------

def test_env_example_names_real_settings_that_load() -> None:
    values: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        setting = re.match(r"#\s*(ROOMCHAT_[A-Z_]+)=", line)
        if setting:  # commented-out examples must name real settings too
            assert setting.group(1) in SETTINGS, setting.group(1)
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert name in SETTINGS, f"{name} is not a roomchat setting"
            values[name] = value
    assert values["ROOMCHAT_JWT_SECRET"] == "", "the example must not ship a secret"
    config = load_config(values)  # every value parses
    assert config.log_json and not config.dev_login and config.jwt_secret is None

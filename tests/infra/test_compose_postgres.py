"""infra/compose.postgres.yaml (roomchat on the PostgreSQL log and the Redis bus) and the
PostgreSQL image's entrypoint, checked without a container engine: the override merged over
compose.yaml as compose merges it names real settings that load, points both instances at the
postgres service with its user, database and password, waits for its health check, and keeps
its data in a volume; infra/images/postgres-entrypoint.sh makes a cluster as the official image
does, run here with this host's PostgreSQL binaries. The deployment run for real:
test_compose.py (``make test-containers``)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from gateway.config import load_config
from rooms.engines import open_engine
from tests.infra.harness import INFRA, SETTINGS, compose, default
from tests.postgres_server import RUN_AS, bin_dir
from tests.support import REPO, SLOW, free_port

OVERRIDE = INFRA / "compose.postgres.yaml"
ENTRYPOINT = INFRA / "images" / "postgres-entrypoint.sh"
CONTAINERFILE = INFRA / "images" / "postgres.Containerfile"
PASSWORD_VARIABLE = "ROOMCHAT_POSTGRES_PASSWORD"


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base`` as compose merges files: mappings key by key, anything else
    (lists, strings) replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def deployment() -> dict[str, Any]:
    override: dict[str, Any] = yaml.safe_load(OVERRIDE.read_text())
    return merged(compose(), override)


def required(value: str, variable: str) -> str:
    """``value`` with ``${VARIABLE:?message}`` replaced by ``<VARIABLE>``; the variable is
    required (compose refuses to start without it)."""
    pattern = r"\$\{" + variable + r":\?[^}]+\}"
    assert re.search(pattern, value), (value, variable)
    return re.sub(pattern, f"<{variable}>", value)


def test_the_override_runs_both_instances_on_the_postgres_log_and_the_redis_bus() -> None:
    spec = deployment()
    services = spec["services"]
    assert set(services) == {"roomchat-a", "roomchat-b", "caddy", "redis", "postgres"}
    postgres = services["postgres"]
    pg_env = postgres["environment"]
    assert required(pg_env["POSTGRES_PASSWORD"], PASSWORD_VARIABLE) == f"<{PASSWORD_VARIABLE}>"
    for name in ("roomchat-a", "roomchat-b"):
        service = services[name]
        env = service["environment"]
        assert set(env) <= SETTINGS, set(env) - SETTINGS
        store = urlsplit(required(env["ROOMCHAT_STORE_URL"], PASSWORD_VARIABLE))
        assert (store.scheme, store.hostname, store.port) == ("postgresql", "postgres", 5432)
        assert (store.username, store.password, store.path) == (
            pg_env["POSTGRES_USER"], f"<{PASSWORD_VARIABLE}>", "/" + pg_env["POSTGRES_DB"])
        assert env["ROOMCHAT_BUS_URL"] == "redis://redis:6379/0"
        # compose.yaml's own settings are kept (the secret, the shared files volume).
        assert env["ROOMCHAT_JWT_SECRET"] == "${ROOMCHAT_JWT_SECRET:?set it}"
        assert {v.split(":")[1] for v in service["volumes"]} == {"/data", "/files"}
        assert service["depends_on"] == {"redis": {"condition": "service_healthy"},
                                         "postgres": {"condition": "service_healthy"}}
        # What the instances get loads: several processes on a PostgreSQL log need a bus.
        config = load_config({"ROOMCHAT_STORE_URL": store._replace(
            netloc="roomchat:secret@postgres:5432").geturl(),
            "ROOMCHAT_BUS_URL": env["ROOMCHAT_BUS_URL"], "ROOMCHAT_WORKERS": "2"})
        assert config.store_url.startswith("postgresql://") and config.bus_url
    assert default(postgres["image"], "ROOMCHAT_POSTGRES_IMAGE") == "postgres:15-bookworm"
    assert postgres["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert "postgres-data" in spec["volumes"] and "ports" not in postgres
    test = postgres["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"]
    assert test[test.index("-U") + 1] == pg_env["POSTGRES_USER"]
    assert test[test.index("-d") + 1] == pg_env["POSTGRES_DB"]
    # Redis is compose.yaml's, untouched: the bus.
    assert spec["services"]["redis"] == compose()["services"]["redis"]


def test_the_override_holds_no_secret_value() -> None:
    keys = re.findall(r"^\s*(\w*(?:SECRET|PASSWORD|KEY)\w*):\s*(\S+)", OVERRIDE.read_text(),
                      re.M)
    assert keys == [("POSTGRES_PASSWORD", "${ROOMCHAT_POSTGRES_PASSWORD:?set")]
    assert "://roomchat:${" in OVERRIDE.read_text()  # the URL's password is the variable too


def test_the_local_image_is_built_by_the_script_and_matches_the_override() -> None:
    script = (REPO / "scripts" / "build-container-images.sh").read_text()
    assert "build_cached $POSTGRES infra/images/postgres.Containerfile infra/images" in script
    assert "infra/images/postgres-entrypoint.sh" in script  # in the recipe's hash
    (tag,) = re.findall(r"^POSTGRES=(\S+)$", script, re.M)
    assert tag == "localhost/roomchat-postgres:15"
    text = CONTAINERFILE.read_text()
    assert "postgresql-15" in text and "USER postgres" in text
    assert "STOPSIGNAL SIGINT" in text  # a fast shutdown; SIGTERM waits for every client
    assert "VOLUME /var/lib/postgresql/data" in text
    assert "PGDATA=/var/lib/postgresql/data" in text
    assert os.access(ENTRYPOINT, os.X_OK)


class Entrypoint:
    """infra/images/postgres-entrypoint.sh run on this host (as ``RUN_AS`` when root, as the
    image runs it as ``postgres``), the image's PATH and PGDATA, on a free port."""

    def __init__(self, root: Path) -> None:
        """``root``: a directory of its own directly under /tmp (the server's user must reach
        it: pytest's tmp_path is under a directory only root may enter)."""
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.user = RUN_AS if os.geteuid() == 0 else None
        self.group = "nogroup" if self.user else None
        if self.user:
            os.chown(root, *_ids(self.user))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "server.log"

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": f"{bin_dir()}:/usr/bin:/bin", "PGDATA": str(self.data),
                "LANG": "C.UTF-8", "TMPDIR": str(self.root), **extra}

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(ENTRYPOINT), *args], env=self.env(**env), cwd=self.root,
                              capture_output=True, timeout=60 * SLOW, user=self.user,
                              group=self.group, extra_groups=[] if self.user else None,
                              check=False)

    def start(self, **env: str) -> None:
        # Later arguments win over the entrypoint's: this host's port, loopback, a socket
        # directory of the test's (the image's /var/run/postgresql is not here).
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(ENTRYPOINT), "postgres", "-c", f"port={self.port}",
                 "-c", "listen_addresses=127.0.0.1", "-k", str(self.root)],
                env=self.env(**env), cwd=self.root, stdout=log, stderr=log, user=self.user,
                group=self.group, extra_groups=[] if self.user else None)
        deadline = time.monotonic() + 30 * SLOW
        while subprocess.run([str(bin_dir() / "pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                              str(self.port)], check=False).returncode != 0:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the image's STOPSIGNAL
            self.proc.wait(timeout=30 * SLOW)

    def url(self, password: str, database: str = "roomchat") -> str:
        return f"postgresql://roomchat:{password}@127.0.0.1:{self.port}/{database}"


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def own_tmp() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="roomchat-pg-entrypoint-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_the_entrypoint_makes_the_cluster_once_with_password_logins(
        own_tmp: Path) -> None:
    pg = Entrypoint(own_tmp)
    env = {"POSTGRES_USER": "roomchat", "POSTGRES_DB": "roomchat"}
    # No password on the first start: one line saying what to set, exit 2, nothing made.
    done = pg.run("postgres", **env)
    assert done.returncode == 2, done
    assert done.stderr.decode().startswith("postgres-entrypoint: set POSTGRES_PASSWORD")
    assert not (pg.data / "PG_VERSION").exists()
    # Anything else runs as given.
    assert pg.run("sh", "-c", "echo as given").stdout == b"as given\n"
    try:
        pg.start(POSTGRES_PASSWORD="first-pw", **env)
        # roomchat's log opens on it over TCP with the password (migrations, unaccent).
        engine = await open_engine(pg.url("first-pw"))
        await engine.close()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(pg.url("wrong"), connect_timeout=10).close()
        pg.stop()
        # A second start keeps the cluster: the password is the first one, whatever is given.
        pg.start(POSTGRES_PASSWORD="other-pw", **env)
        with psycopg.connect(pg.url("first-pw"), connect_timeout=10) as conn:
            row = conn.execute("SELECT count(*) FROM schema_version").fetchone()
            assert row == (1,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(pg.url("other-pw"), connect_timeout=10).close()
    finally:
        pg.stop()
    assert pg.log.read_text().count("made the cluster in") == 1

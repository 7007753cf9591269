from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.postgres_server import PostgresServer
from tests.redis_cluster import RedisCluster
from tests.support import Server, make_config, running_server


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--plain-asgi-too", action="store_true",
        help="run every test of PLAIN_ASGI_SUITES (but those marked fast_paths) twice: with "
             "the fast paths and on Hypercorn's plain ASGI path (ROOMCHAT_FAST_PATHS=0), in "
             "one session (`make test`); ignored when ROOMCHAT_FAST_PATHS is set")
    parser.addoption(
        "--plain-asgi-only", action="store_true",
        help="run only the tests of PLAIN_ASGI_SUITES (but those marked fast_paths), on "
             "Hypercorn's plain ASGI path (ROOMCHAT_FAST_PATHS=0): `make test-plain-asgi`")


PLAIN_ASGI_SUITES = ("integration", "gateway/hypercorn_ext")
"""The WebSocket protocol and integration suites, which ``--plain-asgi-too`` runs both ways."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not metafunc.config.getoption("plain_asgi_too") or "ROOMCHAT_FAST_PATHS" in os.environ:
        return
    if "fast_paths" in metafunc.fixturenames:  # the test runs both ways itself (autobahn)
        return
    if metafunc.definition.get_closest_marker("fast_paths") is not None:
        return
    if _in_plain_asgi_suites(metafunc.definition.path):
        metafunc.parametrize("asgi_path", ["fast-paths", "plain-asgi"], indirect=True)


@pytest.fixture(autouse=True)
def asgi_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The WebSocket path this test's servers take when ``--plain-asgi-too`` runs it both
    ways: ``plain-asgi`` sets ``ROOMCHAT_FAST_PATHS=0`` for the servers it starts, in this
    process (``tests.support.running_server``) and in child processes alike."""
    path: str | None = getattr(request, "param", None)
    if path == "plain-asgi":
        monkeypatch.setenv("ROOMCHAT_FAST_PATHS", "0")
    return path


def _in_plain_asgi_suites(path: Path) -> bool:
    folder = path.relative_to(Path(__file__).parent).as_posix()
    return folder.startswith(tuple(f"{suite}/" for suite in PLAIN_ASGI_SUITES))


def _plain_asgi_only(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep = [item for item in items
            if _in_plain_asgi_suites(item.path) and item.get_closest_marker("fast_paths") is None]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("plain_asgi_only"):
        os.environ["ROOMCHAT_FAST_PATHS"] = "0"  # before any server, here and in xdist workers
    config.addinivalue_line(
        "markers", "fast_paths: asserts what gateway.hypercorn_ext's fast paths do (direct "
        "frames, the transport handle, close frames, deflate declined, lean state); "
        "`make test-plain-asgi` (ROOMCHAT_FAST_PATHS=0) leaves these out")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresServer]:
    """One real PostgreSQL per test session (per xdist worker), started when a test first asks;
    each test takes a fresh database of it (``postgres_url``). Not ``durable``: no test crashes
    the machine, and each database costs half as much."""
    with PostgresServer(durable=False) as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresServer) -> Iterator[str]:
    """A new database with roomchat's schema on the session's PostgreSQL, dropped after the
    test (``postgres_cluster.fresh()`` gives an empty one)."""
    with postgres_cluster.fresh(migrated=True) as url:
        yield url


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A real server with default limits, in this event loop."""
    async with running_server(make_config(tmp_path)) as srv:
        yield srv


@pytest.fixture(scope="session")
def redis_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One 3-master Redis Cluster per test session (per xdist worker): creating one takes
    ~2 s. Tests that use it take ``redis_cluster`` (flushed first), and leave its shape as
    they found it."""
    with RedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_session: RedisCluster) -> RedisCluster:
    """The session's Redis Cluster, every key removed."""
    redis_cluster_session.flush()
    return redis_cluster_session


ServerFactory = Callable[..., Any]


@pytest.fixture
def server_with(tmp_path: Path) -> ServerFactory:
    """``async with server_with(**room_limits) as srv``: a server with some limits changed."""
    counter = iter(range(1000))

    def make(gateway: dict[str, Any] | None = None, **room: Any) -> Any:
        from dataclasses import replace

        config = make_config(tmp_path / f"s{next(counter)}", **room)
        if gateway:
            config = replace(config, **gateway)
        return running_server(config)

    return make


TIERS = {"rooms": "unit", "gateway": "unit", "files": "unit", "integration": "integration",
         "e2e": "e2e", "chaos": "chaos", "infra": "infra", "bench": "bench"}
"""Each test's tier, by the folder under tests/ it lives in (pyproject.toml lists the markers)."""


_SERVERS = {"postgres_url", "postgres_cluster", "redis_cluster", "redis_cluster_session",
            "s3_endpoint"}
"""Fixtures that start a server process (a database, an S3 server): a test using one is in the
integration tier, wherever it lives (the engine contract suite's PostgreSQL and cluster cases,
the files suite's S3 cases)."""


_SERVER_PARAMS = {"postgres", "postgres+redis", "postgres+postgres", "redis-cluster", "s3"}
"""The engine and files suites' parameters that ask for one of those fixtures by name at run
time."""


def _starts_a_server(item: pytest.Item) -> bool:
    if _SERVERS.intersection(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(
        isinstance(value, str) and value in _SERVER_PARAMS for value in callspec.params.values())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("plain_asgi_only"):
        _plain_asgi_only(config, items)
    here = Path(__file__).parent
    tiers = set(TIERS.values())
    for item in items:
        if any(mark.name in tiers for mark in item.iter_markers()):
            continue  # its module says (``pytestmark``): e.g. test_cli's processes, integration
        folder = item.path.relative_to(here).parts[0]
        tier = TIERS.get(folder)
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: tests/{folder} has no tier in TIERS "
                                    "(tests/conftest.py)")
        if tier == "unit" and _starts_a_server(item):
            tier = "integration"  # a PostgreSQL or a Redis Cluster per worker: not make check's
        item.add_marker(getattr(pytest.mark, tier))

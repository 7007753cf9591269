from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import Server, make_config, running_server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fast_paths: asserts what gateway.hypercorn_ext's fast paths do (direct "
        "frames, the transport handle, close frames, deflate declined, lean state); "
        "`make test-plain-asgi` (ROOMCHAT_FAST_PATHS=0) leaves these out")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A real server with default limits, in this event loop."""
    async with running_server(make_config(tmp_path)) as srv:
        yield srv


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

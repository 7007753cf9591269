"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.apicall import API_KEY
from tests.support import Server, make_config, running_server


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Server]:
    """A real server in this event loop that also takes the server API's static key
    (``tests.apicall.API_KEY``)."""
    async with running_server(replace(make_config(tmp_path), api_key=API_KEY)) as server:
        yield server

"""The access log cannot be forged or made to inject terminal escapes through the URL."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.logs import ACCESS_LOGGER, escape_path
from tests.support import make_config, running_server


def test_escape_path_reencodes_control_and_non_ascii() -> None:
    assert escape_path("/rooms/a\nFAKE 200\x1b[31m") == "/rooms/a%0AFAKE%20200%1B%5B31m"
    assert escape_path("/rooms/lobby") == "/rooms/lobby"
    assert escape_path("/x/\u00e9\ud800") == "/x/%C3%A9%5Cud800"


async def test_access_log_lines_carry_the_escaped_path(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with running_server(make_config(tmp_path)) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /rooms/a%0aFORGED%20line%1b[31m HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n")
        await reader.read()
        writer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    (line,) = [x for x in lines if "FORGED" in x]
    assert "\n" not in line and "\x1b" not in line
    assert "/rooms/a%0AFORGED%20line%1B%5B31m" in line


async def test_access_log_has_the_format_atoms_and_no_query_string(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The lean atoms (gateway.logs.AccessAtoms) give the same line as Hypercorn's own, minus
    what the format doesn't use; a token in the query string never reaches the line."""
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with running_server(make_config(tmp_path)) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /healthz?token=SECRET-TOKEN HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n")
        await reader.read()
        writer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    (line,) = [x for x in lines if "/healthz" in x]
    assert "SECRET-TOKEN" not in line
    host, rest = line.split(" ", 1)
    assert host.startswith("127.0.0.1:")
    assert rest.startswith('"GET /healthz 1.1" 200 ') and rest.endswith("us")

"""The access log cannot be forged or made to inject terminal escapes through the URL."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypercorn.config import Config as HyperConfig
from hypothesis import given
from hypothesis import strategies as st

from gateway.logs import (
    ACCESS_LOG_FORMAT,
    ACCESS_LOGGER,
    AccessAtoms,
    AccessLogger,
    EscapedPathFilter,
    access_line,
    escape_path,
)
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


_SCOPE: dict[str, Any] = {"type": "websocket", "client": ("127.0.0.1", 50000),
                          "path": "/rooms/lobby/ws", "http_version": "1.1", "headers": [],
                          "query_string": b"token=SECRET"}


@given(st.text(alphabet=st.characters(max_codepoint=0x2FF) | st.sampled_from("%\x00\x7f\ud800"),
               max_size=24))
def test_the_direct_line_is_the_format_s_line(path: str) -> None:
    """``access_line`` (what each upgrade now logs) is what ``ACCESS_LOG_FORMAT`` made of the
    atoms and ``EscapedPathFilter`` escaped, for any path; the fast path of ``escape_path``
    (nothing to escape) returns what ``quote`` would."""
    scope = {**_SCOPE, "path": path}
    atoms = AccessAtoms(scope, {"status": 101, "headers": []}, 0.000123)  # type: ignore[arg-type]
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, ACCESS_LOG_FORMAT, (), None)
    record.args = atoms
    EscapedPathFilter().filter(record)
    line = access_line(scope, {"status": 101, "headers": []}, 0.000123)  # type: ignore[arg-type]
    assert line == record.getMessage()
    assert escape_path(path) == quote(path, safe="/:@!$&'()*+,;=-._~", errors="backslashreplace")


async def test_nothing_is_built_when_the_access_log_is_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the access logger above INFO (``ROOMCHAT_LOG_LEVEL=warning``), a request costs no
    line: the atoms are not even built (Hypercorn's own ``access`` builds them first)."""
    built: list[int] = []
    original = AccessAtoms.__init__

    def counting(self: AccessAtoms, *args: Any) -> None:
        built.append(1)
        original(self, *args)

    monkeypatch.setattr(AccessAtoms, "__init__", counting)
    config = HyperConfig()
    config.accesslog = logging.getLogger(ACCESS_LOGGER)
    config.access_log_format = ACCESS_LOG_FORMAT
    logger = AccessLogger(config)
    access = logging.getLogger(ACCESS_LOGGER)
    level = access.level
    try:
        access.setLevel(logging.WARNING)
        await logger.access(_SCOPE, {"status": 101, "headers": []}, 0.001)  # type: ignore[arg-type]
        assert built == []
        access.setLevel(logging.INFO)
        await logger.access(_SCOPE, {"status": 101, "headers": []}, 0.001)  # type: ignore[arg-type]
        assert built == [1]
    finally:
        access.setLevel(level)

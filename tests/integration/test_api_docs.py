"""Every example of docs/api.md, run in order against a real server: each ```sh block is run
with bash (curl), and its output must be the JSON of the ```json block after it (times aside)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.apicall import api_token
from tests.support import REPO, make_config, running_server

DOC = REPO / "docs" / "api.md"
VARYING = {"ts", "edited", "revoked_at", "url", "thumb_url", "expires"}
FILE_VARYING = {"id"}
"""A file's id is random: varying in objects that have a ``url`` (not in messages)."""


def examples() -> list[tuple[str, Any]]:
    """``(shell command, expected JSON)`` pairs, in the document's order."""
    text = DOC.read_text()
    pairs = re.findall(r"```sh\n(.*?)```\n```json\n(.*?)```", text, re.S)
    return [(command, json.loads(expected)) for command, expected in pairs]


def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        varying = VARYING | FILE_VARYING if "url" in value else VARYING
        return {k: None if k in varying else _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _run(command: str, env: dict[str, str]) -> Any:
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env,
                         timeout=20, check=True)
    return json.loads(out.stdout)


async def test_every_example_in_docs_api_md(tmp_path: Path) -> None:
    pairs = examples()
    assert len(pairs) >= 9
    async with running_server(make_config(tmp_path)) as srv:
        alice = await srv.connect(user="alice", name="Alice")
        assert (await alice.recv())["type"] == "welcome"
        env = {**os.environ, "ROOMCHAT": f"http://127.0.0.1:{srv.port}",
               "API_TOKEN": api_token()}
        for command, expected in pairs:
            got = await asyncio.to_thread(_run, command, env)
            assert _normal(got) == _normal(expected), command
        assert await alice.closed() == 4003  # the last example disconnected her

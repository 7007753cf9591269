"""gateway.client.RoomClient against real servers: the echo bot of docs/api.md, send and ack,
tickets, resume and dedup across a server restart, and refusals that end it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.client import ClientError, RoomClient
from tests.apicall import API_KEY, call
from tests.support import (
    REPO,
    SECRET,
    SLOW,
    Server,
    make_token,
    server_process,
    start_process,
)


def echo_bot_source() -> str:
    text = (REPO / "docs" / "api.md").read_text()
    (source,) = re.findall(r"```python\n(.*?)```", text, re.S)
    return str(source)


async def test_the_echo_bot_of_docs_api_md(server: Server, tmp_path: Path) -> None:
    alice = await server.connect(user="alice")
    assert (await alice.recv())["type"] == "welcome"
    await alice.say("before the bot", id="old")  # history: the bot must not echo it
    assert (await alice.recv_type("ack"))["seq"] == 1
    script = tmp_path / "echo_bot.py"
    script.write_text(echo_bot_source())
    env = {**os.environ, "PYTHONPATH": str(REPO), "ROOMCHAT": f"http://127.0.0.1:{server.port}",
           "BOT_TOKEN": make_token("echo", ["lobby"], name="Echo bot")}
    bot = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        assert bot.stdout is not None
        async with asyncio.timeout(15 * SLOW):
            assert (await bot.stdout.readline()).decode().strip() == "ready"
        await alice.say("hello bot", id="h1")
        echoes: list[dict[str, Any]] = []
        while len(echoes) < 1:
            obj = await alice.recv_type("message")
            if obj["user"] == "echo":
                echoes.append(obj)
        assert (echoes[0]["text"], echoes[0]["name"]) == ("echo: hello bot", "Echo bot")
        async with asyncio.timeout(5 * SLOW):
            line = (await bot.stdout.readline()).decode()
        assert line.strip() == f"echoed 2 as {echoes[0]['seq']}"
    finally:
        bot.send_signal(signal.SIGTERM)
        await bot.wait()


async def test_send_ack_iterate_and_refusals(server: Server) -> None:
    async with RoomClient(f"http://127.0.0.1:{server.port}", "lobby",
                          token=make_token("bot")) as client:
        assert client.user == "bot" and client.welcome is not None
        assert await client.send("one") == 1
        assert await client.send("two", id="fixed") == 2
        assert await client.send("two again", id="fixed") == 2  # dedup by id
        got = [await client.recv() for _ in range(2)]
        assert [(m["seq"], m["text"]) for m in got] == [(1, "one"), (2, "two")]
        with pytest.raises(ClientError) as refused:
            await client.send("   ")
        assert refused.value.code == "empty_text"
    # Without tickets, with the token in the URL; a refused token ends it at once.
    async with RoomClient(f"http://127.0.0.1:{server.port}", "lobby", token=make_token("b2"),
                          tickets=False) as other:
        first = await other.recv()
        assert first["seq"] == 1  # history=True: the replay comes first
    with pytest.raises(ClientError) as refused:
        await RoomClient(f"http://127.0.0.1:{server.port}", "lobby",
                         token=make_token("x", ["elsewhere"])).start()
    assert refused.value.code == "room_forbidden"


async def test_resume_and_dedup_across_a_server_restart(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(REPO), "ROOMCHAT_API_KEY": API_KEY}
    with server_process(tmp_path / "data", env=env) as proc:
        port = proc.port
        client = RoomClient(f"http://127.0.0.1:{port}", "lobby", token=make_token("bot"),
                            max_backoff=0.5)
        await client.start()
        try:
            assert await client.send("before") == 1
            assert (await client.recv())["seq"] == 1
            proc.proc.kill()
            proc.proc.wait()
            # Meanwhile someone else publishes (once the server is back on the same port).
            restarted = start_process(tmp_path / "data", port=port, env=env)
            try:
                _, body = await call(port, "POST", "/rooms/lobby/messages",
                                          {"text": "while away"})
                assert body["seq"] == 2
                sent = asyncio.create_task(client.send("after", id="a1"))
                got = await asyncio.wait_for(client.recv(), 20 * SLOW)
                assert (got["seq"], got["text"]) == (2, "while away")  # resumed, no repeat
                assert await asyncio.wait_for(sent, 20 * SLOW) == 3
                assert (await client.recv())["seq"] == 3
                assert client.connections == 2
            finally:
                restarted.proc.send_signal(signal.SIGTERM)
                restarted.proc.wait(timeout=20)
        finally:
            await client.aclose()


def test_client_imports_nothing_of_the_server() -> None:
    source = (REPO / "gateway" / "client.py").read_text()
    assert not re.search(r"^\s*(from|import) (gateway|rooms)", source, re.M)
    out = subprocess.run([sys.executable, "-c", "import gateway.client, sys; "
                          "print(sorted(m for m in sys.modules if m.startswith('rooms')))"],
                         capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO),
                              "ROOMCHAT_JWT_SECRET": SECRET})
    assert out.stdout.strip() == "[]"

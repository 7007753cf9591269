"""gateway.client.RoomClient against real servers: the echo bot of docs/api.md, send and ack,
tickets, resume and dedup across a server restart, and refusals that end it; edits, deletes,
reactions, replies and read markers, with the change entries it yields folded
(``apply_change``) into exactly the server's current state, on both engines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.client import ClientError, RoomClient, apply_change
from tests.apicall import API_KEY, call
from tests.redis_server import redis_server
from tests.support import (
    REPO,
    SECRET,
    SLOW,
    Server,
    make_config,
    make_token,
    running_server,
    server_process,
    start_process,
)

THUMBS = "\N{THUMBS UP SIGN}"


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
        assert echoes[0]["reply_to"] == {"seq": 2, "user": "alice", "name": "alice",
                                         "excerpt": "hello bot"}
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


async def _next(client: RoomClient, kind: str) -> dict[str, Any]:
    """The next object of ``kind`` the client yields (others skipped)."""
    async with asyncio.timeout(10 * SLOW):
        while True:
            obj = await client.recv()
            if obj["type"] == kind:
                return obj


@pytest.mark.parametrize("engine", ["embedded", "redis"])
async def test_edit_delete_react_reply_and_fold_the_changes(engine: str, tmp_path: Path) -> None:
    # A burst that holds every frame below: a read marker over the rate is dropped unanswered.
    config = replace(make_config(tmp_path, rate_burst=50), api_key=API_KEY)
    with contextlib.ExitStack() as stack:
        if engine == "redis":
            config = replace(config, store_url=stack.enter_context(redis_server(tmp_path / "r")))
        async with running_server(config) as server:
            base = f"http://127.0.0.1:{server.port}"
            async with RoomClient(base, "lobby", token=make_token("bot")) as bot, \
                    RoomClient(base, "lobby", token=make_token("watcher")) as watcher:
                first = await bot.send("helo")
                assert await bot.edit(first, "hello", id="e1") == first + 1
                assert await bot.edit(first, "hello", id="e1") == first + 1  # deduplicated
                assert await bot.react(first, THUMBS) == first + 2
                assert await bot.react(first, THUMBS) == first + 2  # already so: no-op
                reply = await bot.send("replying", reply_to=first, mentions=["watcher"])
                assert reply == first + 3
                assert await bot.react(first, THUMBS, on=False) == reply + 1
                other = await bot.send("to be deleted")
                assert await bot.delete(other) == other + 1
                # The watcher sees every entry once, in seq order, and folding the changes
                # gives the server's current state.
                state: dict[int, dict[str, Any]] = {}
                entries: list[dict[str, Any]] = []
                while not entries or entries[-1]["seq"] < other + 1:
                    obj = await watcher.recv()
                    if obj["type"] not in ("message", "change"):
                        continue
                    entries.append(obj)
                    if obj["type"] == "message":
                        state[obj["seq"]] = obj
                    else:
                        state[obj["target"]] = apply_change(state[obj["target"]], obj)
                assert [e["seq"] for e in entries] == list(range(first, other + 2))
                assert [e.get("action") for e in entries] == [
                    None, "edit", "react", None, "react", None, "delete"]
                _, page = await call(server.port, "GET", "/rooms/lobby/messages")
                assert state == {m["seq"]: m for m in page["messages"]}
                assert state[reply]["reply_to"]["excerpt"] == "hello"  # as when answered
                assert state[reply]["mentions"] == ["watcher"]
                assert (state[other]["text"], state[other]["deleted"]) == ("", True)

                # Refusals end the call, not the client.
                for call_, code in ((watcher.edit(first, "not mine"), "forbidden"),
                                    (watcher.delete(first), "forbidden"),
                                    (bot.edit(other, "gone"), "already_deleted"),
                                    (bot.react(9999, THUMBS), "not_found"),
                                    (bot.react(first, "not an emoji"), "invalid_message"),
                                    (bot.send("re", reply_to=other), "already_deleted")):
                    with pytest.raises(ClientError) as refused:
                        await call_
                    assert refused.value.code == code
                assert await bot.send("still here") == other + 2

                # A read marker reaches the user's other connections.
                async with RoomClient(base, "lobby", token=make_token("bot"),
                                      history=False) as bot2:
                    await bot.read(reply)
                    assert await _next(bot2, "read") == {"type": "read", "seq": reply}
                    assert bot2.welcome is not None


async def test_changes_made_while_away_are_yielded_after_the_resume(tmp_path: Path) -> None:
    """The client resumes with ``after`` = the last entry it yielded, so a change made while
    it was disconnected (an edit by the API) comes once, and nothing it saw comes again."""
    env = {"PYTHONPATH": str(REPO), "ROOMCHAT_API_KEY": API_KEY}
    with server_process(tmp_path / "data", env=env) as proc:
        port = proc.port
        client = RoomClient(f"http://127.0.0.1:{port}", "lobby", token=make_token("bot"),
                            max_backoff=0.5)
        await client.start()
        try:
            seq = await client.send("before")
            assert (await client.recv())["seq"] == seq
            proc.proc.kill()
            proc.proc.wait()
            restarted = start_process(tmp_path / "data", port=port, env=env)
            try:
                status, body = await call(port, "PATCH", f"/rooms/lobby/messages/{seq}",
                                          {"text": "edited while away", "user": "bot"})
                assert status == 200, body
                got = await asyncio.wait_for(client.recv(), 20 * SLOW)
                assert (got["type"], got["action"], got["target"], got["text"]) == (
                    "change", "edit", seq, "edited while away")
                assert client.last_seq == got["seq"] and client.connections == 2
            finally:
                restarted.proc.send_signal(signal.SIGTERM)
                restarted.proc.wait(timeout=20)
        finally:
            await client.aclose()


def test_apply_change_is_idempotent_and_keeps_tombstones_bare() -> None:
    message = {"type": "message", "room": "r", "seq": 1, "id": "a", "user": "al", "name": "Al",
               "text": "hi", "ts": 5, "mentions": ["bo"],
               "reply_to": {"seq": 0, "user": "x", "name": "X", "excerpt": "y"}}

    def change(seq: int, action: str, **fields: Any) -> dict[str, Any]:
        return {"type": "change", "room": "r", "seq": seq, "action": action, "target": 1,
                "id": None, "user": "bo", "name": "Bo", "ts": 10 + seq, **fields}

    edit = change(2, "edit", text="hi!")
    put, put_again = change(3, "react", emoji=THUMBS, on=True), change(4, "react",
                                                                        emoji=THUMBS, on=True)
    back = change(5, "react", emoji=THUMBS, on=False)
    edited = apply_change(message, edit)
    assert (edited["text"], edited["edited"]) == ("hi!", 12)
    assert apply_change(edited, edit) == edited
    reacted = apply_change(apply_change(edited, put), put_again)
    assert reacted["reactions"] == [{"emoji": THUMBS, "users": ["bo"]}]
    assert "reactions" not in apply_change(reacted, back)
    assert apply_change(apply_change(reacted, back), back) == apply_change(reacted, back)
    gone = apply_change(reacted, change(6, "delete", by="author"))
    assert gone == {"type": "message", "room": "r", "seq": 1, "id": "a", "user": "al",
                    "name": "Al", "ts": 5, "text": "", "deleted": True}
    assert apply_change(gone, edit) == gone and apply_change(gone, put) == gone
    assert apply_change(message, change(7, "pin")) == message  # unknown: ignorable
    assert message["text"] == "hi"  # never modified in place
    with pytest.raises(ValueError):
        apply_change(message, {**edit, "target": 2})

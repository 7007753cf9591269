"""Erasure requests against live servers: ``POST /api/v1/users/<user>/erase`` and ``roomchat
erase --user U`` (run as a process) turn every message of the user into a tombstone through a
delete entry of its room's log, members online see exactly those deletes, history shows the
tombstones, other users' messages stay, and a second run erases nothing; on Redis across
processes too. What the user wrote elsewhere goes too: their edits' texts, their reactions, the
excerpts of their messages quoted in replies, from history, resumes, exports and the raw
store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import websockets

from rooms.engines import open_engine
from rooms.messages import Draft
from tests.apicall import API_KEY, api_token, call
from tests.redis_server import redis_server
from tests.support import (
    REPO,
    SECRET,
    SLOW,
    Client,
    Process,
    Server,
    free_port,
    make_config,
    make_token,
    running_server,
    server_process,
)


def roomchat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``roomchat`` as an operator runs it: a process, with no ROOMCHAT_* of the tests' own."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_")}
    done = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60 * SLOW, check=False,
                          env={**base, "PYTHONPATH": str(REPO), **(env or {})})
    assert "Traceback" not in done.stderr, done.stderr
    return done


def is_delete(obj: dict[str, Any]) -> bool:
    return bool(obj["type"] == "change" and obj["action"] == "delete")


async def deletes(client: Client, count: int) -> list[int]:
    """The targets of the next ``count`` delete entries ``client`` gets (other objects
    skipped)."""
    found: list[int] = []
    while len(found) < count:
        obj = await client.recv_type("change", timeout=10)
        if is_delete(obj):
            assert (obj["by"], obj["user"]) == ("moderator", "alice") or obj["user"] != "alice"
            found.append(obj["target"])
    return found


async def deletes_until(client: Client, marker: str) -> list[int]:
    """The targets of the delete entries ``client`` gets before the message ``marker`` (sent
    after the erasure: with ``deletes`` first, it shows that nothing more was announced)."""
    seqs: list[int] = []
    while True:
        obj = await client.recv(timeout=10)
        if is_delete(obj):
            seqs.append(obj["target"])
        elif obj["type"] == "message" and obj["text"] == marker:
            return seqs


async def seen(client: Client, seq: int) -> None:
    """Wait until ``client`` got message ``seq`` (what arrives with it stays for ``recv``)."""
    kept: list[dict[str, Any]] = []
    while True:
        obj = await client.recv(timeout=10)
        kept.append(obj)
        if obj["type"] == "message" and obj["seq"] == seq:
            client.pending[:0] = kept
            return


async def say(client: Client, text: str) -> int:
    """Send ``text`` (as its own id) and return its seq once acked; what arrives before the
    ack stays for the next ``recv``."""
    await client.say(text, id=text)
    skipped: list[dict[str, Any]] = []
    while True:
        obj = await client.recv(timeout=10)
        if obj["type"] == "ack" and obj["id"] == text:
            client.pending[:0] = skipped
            seq: int = obj["seq"]
            return seq
        skipped.append(obj)


async def welcomed(client: Client) -> Client:
    assert (await client.recv())["type"] == "welcome"
    return client


async def history(port: int, room: str) -> list[tuple[int, str, str, bool]]:
    """``(seq, user, text, deleted)`` of every stored message, through the server API."""
    status, page = await call(port, "GET", f"/rooms/{room}/messages?limit=1000")
    assert status == 200
    return [(m["seq"], m["user"], m["text"], m.get("deleted", False))
            for m in page["messages"]]


async def test_erase_reaches_online_members_and_history(srv: Server) -> None:
    alice = {room: await welcomed(await srv.connect(room, "alice")) for room in ("lobby", "side")}
    bob = {room: await welcomed(await srv.connect(room, "bob")) for room in ("lobby", "side")}
    assert [await say(alice["lobby"], "a1"), await say(bob["lobby"], "b1"),
            await say(alice["lobby"], "a2")] == [1, 2, 3]
    assert [await say(bob["side"], "b2"), await say(alice["side"], "a3")] == [1, 2]

    status, body = await call(srv.port, "POST", "/users/alice/erase")
    assert (status, body) == (200, {"user": "alice", "erased": 3,
                                    "rooms": {"lobby": [1, 3], "side": [2]}, "files": 0})
    # Online members (the author's own sockets too) get exactly the erased seqs.
    for member in (bob, alice):
        assert await deletes(member["lobby"], 2) == [1, 3]
        assert await deletes(member["side"], 1) == [2]
    for room in ("lobby", "side"):
        await call(srv.port, "POST", f"/rooms/{room}/messages", {"text": "marker"})
    for member in (bob, alice):
        assert await deletes_until(member["lobby"], "marker") == []
        assert await deletes_until(member["side"], "marker") == []
    # The delete entries took seqs 4-5 in lobby, 3 in side.
    assert await history(srv.port, "lobby") == [
        (1, "alice", "", True), (2, "bob", "b1", False), (3, "alice", "", True),
        (6, "api", "marker", False)]
    assert await history(srv.port, "side") == [
        (1, "bob", "b2", False), (2, "alice", "", True), (4, "api", "marker", False)]
    # The page's history endpoint returns the tombstones too.
    page = await asyncio.to_thread(_page_history, srv.port, "lobby", make_token("bob"))
    assert [(m["seq"], m["text"], m.get("deleted")) for m in page["messages"]] == [
        (1, "", True), (2, "b1", None), (3, "", True), (6, "marker", None)]
    # A late joiner's replay too.
    carol = await welcomed(await srv.connect("lobby", "carol"))
    replay = [await carol.recv_type("message") for _ in range(4)]
    assert [(m["seq"], m["text"], m.get("deleted")) for m in replay] == [
        (1, "", True), (2, "b1", None), (3, "", True), (6, "marker", None)]
    # A member who was away resumes: the deletes are in the log.
    dave = await welcomed(await srv.connect("lobby", "dave", after="3"))
    assert [o["type"] for o in [await dave.recv() for _ in range(3)]] == [
        "change", "change", "message"]

    # Again: nothing left to erase, nobody told anything.
    status, body = await call(srv.port, "POST", "/users/alice/erase")
    assert (status, body) == (200, {"user": "alice", "erased": 0, "rooms": {},
                                    "files": 0})
    await call(srv.port, "POST", "/rooms/lobby/messages", {"text": "marker2"})
    assert await deletes_until(bob["lobby"], "marker2") == []


BIG = 3000
"""Messages of one user in one room: well past a member's outbox (``outbox_limit``, 1024)."""


async def prefill(store_url: str, room: str, count: int) -> None:
    """Store ``count`` messages of alice in ``room`` before any server runs (quicker than
    sending them, and no rate limit to raise)."""
    engine = await open_engine(store_url)
    try:
        await engine.load(room, 0)
        for start in range(0, count, 500):
            await engine.append(room, [Draft("alice", "Alice", None, f"t{start + i}", 1)
                                       for i in range(min(500, count - start))],
                                retention=0, dedup_window=0)
    finally:
        await engine.close()


async def test_erasing_thousands_in_one_room_keeps_its_members(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), api_key=API_KEY)
    await prefill(config.resolved_store_url, "lobby", BIG)
    async with running_server(config) as srv:
        bob = await welcomed(await srv.connect("lobby", "bob", after=str(BIG)))
        status, body = await call(srv.port, "POST", "/users/alice/erase")
        assert (status, body["erased"]) == (200, BIG)
        # Announced in steps (rooms.engine.ERASE_STEP): every one arrives, none closes bob as
        # a slow consumer (all at once, 5,000 did).
        assert await deletes(bob, BIG) == list(range(1, BIG + 1))
        assert await say(bob, "still here") == 2 * BIG + 1


def _page_history(port: int, room: str, token: str) -> dict[str, Any]:
    import json
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/rooms/{room}/history?before=100&limit=100")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        page: dict[str, Any] = json.loads(response.read())
        return page


async def test_erase_refusals(srv: Server) -> None:
    status, body = await call(srv.port, "POST", "/users/alice/erase",
                              token=api_token(rooms=["lobby"]))
    assert (status, body["error"]) == (403, "room_forbidden")
    status, body = await call(srv.port, "POST", "/users/alice/erase", token=make_token("mod"))
    assert (status, body["error"]) == (403, "api_scope_required")
    status, body = await call(srv.port, "POST", "/users/alice/erase", token=None)
    assert (status, body["error"]) == (401, "missing_token")
    status, body = await call(srv.port, "POST", f"/users/{'x' * 65}/erase")
    assert (status, body["error"]) == (400, "bad_request")


def test_cli_erase_holds_user_to_the_sub_rule(tmp_path: Path) -> None:
    """``erase --user`` checked only the length: a control character went to the server (or
    the store, with --offline). Refused in one line before anything is opened, exit 2."""
    for user in ("a\x07b", "x" * 65):
        done = roomchat("erase", "--user", user, "--offline", "--data-dir", str(tmp_path),
                        env={"ROOMCHAT_JWT_SECRET": SECRET})
        assert done.returncode == 2, done
        assert done.stderr in ("roomchat: --user 'a\\x07b' contains a control character: no "
                               "user id does\n",
                               "roomchat: --user must be 1 to 64 characters\n"), done.stderr
    assert list(tmp_path.iterdir()) == []  # no database or secret created by a refusal


async def _connect(proc: Process, room: str, user: str, secret: str | None = None,
                   **query: Any) -> Client:
    token = make_token(user) if secret is None else make_token(user, secret=secret)
    ws = await websockets.connect(proc.url(room, token, **query), compression=None,
                                  open_timeout=10 * SLOW)
    return await welcomed(Client(ws))


def _generated_secret(path: Path) -> str:
    """The secret the server writes once it starts up (after its port already accepts)."""
    deadline = time.monotonic() + 10 * SLOW
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.05)
    return path.read_text()


async def test_cli_erase_against_a_live_server_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # No secret in the environment: the server generates DATA_DIR/jwt-secret, and the CLI must
    # sign its request with that one.
    with server_process(data, env={"ROOMCHAT_JWT_SECRET": ""}) as proc:
        secret = await asyncio.to_thread(_generated_secret, data / "jwt-secret")
        sockets: list[Client] = []
        try:
            alice = {room: await _connect(proc, room, "alice", secret) for room in ("r1", "r2")}
            bob = {room: await _connect(proc, room, "bob", secret) for room in ("r1", "r2")}
            sockets = [*alice.values(), *bob.values()]
            await say(alice["r1"], "a1")
            await say(bob["r1"], "b1")
            await say(alice["r2"], "a2")
            await say(alice["r2"], "a3")

            base = f"http://127.0.0.1:{proc.port}"
            done = await asyncio.to_thread(roomchat, "erase", "--user", "alice", "--url", base,
                                           "--data-dir", str(data))
            assert (done.returncode, done.stdout, done.stderr) == (
                0, "erased 3 messages of alice in 2 rooms\n", "")
            assert await deletes(bob["r1"], 1) == [1]
            assert await deletes(bob["r2"], 2) == [1, 2]
            await say(bob["r1"], "marker")
            assert await deletes_until(bob["r1"], "marker") == []

            done = await asyncio.to_thread(roomchat, "erase", "--user", "alice", "--url", base,
                                           "--data-dir", str(data))
            assert (done.returncode, done.stdout) == (0, "erased 0 messages of alice in 0 rooms\n")
            # A wrong data dir signs with no known key: one line, exit 2, nothing created.
            done = await asyncio.to_thread(roomchat, "erase", "--user", "alice", "--url", base,
                                           "--data-dir", str(tmp_path / "elsewhere"))
            assert done.returncode == 2
            assert done.stderr.startswith("roomchat: no JWT secret in ")
            assert done.stderr.count("\n") == 1 and not (tmp_path / "elsewhere").exists()
            # With a secret the server does not know: its refusal, in one line.
            done = await asyncio.to_thread(roomchat, "erase", "--user", "alice", "--url", base,
                                           "--data-dir", str(tmp_path / "other"),
                                           env={"ROOMCHAT_JWT_SECRET": "z" * 40})
            assert done.returncode == 2
            assert done.stderr == (f"roomchat: the server at {base} refused: 401 invalid_token: "
                                   "invalid token: Signature verification failed\n")
        finally:
            for client in sockets:
                await client.ws.close()
    # No server now: --offline erases in the SQLite file, and says nobody online was told.
    done = await asyncio.to_thread(roomchat, "erase", "--user", "bob", "--offline",
                                   "--data-dir", str(data))
    assert done.returncode == 0
    assert done.stdout == "erased 2 messages of bob in 1 room\n"  # b1 and the marker
    assert "members online" in done.stderr and "were not told" in done.stderr
    export = await asyncio.to_thread(roomchat, "export", "--room", "r1", "--data-dir", str(data))
    assert '"text":"b1"' not in export.stdout and export.stdout.count('"deleted":true') == 3


def test_cli_finds_the_server_from_its_settings_over_https(tmp_path: Path) -> None:
    from gateway.tls import make_dev_cert

    data = tmp_path / "data"
    cert = make_dev_cert(data)
    port = free_port()
    settings = {"ROOMCHAT_BIND": f"127.0.0.1:{port}", "ROOMCHAT_CERTFILE": str(cert.cert),
                "ROOMCHAT_KEYFILE": str(cert.key)}
    with server_process(data, port=port, env=settings):
        # No --url: where the server's settings say it listens, trusting the dev CA.
        done = roomchat("erase", "--user", "alice", "--data-dir", str(data),
                        env={**settings, "ROOMCHAT_JWT_SECRET": SECRET})
    assert (done.returncode, done.stdout, done.stderr) == (
        0, "erased 0 messages of alice in 0 rooms\n", "")


async def test_redis_erase_reaches_members_on_every_process(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        env = {"ROOMCHAT_STORE_URL": url, "ROOMCHAT_API_KEY": API_KEY}
        with server_process(tmp_path / "a", env=env) as a, \
                server_process(tmp_path / "b", env=env) as b:
            sockets: list[Client] = []
            try:
                alice = await _connect(a, "r1", "alice")
                alice2 = await _connect(b, "r2", "alice")
                bob = {room: await _connect(b, room, "bob") for room in ("r1", "r2")}
                carol = await _connect(a, "r1", "carol")
                sockets = [alice, alice2, *bob.values(), carol]
                assert [await say(alice, "a1"), await say(bob["r1"], "b1"),
                        await say(alice, "a2")] == [1, 2, 3]
                assert await say(alice2, "a3") == 1
                # Deletes ride pub/sub, at most once: wait until b's rooms get the live feed
                # (a subscription confirmed after a message also replays it from the log).
                await seen(bob["r1"], 3)
                await seen(bob["r2"], 1)

                # Through process a's API: bob on b hears it from the engine, carol on a
                # from a itself.
                status, body = await call(a.port, "POST", "/users/alice/erase")
                assert (status, body) == (200, {"user": "alice", "erased": 3,
                                                "rooms": {"r1": [1, 3], "r2": [1]},
                                                "files": 0})
                assert await deletes(bob["r1"], 2) == [1, 3]
                assert await deletes(bob["r2"], 1) == [1]
                assert await deletes(carol, 2) == [1, 3]
                await say(bob["r1"], "m1")
                assert await deletes_until(bob["r1"], "m1") == []
                assert await deletes_until(carol, "m1") == []
                for proc in (a, b):  # (4 and 5: the delete entries)
                    assert await history(proc.port, "r1") == [
                        (1, "alice", "", True), (2, "bob", "b1", False),
                        (3, "alice", "", True), (6, "bob", "m1", False)]
                status, body = await call(b.port, "POST", "/users/alice/erase")
                assert (status, body["erased"]) == (200, 0)

                # The CLI with --offline on Redis: it is one more process on the engine, so
                # the members on both servers are told.
                assert await say(alice, "a4") == 7
                await seen(bob["r1"], 7)
                done = await asyncio.to_thread(roomchat, "erase", "--user", "alice",
                                               "--offline", "--store-url", url)
                assert (done.returncode, done.stdout, done.stderr) == (
                    0, "erased 1 message of alice in 1 room\n", "")
                assert await deletes(bob["r1"], 1) == [7]
                assert await deletes(carol, 1) == [7]
            finally:
                for client in sockets:
                    await client.ws.close()


async def test_redis_erasing_thousands_keeps_members_on_every_process(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        await prefill(url, "big", BIG)
        env = {"ROOMCHAT_STORE_URL": url, "ROOMCHAT_API_KEY": API_KEY}
        with server_process(tmp_path / "a", env=env) as a, \
                server_process(tmp_path / "b", env=env) as b:
            sockets: list[Client] = []
            try:
                carol = await _connect(a, "big", "carol", after=str(BIG))
                bob = await _connect(b, "big", "bob", after=str(BIG))
                sockets = [carol, bob]
                await say(carol, "live")  # b's room has the live feed once bob sees it
                await seen(bob, BIG + 1)
                status, body = await call(a.port, "POST", "/users/alice/erase")
                assert (status, body["erased"]) == (200, BIG)
                for member in (carol, bob):
                    assert await deletes(member, BIG) == list(range(1, BIG + 1))
                assert await say(bob, "still here") == 2 * BIG + 2
            finally:
                for client in sockets:
                    await client.ws.close()


SECRET_TEXT = "alice's secret"


async def _raw_store(engine: str, srv: Server, redis_dir: Path) -> bytes:
    """Every byte the store holds now: the SQLite database and its WAL, or a fresh
    uncompressed RDB snapshot of the Redis server."""
    if engine == "embedded":
        db = srv.config.db_path
        return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())
    import redis.asyncio as aioredis

    client = aioredis.from_url(srv.config.store_url)
    try:
        await client.config_set("rdbcompression", "no")  # else a long string is LZF-packed
        await client.save()
    finally:
        await client.aclose()
    return (redis_dir / "dump.rdb").read_bytes()


@pytest.mark.parametrize("how", ["api", "offline"])
@pytest.mark.parametrize("engine", ["embedded", "redis"])
async def test_erase_takes_edits_reactions_and_quotes_out_of_everything(
        engine: str, how: str, tmp_path: Path) -> None:
    """Issue 21: an erasure also erases the user's edits' old texts, their reactions, and the
    excerpts of their messages quoted in others' replies: from history, from a resume's replay
    (folded, it is exactly history), from an export and from the raw store; through the server
    API (what ``roomchat erase`` calls) and with ``roomchat erase --offline`` beside it."""
    from gateway.client import apply_change

    thumbs, heart = "\N{THUMBS UP SIGN}", "\N{HEAVY BLACK HEART}\N{VARIATION SELECTOR-16}"
    config = replace(make_config(tmp_path / "data"), api_key=API_KEY)
    with contextlib.ExitStack() as stack:
        if engine == "redis":
            config = replace(config, store_url=stack.enter_context(
                redis_server(tmp_path / "redis")))
        async with running_server(config) as srv:
            carol = await welcomed(await srv.connect("lobby", "carol"))

            async def post(path: str, body: Any = None, method: str = "POST") -> Any:
                status, answer = await call(srv.port, method, f"/rooms/lobby{path}", body)
                assert status == 200, answer
                return answer

            first = (await post("/messages", {"text": f"{SECRET_TEXT}, first draft",
                                              "user": "alice"}))["seq"]
            await post(f"/messages/{first}", {"text": f"{SECRET_TEXT}, as edited",
                                               "user": "alice"}, "PATCH")
            theirs = (await post("/messages", {"text": "bob here", "user": "bob"}))["seq"]
            for user, glyph in (("alice", thumbs), ("alice", heart), ("carol", thumbs),
                                ("erin", thumbs)):
                await post(f"/messages/{theirs}/reactions/{quote(glyph)}?user={user}",
                           method="PUT")
            reply = (await post("/messages", {"text": "answering", "user": "bob",
                                              "reply_to": first}))["seq"]
            before = await history(srv.port, "lobby")
            assert len(before) == 3
            _, page_before = await call(srv.port, "GET", "/rooms/lobby/messages")
            assert page_before["messages"][2]["reply_to"]["excerpt"] == (
                f"{SECRET_TEXT}, as edited")

            store = (["--store-url", config.store_url] if engine == "redis"
                     else ["--data-dir", str(config.data_dir)])
            if how == "api":
                status, body = await call(srv.port, "POST", "/users/alice/erase")
                assert (status, body["rooms"]) == (200, {"lobby": [first]})
                # Someone who only reacted has no message to erase; their reactions go all
                # the same.
                status, body = await call(srv.port, "POST", "/users/erin/erase")
                assert (status, body["erased"], body["rooms"]) == (200, 0, {})
            else:
                for user, said in (("alice", "erased 1 message of alice in 1 room\n"),
                                   ("erin", "erased 0 messages of erin in 0 rooms\n")):
                    done = await asyncio.to_thread(roomchat, "erase", "--user", user,
                                                   "--offline", *store)
                    assert (done.returncode, done.stdout) == (0, said), done.stderr
            if engine == "redis" or how == "api":  # (on SQLite --offline tells nobody online)
                # carol's copy, folded from what she is sent, gets the server's reactions.
                _, page = await call(srv.port, "GET", "/rooms/lobby/messages")
                server = {m["seq"]: m.get("reactions") for m in page["messages"]}
                held = {m["seq"]: m for m in page_before["messages"]}
                while {seq: m.get("reactions") for seq, m in held.items()} != server:
                    obj = await carol.recv(timeout=10)
                    if obj["type"] == "change" and obj["target"] in held:
                        held[obj["target"]] = apply_change(held[obj["target"]], obj)

            _, page = await call(srv.port, "GET", "/rooms/lobby/messages")
            now = {m["seq"]: m for m in page["messages"]}
            assert (now[first]["text"], now[first]["deleted"]) == ("", True)
            # Their reactions are taken back (erin's too, who only reacted): a take-back entry
            # each, which members online fold (carol below, when the server told them).
            assert now[theirs]["reactions"] == [{"emoji": thumbs, "users": ["carol"]}]
            assert now[reply]["reply_to"] == {"seq": first, "user": "alice", "name": "alice",
                                              "excerpt": ""}
            assert SECRET_TEXT not in str(page)

            # A member who resumes from the start replays the log: folded, it is history.
            dave = await srv.connect("lobby", "dave", after="0")
            welcome = await dave.recv()
            assert welcome["recovered"] is True
            top = welcome["seq"]
            state: dict[int, dict[str, Any]] = {}
            seq = 0
            while seq < top:
                obj = await dave.recv(timeout=10)
                if obj["type"] not in ("message", "change"):
                    continue
                seq = obj["seq"]
                assert SECRET_TEXT not in str(obj), obj
                if obj["type"] == "message":
                    state[seq] = obj
                elif obj["target"] in state:
                    state[obj["target"]] = apply_change(state[obj["target"]], obj)
            assert state == now

            # The export, and every byte of the store.
            done = await asyncio.to_thread(roomchat, "export", "--room", "lobby", *store,
                                           env={"ROOMCHAT_JWT_SECRET": SECRET})
            assert done.returncode == 0, done.stderr
            assert done.stdout.count("\n") >= 3 and SECRET_TEXT not in done.stdout
            raw = await _raw_store(engine, srv, tmp_path / "redis")
            # On Redis the erasure rewrote the room's stream: XDEL alone only flags an entry,
            # its bytes stay in the stream's node until every entry of the node is gone.
            at = raw.find(SECRET_TEXT.encode())
            assert at < 0, raw[max(0, at - 300):at + 100]
            assert b"bob here" in raw  # (what is not erased is there to be found)
            # Nor does any reaction of theirs: what is left of them is take-backs.
            assert done.stdout.count('"on":true') == 1  # carol's

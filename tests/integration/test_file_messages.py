"""Messages carrying files, against a real server: upload, send a message naming the upload,
another member gets its metadata, asks for signed URLs and downloads the same bytes; the
refusals; resume, history and the server API; delete and retention removing the bytes; two
processes on Redis sharing one ``file://`` directory."""

from __future__ import annotations

import asyncio
import contextlib
import http.client as http_client
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import websockets

from gateway.backup import export
from gateway.client import ClientError, RoomClient
from tests.apicall import API_KEY, call
from tests.imagefiles import image
from tests.redis_server import redis_server
from tests.s3_server import S3_ENV, bucket_keys, make_bucket, s3_server
from tests.support import (
    SLOW,
    Client,
    Server,
    make_config,
    make_token,
    running_server,
    server_process,
    until,
)

NOTES = b"minutes of the meeting\n" * 100
CUT = -1
"""``http``'s status for a body cut short."""


def http(port: int, method: str, path: str, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request: ``(status, headers with lower-case names, body)``; status
    ``CUT`` for a body cut short (a download racing the delete of its file: the server had
    promised its length before the bytes went)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30 * SLOW) as response:
            status, got, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, got, body = exc.code, exc.headers, exc.read()
    except http_client.IncompleteRead as exc:
        return CUT, {}, exc.partial
    return status, {k.lower(): v for k, v in got.items()}, body


class Member:
    """One user's HTTP calls to a server's file routes (off the event loop)."""

    def __init__(self, port: int, user: str) -> None:
        self.port = port
        self.user = user
        self.token = make_token(user, ["lobby", "team"])

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def upload(self, data: bytes, name: str, room: str = "lobby") -> dict[str, Any]:
        status, _, body = await asyncio.to_thread(
            http, self.port, "POST", f"/rooms/{room}/files?name={name}", data, self.auth())
        assert status == 201, body
        obj: dict[str, Any] = json.loads(body)
        return obj

    async def urls(self, ids: list[Any], room: str = "lobby") -> tuple[int, dict[str, Any]]:
        status, _, body = await asyncio.to_thread(
            http, self.port, "POST", f"/rooms/{room}/files/urls",
            json.dumps({"ids": ids}).encode(),
            {**self.auth(), "Content-Type": "application/json"})
        return status, json.loads(body)

    async def get(self, path: str) -> tuple[int, bytes]:
        status, _, body = await asyncio.to_thread(http, self.port, "GET", path)
        return status, body


def public(upload: dict[str, Any]) -> dict[str, Any]:
    """What a message carries of an upload's answer: its metadata, never a URL."""
    return {k: v for k, v in upload.items() if k not in ("url", "thumb_url", "expires")}


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Server]:
    config = replace(make_config(tmp_path), api_key=API_KEY)
    async with running_server(config) as server:
        yield server


async def joined(server: Server, user: str, **kw: Any) -> Client:
    client = await server.connect(user=user, token=make_token(user, ["lobby", "team"]), **kw)
    await client.recv_type("welcome")
    return client


async def connected(port: int, user: str, **query: Any) -> Client:
    """A member's socket to a server process, past its welcome."""
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    ws = await websockets.connect(
        f"ws://127.0.0.1:{port}/rooms/lobby/ws?token={make_token(user, ['lobby'])}{extra}",
        open_timeout=10 * SLOW, compression=None)
    client = Client(ws)
    await client.recv_type("welcome")
    return client


async def error_for(client: Client, frame: dict[str, Any]) -> dict[str, Any]:
    await client.send(frame)
    answer = await client.recv_type("error")
    assert answer["id"] == frame["id"]
    return answer


async def test_a_message_carries_files_to_another_member(srv: Server) -> None:
    """Upload -> message naming the upload -> another member gets the files' metadata ->
    asks for signed URLs -> downloads the same bytes. The message is stored with them:
    history pages, a resume with ``after`` and the server API's reads carry them too."""
    await message_flow(srv)


async def test_a_message_carries_files_on_s3(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The same flow with the files in a bucket of a real S3 server (moto's, a process):
    the delete removes the objects."""
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    with s3_server() as endpoint:
        config = replace(make_config(tmp_path), api_key=API_KEY,
                         files_url=make_bucket(endpoint, "roomchat-files"))
        async with running_server(config) as server:
            await message_flow(server)
            # Deleted, not just hidden: every object goes (the delete's job runs after the
            # URLs answer 404: the metadata is removed first).
            await until(lambda: bucket_keys(endpoint, "roomchat-files") == [], 5 * SLOW,
                        "an empty bucket")


async def message_flow(srv: Server) -> None:
    """``test_a_message_carries_files_to_another_member``'s steps, on any file store."""
    alice, bob = Member(srv.port, "alice"), Member(srv.port, "bob")
    photo = await alice.upload(image("PNG", (640, 480)), "photo.png")
    notes = await alice.upload(NOTES, "notes.txt")
    a, b = await joined(srv, "alice"), await joined(srv, "bob")
    await a.send({"type": "message", "id": "m1", "files": [photo["id"], notes["id"]]})
    ack = await a.recv_type("ack")
    got = await b.recv_type("message")
    assert got["seq"] == ack["seq"] and got["text"] == "" and "deleted" not in got
    assert got["files"] == [public(photo), public(notes)]
    assert got["files"][0]["width"] == 640 and got["files"][0]["thumb"] is True
    assert "url" not in json.dumps(got)

    # The page asks for signed URLs (an <img> cannot send a bearer header): unknown,
    # malformed and foreign ids are simply left out.
    status, answer = await bob.urls([photo["id"], "A" * 22, "../etc", notes["id"]])
    assert status == 200 and list(answer["files"]) == [photo["id"], notes["id"]]
    signed = answer["files"][photo["id"]]
    assert set(signed) == {"url", "thumb_url", "expires"}
    assert signed["expires"] >= time.time() + srv.config.file_url_ttl - 5
    assert set(answer["files"][notes["id"]]) == {"url", "expires"}
    assert (await bob.get(answer["files"][notes["id"]]["url"])) == (200, NOTES)
    assert (await bob.get(signed["url"])) == await alice.get(photo["url"])
    status, thumb = await bob.get(signed["thumb_url"])
    assert status == 200 and thumb == (await alice.get(photo["thumb_url"]))[1]

    # Stored with the message: the page's history, a resume, the server API.
    status, _, body = await asyncio.to_thread(
        http, srv.port, "GET", f"/rooms/lobby/history?before={ack['seq'] + 1}", None,
        bob.auth())
    (page,) = [m for m in json.loads(body)["messages"] if m["seq"] == ack["seq"]]
    assert status == 200 and page["files"] == got["files"]
    resumed = await joined(srv, "bob", after=ack["seq"] - 1)
    assert (await resumed.recv_type("message"))["files"] == got["files"]
    status, obj = await call(srv.port, "GET", "/rooms/lobby/messages")
    assert status == 200 and obj["messages"][-1]["files"] == got["files"]

    # An edit keeps the files; the author's delete removes them, bytes and all.
    await a.send({"type": "edit", "seq": ack["seq"], "text": "the notes", "id": "e1"})
    await a.recv_type("ack")
    status, obj = await call(srv.port, "GET", "/rooms/lobby/messages")
    assert obj["messages"][-1]["files"] == got["files"]
    assert obj["messages"][-1]["text"] == "the notes"
    await a.send({"type": "delete", "seq": ack["seq"], "id": "d1"})
    await a.recv_type("ack")

    # The files are deleted one after the other by a job after the delete is stored: wait
    # for both (asserting the second at once after the first raced, on S3).
    async def gone() -> bool:
        return (await bob.urls([photo["id"], notes["id"]]))[1] == {"files": {}}

    await until(gone, 5 * SLOW)
    assert (await bob.get(signed["url"]))[0] == 404
    assert (await bob.get(signed["thumb_url"]))[0] == 404
    assert (await bob.get(answer["files"][notes["id"]]["url"]))[0] == 404


async def test_bad_file_ids_are_refused_and_nothing_is_stored(srv: Server) -> None:
    alice, bob = Member(srv.port, "alice"), Member(srv.port, "bob")
    mine = await alice.upload(NOTES, "a.txt")
    elsewhere = await alice.upload(NOTES, "b.txt", room="team")
    theirs = await bob.upload(NOTES, "c.txt")
    a = await joined(srv, "alice")
    await a.send({"type": "message", "text": "first", "id": "ok1", "files": [mine["id"]]})
    first = (await a.recv_type("ack"))["seq"]

    refused = {
        "foreign room": ({"files": [elsewhere["id"]]}, "file_not_attachable"),
        "another user's": ({"files": [theirs["id"]]}, "file_not_found"),
        "already attached": ({"files": [mine["id"]]}, "file_not_attachable"),
        "unknown": ({"files": ["Z" * 22]}, "file_not_found"),
        "too many": ({"files": [f"{i:022d}" for i in range(11)]}, "too_many_files"),
        "malformed": ({"files": ["../../meta/x"]}, "invalid_message"),
        "not a list": ({"files": mine["id"]}, "invalid_message"),
    }
    for number, (case, (fields, code)) in enumerate(refused.items()):
        answer = await error_for(a, {"type": "message", "text": case, "id": f"bad{number}",
                                     **fields})
        assert answer["code"] == code, (case, answer)
    # The 10 allowed (max_files_per_message) are counted, not refused as too many.
    answer = await error_for(a, {"type": "message", "id": "ten",
                                 "files": [f"{i:022d}" for i in range(10)]})
    assert answer["code"] == "file_not_found"
    # Nothing was stored: the next message takes the next seq.
    await a.send({"type": "message", "text": "next", "id": "ok2"})
    assert (await a.recv_type("ack"))["seq"] == first + 1
    # A resend of the first message (same id) is the duplicate it is, not a refusal.
    await a.send({"type": "message", "text": "first", "id": "ok1", "files": [mine["id"]]})
    assert await a.recv_type("ack") == {"type": "ack", "id": "ok1", "seq": first,
                                        "duplicate": True}
    # URLs only for files of the room asked about.
    assert (await bob.urls([elsewhere["id"]]))[1] == {"files": {}}
    assert list((await bob.urls([elsewhere["id"]], room="team"))[1]["files"]) == [
        elsewhere["id"]]
    status, answer = await bob.urls(["x"] * (srv.config.max_file_urls + 1))
    assert (status, answer["error"]) == (400, "bad_request")


async def test_the_welcome_says_how_many_files_a_message_may_carry(tmp_path: Path) -> None:
    """``welcome.max_files_per_message`` is the room's setting, at its edges: 0 (the room
    takes no files: the page offers no attach button) refuses a message with one file, 1
    takes one and refuses two."""
    for most in (0, 1):
        base = make_config(tmp_path / str(most))
        config = replace(base, room=replace(base.room, max_files_per_message=most))
        async with running_server(config) as server:
            alice = Member(server.port, "alice")
            client = await server.connect(user="alice", token=make_token("alice", ["lobby"]))
            assert (await client.recv_type("welcome"))["max_files_per_message"] == most
            one, two = [(await alice.upload(NOTES, f"{n}.txt"))["id"] for n in range(2)]
            if most == 0:
                answer = await error_for(client, {"type": "message", "id": "m0", "files": [one]})
                assert answer["code"] == "too_many_files"
            else:
                answer = await error_for(client, {"type": "message", "id": "m2",
                                                  "files": [one, two]})
                assert answer["code"] == "too_many_files"
                await client.send({"type": "message", "id": "m1", "files": [one]})
                assert (await client.recv_type("ack"))["id"] == "m1"


async def test_frames_after_a_message_with_files_keep_their_order(srv: Server) -> None:
    """The files of a message are looked up before it enters the room; the frames its client
    sent after it wait behind it, so they are stored in the order sent."""
    alice = Member(srv.port, "alice")
    uploads = [await alice.upload(NOTES, f"{i}.txt") for i in range(3)]
    a = await joined(srv, "alice")
    for i, upload in enumerate(uploads):
        await a.send({"type": "message", "text": f"with {i}", "id": f"f{i}",
                      "files": [upload["id"]]})
        await a.send({"type": "message", "text": f"plain {i}", "id": f"p{i}"})
    acks = [await a.recv_type("ack") for _ in range(6)]
    assert [x["id"] for x in sorted(acks, key=lambda x: x["seq"])] == [
        "f0", "p0", "f1", "p1", "f2", "p2"]


async def test_the_server_api_publishes_files(srv: Server) -> None:
    """``POST /api/v1/rooms/<room>/files?user=`` then ``POST .../messages`` with ``files``;
    the refusals are the socket's codes with their statuses."""
    status, _, body = await asyncio.to_thread(
        http, srv.port, "POST", "/api/v1/rooms/lobby/files?name=report.txt&user=bot", NOTES,
        {"Authorization": f"Bearer {API_KEY}"})
    assert status == 201, body
    upload = json.loads(body)
    status, obj = await call(srv.port, "POST", "/rooms/lobby/messages",
                             {"user": "bot", "id": "r1", "files": [upload["id"]]})
    assert status == 200 and not obj["duplicate"]
    seq = obj["seq"]
    status, obj = await call(srv.port, "GET", "/rooms/lobby/messages")
    assert obj["messages"][-1]["files"] == [public(upload)]
    cases = [({"user": "bot", "files": [upload["id"]]}, 409, "file_not_attachable"),
             ({"user": "other", "files": [upload["id"]]}, 404, "file_not_found"),
             ({"user": "bot", "files": ["Q" * 22] * 1 + [f"{i:022d}" for i in range(10)]},
              400, "too_many_files")]
    for body_, code, error in cases:
        status, obj = await call(srv.port, "POST", "/rooms/lobby/messages", body_)
        assert (status, obj["error"]) == (code, error), obj
    status, obj = await call(srv.port, "POST", "/rooms/lobby/messages",
                             {"user": "bot", "id": "r1", "files": [upload["id"]]})
    assert (status, obj) == (200, {"seq": seq, "duplicate": True})
    status, obj = await call(srv.port, "POST", "/rooms/lobby/files/urls", {"ids": [upload["id"]]})
    assert status == 200 and list(obj["files"]) == [upload["id"]]
    # roomchat export carries the metadata (never the bytes or a URL).
    lines: list[str] = []
    await export(srv.config, ["lobby"], 0, lines.append)
    (exported,) = [obj for obj in map(json.loads, lines)
                   if obj["type"] == "message" and obj["seq"] == seq]
    assert exported["files"] == [public(upload)]
    # A moderator's delete through the API deletes the bytes too.
    signed = obj["files"][upload["id"]]["url"]
    assert (await Member(srv.port, "bob").get(signed))[0] == 200
    status, _ = await call(srv.port, "DELETE", f"/rooms/lobby/messages/{seq}")
    assert status == 200

    async def gone() -> bool:
        return (await Member(srv.port, "bob").get(signed))[0] == 404

    await until(gone, 5 * SLOW)


async def test_the_bot_client_sends_a_file(srv: Server, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{srv.port}"
    watcher = await joined(srv, "bob")
    async with RoomClient(base, "lobby", token=make_token("bot", ["lobby"])) as bot:
        report = tmp_path / "report.txt"
        report.write_bytes(NOTES)
        seq = await bot.send_file(report, text="today's report")
        got = await watcher.recv_type("message")
        assert (got["seq"], got["text"], got["files"][0]["name"]) == (
            seq, "today's report", "report.txt")
        with pytest.raises(ClientError) as refused:
            await bot.send_files([], text="nothing")
        assert refused.value.code == "bad_request"


async def test_retention_removes_the_files_of_pruned_messages(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path, history_retention=3), api_key=API_KEY)
    async with running_server(config) as srv:
        alice = Member(srv.port, "alice")
        upload = await alice.upload(NOTES, "old.txt")
        a = await joined(srv, "alice")
        await a.send({"type": "message", "id": "f", "files": [upload["id"]]})
        await a.recv_type("ack")
        assert (await alice.get(upload["url"]))[0] == 200
        for i in range(5):
            await a.send({"type": "message", "text": f"t{i}", "id": f"t{i}"})
            await a.recv_type("ack")

        async def gone() -> bool:
            return (await alice.get(upload["url"]))[0] == 404

        await until(gone, 5 * SLOW)


@pytest.mark.parametrize("store", ["file", "s3"])
async def test_two_processes_on_redis_share_files_of_messages(tmp_path: Path,
                                                             store: str) -> None:
    """alice uploads and sends through one process, bob reads through another: one Redis,
    one shared file store (a ``file://`` directory, or a bucket of a real S3 server). The
    upload is attached (its pending marker gone: the orphan collector never takes it), bob's
    process signs URLs for its bytes, and alice's delete on her process removes the bytes
    bob's process served."""
    with contextlib.ExitStack() as stack:
        if store == "s3":
            endpoint = stack.enter_context(s3_server())
            files_url = make_bucket(endpoint, "shared")
            env = {**S3_ENV, "ROOMCHAT_FILES_URL": files_url}

            def pending() -> list[str]:
                return bucket_keys(endpoint, "shared", "pending/")
        else:
            shared = tmp_path / "shared-files"
            env = {"ROOMCHAT_FILES_URL": shared.as_uri()}

            def pending() -> list[str]:
                return [entry.name for entry in (shared / "pending").iterdir()]
        await two_processes_share_files(tmp_path, env, pending)


async def two_processes_share_files(tmp_path: Path, env: dict[str, str],
                                    pending: Callable[[], list[str]]) -> None:
    with redis_server(tmp_path / "redis") as redis_url:
        env = {**env, "ROOMCHAT_STORE_URL": redis_url}
        with server_process(tmp_path / "a", env=env) as one, \
                server_process(tmp_path / "b", env=env) as two:
            alice, bob = Member(one.port, "alice"), Member(two.port, "bob")
            photo = await alice.upload(image("JPEG", (300, 200)), "photo.jpg")
            ca, cb = await connected(one.port, "alice"), await connected(two.port, "bob")
            await ca.send({"type": "message", "text": "from a", "id": "m1",
                           "files": [photo["id"]]})
            seq = (await ca.recv_type("ack"))["seq"]
            got = await cb.recv_type("message")
            assert (got["seq"], got["files"]) == (seq, [public(photo)])
            status, answer = await bob.urls([photo["id"]])
            assert status == 200
            assert await bob.get(answer["files"][photo["id"]]["url"]) == \
                await alice.get(photo["url"])
            await until(lambda: not pending(), 5 * SLOW)
            resumed = await connected(two.port, "bob", after=seq - 1)
            assert (await resumed.recv_type("message"))["files"] == [public(photo)]
            # alice deletes it on her process; bob's process then has no bytes to serve.
            await ca.send({"type": "delete", "seq": seq, "id": "d1"})
            await ca.recv_type("ack")
            url = answer["files"][photo["id"]]["url"]

            async def gone() -> bool:
                return (await bob.get(url))[0] == 404

            await until(gone, 5 * SLOW)
            for client in (ca, cb, resumed):
                await client.ws.close()

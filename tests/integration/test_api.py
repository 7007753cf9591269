"""The server API (/api/v1) against a real server: each endpoint's success and refusal paths,
the credential rules both ways, the rate limit, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import websockets
from openapi_spec_validator import validate
from websockets.exceptions import InvalidStatus

from tests.apicall import API_KEY, api_token, call, call_sync
from tests.redis_server import redis_server
from tests.support import (
    REPO,
    SECRET,
    SLOW,
    Client,
    Server,
    make_config,
    make_token,
    running_server,
    server_process,
)


async def test_publish_is_stored_and_seen_live_with_the_next_seq(srv: Server) -> None:
    alice = await srv.connect(user="alice")
    assert (await alice.recv())["type"] == "welcome"
    await alice.say("hello", id="a1")
    assert (await alice.recv_type("message"))["seq"] == 1
    status, body = await call(srv.port, "POST", "/rooms/lobby/messages",
                              {"text": "  system notice ", "id": "n1", "user": "system",
                               "name": "System"})
    assert (status, body) == (200, {"seq": 2, "duplicate": False})
    live = await alice.recv_type("message")
    assert live["seq"] == 2
    assert (live["text"], live["user"], live["name"], live["id"]) == (
        "system notice", "system", "System", "n1")
    # A retry with the same (user, id) is not stored again.
    status, body = await call(srv.port, "POST", "/rooms/lobby/messages",
                              {"text": "system notice", "id": "n1", "user": "system"})
    assert (status, body) == (200, {"seq": 2, "duplicate": True})
    # The default author is the credential's (the API key: "api"); a room nobody is in works.
    status, body = await call(srv.port, "POST", "/rooms/empty/messages", {"text": "x"},
                              token=api_token("backend"))
    assert (status, body) == (200, {"seq": 1, "duplicate": False})
    status, page = await call(srv.port, "GET", "/rooms/empty/messages")
    assert page["messages"][0]["user"] == "backend"


async def test_publish_refusals(srv: Server) -> None:
    cases = [({"text": "   "}, 400, "empty_text"), ({"text": "x" * 2001}, 400, "text_too_long"),
             ({"text": 5}, 400, "bad_request"), ({"text": "x", "id": ""}, 400, "bad_request"),
             ({"text": "x", "user": "a\nb"}, 400, "bad_request"), ([1], 400, "bad_request")]
    for body, want_status, want_error in cases:
        status, answer = await call(srv.port, "POST", "/rooms/lobby/messages", body)
        assert (status, answer["error"]) == (want_status, want_error), body
    status, answer = await call(srv.port, "POST", "/rooms/bad.room/messages", {"text": "x"})
    assert (status, answer["error"]) == (404, "bad_room")


async def test_a_lone_surrogate_is_refused_and_the_room_keeps_working(srv: Server) -> None:
    """Round-3 high finding: ``{"text": "poison \\ud800"}`` (what ``JSON.stringify`` writes for
    a lone surrogate) failed the group commit and closed the room. It is a 400, and the room's
    members and the next message are unharmed."""
    alice = await srv.connect(user="alice")
    assert (await alice.recv())["type"] == "welcome"
    for text in ["poison \ud800", "\udfff", "a\ud83d"]:
        status, answer = await call(srv.port, "POST", "/rooms/lobby/messages", {"text": text})
        assert (status, answer["error"]) == (400, "bad_request"), text
        assert "surrogate" in answer["detail"], answer
    status, body = await call(srv.port, "POST", "/rooms/lobby/messages",
                              {"text": "fine \U0001f600"})
    assert (status, body) == (200, {"seq": 1, "duplicate": False})
    live = await alice.recv_type("message")
    assert (live["seq"], live["text"]) == (1, "fine \U0001f600")


async def test_u0000_is_refused_at_the_edge_for_every_engine(srv: Server) -> None:
    """PostgreSQL's ``text`` cannot hold U+0000, so ``rooms.text`` refuses it for every engine
    (issue 24): a 400 naming it, on a publish and on an edit, and nothing stored."""
    for text in ["a\x00b", "\x00"]:
        status, answer = await call(srv.port, "POST", "/rooms/lobby/messages", {"text": text})
        assert (status, answer["error"]) == (400, "bad_request"), text
        assert "U+0000" in answer["detail"], answer
    status, body = await call(srv.port, "POST", "/rooms/lobby/messages", {"text": "kept"})
    assert (status, body) == (200, {"seq": 1, "duplicate": False})
    status, answer = await call(srv.port, "PATCH", "/rooms/lobby/messages/1", {"text": "x\x00"})
    assert (status, answer["error"]) == (400, "bad_request") and "U+0000" in answer["detail"]
    status, page = await call(srv.port, "GET", "/rooms/lobby/messages?limit=10")
    assert [m["text"] for m in page["messages"]] == ["kept"]


async def test_storage_errors_get_the_upgrades_answer_on_every_endpoint(srv: Server) -> None:
    """An engine error in any endpoint is 503 ``unavailable`` with its JSON reason, as a
    socket upgrade would get, never a 500."""
    await srv.gateway.store.close()  # every later engine call raises StoreError
    for method, path, body in [
        ("POST", "/rooms/lobby/messages", {"text": "hi"}),
        ("GET", "/rooms/lobby/messages", None),
        ("DELETE", "/rooms/lobby/messages/1", None),
        ("PATCH", "/rooms/lobby/messages/1", {"text": "x"}),
        ("PUT", "/rooms/lobby/messages/1/reactions/%F0%9F%91%8D", None),
        ("DELETE", "/rooms/lobby/messages/1/reactions/%F0%9F%91%8D", None),
        ("PUT", "/rooms/lobby/read/eve", {"seq": 1}),
        ("GET", "/users/eve/unread", None),
        ("POST", "/rooms/lobby/bans", {"user": "eve"}),
        ("GET", "/rooms/lobby/bans/eve", None),
        ("DELETE", "/rooms/lobby/bans/eve", None),
        ("POST", "/users/eve/erase", None),
    ]:
        status, answer = await call(srv.port, method, path, body)
        assert (status, answer["error"]) == (503, "unavailable"), (method, path, answer)


async def test_history_pages_oldest_first(srv: Server) -> None:
    for i in range(1, 8):
        status, _ = await call(srv.port, "POST", "/rooms/lobby/messages", {"text": f"m{i}"})
        assert status == 200
    _, page = await call(srv.port, "GET", "/rooms/lobby/messages?limit=3")
    assert [m["seq"] for m in page["messages"]] == [1, 2, 3]
    assert page["messages"][0] == {**page["messages"][0], "type": "message", "room": "lobby",
                                   "text": "m1", "user": "api", "id": None}
    _, page = await call(srv.port, "GET", "/rooms/lobby/messages?after=3&limit=3")
    assert [m["seq"] for m in page["messages"]] == [4, 5, 6]
    _, page = await call(srv.port, "GET", "/rooms/lobby/messages?before=7&limit=2")
    assert [m["seq"] for m in page["messages"]] == [5, 6]
    _, page = await call(srv.port, "GET", "/rooms/lobby/messages?before=1000&limit=2")
    assert [m["seq"] for m in page["messages"]] == [6, 7]  # before beyond the end: the newest
    _, page = await call(srv.port, "GET", "/rooms/lobby/messages?after=2&before=5")
    assert [m["seq"] for m in page["messages"]] == [3, 4]
    _, page = await call(srv.port, "GET", "/rooms/lobby/messages?after=7")
    assert page == {"messages": []}
    for bad in ("after=-1", "before=0", "limit=x", "after=%C2%B2"):
        status, answer = await call(srv.port, "GET", f"/rooms/lobby/messages?{bad}")
        assert (status, answer["error"]) == (400, "bad_request"), bad


def _raw(port: int, method: str, path: str, data: bytes | None = None,
         token: str = API_KEY, content_type: str = "application/json") -> tuple[int, Any]:
    """One API request with a body of exactly ``data`` (``call`` sends JSON it encodes)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}", data=data,
                                     method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10 * SLOW) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, json.loads(raw)  # every answer, refusals included, is JSON


async def test_out_of_range_integers_are_400s_at_their_edges(srv: Server) -> None:
    """Round-3 finding: ``before``/``after``/seq of 99999999999999999999 raised OverflowError
    in SQLite (a 500 with a traceback). Every integer a request gives is 0 or 1 to 2**63-1."""
    await _integer_edges(srv)


async def test_the_edges_hold_on_redis(tmp_path: Path) -> None:
    """The same edges on Redis, where a seq is a stream id's part (an unsigned 64-bit one), and
    a ban's end a key's expiry (a NaN or 1e300 ``until`` failed there: 500 and 503)."""
    with redis_server(tmp_path / "redis") as url:
        config = replace(make_config(tmp_path), api_key=API_KEY, store_url=url)
        async with running_server(config) as srv:
            await _integer_edges(srv)
            for until in (1e300, 253_402_300_800):
                status, answer = await call(srv.port, "POST", "/rooms/lobby/bans",
                                            {"user": "eve", "until": until})
                assert (status, answer["error"]) == (400, "bad_request"), until
            status, body = await call(srv.port, "POST", "/rooms/lobby/bans",
                                      {"user": "eve", "until": 253_402_300_799})
            assert (status, body["until"]) == (200, 253_402_300_799)
            status, body = await call(srv.port, "GET", "/rooms/lobby/bans/eve")
            assert (status, body["until"]) == (200, 253_402_300_799)


async def _integer_edges(srv: Server) -> None:
    for i in range(3):
        await call(srv.port, "POST", "/rooms/lobby/messages", {"text": f"m{i}"})
    top = 2**63 - 1
    for query in (f"before={top + 1}", f"after={top + 1}", f"limit={top + 1}",
                  "before=99999999999999999999", "after=" + "9" * 5000, "after=1e3"):
        status, answer = await call(srv.port, "GET", f"/rooms/lobby/messages?{query}")
        assert (status, answer["error"]) == (400, "bad_request"), query
        assert "an integer from" in answer["detail"]
    # At the edge: taken, and as far beyond the last seq as a seq can be.
    _, page = await call(srv.port, "GET", f"/rooms/lobby/messages?before={top}&limit={top}")
    assert [m["seq"] for m in page["messages"]] == [1, 2, 3]
    _, page = await call(srv.port, "GET", f"/rooms/lobby/messages?after={top}")
    assert page == {"messages": []}
    for seq in (f"{top + 1}", "99999999999999999999", "0", "-1", "x", "1.0", "%C2%B2"):
        status, answer = await call(srv.port, "DELETE", f"/rooms/lobby/messages/{seq}")
        assert (status, answer["error"]) == (400, "bad_request"), seq
    status, answer = await call(srv.port, "DELETE", f"/rooms/lobby/messages/{top}")
    assert (status, answer["error"]) == (404, "not_found")
    status, answer = await call(srv.port, "DELETE", "/rooms/lobby/messages/03")
    assert (status, answer) == (200, {"room": "lobby", "seq": 3, "deleted": True, "change": 4})
    # The same edges on every route that names a message.
    for seq in (f"{top + 1}", "0", "x"):
        for method, path, body in (
                ("PATCH", f"/rooms/lobby/messages/{seq}", {"text": "x"}),
                ("PUT", f"/rooms/lobby/messages/{seq}/reactions/%F0%9F%91%8D", None),
                ("DELETE", f"/rooms/lobby/messages/{seq}/reactions/%F0%9F%91%8D", None)):
            status, answer = await call(srv.port, method, path, body)
            assert (status, answer["error"]) == (400, "bad_request"), (method, path)
    for method, path, body in (
            ("PATCH", f"/rooms/lobby/messages/{top}", {"text": "x"}),
            ("PUT", f"/rooms/lobby/messages/{top}/reactions/%F0%9F%91%8D", None)):
        status, answer = await call(srv.port, method, path, body)
        assert (status, answer["error"]) == (404, "not_found"), (method, path)
    for number in (top + 1, 2**53 + 1, 1.5, -1):
        status, answer = await call(srv.port, "PUT", "/rooms/lobby/read/bob", {"seq": number})
        assert (status, answer["error"]) == (400, "bad_request"), number
        status, answer = await call(srv.port, "POST", "/rooms/lobby/messages",
                                    {"text": "x", "reply_to": number})
        assert (status, answer["error"]) == (400, "bad_request"), number


async def test_bodies_that_are_not_json_objects_are_400s(srv: Server) -> None:
    """Round-3 finding: a body that was not UTF-8 (UnicodeDecodeError) or nested deeply
    (RecursionError) was a 500. Bodies parse as socket frames do (orjson)."""
    bodies = [b"\xff\xfe", b'{"text":"caf\xe9"}', b"[" * 100_000 + b"]" * 100_000,
              b'{"text":' + b"[" * 2000 + b"]" * 2000 + b"}", b"", b"null", b'"text"',
              b'{"text":"x"', b'{"text":NaN}']
    for body in bodies:
        status, answer = await asyncio.to_thread(_raw, srv.port, "POST",
                                                 "/rooms/lobby/messages", body)
        assert (status, answer["error"]) == (400, "bad_request"), body[:20]
        assert "\n" not in answer["detail"]
    # Whatever the content type says, a JSON object is read as one (as before).
    status, answer = await asyncio.to_thread(_raw, srv.port, "POST", "/rooms/lobby/messages",
                                             '{"text":"café"}'.encode(), content_type="text/plain")
    assert (status, answer) == (200, {"seq": 1, "duplicate": False})


async def test_presence_and_live_rooms(srv: Server) -> None:
    alice = await srv.connect(user="alice", name="Alice")
    bob = await srv.connect(user="bob", name="Bob")
    bob2 = await srv.connect(user="bob", name="Bob")
    for client in (alice, bob, bob2):
        assert (await client.recv())["type"] == "welcome"
    carol = await srv.connect(room="other", user="carol")
    assert (await carol.recv())["type"] == "welcome"
    _, body = await call(srv.port, "GET", "/rooms/lobby/presence")
    assert body == {"room": "lobby", "members": [{"user": "alice", "name": "Alice"},
                                                 {"user": "bob", "name": "Bob"}]}
    _, body = await call(srv.port, "GET", "/rooms/nobody/presence")
    assert body == {"room": "nobody", "members": []}
    _, body = await call(srv.port, "GET", "/rooms")
    assert body["rooms"] == [{"room": "lobby", "members": 2, "connections": 3, "seq": 0},
                             {"room": "other", "members": 1, "connections": 1, "seq": 0}]
    # A credential limited to some rooms sees and acts on those only.
    limited = api_token(rooms=["other"])
    _, body = await call(srv.port, "GET", "/rooms", token=limited)
    assert [r["room"] for r in body["rooms"]] == ["other"]
    status, body = await call(srv.port, "GET", "/rooms/lobby/presence", token=limited)
    assert (status, body["error"]) == (403, "room_forbidden")


async def test_disconnect_closes_every_socket_of_the_user(srv: Server) -> None:
    bob1 = await srv.connect(user="bob")
    bob2 = await srv.connect(room="other", user="bob")
    alice = await srv.connect(user="alice")
    for client in (bob1, bob2, alice):
        assert (await client.recv())["type"] == "welcome"
    status, body = await call(srv.port, "POST", "/users/bob/disconnect")
    assert status == 200 and body["user"] == "bob"
    assert await bob1.closed() == 4003
    assert await bob2.closed() == 4003
    # Tokens issued before it are refused; alice is untouched.
    with pytest.raises(InvalidStatus) as refused:
        await srv.connect(user="bob", token=make_token("bob", iat=int(time.time()) - 5))
    assert refused.value.response.status_code == 401
    await alice.say("still here", id="x")
    assert (await alice.recv_type("ack"))["seq"] == 1
    status, body = await call(srv.port, "POST", "/users/bob/disconnect",
                              token=api_token(rooms=["lobby"]))
    assert (status, body["error"]) == (403, "room_forbidden")


BAD_USERS = ["a\x07b", "line\nbreak", "c1\x85", "x" * 65, "a\x07" * 2500]


async def test_user_ids_in_paths_and_bodies_are_held_to_the_sub_rule(srv: Server) -> None:
    """Round-3 finding: ``POST /users/<5,000 characters with control characters>/disconnect``
    was stored as a revocation every process loads. Every user id an API route takes follows
    a token's ``sub``: 1 to 64 characters, no control character (400 ``bad_request``)."""
    await call(srv.port, "POST", "/rooms/lobby/messages", {"text": "x"})
    routes = [("POST", "/users/{}/disconnect"), ("POST", "/users/{}/erase"),
              ("GET", "/rooms/lobby/bans/{}"), ("DELETE", "/rooms/lobby/bans/{}"),
              ("GET", "/users/{}/unread"), ("PUT", "/rooms/lobby/read/{}"),
              ("DELETE", "/rooms/lobby/messages/1?user={}"),
              ("PUT", "/rooms/lobby/messages/1/reactions/%F0%9F%91%8D?user={}"),
              ("DELETE", "/rooms/lobby/messages/1/reactions/%F0%9F%91%8D?user={}")]
    for method, route in routes:
        for user in BAD_USERS:
            path = route.format(urllib.parse.quote(user, safe=""))
            status, answer = await call(srv.port, method, path,
                                        {"seq": 1} if "/read/" in route else None)
            assert (status, answer["error"]) == (400, "bad_request"), (method, route, user[:9])
            assert answer["detail"].startswith("user must"), answer
    for user in BAD_USERS:
        for method, path, body in (
                ("POST", "/rooms/lobby/bans", {"user": user}),
                ("POST", "/rooms/lobby/messages", {"text": "x", "user": user}),
                ("PATCH", "/rooms/lobby/messages/1", {"text": "x", "user": user})):
            status, answer = await call(srv.port, method, path, body)
            assert (status, answer["error"]) == (400, "bad_request"), (path, user[:9])
    assert await srv.gateway.store.revocations(0) == []  # nothing was stored
    # At the edge: 64 characters, and what a sub may hold (Cf format characters, emoji).
    for user in ("u" * 64, "zoë\u200d🙂"):
        quoted = urllib.parse.quote(user, safe="")
        status, body = await call(srv.port, "POST", f"/users/{quoted}/disconnect")
        assert (status, body["user"]) == (200, user)
        status, body = await call(srv.port, "GET", f"/rooms/lobby/bans/{quoted}")
        assert (status, body["error"]) == (404, "not_banned")


@pytest.mark.parametrize(("token", "status", "error"), [
    (None, 401, "missing_token"),
    ("wrong-key", 401, "invalid_token"),
    (make_token("alice"), 403, "api_scope_required"),
    (make_token("alice", admin=True), 403, "api_scope_required"),
    (api_token(ttl=-60), 401, "token_expired"),
    (api_token(secret="another-secret-that-is-also-long-enough-000"), 401, "invalid_token"),
])
async def test_user_tokens_and_bad_credentials_cannot_call_the_api(
        srv: Server, token: str | None, status: int, error: str) -> None:
    for method, path, body in [("GET", "/rooms", None),
                               ("POST", "/rooms/lobby/messages", {"text": "x"}),
                               ("POST", "/users/bob/disconnect", None)]:
        got, answer = await call(srv.port, method, path, body, token=token)
        assert (got, answer["error"]) == (status, error), path
        assert answer["detail"]


async def test_api_credentials_cannot_open_a_chat_socket(srv: Server) -> None:
    for token in (api_token(), API_KEY):
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(srv.url("lobby", token), open_timeout=5 * SLOW)
        assert refused.value.response.status_code == (403 if token != API_KEY else 401)
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(srv.url("lobby", api_token()), open_timeout=5 * SLOW)
    assert b"api_credential" in (refused.value.response.body or b"")
    # Nor get a ticket for one.
    status, body, _ = await asyncio.to_thread(_ticket, srv.port, api_token())
    assert (status, body["error"]) == (403, "api_credential")


def _ticket(port: int, token: str) -> tuple[int, dict[str, str], dict[str, str]]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/rooms/lobby/ticket", data=b"",
                                     method="POST", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), {}


async def test_each_credential_is_rate_limited(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), api_key=API_KEY, api_rate=0.5, api_burst=3)
    async with running_server(config) as srv:
        for _ in range(3):
            assert (await call(srv.port, "GET", "/rooms"))[0] == 200
        status, body, headers = await asyncio.to_thread(call_sync, srv.port, "GET", "/rooms")
        assert (status, body["error"]) == (429, "rate_limited")
        retry = {k.lower(): v for k, v in headers.items()}["retry-after"]
        assert int(retry) >= 1
        # Another credential has its own bucket.
        assert (await call(srv.port, "GET", "/rooms", token=api_token()))[0] == 200


async def test_a_short_api_key_is_refused_at_startup(tmp_path: Path) -> None:
    from gateway.app import create_app

    with pytest.raises(ValueError, match="ROOMCHAT_API_KEY"):
        create_app(replace(make_config(tmp_path), api_key="short"))


async def test_openapi_document_is_valid_and_lists_every_route(
        srv: Server, tmp_path: Path) -> None:
    status, document = await call(srv.port, "GET", "/openapi.json", token=None)
    assert status == 200
    validate(document)  # OpenAPI 3.1, by openapi-spec-validator
    from gateway.app import create_app

    app = create_app(replace(make_config(tmp_path / "other"), api_key=API_KEY))
    served = {(method, re.sub(r"<(?:int:)?(\w+)>", r"{\1}", rule.rule.removeprefix("/api/v1")))
              for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/v1/")
              for method in rule.methods or () if method not in {"HEAD", "OPTIONS"}}
    documented = {(method.upper(), path) for path, methods in document["paths"].items()
                  for method in methods}
    assert served == documented


def test_token_api_mints_a_service_credential(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--api", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=True, cwd=REPO,
        env={"ROOMCHAT_JWT_SECRET": SECRET, "PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
    import jwt

    claims = jwt.decode(out.stdout.strip(), SECRET, algorithms=["HS256"], audience="roomchat")
    assert (claims["scope"], claims["sub"], claims["rooms"]) == ("api", "api", ["*"])


async def test_redis_publish_on_one_process_is_live_on_another(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        env = {"ROOMCHAT_STORE_URL": url, "ROOMCHAT_API_KEY": API_KEY,
               "PYTHONPATH": str(REPO)}
        with server_process(tmp_path / "a", env=env) as a, \
                server_process(tmp_path / "b", env=env) as b:
            ws = await websockets.connect(b.url("split", make_token("bob")), compression=None,
                                          open_timeout=10 * SLOW)
            bob = Client(ws)
            try:
                assert (await bob.recv())["type"] == "welcome"
                status, body = await call(a.port, "POST", "/rooms/split/messages",
                                          {"text": "from A", "id": "r1"})
                assert (status, body) == (200, {"seq": 1, "duplicate": False})
                live = await bob.recv_type("message", timeout=10)
                assert (live["seq"], live["text"]) == (1, "from A")
                # Same dedup across processes: the retry on B is the original.
                status, body = await call(b.port, "POST", "/rooms/split/messages",
                                          {"text": "from A", "id": "r1"})
                assert (status, body) == (200, {"seq": 1, "duplicate": True})
                # Presence on A knows B's member (through the engine).
                async with asyncio.timeout(10 * SLOW):
                    while True:
                        _, body = await call(a.port, "GET", "/rooms/split/presence")
                        if body["members"]:
                            break
                        await asyncio.sleep(0.2)
                assert body["members"] == [{"user": "bob", "name": "bob"}]
                _, page = await call(a.port, "GET", "/rooms/split/messages")
                assert [m["text"] for m in page["messages"]] == ["from A"]
            finally:
                await ws.close()

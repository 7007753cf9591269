"""The server API's changes to messages against a real server, on both engines: edit (``PATCH``),
delete (a delete entry), reactions (``PUT``/``DELETE .../reactions/<emoji>``), replies and
mentions on publish, read markers (``PUT /rooms/<room>/read/<user>``) and unread counts
(``GET /users/<user>/unread``), history in its current state, and each refusal's status and code
(``gateway.errors.FRAME_ERRORS``); then the same across two processes on Redis."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import websockets

from gateway.errors import FRAME_ERRORS
from rooms.protocol import MAX_SEQ, ErrorCode
from tests.apicall import API_KEY, api_token, call
from tests.redis_server import redis_server
from tests.support import (
    SLOW,
    Client,
    Server,
    make_config,
    make_token,
    running_server,
    server_process,
)

THUMBS = "\N{THUMBS UP SIGN}"
HEART = "\N{HEAVY BLACK HEART}\N{VARIATION SELECTOR-16}"
FAMILY = "\N{MAN}\N{ZERO WIDTH JOINER}\N{WOMAN}\N{ZERO WIDTH JOINER}\N{GIRL}"


@pytest.fixture(params=["embedded", "redis"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def srv(engine: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A real server on each engine (Redis: a real redis-server), taking the API key."""
    async with _server(engine, tmp_path) as server:
        yield server


def _server(engine: str, tmp_path: Path, **room: Any) -> Any:
    """``running_server`` on ``engine`` with room settings ``room``."""
    import contextlib

    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[Server]:
        config = replace(make_config(tmp_path, **room), api_key=API_KEY)
        if engine == "embedded":
            async with running_server(config) as server:
                yield server
            return
        with redis_server(tmp_path / "redis") as url:
            async with running_server(replace(config, store_url=url)) as server:
                yield server

    return run()


def _emoji(glyph: str) -> str:
    return urllib.parse.quote(glyph, safe="")


async def _publish(srv: Server, text: str, user: str = "alice", **extra: Any) -> int:
    status, body = await call(srv.port, "POST", "/rooms/lobby/messages",
                              {"text": text, "user": user, "name": user.title(), **extra})
    assert status == 200, body
    seq: int = body["seq"]
    return seq


async def _history(srv: Server, room: str = "lobby") -> dict[int, dict[str, Any]]:
    status, page = await call(srv.port, "GET", f"/rooms/{room}/messages?limit=1000")
    assert status == 200, page
    return {m["seq"]: m for m in page["messages"]}


async def _welcomed(client: Client) -> dict[str, Any]:
    welcome = await client.recv_type("welcome")
    return welcome


async def test_edit_by_the_author_reaches_members_and_history(srv: Server) -> None:
    bob = await srv.connect(user="bob")
    await _welcomed(bob)
    seq = await _publish(srv, "helo wrld")
    assert (await bob.recv_type("message"))["seq"] == seq
    status, body = await call(srv.port, "PATCH", f"/rooms/lobby/messages/{seq}",
                              {"text": " hello world ", "user": "alice", "id": "e1"})
    assert (status, body) == (200, {"room": "lobby", "seq": seq, "change": seq + 1,
                                    "duplicate": False})
    change = await bob.recv_type("change")
    assert {k: change[k] for k in ("seq", "action", "target", "user", "text", "id")} == {
        "seq": seq + 1, "action": "edit", "target": seq, "user": "alice",
        "text": "hello world", "id": "e1"}
    # A retry (same user and id) is the original, stored once.
    status, body = await call(srv.port, "PATCH", f"/rooms/lobby/messages/{seq}",
                              {"text": "hello world", "user": "alice", "id": "e1"})
    assert (status, body) == (200, {"room": "lobby", "seq": seq, "change": seq + 1,
                                    "duplicate": True})
    message = (await _history(srv))[seq]
    assert (message["text"], message["edited"]) == ("hello world", change["ts"])
    assert list(await _history(srv)) == [seq]  # change entries are no history items


async def test_edit_refusals(srv: Server) -> None:
    mine = await _publish(srv, "mine", user="alice")
    gone = await _publish(srv, "gone", user="alice")
    assert (await call(srv.port, "DELETE", f"/rooms/lobby/messages/{gone}"))[0] == 200
    cases: list[tuple[int | str, dict[str, Any], int, str]] = [
        (mine, {"text": "x", "user": "bob"}, 403, "forbidden"),  # not bob's
        (mine, {"text": "x"}, 403, "forbidden"),  # the credential's sub (api) is no author
        (gone, {"text": "x", "user": "alice"}, 409, "already_deleted"),
        (99, {"text": "x", "user": "alice"}, 404, "not_found"),
        (gone + 1, {"text": "x", "user": "alice"}, 404, "not_found"),  # a change's seq
        (MAX_SEQ + 1, {"text": "x", "user": "alice"}, 404, "not_found"),
        (mine, {"text": "   ", "user": "alice"}, 400, "empty_text"),
        (mine, {"text": "x" * 2001, "user": "alice"}, 400, "text_too_long"),
        (mine, {"user": "alice"}, 400, "bad_request"),
        (mine, {"text": "x", "user": "a\nb"}, 400, "bad_request"),
        (mine, {"text": "x", "user": "alice", "id": ""}, 400, "bad_request"),
        ("0", {"text": "x", "user": "alice"}, 400, "bad_request"),
        ("x", {"text": "x", "user": "alice"}, 400, "bad_request"),
    ]
    for seq, body, want_status, want_error in cases:
        status, answer = await call(srv.port, "PATCH", f"/rooms/lobby/messages/{seq}", body)
        assert (status, answer["error"]) == (want_status, want_error), (seq, body)
        assert answer["detail"] and "\n" not in answer["detail"]
    # Nothing of it was stored: the message is as sent, and the next entry follows on.
    assert (await _history(srv))[mine]["text"] == "mine"
    assert "edited" not in (await _history(srv))[mine]
    assert await _publish(srv, "next") == gone + 2


async def test_the_edit_window_at_its_edge(engine: str, tmp_path: Path) -> None:
    async with _server(engine, tmp_path, edit_window=1.0) as srv:
        seq = await _publish(srv, "typo")
        status, _ = await call(srv.port, "PATCH", f"/rooms/lobby/messages/{seq}",
                               {"text": "fixed", "user": "alice"})
        assert status == 200  # within the window
        await asyncio.sleep(1.2)
        status, answer = await call(srv.port, "PATCH", f"/rooms/lobby/messages/{seq}",
                                    {"text": "later", "user": "alice"})
        assert (status, answer["error"]) == (403, "edit_window_passed")
        assert "1 s" in answer["detail"]
        assert (await _history(srv))[seq]["text"] == "fixed"
        # Deleting is not bound by it.
        status, _ = await call(srv.port, "DELETE", f"/rooms/lobby/messages/{seq}?user=alice")
        assert status == 200


async def test_reactions_put_and_take_back(srv: Server) -> None:
    bob = await srv.connect(user="bob")
    await _welcomed(bob)
    seq = await _publish(srv, "ship it?")
    path = f"/rooms/lobby/messages/{seq}/reactions/{_emoji(THUMBS)}"
    status, body = await call(srv.port, "PUT", f"{path}?user=bob&name=Bob")
    assert (status, body) == (200, {"room": "lobby", "seq": seq, "emoji": THUMBS, "on": True,
                                    "change": seq + 1, "noop": False})
    change = await bob.recv_type("change")
    assert {k: change[k] for k in ("seq", "action", "target", "user", "name", "emoji", "on")} \
        == {"seq": seq + 1, "action": "react", "target": seq, "user": "bob", "name": "Bob",
            "emoji": THUMBS, "on": True}
    # Putting it again stores nothing: the answer names the message's last change.
    status, body = await call(srv.port, "PUT", f"{path}?user=bob")
    assert (status, body["change"], body["noop"]) == (200, seq + 1, True)
    for user, glyph in (("carol", THUMBS), ("carol", HEART), ("dave", FAMILY)):
        status, body = await call(
            srv.port, "PUT", f"/rooms/lobby/messages/{seq}/reactions/{_emoji(glyph)}"
                             f"?user={user}")
        assert (status, body["noop"]) == (200, False), (user, glyph)
    assert (await _history(srv))[seq]["reactions"] == [
        {"emoji": THUMBS, "users": ["bob", "carol"]}, {"emoji": HEART, "users": ["carol"]},
        {"emoji": FAMILY, "users": ["dave"]}]
    # Taking back: once stored, then a no-op; an emoji nobody has any more is not listed.
    status, body = await call(srv.port, "DELETE", f"{path}?user=bob")
    assert (status, body["on"], body["noop"]) == (200, False, False)
    status, body = await call(srv.port, "DELETE", f"{path}?user=bob")
    assert (status, body["noop"]) == (200, True)
    status, body = await call(
        srv.port, "DELETE", f"/rooms/lobby/messages/{seq}/reactions/{_emoji(FAMILY)}?user=dave")
    assert status == 200
    assert (await _history(srv))[seq]["reactions"] == [
        {"emoji": THUMBS, "users": ["carol"]}, {"emoji": HEART, "users": ["carol"]}]
    # The credential's own reaction by default (the API key's sub: api).
    status, body = await call(srv.port, "PUT", path)
    assert status == 200
    assert (await _history(srv))[seq]["reactions"][0] == {"emoji": THUMBS,
                                                          "users": ["carol", "api"]}


async def test_reaction_refusals(engine: str, tmp_path: Path) -> None:
    async with _server(engine, tmp_path, max_reactions=2) as srv:
        seq = await _publish(srv, "react to me")
        gone = await _publish(srv, "gone")
        await call(srv.port, "DELETE", f"/rooms/lobby/messages/{gone}")

        def path(target: int | str, glyph: str) -> str:
            return f"/rooms/lobby/messages/{target}/reactions/{_emoji(glyph)}?user=bob"

        for glyph in ("a", ":thumbsup:", THUMBS + THUMBS, THUMBS + " ", "\u200d", "x" * 40):
            status, answer = await call(srv.port, "PUT", path(seq, glyph))
            assert (status, answer["error"]) == (400, "bad_request"), glyph
            assert "emoji" in answer["detail"]
        # max_reactions distinct emoji at its edge: the second is taken, a third is not, and
        # one already there still is (by someone else).
        assert (await call(srv.port, "PUT", path(seq, THUMBS)))[0] == 200
        assert (await call(srv.port, "PUT", path(seq, HEART)))[0] == 200
        status, answer = await call(srv.port, "PUT", path(seq, FAMILY))
        assert (status, answer["error"]) == (409, "too_many_reactions")
        status, _ = await call(srv.port, "PUT", path(seq, HEART).replace("bob", "carol"))
        assert status == 200
        for target, glyph, want in ((gone, THUMBS, (409, "already_deleted")),
                                    (999, THUMBS, (404, "not_found")),
                                    ("-1", THUMBS, (400, "bad_request"))):
            status, answer = await call(srv.port, "PUT", path(target, glyph))
            assert (status, answer["error"]) == want, target
        status, answer = await call(srv.port, "PUT", path(seq, THUMBS).replace("bob", "a%07"))
        assert (status, answer["error"]) == (400, "bad_request")
        assert [r["emoji"] for r in (await _history(srv))[seq]["reactions"]] == [THUMBS, HEART]


async def test_replies_and_mentions_on_publish(srv: Server) -> None:
    original = await _publish(srv, "Is the deploy done? " + "x" * 200, user="bob")
    status, body = await call(srv.port, "POST", "/rooms/lobby/messages",
                              {"text": "yes @bob @carol", "user": "alice", "reply_to": original,
                               "mentions": ["bob", "carol", "bob"]})
    assert status == 200, body
    reply = (await _history(srv))[body["seq"]]
    assert reply["mentions"] == ["bob", "carol"]  # duplicates dropped, in order
    assert {k: reply["reply_to"][k] for k in ("seq", "user")} == {"seq": original,
                                                                  "user": "bob"}
    excerpt = reply["reply_to"]["excerpt"]
    assert excerpt.startswith("Is the deploy done?") and len(excerpt) <= 100
    await call(srv.port, "DELETE", f"/rooms/lobby/messages/{original}")
    for extra, want in (({"reply_to": original}, (409, "already_deleted")),
                        ({"reply_to": 999}, (404, "not_found")),
                        ({"reply_to": 0}, (400, "bad_request")),
                        ({"reply_to": "1"}, (400, "bad_request")),
                        ({"reply_to": MAX_SEQ + 1}, (400, "bad_request")),
                        ({"mentions": "bob"}, (400, "bad_request")),
                        ({"mentions": ["a\x07"]}, (400, "bad_request")),
                        ({"mentions": [""]}, (400, "bad_request")),
                        ({"mentions": [f"u{i}" for i in range(21)]}, (400, "bad_request"))):
        status, answer = await call(srv.port, "POST", "/rooms/lobby/messages",
                                    {"text": "x", **extra})
        assert (status, answer["error"]) == want, extra
    # max_mentions (20) at its edge.
    status, body = await call(srv.port, "POST", "/rooms/lobby/messages",
                              {"text": "all", "mentions": [f"u{i}" for i in range(20)]})
    assert status == 200
    assert len((await _history(srv))[body["seq"]]["mentions"]) == 20


async def test_delete_is_an_entry_as_moderator_or_as_the_author(srv: Server) -> None:
    bob = await srv.connect(user="bob")
    await _welcomed(bob)
    first = await _publish(srv, "one", user="alice")
    second = await _publish(srv, "two", user="alice")
    status, body = await call(srv.port, "DELETE", f"/rooms/lobby/messages/{first}")
    assert (status, body) == (200, {"room": "lobby", "seq": first, "deleted": True,
                                    "change": second + 1})
    change = await bob.recv_type("change")
    assert (change["action"], change["target"], change["by"]) == ("delete", first, "moderator")
    # Again: nothing more stored (idempotent, as DELETE is).
    status, body = await call(srv.port, "DELETE", f"/rooms/lobby/messages/{first}")
    assert (status, body["change"]) == (200, None)
    # Acting for a user: only the author's own.
    status, answer = await call(srv.port, "DELETE",
                                f"/rooms/lobby/messages/{second}?user=bob")
    assert (status, answer["error"]) == (403, "forbidden")
    status, body = await call(srv.port, "DELETE", f"/rooms/lobby/messages/{second}?user=alice")
    assert (status, body["change"]) == (200, second + 2)
    change = await bob.recv_type("change")
    assert (change["target"], change["by"], change["user"]) == (second, "author", "alice")
    history = await _history(srv)
    assert [(m["text"], m.get("deleted")) for m in history.values()] == [("", True), ("", True)]


async def test_an_offline_member_resumes_into_the_servers_state(srv: Server) -> None:
    """Issue 21's defect through the server API: changes made while a member was away reach
    their resume with ``after``, and folding them gives exactly the server's current state."""
    from gateway.client import apply_change

    bob = await srv.connect(user="bob")
    await _welcomed(bob)
    first = await _publish(srv, "first", user="alice")
    second = await _publish(srv, "second", user="alice")
    third = await _publish(srv, "third", user="carol")
    seen = {m["seq"]: m for m in [await bob.recv_type("message") for _ in range(3)]}
    await bob.ws.close()
    await call(srv.port, "PATCH", f"/rooms/lobby/messages/{first}",
               {"text": "first, edited", "user": "alice"})
    await call(srv.port, "DELETE", f"/rooms/lobby/messages/{second}")
    await call(srv.port, "PUT", f"/rooms/lobby/messages/{third}/reactions/{_emoji(THUMBS)}"
                                "?user=dave")
    back = await srv.connect(user="bob", after=str(third))
    welcome = await _welcomed(back)
    assert welcome["recovered"] is True
    for _ in range(3):
        change = await back.recv_type("change")
        seen[change["target"]] = apply_change(seen[change["target"]], change)
    assert seen == await _history(srv)


async def test_read_markers_and_unread_counts(srv: Server) -> None:
    bob = await srv.connect(user="bob")
    bob2 = await srv.connect(user="bob")
    carol = await srv.connect(user="carol")
    for client in (bob, bob2, carol):
        await _welcomed(client)
    status, body = await call(srv.port, "GET", "/users/bob/unread")
    assert (status, body) == (200, {"user": "bob", "rooms": []})  # no marker anywhere yet
    seqs = [await _publish(srv, f"m{i}") for i in range(3)]
    await _publish(srv, "hey @bob", mentions=["bob"])
    await _publish(srv, "mine", user="bob")  # not unread for bob
    gone = await _publish(srv, "gone @bob", mentions=["bob"])
    await call(srv.port, "DELETE", f"/rooms/lobby/messages/{gone}")  # not unread any more
    status, body = await call(srv.port, "PUT", "/rooms/lobby/read/bob", {"seq": seqs[1]})
    assert (status, body) == (200, {"room": "lobby", "user": "bob", "read": seqs[1]})
    for socket in (bob, bob2):  # every socket of bob, nobody else
        assert (await socket.recv_type("read")) == {"type": "read", "seq": seqs[1]}
    # Never back.
    status, body = await call(srv.port, "PUT", "/rooms/lobby/read/bob", {"seq": 1})
    assert (status, body["read"]) == (200, seqs[1])
    status, body = await call(srv.port, "GET", "/users/bob/unread")
    assert body == {"user": "bob", "rooms": [{"room": "lobby", "read": seqs[1], "unread": 2,
                                              "mentions": 1}]}
    # Beyond the newest entry: it stops there.
    status, body = await call(srv.port, "PUT", "/rooms/lobby/read/bob", {"seq": 10_000})
    top = gone + 1
    assert (status, body["read"]) == (200, top)
    # A marker in another room, and one a room-limited credential does not see.
    await call(srv.port, "POST", "/rooms/side/messages", {"text": "over here"})
    await call(srv.port, "PUT", "/rooms/side/read/bob", {"seq": 1})
    status, body = await call(srv.port, "GET", "/users/bob/unread")
    assert [r["room"] for r in body["rooms"]] == ["lobby", "side"]
    status, body = await call(srv.port, "GET", "/users/bob/unread",
                              token=api_token(rooms=["side"]))
    assert (status, [r["room"] for r in body["rooms"]]) == (200, ["side"])
    # carol got no read object: everything before her own message's ack is something else.
    await carol.say("marker", id="mk")
    while (obj := await carol.recv())["type"] != "ack":
        assert obj["type"] != "read", obj
    for body, want in (({"seq": 0}, "bad_request"), ({"seq": "3"}, "bad_request"),
                       ({}, "bad_request"), ({"seq": MAX_SEQ + 1}, "bad_request")):
        status, answer = await call(srv.port, "PUT", "/rooms/lobby/read/bob", body)
        assert (status, answer["error"]) == (400, want), body
    status, answer = await call(srv.port, "PUT", "/rooms/lobby/read/a%0Ab", {"seq": 1})
    assert (status, answer["error"]) == (400, "bad_request")
    status, answer = await call(srv.port, "GET", "/users/a%0Ab/unread")
    assert (status, answer["error"]) == (400, "bad_request")


async def test_unread_counts_stop_at_unread_scan(engine: str, tmp_path: Path) -> None:
    async with _server(engine, tmp_path, unread_scan=3) as srv:
        read = await _publish(srv, "read")
        await call(srv.port, "PUT", "/rooms/lobby/read/bob", {"seq": read})
        _, body = await call(srv.port, "GET", "/users/bob/unread")
        assert body["rooms"] == [{"room": "lobby", "read": read, "unread": 0, "mentions": 0}]
        for i in range(2):
            await _publish(srv, f"m{i}")
        _, body = await call(srv.port, "GET", "/users/bob/unread")
        assert body["rooms"] == [{"room": "lobby", "read": read, "unread": 2, "mentions": 0}]
        for i in range(2):
            await _publish(srv, f"more {i}", mentions=["bob"])
        _, body = await call(srv.port, "GET", "/users/bob/unread")
        assert body["rooms"] == [{"room": "lobby", "read": read, "unread": 3, "mentions": 2,
                                  "unread_capped": True}]


async def test_a_change_to_a_pruned_message_is_not_found(engine: str, tmp_path: Path) -> None:
    async with _server(engine, tmp_path, history_retention=3) as srv:
        first = await _publish(srv, "old")
        for i in range(4):
            await _publish(srv, f"new {i}")
        assert first not in await _history(srv)  # pruned by retention
        for method, path, body in (
                ("PATCH", f"/rooms/lobby/messages/{first}", {"text": "x", "user": "alice"}),
                ("DELETE", f"/rooms/lobby/messages/{first}", None),
                ("PUT", f"/rooms/lobby/messages/{first}/reactions/{_emoji(THUMBS)}", None),
                ("POST", "/rooms/lobby/messages", {"text": "re", "reply_to": first})):
            status, answer = await call(srv.port, method, path, body)
            assert (status, answer["error"]) == (404, "not_found"), (method, path)


async def test_every_socket_error_code_has_its_api_status() -> None:
    assert set(FRAME_ERRORS) == {code.value for code in ErrorCode}
    assert FRAME_ERRORS["forbidden"][0] == 403 and FRAME_ERRORS["not_found"][0] == 404
    assert {FRAME_ERRORS[c][0] for c in ("already_deleted", "too_many_reactions")} == {409}
    assert FRAME_ERRORS["invalid_message"] == (400, "bad_request")


async def test_changes_through_one_process_reach_members_on_another(tmp_path: Path) -> None:
    """On Redis: an edit, a reaction and a read marker set through process a's API reach bob
    on process b (the change entries through the log's feed, the marker through the
    engine's)."""
    with redis_server(tmp_path / "redis") as url:
        env = {"ROOMCHAT_STORE_URL": url, "ROOMCHAT_API_KEY": API_KEY}
        with server_process(tmp_path / "a", env=env) as a, \
                server_process(tmp_path / "b", env=env) as b:
            ws = await websockets.connect(b.url("split", make_token("bob")), compression=None,
                                          open_timeout=10 * SLOW)
            bob = Client(ws)
            # bob on a too: the API's own process tells its sockets itself, the engine the
            # others'.
            ws_a = await websockets.connect(a.url("split", make_token("bob")), compression=None,
                                            open_timeout=10 * SLOW)
            bob_a = Client(ws_a)
            try:
                await _welcomed(bob)
                await _welcomed(bob_a)
                status, body = await call(a.port, "POST", "/rooms/split/messages",
                                          {"text": "from A", "user": "alice"})
                seq = body["seq"]
                assert (await bob.recv_type("message", timeout=10))["seq"] == seq
                await call(a.port, "PATCH", f"/rooms/split/messages/{seq}",
                           {"text": "from A, edited", "user": "alice"})
                await call(a.port, "PUT", f"/rooms/split/messages/{seq}/reactions/"
                                          f"{_emoji(THUMBS)}?user=carol")
                edit = await bob.recv_type("change", timeout=10)
                react = await bob.recv_type("change", timeout=10)
                assert (edit["action"], edit["text"]) == ("edit", "from A, edited")
                assert (react["action"], react["emoji"], react["user"]) == (
                    "react", THUMBS, "carol")
                status, body = await call(a.port, "PUT", "/rooms/split/read/bob",
                                          {"seq": react["seq"]})
                assert (status, body["read"]) == (200, react["seq"])
                for socket in (bob, bob_a):
                    assert await socket.recv_type("read", timeout=10) == {
                        "type": "read", "seq": react["seq"]}
                # Both processes read the same current state and counts.
                for proc in (a, b):
                    _, page = await call(proc.port, "GET", "/rooms/split/messages")
                    assert page["messages"][0]["text"] == "from A, edited"
                    assert page["messages"][0]["reactions"] == [{"emoji": THUMBS,
                                                                 "users": ["carol"]}]
                    _, body = await call(proc.port, "GET", "/users/bob/unread")
                    assert body["rooms"] == [{"room": "split", "read": react["seq"],
                                              "unread": 0, "mentions": 0}]
            finally:
                await ws.close()
                await ws_a.close()

"""Searching over HTTP against a real server: ``GET /rooms/<room>/search`` (members, the
front door's ``Purpose.SEARCH``), ``GET /api/v1/rooms/<room>/search`` (service credentials),
their limits at their edges, and the Redis engine's 501."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.config import env_name, load_config
from rooms.search import SEARCH_SWITCHED_OFF, SEARCH_UNSUPPORTED
from tests.apicall import API_KEY, api_token, call
from tests.redis_server import redis_server
from tests.support import SECRET, SLOW, Server, make_config, make_token, running_server


def _get(port: int, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10 * SLOW) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def search(port: int, room: str, query: str, extra: str = "",
                 token: str | None = None, api: bool = False) -> tuple[int, dict[str, Any]]:
    path = (f"{'/api/v1' if api else ''}/rooms/{room}/search?q="
            f"{urllib.parse.quote(query)}{extra}")
    if token is None:
        token = API_KEY if api else make_token("bob")
    return await asyncio.to_thread(_get, port, path, token)


async def publish(srv: Server, room: str, *texts: str) -> list[int]:
    seqs = []
    for text in texts:
        status, body = await call(srv.port, "POST", f"/rooms/{room}/messages", {"text": text})
        assert status == 200, body
        seqs.append(body["seq"])
    return seqs


async def test_a_member_finds_messages_newest_first_in_pages(srv: Server) -> None:
    await publish(srv, "lobby", *[f"deploy number {i}" for i in range(5)], "unrelated")
    status, body = await search(srv.port, "lobby", "deploy", "&limit=2")
    assert status == 200, body
    assert [r["message"]["seq"] for r in body["results"]] == [5, 4]
    assert body["results"][0]["fragments"] == [
        {"text": "deploy", "hit": True}, {"text": " number 4", "hit": False}]
    assert body["results"][0]["message"]["text"] == "deploy number 4"
    assert body["before"] == 4
    status, body = await search(srv.port, "lobby", "deploy", "&limit=2&before=4")
    assert [r["message"]["seq"] for r in body["results"]] == [3, 2]
    status, body = await search(srv.port, "lobby", "deploy", "&limit=2&before=2")
    assert ([r["message"]["seq"] for r in body["results"]], body["before"]) == ([1], None)
    # The same through the server API.
    status, body = await search(srv.port, "lobby", "deploy unrelated", api=True)
    assert (status, body) == (200, {"results": [], "before": None})
    status, body = await search(srv.port, "lobby", "number", "&limit=1", api=True)
    assert status == 200 and [r["message"]["seq"] for r in body["results"]] == [5]


async def test_an_edit_and_a_delete_show_in_results(srv: Server) -> None:
    first, second = await publish(srv, "lobby", "old wording here", "doomed words")
    status, _ = await call(srv.port, "PATCH", f"/rooms/lobby/messages/{first}",
                           {"text": "new phrasing here", "user": "api"})
    assert status == 200
    status, _ = await call(srv.port, "DELETE", f"/rooms/lobby/messages/{second}")
    assert status == 200
    assert (await search(srv.port, "lobby", "wording"))[1]["results"] == []
    assert (await search(srv.port, "lobby", "doomed"))[1]["results"] == []
    (found,) = (await search(srv.port, "lobby", "phrasing"))[1]["results"]
    assert found["message"]["edited"] and found["message"]["text"] == "new phrasing here"


async def test_hostile_queries_are_answered_not_500s(srv: Server) -> None:
    await publish(srv, "lobby", "some text")
    for query in ['"', "*", "NEAR(", "NEAR(a b)", "a OR", "text:x", "(", "\x00", "🙂", "é"]:
        status, body = await search(srv.port, "lobby", query)
        assert (status, body) == (200, {"results": [], "before": None}), query


async def test_bad_requests(srv: Server) -> None:
    for extra in ("&before=0", "&before=-1", f"&before={2**63}", "&limit=0", "&limit=x"):
        status, body = await search(srv.port, "lobby", "word", extra)
        assert (status, body["error"]) == (400, "bad_request"), extra
    for query in ("", "   "):
        status, body = await search(srv.port, "lobby", query)
        assert (status, body["error"]) == (400, "bad_request")
    # Not UTF-8 (a surrogate's CESU-8 bytes): decoded with replacement characters, no 500.
    status, body = await asyncio.to_thread(_get, srv.port, "/rooms/lobby/search?q=%ED%A0%80",
                                           make_token("bob"))
    assert (status, body) == (200, {"results": [], "before": None})
    status, body = await search(srv.port, "bad.room", "word")
    assert (status, body["error"]) == (404, "bad_room")


async def test_the_query_length_and_page_size_limits_at_their_edges(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), api_key=API_KEY, search_query_max_chars=10,
                     search_page_limit=3)
    async with running_server(config) as srv:
        await publish(srv, "lobby", *["word"] * 5)
        status, body = await search(srv.port, "lobby", "word" + " " * 6)  # 10: the most
        assert status == 200 and len(body["results"]) == 3  # default 20, capped to 3
        status, body = await search(srv.port, "lobby", "word" + " " * 7)  # 11
        assert (status, body["error"]) == (400, "query_too_long")
        assert body["detail"] == "q must be at most 10 characters"
        status, body = await search(srv.port, "lobby", "word", "&limit=3")
        assert (len(body["results"]), body["before"]) == (3, 3)
        status, body = await search(srv.port, "lobby", "word", "&limit=2")
        assert len(body["results"]) == 2
        status, body = await search(srv.port, "lobby", "word", "&limit=4", api=True)
        assert len(body["results"]) == 3


def test_the_limits_must_be_positive() -> None:
    for name in ("search_query_max_chars", "search_page_limit", "search_concurrency"):
        assert getattr(load_config({f"ROOMCHAT_{name.upper()}": "1"}), name) == 1
        try:
            load_config({f"ROOMCHAT_{name.upper()}": "0"})
        except ValueError as exc:
            assert str(exc) == f"ROOMCHAT_{name.upper()} must be at least 1, got 0"
        else:
            raise AssertionError(f"{name}=0 was taken")


async def test_who_may_search(srv: Server) -> None:
    await publish(srv, "lobby", "members only")
    status, body = await search(srv.port, "lobby", "members", token="")
    assert (status, body["error"]) == (401, "missing_token")
    status, body = await search(srv.port, "lobby", "members", token=make_token("eve", ["other"]))
    assert (status, body["error"]) == (403, "room_forbidden")
    # A service credential is sent to the API's route, and a user token away from it.
    status, body = await search(srv.port, "lobby", "members", token=api_token())
    assert (status, body["error"]) == (403, "api_credential")
    assert "/api/v1/rooms/<room>/search" in body["detail"]
    status, body = await search(srv.port, "lobby", "members", token=make_token("bob"),
                                api=True)
    assert (status, body["error"]) == (403, "api_scope_required")
    status, body = await search(srv.port, "lobby", "members", api=True,
                                token=api_token(rooms=["other"]))
    assert (status, body["error"]) == (403, "room_forbidden")
    # A banned member cannot search the room.
    status, _ = await call(srv.port, "POST", "/rooms/lobby/bans",
                           {"user": "bob", "reason": "spam"})
    assert status == 200
    status, body = await search(srv.port, "lobby", "members")
    assert (status, body["error"]) == (403, "banned")


async def test_on_redis_search_answers_501_naming_the_engines_that_search(
        tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        config = replace(make_config(tmp_path), api_key=API_KEY, store_url=url)
        async with running_server(config) as srv:
            for api in (False, True):
                status, body = await search(srv.port, "lobby", "word", api=api)
                assert (status, body) == (501, {"error": "search_unsupported",
                                                "detail": SEARCH_UNSUPPORTED})


async def test_on_memory_search_answers_501_naming_the_engines_that_search(
        tmp_path: Path) -> None:
    from rooms.engines import memory

    config = replace(make_config(tmp_path), api_key=API_KEY, store_url="memory://")
    async with running_server(config) as srv:
        for api in (False, True):
            status, body = await search(srv.port, "lobby", "word", api=api)
            assert (status, body) == (501, {"error": "search_unsupported",
                                            "detail": memory.SEARCH_UNSUPPORTED})


async def test_with_the_index_switched_off_search_answers_501_naming_the_setting(
        tmp_path: Path) -> None:
    """``ROOMCHAT_SEARCH_INDEX=0``: the server stores messages as ever, keeps no index in its
    database, and both search routes answer 501 with the sentence naming the setting."""
    config = load_config({env_name("search_index"): "0"}, data_dir=tmp_path,
                         jwt_secret=SECRET, api_key=API_KEY)
    assert config.search_index is False
    async with running_server(config) as srv:
        assert await publish(srv, "lobby", "stored without an index") == [1]
        for api in (False, True):
            status, body = await search(srv.port, "lobby", "index", api=api)
            assert (status, body) == (501, {"error": "search_unsupported",
                                            "detail": SEARCH_SWITCHED_OFF})
        status, body = await call(srv.port, "GET", "/rooms/lobby/messages?limit=5")
        assert status == 200, body
        assert [m["text"] for m in body["messages"]] == ["stored without an index"]
    assert f"{env_name('search_index')}=1" in SEARCH_SWITCHED_OFF
    conn = sqlite3.connect(config.db_path)
    try:
        assert conn.execute("SELECT count(*) FROM sqlite_master "
                            "WHERE name LIKE '%search%'").fetchone() == (0,)
    finally:
        conn.close()

"""Searching across rooms over HTTP against real servers: ``GET /api/v1/search`` on the
embedded engine (SQLite FTS5) and on the PostgreSQL log (a real PostgreSQL:
tests/postgres_server.py): newest first over every room, pages that return every hit once,
an erased user's words gone from every room, who may search (all-rooms service credentials
only), the match bound at its edge, and the 501 of the engines that keep no index."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, load_config
from gateway.search import ALL_ROOMS_ONLY
from rooms.engines import memory
from rooms.search import SEARCH_UNSUPPORTED
from tests.apicall import API_KEY, api_token, call
from tests.redis_server import redis_server
from tests.support import Server, make_config, make_token, running_server


@pytest.fixture(params=["embedded", "postgres"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Each engine that searches: None for the default (SQLite in the data dir)."""
    yield None if request.param == "embedded" else request.getfixturevalue("postgres_url")


def config_for(tmp_path: Path, store_url: str | None, **settings: Any) -> Config:
    config = replace(make_config(tmp_path), api_key=API_KEY, **settings)
    return config if store_url is None else replace(config, store_url=store_url)


@pytest.fixture
async def srv(tmp_path: Path, store_url: str | None) -> AsyncIterator[Server]:
    async with running_server(config_for(tmp_path, store_url)) as server:
        yield server


async def search_all(port: int, query: str, extra: str = "",
                     token: str | None = API_KEY) -> tuple[int, dict[str, Any]]:
    status, body = await call(port, "GET", f"/search?q={urllib.parse.quote(query)}{extra}",
                              token=token)
    return status, body


async def say(srv: Server, room: str, text: str, user: str = "api") -> int:
    status, body = await call(srv.port, "POST", f"/rooms/{room}/messages",
                              {"text": text, "user": user})
    assert status == 200, body
    return int(body["seq"])


def places(body: dict[str, Any]) -> list[tuple[int, str, int]]:
    return [(r["message"]["ts"], r["message"]["room"], r["message"]["seq"])
            for r in body["results"]]


async def test_finds_every_room_newest_first_each_hit_naming_its_room(srv: Server) -> None:
    await say(srv, "north", "deploy started")
    await say(srv, "south", "lunch at noon")
    await say(srv, "south", "deploy finished: all green")
    await say(srv, "east", "Deploy rolled back")
    status, body = await search_all(srv.port, "deploy")
    assert status == 200, body
    assert [(r["message"]["room"], r["message"]["seq"]) for r in body["results"]] == [
        ("east", 1), ("south", 2), ("north", 1)]
    assert places(body) == sorted(places(body), reverse=True)
    assert body["before"] is None
    assert body["results"][1]["message"]["text"] == "deploy finished: all green"
    assert body["results"][1]["fragments"] == [
        {"text": "deploy", "hit": True}, {"text": " finished: all green", "hit": False}]
    # Current state: an edit's new words are found, its old ones are not; a delete is gone.
    status, _ = await call(srv.port, "PATCH", "/rooms/north/messages/1",
                           {"text": "rollout started", "user": "api"})
    assert status == 200
    status, _ = await call(srv.port, "DELETE", "/rooms/east/messages/1")
    assert status == 200
    status, body = await search_all(srv.port, "deploy")
    assert [(r["message"]["room"], r["message"]["seq"]) for r in body["results"]] == [
        ("south", 2)]
    status, body = await search_all(srv.port, "rollout")
    (found,) = body["results"]
    assert found["message"]["room"] == "north" and found["message"]["edited"]


async def test_paging_returns_every_hit_once_while_messages_arrive(srv: Server) -> None:
    """Fifteen hits in three rooms (several in the same millisecond: ties broken by room,
    then seq), paged three at a time; a hit stored between two pages is newer than the
    cursor, so the pages go on without it and nothing is found twice or skipped."""
    stored = []
    for i in range(15):
        room = ("alpha", "beta", "gamma")[i % 3]
        stored.append((room, await say(srv, room, f"needle {i}")))
        await say(srv, room, "hay")
    seen: list[tuple[int, str, int]] = []
    before = ""
    pages = 0
    while True:
        status, body = await search_all(srv.port, "needle", f"&limit=3{before}")
        assert status == 200, body
        seen += places(body)
        pages += 1
        if pages == 2:
            await say(srv, "beta", "needle late")
        if body["before"] is None:
            break
        assert body["before"] == "{}.{}.{}".format(*(seen[-1][i] for i in (0, 2, 1)))
        before = f"&before={urllib.parse.quote(body['before'])}"
    assert pages == 5
    assert sorted((room, seq) for _, room, seq in seen) == sorted(stored)
    assert seen == sorted(seen, reverse=True)
    # From the newest again: the late one first.
    status, body = await search_all(srv.port, "needle", "&limit=1")
    assert [r["message"]["text"] for r in body["results"]] == ["needle late"]


async def test_an_erased_users_words_are_not_found_in_any_room(srv: Server) -> None:
    for room in ("lobby", "side", "ops"):
        await say(srv, room, "the zanzibar plan", user="alice")
    await say(srv, "side", "zanzibar? sure", user="bob")
    status, body = await search_all(srv.port, "zanzibar")
    assert {(r["message"]["user"]) for r in body["results"]} == {"alice", "bob"}
    status, body = await call(srv.port, "POST", "/users/alice/erase")
    assert (status, body["erased"]) == (200, 3), body
    status, body = await search_all(srv.port, "zanzibar")
    assert status == 200
    assert [(r["message"]["room"], r["message"]["user"]) for r in body["results"]] == [
        ("side", "bob")]
    assert (await search_all(srv.port, "plan"))[1]["results"] == []


async def test_only_an_all_rooms_service_credential_searches_across_rooms(
        srv: Server) -> None:
    await say(srv, "lobby", "visible words")
    status, body = await search_all(srv.port, "visible", token=api_token(rooms=["lobby"]))
    assert (status, body) == (403, {"error": "room_forbidden", "detail": ALL_ROOMS_ONLY})
    status, body = await search_all(srv.port, "visible", token=make_token("bob"))
    assert (status, body["error"]) == (403, "api_scope_required")
    status, body = await search_all(srv.port, "visible", token=None)
    assert (status, body["error"]) == (401, "missing_token")
    for token in (api_token(), API_KEY):
        status, body = await search_all(srv.port, "visible", token=token)
        assert status == 200 and len(body["results"]) == 1, body


async def test_bad_requests(srv: Server) -> None:
    for extra in ("&before=x", "&before=1.0.lobby", "&before=1.1.bad.room", "&before=1.1.",
                  "&before=-1.1.lobby", f"&before=1.{2**63}.lobby", "&before=1.1",
                  "&limit=0", "&limit=x"):
        status, body = await search_all(srv.port, "word", extra)
        assert (status, body["error"]) == (400, "bad_request"), extra
    for query in ("", "   "):
        status, body = await search_all(srv.port, query)
        assert (status, body["error"]) == (400, "bad_request")
    for query in ('"', "*", "NEAR(", "\x00"):
        status, body = await search_all(srv.port, query)
        assert (status, body) == (200, {"results": [], "before": None}), query
    status, body = await search_all(srv.port, "word", "&before=1.1.lobby")  # a well-made one
    assert (status, body) == (200, {"results": [], "before": None})


async def test_the_match_bound_at_its_edge(tmp_path: Path, store_url: str | None) -> None:
    """``search_all_max_matches`` = 3: three matches are ordered, a fourth refuses the
    query on every page (the cursor does not change what is read); other queries go on."""
    config = config_for(tmp_path, store_url, search_all_max_matches=3, search_page_limit=2)
    async with running_server(config) as srv:
        for room in ("a", "b", "c"):
            await say(srv, room, "common word")
        status, body = await search_all(srv.port, "common", "&limit=5")  # capped to 2
        assert status == 200 and len(body["results"]) == 2 and body["before"], body
        cursor = f"&before={body['before']}"
        status, body = await search_all(srv.port, "common", cursor)
        assert status == 200 and len(body["results"]) == 1, body
        await say(srv, "d", "common again")
        for extra in ("", cursor):
            status, body = await search_all(srv.port, "common", extra)
            assert (status, body["error"]) == (400, "query_too_broad"), body
            assert body["detail"] == ("q matches more than 3 messages across rooms: add words, "
                                      "or search one room (/api/v1/rooms/<room>/search)")
        status, body = await search_all(srv.port, "common again")
        assert status == 200 and len(body["results"]) == 1
        # The room's own search is not bound by it.
        status, body = await call(srv.port, "GET", "/rooms/a/search?q=common")
        assert status == 200 and len(body["results"]) == 1


def test_the_match_bound_must_be_positive() -> None:
    assert load_config({"ROOMCHAT_SEARCH_ALL_MAX_MATCHES": "1"}).search_all_max_matches == 1
    with pytest.raises(ValueError) as refused:
        load_config({"ROOMCHAT_SEARCH_ALL_MAX_MATCHES": "0"})
    assert str(refused.value) == "ROOMCHAT_SEARCH_ALL_MAX_MATCHES must be at least 1, got 0"


async def test_on_redis_and_memory_it_answers_501(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        async with running_server(config_for(tmp_path, url)) as srv:
            status, body = await search_all(srv.port, "word")
            assert (status, body) == (501, {"error": "search_unsupported",
                                            "detail": SEARCH_UNSUPPORTED})
    async with running_server(config_for(tmp_path, "memory://")) as srv:
        status, body = await search_all(srv.port, "word")
        assert (status, body) == (501, {"error": "search_unsupported",
                                        "detail": memory.SEARCH_UNSUPPORTED})

"""``GET /rooms/<room>/history`` (the page's older history) against a real server: pages above
the newest seq, and integers out of range."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from tests.apicall import call
from tests.support import SLOW, Server, make_token


def _page(port: int, query: str, room: str = "lobby") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/rooms/{room}/history?{query}")
    request.add_header("Authorization", f"Bearer {make_token('bob')}")
    try:
        with urllib.request.urlopen(request, timeout=10 * SLOW) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def page(port: int, query: str, room: str = "lobby") -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(_page, port, query, room)


async def publish(srv: Server, count: int) -> None:
    for i in range(1, count + 1):
        status, _ = await call(srv.port, "POST", "/rooms/lobby/messages", {"text": f"m{i}"})
        assert status == 200


async def test_before_beyond_the_newest_seq_is_the_newest_page(srv: Server) -> None:
    """Round-3 finding: ``before`` above the newest seq answered an empty page, which the
    protocol says means "you have the beginning". It is capped at the newest seq, as the API's
    history is."""
    await publish(srv, 7)
    for before in (8, 9, 1000, 2**63 - 1):
        status, body = await page(srv.port, f"before={before}&limit=3")
        assert status == 200, body
        assert ([m["seq"] for m in body["messages"]], body["oldest"]) == ([5, 6, 7], 1), before
    _, body = await page(srv.port, "before=3&limit=3")
    assert ([m["seq"] for m in body["messages"]], body["oldest"]) == ([1, 2], 1)
    # A room with nothing stored: empty, which is its beginning.
    assert await page(srv.port, "before=1000", room="empty") == (
        200, {"messages": [], "oldest": 1000})


async def test_out_of_range_integers_are_400s(srv: Server) -> None:
    """Round-3 finding: ``before=99999999999999999999`` raised OverflowError in SQLite (a 500
    with a traceback)."""
    await publish(srv, 2)
    for query in ("before=99999999999999999999", f"before={2**63}", "before=0", "before=-1",
                  "before=" + "9" * 5000, "before=%C2%B2", "before=5&limit=0",
                  f"before=5&limit={2**63}", "limit=5", "before="):
        status, body = await page(srv.port, query)
        assert (status, body["error"]) == (400, "bad_request"), query
    # The largest limit is taken and capped to history_fetch_limit.
    status, body = await page(srv.port, f"before=5&limit={2**63 - 1}")
    assert (status, [m["seq"] for m in body["messages"]]) == (200, [1, 2])

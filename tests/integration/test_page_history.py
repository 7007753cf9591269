"""``GET /rooms/<room>/history`` (the page's older history) against a real server: integers out
of range."""

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

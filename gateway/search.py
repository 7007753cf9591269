"""Searching a room's messages: ``GET /rooms/<room>/search`` for its members (a page) and
``GET /api/v1/rooms/<room>/search`` for service credentials (an app's backend).

Both answer ``{"results": [{"message": {...}, "fragments": [{"text", "hit"}, ...]}, ...],
"before": <seq> | null}``, newest first (``Engine.search``): each message in its current state
as history has it, and the pieces of its text that matched, as data (a page builds its own
nodes; nothing here is HTML). ``before`` continues the search with older results; null: none.

A query is words and "quoted phrases", all required, ``word*`` a prefix (``rooms.search``):
nothing a person types is the index's syntax, so no query is an error. Bounded: at most
``search_query_max_chars`` characters (longer: 400 ``query_too_long``), pages of at most
``search_page_limit`` results (a larger ``limit`` is capped to it, as history pages are).
An engine without a search index answers 501 ``search_unsupported`` with a sentence
(``gateway.errors.rejection_for``): on Redis it names the engines that search, on SQLite with
``ROOMCHAT_SEARCH_INDEX`` off the setting that turns it on. At most ``search_concurrency``
searches run or wait at once per process (``Gateway.searches``); one more: 503 ``search_busy``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response, current_app, request

from gateway.access import Purpose, QuartKnock
from gateway.errors import Rejection
from gateway.inputs import int_param
from rooms.protocol import dumps
from rooms.search import SearchPage
from rooms.text import has_lone_surrogate

if TYPE_CHECKING:
    from gateway.gateway import Gateway

DEFAULT_LIMIT = 20
"""Results per page when the request gives no ``limit``."""

blueprint = Blueprint("search", __name__)


@blueprint.get("/rooms/<room>/search")
async def room_search(room: str) -> Response:
    """A member's search of ``room``: admitted like a history page (``Purpose.SEARCH``:
    ``Authorization: Bearer <jwt>`` for this room, not revoked, not banned from it, charged
    to the client IP's handshake bucket)."""
    return await _search(room, Purpose.SEARCH)


@blueprint.get("/api/v1/rooms/<room>/search")
async def api_search(room: str) -> Response:
    """A service credential's search of ``room`` (``Purpose.API``: its rate, its rooms)."""
    return await _search(room, Purpose.API)


async def _search(room: str, purpose: Purpose) -> Response:
    """Parse ``q``, ``before`` and ``limit`` (400 for a bad one, before the door: they cost
    nothing to check), admit the request for ``purpose``, then search. The door's refusals
    and the engine's errors are answered by the app's handlers."""
    gw: Gateway = current_app.extensions["roomchat"]
    query = request.args.get("q", "")
    if not query.strip():
        raise Rejection(400, "bad_request", "give q=<words to search for>")
    most = gw.config.search_query_max_chars
    if len(query) > most:
        raise Rejection(400, "query_too_long", f"q must be at most {most} characters")
    if has_lone_surrogate(query):
        raise Rejection(400, "bad_request", "q holds a lone surrogate")
    before = int_param(request.args.get("before"), "before", minimum=1)
    cap = gw.config.search_page_limit
    limit = min(int_param(request.args.get("limit"), "limit", minimum=1) or DEFAULT_LIMIT, cap)
    await gw.door.admit(QuartKnock(request), purpose, room)
    with gw.searches.take():
        page = await gw.store.search(room, query, before=before, limit=limit)
    return Response(page_body(page), content_type="application/json",
                    headers={"Cache-Control": "no-store"})


def page_body(page: SearchPage) -> str:
    """The JSON body of a page of results."""
    return dumps({"results": [found.to_obj() for found in page.results],
                  "before": page.before})

"""Searching messages: ``GET /rooms/<room>/search`` for a room's members (a page),
``GET /api/v1/rooms/<room>/search`` for service credentials (an app's backend), and
``GET /api/v1/search`` across every room, for all-rooms service credentials only.

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

Across rooms (``Engine.search_all``) the results are the same objects, each message naming its
room, newest first by ``(ts, room, seq)`` (``rooms.search.Place``); ``before`` is then that
place as a string (``<ts>.<seq>.<room>``), so paging is stable across rooms: every hit once,
whatever is appended meanwhile. Time is not the index's order, so every match is read to order
them: a query matching more than ``search_all_max_matches`` messages is refused (400
``query_too_broad``), on every page alike. A credential limited to some rooms is refused (403
``room_forbidden``): it would learn of rooms it may not read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response, current_app, request

from gateway.access import Purpose, QuartKnock
from gateway.auth import AuthError, valid_room_name
from gateway.errors import Rejection
from gateway.inputs import MAX_INT, int_param
from rooms.protocol import dumps
from rooms.search import Place, RoomsPage, SearchPage
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


@blueprint.get("/api/v1/search")
async def api_search_all() -> Response:
    """An all-rooms service credential's search of every room (``Purpose.API_SEARCH_ALL``:
    the API's rate; a credential limited to some rooms: 403 ``room_forbidden``)."""
    gw: Gateway = current_app.extensions["roomchat"]
    query = _query(gw)
    before = place_param(request.args.get("before"))
    limit = _limit(gw)
    try:
        await gw.door.admit(QuartKnock(request), Purpose.API_SEARCH_ALL)
    except AuthError as exc:
        if exc.reason != "room_forbidden":
            raise
        raise AuthError("room_forbidden", ALL_ROOMS_ONLY) from None
    with gw.searches.take():
        page = await gw.store.search_all(query, before=before, limit=limit,
                                         most=gw.config.search_all_max_matches)
    return Response(rooms_page_body(page), content_type="application/json",
                    headers={"Cache-Control": "no-store"})


ALL_ROOMS_ONLY = ("searching across rooms needs an all-rooms credential (the API key, or a "
                  "token whose rooms claim is [\"*\"]): search one room with "
                  "GET /api/v1/rooms/<room>/search")
"""The 403's detail for a credential limited to some rooms."""


async def _search(room: str, purpose: Purpose) -> Response:
    """Parse ``q``, ``before`` and ``limit`` (400 for a bad one, before the door: they cost
    nothing to check), admit the request for ``purpose``, then search. The door's refusals
    and the engine's errors are answered by the app's handlers."""
    gw: Gateway = current_app.extensions["roomchat"]
    query = _query(gw)
    before = int_param(request.args.get("before"), "before", minimum=1)
    limit = _limit(gw)
    await gw.door.admit(QuartKnock(request), purpose, room)
    with gw.searches.take():
        page = await gw.store.search(room, query, before=before, limit=limit)
    return Response(page_body(page), content_type="application/json",
                    headers={"Cache-Control": "no-store"})


def _query(gw: Gateway) -> str:
    """The request's ``q``, checked (400: missing, blank, too long, a lone surrogate)."""
    query = request.args.get("q", "")
    if not query.strip():
        raise Rejection(400, "bad_request", "give q=<words to search for>")
    most = gw.config.search_query_max_chars
    if len(query) > most:
        raise Rejection(400, "query_too_long", f"q must be at most {most} characters")
    if has_lone_surrogate(query):
        raise Rejection(400, "bad_request", "q holds a lone surrogate")
    return query


def _limit(gw: Gateway) -> int:
    """The request's ``limit`` (default ``DEFAULT_LIMIT``), capped to ``search_page_limit``."""
    cap = gw.config.search_page_limit
    return min(int_param(request.args.get("limit"), "limit", minimum=1) or DEFAULT_LIMIT, cap)


def place_param(raw: str | None) -> Place | None:
    """A search across rooms' ``before``: a ``Place.token`` (``<ts>.<seq>.<room>``), or None
    when absent or empty. Anything else: 400 ``bad_request`` (a client makes none up; it
    gives back the ``before`` of an answer)."""
    if raw is None or raw == "":
        return None
    ts, _, rest = raw.partition(".")
    seq, _, room = rest.partition(".")
    numbers = (ts, seq)
    if not (all(n.isascii() and n.isdigit() and len(n) <= 19 for n in numbers)
            and int(ts) <= MAX_INT and 1 <= int(seq) <= MAX_INT and valid_room_name(room)):
        raise Rejection(400, "bad_request",
                        "before must be the before of a previous answer (<ts>.<seq>.<room>)")
    return Place(int(ts), room, int(seq))


def page_body(page: SearchPage) -> str:
    """The JSON body of a page of results."""
    return dumps({"results": [found.to_obj() for found in page.results],
                  "before": page.before})


def rooms_page_body(page: RoomsPage) -> str:
    """The JSON body of a page of results across rooms (``before``: a ``Place.token``)."""
    return dumps({"results": [found.to_obj() for found in page.results],
                  "before": None if page.before is None else page.before.token()})

"""``GET /rooms/<room>/history?before=<seq>&limit=<n>``: older messages for a page scrolling up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response, current_app, request

from gateway.access import Purpose, QuartKnock
from gateway.errors import Rejection
from gateway.inputs import int_param

if TYPE_CHECKING:
    from gateway.gateway import Gateway

DEFAULT_LIMIT = 50

blueprint = Blueprint("history", __name__)


@blueprint.get("/rooms/<room>/history")
async def history(room: str) -> Response:
    """Stored messages with ``seq < before``, the newest ``limit`` of them, oldest first, each in
    its current state (``Engine.history``: change entries are not history items), and the
    lowest message seq still stored (``oldest``: when the page holds it, it has the room's
    beginning).

    Admitted by the front door (``Purpose.HISTORY``): ``Authorization: Bearer <jwt>`` for this
    room, not revoked, not banned from it; charged to the client IP's handshake bucket (each
    page costs a read). Its refusals and a storage error are answered by the app's handlers.
    """
    gw: Gateway = current_app.extensions["roomchat"]
    before = int_param(request.args.get("before"), "before", minimum=1)
    if before is None:
        raise Rejection(400, "bad_request", "give before=<seq>: the lowest seq you hold")
    cap = gw.config.history_fetch_limit
    limit = min(int_param(request.args.get("limit"), "limit", minimum=1) or DEFAULT_LIMIT, cap)
    await gw.door.admit(QuartKnock(request), Purpose.HISTORY, room)
    # Messages only, each in its current state (edits, reactions, tombstones folded in): a
    # page needs no replay of changes.
    messages = await gw.store.history(room, before=before, limit=limit, newest=True)
    if len(messages) < limit:  # everything below ``before`` is in the page
        oldest = messages[0].seq if messages else before
    else:  # the lowest seq still stored (history retention trims the start)
        first = await gw.store.history(room, before=before, limit=1)
        oldest = first[0].seq if first else before
    body = '{"messages":[' + ",".join(m.to_wire() for m in messages) + f'],"oldest":{oldest}}}'
    return Response(body, content_type="application/json", headers={"Cache-Control": "no-store"})

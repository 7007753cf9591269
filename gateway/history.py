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
    """Stored messages with ``seq < before``, the newest ``limit`` of them, oldest first, and the
    lowest seq still stored (``oldest``: when the page holds it, it has the room's beginning).

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
    # Capped at the newest seq: a page above it would come back empty, which says "you have
    # the beginning" (the API caps the same way).
    upto = min(before - 1, await gw.store.top(room))
    after = max(0, upto - limit)
    messages = await gw.store.read(room, after, upto, limit) if upto > 0 else []
    if after == 0:
        oldest = messages[0].seq if messages else before
    else:  # the lowest seq still stored (history retention trims the start)
        first = await gw.store.read(room, 0, upto, 1)
        oldest = first[0].seq if first else before
    body = '{"messages":[' + ",".join(m.to_wire() for m in messages) + f'],"oldest":{oldest}}}'
    return Response(body, content_type="application/json", headers={"Cache-Control": "no-store"})

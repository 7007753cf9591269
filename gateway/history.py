"""``GET /rooms/<room>/history?before=<seq>&limit=<n>``: older messages for a page scrolling up."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from quart import Blueprint, Response, current_app, request

from gateway.auth import API_SCOPE, AuthError, valid_room_name
from gateway.errors import Rejection, rejection_for
from gateway.inputs import int_param
from gateway.limits import LimitExceeded
from rooms.errors import Banned, StoreError

if TYPE_CHECKING:
    from gateway.gateway import Gateway

DEFAULT_LIMIT = 50

blueprint = Blueprint("history", __name__)


@blueprint.get("/rooms/<room>/history")
async def history(room: str) -> Response:
    """Stored messages with ``seq < before``, the newest ``limit`` of them, oldest first, and the
    lowest seq still stored (``oldest``: when the page holds it, it has the room's beginning).

    Authenticated like ``POST /rooms/<room>/ticket``: ``Authorization: Bearer <jwt>`` for this
    room, not revoked; charged to the client IP's handshake bucket (each page costs a read).
    """
    gw: Gateway = current_app.extensions["roomchat"]
    if not valid_room_name(room):
        raise Rejection(404, "bad_room", "room names are 1-64 of [A-Za-z0-9_-]")
    before = int_param(request.args.get("before"), "before", minimum=1)
    if before is None:
        raise Rejection(400, "bad_request", "give before=<seq>: the lowest seq you hold")
    cap = gw.config.history_fetch_limit
    limit = min(int_param(request.args.get("limit"), "limit", minimum=1) or DEFAULT_LIMIT, cap)
    ip = gw.addresses.client_ip(request.remote_addr,
                                request.headers.getlist(gw.addresses.header))
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    try:
        gw.limits.handshake(ip, time.monotonic())
        if scheme.lower() != "bearer" or not token:
            raise AuthError("missing_token", "send Authorization: Bearer <token>")
        claims = gw.verifier.verify(token.strip())
        gw.revocations.check(claims)
        if claims.scope == API_SCOPE:  # the API has its own history endpoint
            raise Rejection(403, "api_credential", "use GET /api/v1/rooms/<room>/messages")
        if not claims.may_join(room):
            raise AuthError("room_forbidden", f"the token does not allow room {room}")
        ban = await gw.store.banned(room, claims.user)
        if ban is not None:  # a banned user can't read the room either
            raise rejection_for(Banned(claims.user, ban.until, ban.reason))
        # Capped at the newest seq: a page above it would come back empty, which says "you
        # have the beginning" (the API caps the same way).
        upto = min(before - 1, await gw.store.top(room))
        after = max(0, upto - limit)
        messages = await gw.store.read(room, after, upto, limit) if upto > 0 else []
        if after == 0:
            oldest = messages[0].seq if messages else before
        else:  # the lowest seq still stored (history retention trims the start)
            first = await gw.store.read(room, 0, upto, 1)
            oldest = first[0].seq if first else before
    except (AuthError, StoreError, LimitExceeded) as exc:
        raise rejection_for(exc) from None
    body = '{"messages":[' + ",".join(m.to_wire() for m in messages) + f'],"oldest":{oldest}}}'
    return Response(body, content_type="application/json", headers={"Cache-Control": "no-store"})

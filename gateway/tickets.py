"""Single-use tickets: a short-lived, one-time stand-in for a JWT in a WebSocket URL.

A JWT in ``?token=`` lands in proxy logs and browser history, and a browser cannot read why an
upgrade was refused (it only sees 1006). So a page first calls ``POST /rooms/<room>/ticket`` with
``Authorization: Bearer <jwt>``: a refusal there is an ordinary HTTP answer with a JSON reason
the page can show; success gives a ticket (random, 192 bits) valid for ``ticket_ttl`` seconds,
for one connection to that room. The ticket's claims are kept by the engine under the ticket's
hash (``Engine.stash``/``take``), so it is single-use across restarts of the embedded server and
across processes on Redis, and a copy of the store holds no usable ticket.
"""

from __future__ import annotations

import hashlib
import secrets

import orjson

from gateway.auth import AuthError, Claims
from rooms.engine import Engine


def _key(ticket: str) -> str:
    return "ticket:" + hashlib.sha256(ticket.encode()).hexdigest()


async def issue(engine: Engine, claims: Claims, room: str, ttl: float) -> str:
    """A new ticket for one connection of ``claims``'s user to ``room``. Raises ``StoreError``."""
    ticket = secrets.token_urlsafe(24)
    payload = orjson.dumps({"user": claims.user, "name": claims.name, "room": room,
                            "exp": claims.expires_at, "iat": claims.issued_at,
                            "admin": claims.admin, "moderator": claims.moderates(room)})
    await engine.stash(_key(ticket), payload, ttl)
    return ticket


async def redeem(engine: Engine, ticket: str, room: str, now: float) -> Claims:
    """The claims a ticket was issued for, consuming it. ``now``: Unix seconds.

    Raises ``AuthError``: ``invalid_ticket`` (unknown, used or past ``ticket_ttl``),
    ``room_forbidden`` (for another room) or ``token_expired`` (the token it was issued for has
    expired since: a ticket never outlives its token); or ``StoreError``. A refused ticket is
    spent all the same."""
    if not 16 <= len(ticket) <= 64:
        raise AuthError("invalid_ticket", "the ticket is unknown, used or expired")
    payload = await engine.take(_key(ticket))
    if payload is None:
        raise AuthError("invalid_ticket", "the ticket is unknown, used or expired")
    data = orjson.loads(payload)
    if data["room"] != room:
        raise AuthError("room_forbidden", f"the ticket is for room {data['room']}")
    if now >= float(data["exp"]):
        # The room closes a socket at its token's ``exp`` (4001); without this check it was
        # admitted first, and got its welcome and history before the next tick closed it.
        raise AuthError("token_expired", "the token this ticket was issued for has expired")
    return Claims(user=data["user"], name=data["name"], rooms=frozenset([room]),
                  expires_at=float(data["exp"]), admin=bool(data["admin"]),
                  issued_at=float(data["iat"]), moderator=bool(data.get("moderator", False)))

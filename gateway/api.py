"""``/api/v1``: the server API an application's backend calls (publish, history, presence, live
rooms, disconnect, erasure, moderation), behind a service credential and a rate limit per
credential.

A service credential is ``Authorization: Bearer <credential>`` where the credential is either a
JWT with ``"scope": "api"`` (verified like user tokens: same keys, pinned algorithm; its ``rooms``
claim limits the rooms it acts on) or the static ``ROOMCHAT_API_KEY`` (compared in constant time;
any room). A user token is refused (403 ``api_scope_required``), and an API credential opens no
chat socket. Every request costs one token of its credential's bucket (``api_rate``/
``api_burst``; 429 ``rate_limited`` with ``Retry-After``). All of it is checked by the front
door (``gateway.access``: ``Purpose.API``, and ``Purpose.API_USERS`` for what touches every
room).

Messages published here go through the room's actor like a member's (``RoomActor.publish``):
same seq, dedup by ``(user, id)``, durability, and live delivery in seq order. docs/api.md is
the reference; ``gateway.openapi`` the machine-readable form.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, current_app, request

from gateway.access import Caller, Purpose, QuartKnock
from gateway.auth import MAX_NAME_CHARS
from gateway.errors import Rejection
from gateway.files import erase_files
from gateway.inputs import MAX_INT, int_param, json_object, user_id
from gateway.openapi import document
from rooms.actor import RoomActor
from rooms.engine import Ban
from rooms.errors import RoomStopped
from rooms.protocol import MAX_BAN_UNTIL, dumps, positive_number
from rooms.text import TextProblem, message_text, unsafe_text

if TYPE_CHECKING:
    from gateway.gateway import Gateway

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")


DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_REASON_CHARS = 200


def _json(obj: dict[str, Any], status: int = 200) -> Response:
    return Response(dumps(obj), status=status, content_type="application/json",
                    headers={"Cache-Control": "no-store"})


async def _authorize(room: str | None = None, purpose: Purpose = Purpose.API
                     ) -> tuple[Gateway, Caller]:
    """The gateway and the caller, once the front door let the request in for ``purpose`` on
    ``room`` (credential, its rate, the room). Its refusals, and any engine or room error of
    the endpoint after it (storage down, room busy or stopping...), get the answer a socket
    upgrade would (the app's handlers: ``gateway.errors.rejection_for``)."""
    gw: Gateway = current_app.extensions["roomchat"]
    admission = await gw.door.admit(QuartKnock(request), purpose, room)
    return gw, admission.caller


def _live(gw: Gateway, room: str) -> RoomActor | None:
    """The room's actor in this process, if it runs (never starts one)."""
    for actor in gw.registry.rooms():
        if actor.room == room:
            return actor
    return None


def _text_field(body: dict[str, Any], name: str, default: str | None, max_chars: int,
                *, strip: bool = False) -> str | None:
    value = body.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Rejection(400, "bad_request", f"{name} must be a string")
    if strip:
        value = value.strip()
    if not 1 <= len(value) <= max_chars:
        raise Rejection(400, "bad_request", f"{name} must be 1 to {max_chars} characters")
    problem = unsafe_text(value)
    if problem is not None:
        raise Rejection(400, "bad_request", f"{name} must not contain {problem}")
    return value


async def _body() -> dict[str, Any]:
    """The request's JSON object, whatever its content type (``gateway.inputs.json_object``)."""
    return json_object(await request.get_data())


# -- the document -----------------------------------------------------------------------------

@blueprint.get("/openapi.json")
async def openapi() -> Response:
    """The OpenAPI 3.1 description of this API (public: it holds no secret)."""
    return _json(document())


# -- rooms --------------------------------------------------------------------------------------

@blueprint.post("/rooms/<room>/messages")
async def publish(room: str) -> Response:
    """Publish ``{"text", "id"?, "user"?, "name"?}``; answers ``{"seq", "duplicate"}`` once
    stored."""
    gw, caller = await _authorize(room)
    body = await _body()
    cfg = gw.config.room
    text = message_text(body.get("text"), cfg.max_text_chars)
    if isinstance(text, TextProblem):
        code = "bad_request" if text.code == "invalid_message" else text.code
        raise Rejection(400, code, text.message)
    client_id = _text_field(body, "id", None, cfg.max_id_chars)
    user = user_id(body.get("user", caller.user))
    name = _text_field(body, "name", user, MAX_NAME_CHARS, strip=True)
    assert name is not None
    for attempt in range(2):
        try:
            result = await gw.registry.get(room).publish(user, name, client_id, text)
            break
        except RoomStopped:
            # The room just went idle: the next get() starts a fresh one.
            if attempt or gw.draining:
                raise
    return _json({"seq": result.seq, "duplicate": result.duplicate})


@blueprint.get("/rooms/<room>/messages")
async def messages(room: str) -> Response:
    """Stored messages, oldest first, as on the socket: ``after`` (default 0) < seq <
    ``before``; with ``before`` alone, the newest ``limit`` before it."""
    gw, _ = await _authorize(room)
    after = int_param(request.args.get("after"), "after", minimum=0)
    before = int_param(request.args.get("before"), "before", minimum=1)
    limit = min(int_param(request.args.get("limit"), "limit", minimum=1) or DEFAULT_LIMIT,
                MAX_LIMIT)
    upto = MAX_INT if before is None else before - 1
    if after is None and before is not None:  # backward: the newest `limit` below before
        upto = min(upto, await gw.store.top(room))
        start = max(0, upto - limit)
    else:
        start = after or 0
    found = await gw.store.read(room, start, upto, limit) if upto > start else []
    return Response('{"messages":[' + ",".join(m.to_wire() for m in found) + "]}",
                    content_type="application/json", headers={"Cache-Control": "no-store"})


@blueprint.get("/rooms/<room>/presence")
async def presence(room: str) -> Response:
    """Who is in ``room``: this process's members, then other processes' (shared engine)."""
    gw, _ = await _authorize(room)
    actor = _live(gw, room)
    members = actor.presence() if actor is not None else []
    others = await gw.store.presence(room)
    known = {m["user"] for m in members}
    members += [{"user": u, "name": n} for u, n in others.items() if u not in known]
    return _json({"room": room, "members": members})


@blueprint.get("/rooms")
async def rooms() -> Response:
    """The rooms live in this process, most connections first."""
    gw, caller = await _authorize()
    counts = [actor.counts() for actor in gw.registry.rooms() if caller.may_act_on(actor.room)]
    counts.sort(key=lambda c: (-c.sessions, c.room))
    return _json({"rooms": [{"room": c.room, "members": c.members, "connections": c.sessions,
                             "seq": c.seq} for c in counts]})


# -- users ---------------------------------------------------------------------------------------

@blueprint.post("/users/<user>/disconnect")
async def disconnect(user: str) -> Response:
    """Close every socket of ``user`` on every process (4003) and refuse their tokens issued
    before now: a revocation (``gateway.revocation``)."""
    gw, _ = await _authorize(purpose=Purpose.API_USERS)
    user = user_id(user)
    at = time.time()
    await gw.store.revoke(user, at)
    for revoked in gw.revocations.apply([(user, at)]):
        gw.registry.revoke_nowait(revoked)  # here at once; other processes at their next poll
    return _json({"user": user, "revoked_at": at})


@blueprint.post("/users/<user>/erase")
async def erase(user: str) -> Response:
    """An erasure request: every stored message of ``user``, in every room, becomes a tombstone
    (``Engine.erase``), and members online get ``{"type":"delete"}`` for each (this process's
    rooms at once, other processes' through the engine); then every file they uploaded is
    deleted (``gateway.files.erase_files``). Answers ``{"user", "erased", "rooms": {room:
    [seq, ...]}, "files"}`` with what this call erased (``0``/``{}`` when nothing was left: a
    retry is harmless)."""
    gw, _ = await _authorize(purpose=Purpose.API_USERS)
    user = user_id(user)

    def tell(room: str, seqs: list[int]) -> None:
        # Step by step, as the engine paces them: thousands at once would overflow members'
        # outboxes (4009). Looked up each time: a room may start or stop meanwhile.
        actor = _live(gw, room)
        if actor is not None:
            for seq in seqs:
                actor.deleted_nowait(seq)

    erased = await gw.store.erase(user, tell)
    files = await erase_files(current_app, user)
    return _json({"user": user, "erased": sum(map(len, erased.values())), "rooms": erased,
                  "files": len(files)})


# -- moderation ----------------------------------------------------------------------------------

@blueprint.delete("/rooms/<room>/messages/<seq>")
async def delete_message(room: str, seq: str) -> Response:
    """Replace message ``seq`` by its tombstone; every member gets ``{"type":"delete"}``."""
    gw, _ = await _authorize(room)
    # Parsed here, not by an ``int:`` converter: that one passes any length of digits to the
    # store (an OverflowError in SQLite, a 500) and answers a malformed seq with a bare 404.
    number = int_param(seq, "seq", minimum=1)
    assert number is not None  # a path segment is never empty
    found = await gw.store.delete(room, number)
    if not found:
        raise Rejection(404, "not_found", f"no message {number} is stored in room {room}")
    actor = _live(gw, room)
    if actor is not None:
        actor.deleted_nowait(number)  # other processes hear it from the engine
    return _json({"room": room, "seq": number, "deleted": True})


@blueprint.post("/rooms/<room>/bans")
async def ban(room: str) -> Response:
    """Ban ``{"user", "until"?, "reason"?}`` from ``room``: their sockets there close with 4004
    and their joins are refused (403 ``banned``) until ``until`` (Unix seconds) or unbanned."""
    gw, _ = await _authorize(room)
    body = await _body()
    if body.get("user") is None:
        raise Rejection(400, "bad_request", "user is required")
    user = user_id(body["user"])
    reason = _text_field(body, "reason", None, MAX_REASON_CHARS) or ""
    raw_until, until = body.get("until"), None
    if raw_until is not None:
        until = positive_number(raw_until, MAX_BAN_UNTIL)
        if until is None:
            raise Rejection(400, "bad_request", f"until must be a Unix time in seconds, at most "
                            f"{MAX_BAN_UNTIL:.0f}; leave it out for a ban until lifted")
        if until <= time.time():
            raise Rejection(400, "bad_request", "until is in the past")
    await gw.store.ban(room, Ban(user, until, reason))
    actor = _live(gw, room)
    if actor is not None:
        actor.ban_nowait(user, reason)
    return _json({"room": room, "user": user, "until": until, "reason": reason})


@blueprint.get("/rooms/<room>/bans/<user>")
async def get_ban(room: str, user: str) -> Response:
    """``user``'s ban from ``room`` if one is in force (else 404 ``not_banned``)."""
    gw, _ = await _authorize(room)
    user = user_id(user)
    found = await gw.store.banned(room, user)
    if found is None:
        raise Rejection(404, "not_banned", f"{user} is not banned from {room}")
    return _json({"room": room, "user": user, "until": found.until, "reason": found.reason})


@blueprint.delete("/rooms/<room>/bans/<user>")
async def unban(room: str, user: str) -> Response:
    """Lift ``user``'s ban from ``room`` (404 ``not_banned`` when none is in force)."""
    gw, _ = await _authorize(room)
    user = user_id(user)
    lifted = await gw.store.unban(room, user)
    if not lifted:
        raise Rejection(404, "not_banned", f"{user} is not banned from {room}")
    return _json({"room": room, "user": user, "banned": False})

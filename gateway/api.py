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

Messages published here, and changes to them (edits, deletes, reactions), go through the room's
actor like a member's frames (``RoomActor.submit``): same seq, the log's rules for changes
(checked against the message's state when it is stored), dedup by ``(user, id)``, durability,
and live delivery in seq order. A request is held to the rules of the socket frame it stands for
(it is parsed as that frame, ``rooms.protocol``), and a refusal gets the frame's code as an HTTP
status (``gateway.errors.FRAME_ERRORS``). docs/api.md is the reference; ``gateway.openapi`` the
machine-readable form.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, current_app, request

from gateway.access import Caller, Purpose, QuartKnock
from gateway.attachments import Refused
from gateway.auth import MAX_NAME_CHARS
from gateway.errors import Rejection, frame_rejection
from gateway.files import erase_files
from gateway.inputs import MAX_INT, int_param, json_object, user_id
from gateway.openapi import document
from rooms import protocol
from rooms.actor import RoomActor
from rooms.engine import Ban
from rooms.errors import RoomStopped
from rooms.messages import Action, AnyDraft, Appended, ChangeDraft, Draft, Refusal
from rooms.protocol import MAX_BAN_UNTIL, MAX_SEQ, dumps, positive_number
from rooms.text import unsafe_text

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


def _frame(gw: Gateway, obj: dict[str, Any]) -> protocol.ClientFrame:
    """``obj`` parsed as the socket frame it stands for, so a request is held to exactly the
    frame's rules (text, seq, emoji, mentions); a frame's refusal is raised as the API's
    (``gateway.errors.frame_rejection``). ``obj`` came from a parsed JSON body: it encodes."""
    cfg = gw.config.room
    frame = protocol.parse_client_frame(dumps(obj), max_text_chars=cfg.max_text_chars,
                                        max_id_chars=cfg.max_id_chars,
                                        max_mentions=cfg.max_mentions,
                                        max_files=cfg.max_files_per_message)
    if isinstance(frame, protocol.FrameError):
        raise frame_rejection(frame.code, frame.message)
    return frame


def _author(caller: Caller, user: object, name: object) -> tuple[str, str]:
    """Whom a request acts for: ``user`` (default: the credential's ``sub``) and their display
    ``name`` (default: ``user``)."""
    author = user_id(caller.user if user is None else user)
    shown = _text_field({} if name is None else {"name": name}, "name", author, MAX_NAME_CHARS,
                        strip=True)
    assert shown is not None
    return author, shown


def _message_seq(raw: str, room: str) -> int:
    """A path's message seq: 400 when it is no integer; beyond any seq a frame may name (and
    so any message: a room never gets near 2^53), 404 at once."""
    number = int_param(raw, "seq", minimum=1)
    assert number is not None  # a path segment is never empty
    if number > MAX_SEQ:
        raise Rejection(404, "not_found", f"no message {number} is stored in room {room}")
    return number


async def _submit(gw: Gateway, room: str, draft: AnyDraft) -> Appended:
    """Hand ``draft`` to the room's actor (``RoomActor.submit``), starting the room if needed,
    and return what the log did with it (refusals included: ``_refused``)."""
    for attempt in range(2):
        try:
            return await gw.registry.get(room).submit(draft)
        except RoomStopped:
            # The room just went idle: the next get() starts a fresh one.
            if attempt or gw.draining:
                raise
    raise AssertionError("unreachable")


def _refused(gw: Gateway, refusal: Refusal, room: str, seq: int, user: str) -> Rejection:
    """The API's answer when the log refused a change to (or a reply to) message ``seq``."""
    rules = gw.config.room
    detail = {
        Refusal.NOT_FOUND: f"no message {seq} is stored in room {room}",
        Refusal.ALREADY_DELETED: f"message {seq} of room {room} is deleted",
        Refusal.FORBIDDEN: f"message {seq} of room {room} is not {user}'s: only its author may "
                           "change it (and a moderator delete it)",
        Refusal.EDIT_WINDOW_PASSED: f"message {seq} of room {room} was sent more than "
                                    f"{rules.edit_window:g} s ago: it can no longer be edited",
        Refusal.TOO_MANY_REACTIONS: f"message {seq} of room {room} has "
                                    f"{rules.max_reactions} different reactions already",
    }[refusal]
    return frame_rejection(refusal.value, detail)


# -- the document -----------------------------------------------------------------------------

@blueprint.get("/openapi.json")
async def openapi() -> Response:
    """The OpenAPI 3.1 description of this API (public: it holds no secret)."""
    return _json(document())


# -- rooms --------------------------------------------------------------------------------------

@blueprint.post("/rooms/<room>/messages")
async def publish(room: str) -> Response:
    """Publish ``{"text", "id"?, "user"?, "name"?, "reply_to"?, "mentions"?, "files"?}``;
    answers ``{"seq", "duplicate"}`` once stored. ``reply_to`` must be a stored message of the
    room that is not deleted (404 ``not_found``, 409 ``already_deleted``). ``files``: ids of
    uploads of ``user`` to this room (``POST /api/v1/rooms/<room>/files?user=``), not yet
    attached (404 ``file_not_found``, 409 ``file_not_attachable``, 400 ``too_many_files``);
    ``text`` may then be empty."""
    gw, caller = await _authorize(room)
    body = await _body()
    client_id = _text_field(body, "id", None, gw.config.room.max_id_chars)
    user, name = _author(caller, body.get("user"), body.get("name"))
    frame = _frame(gw, {"type": "message", "text": body.get("text"), "id": client_id,
                        "reply_to": body.get("reply_to"), "mentions": body.get("mentions"),
                        "files": body.get("files")})
    assert isinstance(frame, protocol.SendMessage)
    if frame.file_ids:
        if gw.attachments is None:
            raise Rejection(503, "unavailable", "files are not available on this server")
        try:
            frame = await gw.attachments.resolve(room, user, frame)
        except Refused as refused:
            raise frame_rejection(refused.code.value, refused.message) from None
    result = await _submit(gw, room, Draft(user, name, client_id, frame.text, 0,
                                           frame.reply_to, frame.mentions, frame.files))
    if result.refused is not None:
        assert frame.reply_to is not None  # only a reply can be refused
        raise _refused(gw, result.refused, room, frame.reply_to, user)
    return _json({"seq": result.seq, "duplicate": result.duplicate})


@blueprint.patch("/rooms/<room>/messages/<seq>")
async def edit(room: str, seq: str) -> Response:
    """Edit message ``seq`` with ``{"text", "user"?, "name"?, "id"?}``, acting for ``user``
    (default: the credential's ``sub``), who must be its author, within ``edit_window``.
    Answers ``{"room", "seq", "change", "duplicate"}`` once the edit entry is stored
    (``change``: its seq; a retry with the same ``(user, id)`` gets the original's)."""
    gw, caller = await _authorize(room)
    number = _message_seq(seq, room)
    body = await _body()
    client_id = _text_field(body, "id", None, gw.config.room.max_id_chars)
    user, name = _author(caller, body.get("user"), body.get("name"))
    frame = _frame(gw, {"type": "edit", "seq": number, "text": body.get("text"),
                        "id": client_id})
    assert isinstance(frame, protocol.EditMessage)
    result = await _submit(gw, room, ChangeDraft(user, name, client_id, 0, Action.EDIT, number,
                                                 text=frame.text))
    if result.refused is not None:
        raise _refused(gw, result.refused, room, number, user)
    return _json({"room": room, "seq": number, "change": result.seq,
                  "duplicate": result.duplicate})


async def _react(room: str, seq: str, glyph: str, on: bool) -> Response:
    """Put (``on``) or take back one reaction of ``?user=`` (default: the credential's ``sub``;
    ``?name=`` its display name) on message ``seq``. Answers ``{"room", "seq", "emoji", "on",
    "change", "noop"}``: ``change`` is the seq of the reaction's entry, or with ``noop`` (the
    user's reaction already was so: nothing stored) the message's last change's."""
    gw, caller = await _authorize(room)
    number = _message_seq(seq, room)
    user, name = _author(caller, request.args.get("user"), request.args.get("name"))
    frame = _frame(gw, {"type": "react", "seq": number, "emoji": glyph, "on": on})
    assert isinstance(frame, protocol.React)
    result = await _submit(gw, room, ChangeDraft(user, name, None, 0, Action.REACT, number,
                                                 emoji=frame.emoji, on=on))
    if result.refused is not None:
        raise _refused(gw, result.refused, room, number, user)
    return _json({"room": room, "seq": number, "emoji": frame.emoji, "on": on,
                  "change": result.seq, "noop": result.noop})


@blueprint.put("/rooms/<room>/messages/<seq>/reactions/<emoji>")
async def react(room: str, seq: str, emoji: str) -> Response:
    """Put reaction ``emoji`` (one RGI emoji, percent-encoded in the path) on message ``seq``
    for ``?user=``; putting it again changes nothing (``"noop": true``)."""
    return await _react(room, seq, emoji, True)


@blueprint.delete("/rooms/<room>/messages/<seq>/reactions/<emoji>")
async def unreact(room: str, seq: str, emoji: str) -> Response:
    """Take back ``?user=``'s reaction ``emoji`` from message ``seq``; taking back one that is
    not there changes nothing (``"noop": true``)."""
    return await _react(room, seq, emoji, False)


@blueprint.get("/rooms/<room>/messages")
async def messages(room: str) -> Response:
    """Stored messages, oldest first, each in its current state as on the socket (edits,
    reactions, tombstones folded in; change entries are no history items): ``after`` (default
    0) < seq < ``before``; with ``before`` alone, the newest ``limit`` before it."""
    gw, _ = await _authorize(room)
    after = int_param(request.args.get("after"), "after", minimum=0)
    before = int_param(request.args.get("before"), "before", minimum=1)
    limit = min(int_param(request.args.get("limit"), "limit", minimum=1) or DEFAULT_LIMIT,
                MAX_LIMIT)
    # Messages only, each in its current state (change entries are not history items).
    found = await gw.store.history(room, after=after or 0,
                                   before=MAX_INT if before is None else before, limit=limit,
                                   newest=after is None and before is not None)
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


@blueprint.get("/users/<user>/unread")
async def unread(user: str) -> Response:
    """``user``'s read marker in each room they have one in (that the credential may act on),
    with the messages after it that are not theirs and not deleted (``unread``) and those of
    them that mention them (``mentions``), counted over the room's last ``unread_scan``
    messages (``"unread_capped": true`` when the count stopped there): ``{"user", "rooms":
    [{"room", "read", "unread", "mentions"}, ...]}``, by room name. One read of at most
    ``unread_scan`` messages per room."""
    gw, caller = await _authorize()
    user = user_id(user)
    markers = await gw.store.markers(user)
    rooms = []
    for room in sorted(r for r in markers if caller.may_act_on(r)):
        place = await gw.store.unread(room, user, scan=gw.config.room.unread_scan)
        entry: dict[str, Any] = {"room": room, "read": place.read, "unread": place.unread,
                                 "mentions": place.mentions}
        if place.capped:
            entry["unread_capped"] = True
        rooms.append(entry)
    return _json({"user": user, "rooms": rooms})


@blueprint.post("/users/<user>/erase")
async def erase(user: str) -> Response:
    """An erasure request: every stored message of ``user``, in every room, becomes a tombstone
    through a delete entry of its room's log (``Engine.erase``), which members online get
    (``{"type":"change","action":"delete"}``) and a resume replays; then every file they
    uploaded is deleted (``gateway.files.erase_files``). Answers ``{"user", "erased", "rooms":
    {room: [seq, ...]}, "files"}`` with what this call erased (``0``/``{}`` when nothing was
    left: a retry is harmless)."""
    gw, _ = await _authorize(purpose=Purpose.API_USERS)
    user = user_id(user)
    # Each erased message gets a delete entry in its room's log: the engine feeds them to the
    # live rooms (this process's and others'), like any entry appended elsewhere.
    erased = await gw.store.erase(user)
    files = await erase_files(current_app, user)
    return _json({"user": user, "erased": sum(map(len, erased.values())), "rooms": erased,
                  "files": len(files)})


@blueprint.put("/rooms/<room>/read/<user>")
async def mark_read(room: str, user: str) -> Response:
    """Move ``user``'s read marker in ``room`` forward to ``{"seq"}`` (never back; beyond the
    room's newest entry it stops there), as their ``read`` frame would: their sockets in the
    room get ``{"type":"read","seq"}`` with the marker now. Answers ``{"room", "user",
    "read"}`` with the marker now."""
    gw, _ = await _authorize(room)
    user = user_id(user)
    body = await _body()
    frame = _frame(gw, {"type": "read", "seq": body.get("seq")})
    assert isinstance(frame, protocol.MarkRead)
    # A marker past the newest entry would count the next messages as read before they exist.
    seq = min(frame.seq, await gw.store.top(room))
    marker = await gw.store.mark_read(room, user, seq)
    actor = _live(gw, room)
    if actor is not None:
        # The engine tells other processes' rooms when it moved; this process's is told here
        # (a marker the sockets have already is harmless: it never moves back).
        actor.remote_read(user, marker)
    return _json({"room": room, "user": user, "read": marker})


# -- moderation ----------------------------------------------------------------------------------

@blueprint.delete("/rooms/<room>/messages/<seq>")
async def delete_message(room: str, seq: str) -> Response:
    """Replace message ``seq`` by its tombstone through a delete entry of the room's log (its
    text, its edits' texts and its excerpts in replies leave storage), which every member gets
    as a ``change`` and a resume replays. Without ``?user=`` the credential moderates the room
    (any message, ``"by": "moderator"``); with it, it acts for that user, who must be the
    author (``"by": "author"``, 403 ``forbidden`` otherwise). Answers ``{"room", "seq",
    "deleted": true, "change"}``: the delete entry's seq, or ``null`` when the message was
    deleted already (idempotent, as a DELETE is)."""
    gw, caller = await _authorize(room)
    # Parsed here, not by an ``int:`` converter: that one passes any length of digits to the
    # store (an OverflowError in SQLite, a 500) and answers a malformed seq with a bare 404.
    number = _message_seq(seq, room)
    acting = request.args.get("user")
    if acting is None:
        user, name, moderator = caller.user, caller.claims.name, True
    else:
        user, name = _author(caller, acting, request.args.get("name"))
        moderator = False
    result = await _submit(gw, room, ChangeDraft(user, name, None, 0, Action.DELETE, number,
                                                 moderator=moderator))
    if result.refused is Refusal.ALREADY_DELETED:
        return _json({"room": room, "seq": number, "deleted": True, "change": None})
    if result.refused is not None:
        raise _refused(gw, result.refused, room, number, user)
    return _json({"room": room, "seq": number, "deleted": True, "change": result.seq})


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

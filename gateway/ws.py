"""The WebSocket upgrade: every check before ``accept()``, then the hand-off to the room.

After the upgrade, a connection is two coroutines owned by its handler: the reader (parse each
frame, hand it to the room without waiting) and the session's writer (send what the room queued).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from quart import Response, websocket

from gateway.auth import AuthError, valid_room_name
from gateway.errors import Rejection, rejection_for
from rooms import protocol
from rooms.actor import RoomActor
from rooms.errors import RoomError, RoomStopped
from rooms.protocol import CloseCode, ErrorCode
from rooms.session import Session

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("roomchat.ws")
_session_ids = itertools.count(1)


class QuartTransport:
    """``rooms.session.Transport`` over Quart's websocket object (usable from any task)."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    async def send(self, data: str) -> None:
        await self._ws.send(data)

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code, reason)


def check_origin(gw: Gateway) -> None:
    origin = websocket.headers.get("Origin")
    if origin is None:
        return  # not a browser: Origin is a browser protection, tokens protect the rest
    origin = origin.rstrip("/")
    if origin in gw.config.allowed_origins:
        return
    # Same origin: compare host[:port] only. Behind a TLS proxy the scheme we see (ws) differs
    # from the page's (https) while the host is the one the browser connected to.
    host = websocket.headers.get("Host") or websocket.host
    if urlsplit(origin).netloc.lower() == host.lower():
        return
    raise Rejection(403, "origin_forbidden", f"origin {origin} is not allowed")


def _after() -> int | None:
    raw = websocket.args.get("after")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise Rejection(400, "bad_request", "after must be a non-negative integer")
    return int(raw)


async def room_socket(gw: Gateway, room: str) -> Response | None:
    """The ``/rooms/<room>/ws`` handler. Returns a Response to refuse the upgrade."""
    try:
        if not valid_room_name(room):
            raise Rejection(404, "bad_room", "room names are 1-64 of [A-Za-z0-9_-]")
        check_origin(gw)
        try:
            claims = gw.verifier.verify(websocket.args.get("token"))
            if not claims.may_join(room):
                raise AuthError("room_forbidden", f"the token does not allow room {room}")
        except AuthError as exc:
            raise rejection_for(exc) from None
        after = _after()
        if gw.draining:
            raise Rejection(503, "draining", "the server is restarting; try again shortly")
        if gw.connections >= gw.config.max_connections:
            raise Rejection(503, "server_full", "too many connections; try again later")
    except Rejection as refused:
        gw.observer.handshake_rejected(refused.error)
        return refused.response()

    cfg = gw.config.room
    session = Session(
        next(_session_ids), claims.user, claims.name,
        QuartTransport(websocket._get_current_object()),  # type: ignore[attr-defined]
        outbox_limit=cfg.outbox_limit, max_frame_messages=cfg.max_frame_messages,
        send_timeout=cfg.send_timeout, close_timeout=cfg.close_timeout,
    )
    gw.connection_opened()
    actor: RoomActor | None = None
    try:
        try:
            for attempt in range(2):
                actor = gw.registry.get(room)
                try:
                    plan = await actor.join(session, after=after, expires_at=claims.expires_at)
                    break
                except RoomStopped:
                    # The room just went idle or crashed: the next get() starts a fresh one.
                    if attempt or gw.draining:
                        raise
        except RoomError as exc:
            rejection = rejection_for(exc)
            gw.observer.handshake_rejected(rejection.error)
            return rejection.response()
        assert actor is not None
        await websocket.accept()
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(_read_loop(gw, actor, session))
            await session.run_writer(plan, room, gw.store, cfg.history_page)
            reader.cancel()
        return None
    finally:
        if actor is not None:
            actor.leave_nowait(session.id)
        gw.connection_closed()


async def _read_loop(gw: Gateway, actor: RoomActor, session: Session) -> None:
    cfg = gw.config.room
    while True:
        data = await websocket.receive()
        if not isinstance(data, str):  # bytes, or None for an empty binary frame
            session.close_nowait(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
            return
        frame = protocol.parse_client_frame(data, max_text_chars=cfg.max_text_chars,
                                            max_id_chars=cfg.max_id_chars)
        if not actor.frame_nowait(session.id, frame):
            client_id = frame.id if isinstance(frame, protocol.SendMessage) else None
            session.offer(protocol.error(ErrorCode.BUSY, "the room is busy; resend later",
                                         client_id=client_id, retry_after=1.0))

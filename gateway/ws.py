"""The room WebSocket, served as plain ASGI in front of the Quart app.

``RoomSockets`` takes ``/rooms/<room>/ws`` upgrades itself and passes everything else to Quart.
Going straight to Hypercorn's ASGI interface (instead of Quart's ``websocket`` wrapper) matters
on the hot path and at the edge:

- inbound frames come from Hypercorn's bounded app queue (``max_app_queue_size``): a client that
  floods us is slowed by TCP backpressure instead of filling Quart's unbounded queue;
- a send is one ASGI call, without Quart's per-send ``sleep(0)`` and signal dispatch, and a
  handshake skips Quart's request context; an idle connection costs less memory.

Every check runs before the upgrade is accepted; a refusal is a real HTTP response (ASGI's
``websocket.http.response`` extension, which Hypercorn always offers). After the upgrade a
connection is two coroutines owned by this handler: the reader (parse each frame, hand it to the
room without waiting) and the session's writer (send what the room queued).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from gateway.auth import AuthError, valid_room_name
from gateway.errors import Rejection, rejection_for
from gateway.fastsend import FrameWriter
from rooms import protocol
from rooms.actor import RoomActor
from rooms.errors import RoomError, RoomStopped
from rooms.protocol import CloseCode, ErrorCode
from rooms.session import Session

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("roomchat.ws")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]  # Quart's asgi_app, typed with hypercorn's scopes

ROUTE = re.compile(r"/rooms/([^/]*)/ws")
# ASCII digits only: str.isdigit() accepts "²" or "٣", which int() then rejects or reads.
AFTER = re.compile(r"[0-9]{1,18}")
_session_ids = itertools.count(1)


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a WebSocket with this ``Origin`` header may connect to ``host``.

    No Origin: not a browser (Origin is a browser protection; tokens protect the rest). Same
    origin compares host[:port] only: behind a TLS proxy the scheme we see (ws) differs from the
    page's (https) while the host is the one the browser connected to.
    """
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in allowed:
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == str(host).lower()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class RoomSockets:
    """ASGI middleware: serves ``/rooms/<room>/ws``; everything else goes to ``app``."""

    def __init__(self, app: ASGIApp, gw: Gateway) -> None:
        self.app = app
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            match = ROUTE.fullmatch(scope["path"])
            if match is not None:
                await self.room_socket(match.group(1), scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _admit(self, room: str, scope: Scope) -> tuple[Any, int | None]:
        """Every check before the upgrade: the token's claims and ``after``. Raises Rejection."""
        gw = self.gw
        if not valid_room_name(room):
            raise Rejection(404, "bad_room", "room names are 1-64 of [A-Za-z0-9_-]")
        host = _header(scope, b"host") or _header(scope, b":authority")
        if not origin_allowed(_header(scope, b"origin"), host, gw.config.allowed_origins):
            raise Rejection(403, "origin_forbidden", "this page's origin is not allowed")
        query = parse_qs(bytes(scope["query_string"]).decode("latin-1"))
        try:
            tokens = query.get("token")
            claims = gw.verifier.verify(tokens[-1] if tokens else None)
            if not claims.may_join(room):
                raise AuthError("room_forbidden", f"the token does not allow room {room}")
        except AuthError as exc:
            raise rejection_for(exc) from None
        raw_after = (query.get("after") or [""])[-1]
        after = None
        if raw_after:
            if AFTER.fullmatch(raw_after) is None:
                raise Rejection(400, "bad_request", "after must be a non-negative integer")
            after = int(raw_after)
        if gw.draining:
            raise Rejection(503, "draining", "the server is restarting; try again shortly")
        if gw.connections >= gw.config.max_connections:
            raise Rejection(503, "server_full", "too many connections; try again later")
        return claims, after

    async def _refuse(self, rejection: Rejection, send: Send) -> None:
        self.gw.observer.handshake_rejected(rejection.error)
        body = rejection.body()
        await send({"type": "websocket.http.response.start", "status": rejection.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})

    async def room_socket(self, room: str, scope: Scope, receive: Receive, send: Send) -> None:
        """One connection, from the upgrade request to its end."""
        gw = self.gw
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        try:
            claims, after = self._admit(room, scope)
        except Rejection as refused:
            await self._refuse(refused, send)
            return

        cfg = gw.config.room
        session = Session(
            next(_session_ids), claims.user, claims.name, FrameWriter(send),
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
                        plan = await actor.join(session, after=after,
                                                expires_at=claims.expires_at)
                        break
                    except RoomStopped:
                        # The room just went idle or crashed: the next get() starts a fresh one.
                        if attempt or gw.draining:
                            raise
            except RoomError as exc:
                await self._refuse(rejection_for(exc), send)
                return
            assert actor is not None
            await send({"type": "websocket.accept"})
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read_loop(actor, session, receive))
                await session.run_writer(plan, room, gw.store, cfg.history_page)
                reader.cancel()
        finally:
            if actor is not None:
                actor.leave_nowait(session.id)
            gw.connection_closed()

    async def _read_loop(self, actor: RoomActor, session: Session, receive: Receive) -> None:
        cfg = self.gw.config.room
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                session.transport_lost()
                return
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            if text is None:  # a binary frame (possibly empty)
                session.close_nowait(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
                continue  # the writer closes; keep reading until Hypercorn reports the end
            if not session.open:
                continue
            frame = protocol.parse_client_frame(text, max_text_chars=cfg.max_text_chars,
                                                max_id_chars=cfg.max_id_chars)
            if not actor.frame_nowait(session.id, frame):
                client_id = frame.id if isinstance(frame, protocol.SendMessage) else None
                session.offer(protocol.error(ErrorCode.BUSY, "the room is busy; resend later",
                                             client_id=client_id, retry_after=1.0))

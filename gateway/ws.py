"""The room WebSocket, served as plain ASGI in front of the Quart app.

``RoomSockets`` takes ``/rooms/<room>/ws`` upgrades itself and passes everything else to Quart.
Going straight to Hypercorn's ASGI interface (instead of Quart's ``websocket`` wrapper) matters
on the hot path and at the edge:

- inbound frames come from Hypercorn's bounded app queue (``max_app_queue_size``): a client that
  floods us is slowed by TCP backpressure instead of filling Quart's unbounded queue;
- a send is one ASGI call, without Quart's per-send ``sleep(0)`` and signal dispatch, and a
  handshake skips Quart's request context; an idle connection costs less memory.

Every check runs before the upgrade is accepted, at the front door (``gateway.access``,
``Purpose.ROOM_SOCKET``); a refusal is a real HTTP response (ASGI's ``websocket.http.response``
extension, which Hypercorn always offers). Frames then pass the user's message bucket
(``gateway.limits``), shared by all their sockets, before they reach a room. After the upgrade
the handler runs the session's writer (send what the room queued); inbound frames are parsed and
handed to the room without waiting (``_Inbound``), on HTTP/1.1 by Hypercorn's own reading task
(``FrameWriter.take_inbound``: no reader task, no app queue hop), elsewhere by a reader task
owned by this handler.

A connection counts toward ``max_connections`` (and the per-user and per-IP caps) until its TCP
socket is gone, not merely until its
close frame is queued: after the writer ends, the handler waits up to ``close_timeout`` for the
close handshake to end the connection, then aborts it. A client that stops reading can hold a
socket for at most the closing phase (``close_timeout``) plus that wait.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from gateway.access import Admission, AsgiKnock, Purpose
from gateway.attachments import Refused, refusal_error
from gateway.errors import REFUSALS, Rejection, rejection_for
from gateway.hypercorn_ext import FrameWriter
from gateway.inputs import int_param
from rooms import protocol
from rooms.actor import RoomActor
from rooms.errors import RoomError, RoomStopped
from rooms.protocol import CloseCode, ErrorCode
from rooms.session import Session

if TYPE_CHECKING:
    from gateway.gateway import Gateway

log = logging.getLogger("roomchat.ws")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]  # Quart's asgi_app, typed with hypercorn's scopes

ROUTE = re.compile(r"/rooms/([^/]*)/ws")
_UNORDERED = (protocol.Pong, protocol.Typing, protocol.MarkRead)
"""Frames that need not wait behind a message whose files are being looked up: hints whose
order against messages means nothing (a pong held back could even cost the heartbeat)."""
EPOCH = re.compile(r"[0-9A-Za-z_-]{1,64}")  # a welcome's epoch (16 hex digits) sent back
_session_ids = itertools.count(1)


def _room_of(path: str) -> str | None:
    """The room of a room socket's path, else None. (A function: a match object left in the
    caller's frame would live as long as the connection.)"""
    match = ROUTE.fullmatch(path)
    return None if match is None else match.group(1)


def _forget_handshake(scope: Scope) -> None:
    """Drop what only the handshake needed from an accepted connection's scope (the request
    headers, the query string with its token): Hypercorn reads the scope again only for the
    access log of a refused or failed handshake, and we read it only before accepting."""
    scope["headers"] = []
    scope["query_string"] = b""


class _Inbound:
    """A room connection's inbound frames: each is checked and handed to the room without
    waiting. Fed by ``put``, either from our own reader loop or by Hypercorn directly
    (``FrameWriter.take_inbound``)."""

    __slots__ = ("_actor", "_attachments", "_held", "_limits", "_resolver", "_room_config",
                 "_session", "_strikes")

    def __init__(self, gw: Gateway, actor: RoomActor, session: Session) -> None:
        self._actor = actor
        self._session = session
        self._limits = gw.limits
        self._room_config = gw.config.room
        self._attachments = gw.attachments
        # Frames refused by the user's bucket in a row, on this connection: they never reach
        # the room, so the room's own strike count cannot see this flood.
        self._strikes = 0
        # A message naming files waits here while they are looked up (``_resolve_held``), and
        # the frames sent after it wait behind it, so the room gets them in the order sent.
        # At most ``inbox_limit`` (then ``busy``, as a full room inbox answers).
        self._held: deque[protocol.ClientFrame] | None = None
        self._resolver: asyncio.Task[None] | None = None

    async def aclose(self) -> None:
        """Stop looking up files (the connection is gone): held frames are dropped, unacked,
        as frames still in a socket's buffer are; their client resends them."""
        resolver = self._resolver
        if resolver is not None:
            resolver.cancel()
            await asyncio.wait([resolver])

    async def put(self, message: Message) -> None:
        """Handle one ASGI message. Never blocks and never raises: a bug here closes this
        connection with 1011 instead of breaking Hypercorn's reading task."""
        try:
            self.handle(message)
        except Exception:
            log.exception("session %s: inbound frame failed", self._session.id)
            self._session.close_nowait(CloseCode.INTERNAL_ERROR, "internal error")

    def text(self, text: str) -> None:
        """One client text frame, from ``gateway.hypercorn_ext.fastread``'s reader. Never raises (as
        ``put``)."""
        try:
            self._text(text)
        except Exception:
            log.exception("session %s: inbound frame failed", self._session.id)
            self._session.close_nowait(CloseCode.INTERNAL_ERROR, "internal error")

    def handle(self, message: Message) -> None:
        session = self._session
        kind = message["type"]
        if kind == "websocket.disconnect":
            session.transport_lost()
            return
        if kind != "websocket.receive":
            return
        text = message.get("text")
        if text is None:  # a binary frame (possibly empty)
            session.close_nowait(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
            return  # the writer closes; frames keep coming until Hypercorn reports the end
        self._text(text)

    def _text(self, text: str) -> None:
        session = self._session
        if not session.open:
            return
        cfg = self._room_config
        frame = protocol.parse_client_frame(text, max_text_chars=cfg.max_text_chars,
                                            max_id_chars=cfg.max_id_chars,
                                            max_mentions=cfg.max_mentions,
                                            max_files=cfg.max_files_per_message)
        client_id = None if isinstance(frame, protocol.Pong) else frame.id
        # Pongs skip the user's bucket: refusing one would break the heartbeat, and the
        # room's per-connection bucket already charges them (connections per user are
        # capped, so a user's pong rate is bounded too). Read markers too: a page moves its
        # marker as it is read, in every room the user has open, and the room charges them
        # what a pong costs.
        if not isinstance(frame, protocol.Pong | protocol.MarkRead):
            retry_after = self._limits.message(session.user, time.monotonic())
            if retry_after > 0:
                self._strikes += 1
                session.offer(protocol.error(
                    ErrorCode.RATE_LIMITED, "too many messages from this user; resend "
                    "after retry_after seconds", client_id=client_id, retry_after=retry_after))
                if self._strikes >= cfg.rate_abuse_strikes:
                    session.close_nowait(CloseCode.RATE_ABUSE, "rate limit abuse")
                return
            self._strikes = 0
        if (isinstance(frame, protocol.SendMessage) and frame.file_ids) or (
                self._held and not isinstance(frame, _UNORDERED)):
            self._hold(frame, client_id)
            return
        self._hand(frame, client_id)

    def _hand(self, frame: protocol.ClientFrame, client_id: str | None) -> None:
        if not self._actor.frame_nowait(self._session.id, frame):
            self._session.offer(protocol.error(ErrorCode.BUSY, "the room is busy; resend later",
                                               client_id=client_id, retry_after=1.0))

    def _hold(self, frame: protocol.ClientFrame, client_id: str | None) -> None:
        held = self._held
        if held is None:
            held = self._held = deque()
        if len(held) >= self._room_config.inbox_limit:
            self._session.offer(protocol.error(
                ErrorCode.BUSY, "too many messages waiting for their files to be checked; "
                "resend later", client_id=client_id, retry_after=1.0))
            return
        held.append(frame)
        if self._resolver is None:
            # Owned by this connection: ``aclose`` (the handler's ``finally``) cancels and
            # awaits it; it ends by itself once nothing is held.
            self._resolver = asyncio.get_running_loop().create_task(
                self._resolve_held(), name=f"session-{self._session.id}-files")

    async def _resolve_held(self) -> None:
        """Hand the held frames to the room in order, each message's files resolved first
        (``gateway.attachments``); a refused one is answered with its ``error`` here."""
        held = self._held
        assert held is not None
        session = self._session
        try:
            while held:
                frame = held[0]
                if isinstance(frame, protocol.SendMessage) and frame.file_ids:
                    try:
                        if self._attachments is None:
                            raise Refused(ErrorCode.UNAVAILABLE, "files are not available on "
                                          "this server; the message was not sent")
                        frame = await self._attachments.resolve(self._actor.room,
                                                                session.user, frame)
                    except Refused as refused:
                        held.popleft()
                        session.offer(refusal_error(refused, frame.id))
                        continue
                held.popleft()
                if session.open:
                    self._hand(frame, None if isinstance(frame, protocol.Pong) else frame.id)
        finally:
            self._resolver = None


class RoomSockets:
    """ASGI middleware: serves ``/rooms/<room>/ws``; everything else goes to ``app``."""

    def __init__(self, app: ASGIApp, gw: Gateway) -> None:
        self.app = app
        self.gw = gw

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The coroutine serving this connection. (Not itself a coroutine: it would be one more
        frame kept for the whole life of every connection.)"""
        if scope["type"] == "websocket":
            room = _room_of(scope["path"])
            if room is not None:
                return self.room_socket(room, scope, receive, send)
            return self._other_socket(scope, receive, send)
        return self.app(scope, receive, send)

    async def _other_socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Other sockets (the admin stream) are counted by their route; known here too so a
        # drain that runs out of time can still drop them.
        with self.gw.abortable(FrameWriter(send)):
            await self.app(scope, receive, send)

    async def _admit(self, room: str,
                     scope: Scope) -> tuple[Admission, int | None, str | None]:
        """The front door's checks (``Purpose.ROOM_SOCKET``), ``after`` and ``epoch``. Raises
        Rejection.

        When it returns, the caller must count the connection (``connection_opened`` with its
        owner) before its next ``await``: the caps were checked, not reserved.
        """
        knock = AsgiKnock(scope)
        try:
            admission = await self.gw.door.admit(knock, Purpose.ROOM_SOCKET, room)
        except REFUSALS as exc:
            raise rejection_for(exc) from None
        # After the door: its handshake charge answers first, even a malformed request (a
        # malformed ``after`` then costs the join the door took, and nothing else).
        after = int_param(knock.param("after"), "after", minimum=0)
        epoch = knock.param("epoch")
        if epoch is not None and EPOCH.fullmatch(epoch) is None:
            raise Rejection(400, "bad_request", "epoch must be the epoch of a welcome")
        return admission, after, epoch

    async def _refuse(self, rejection: Rejection, send: Send) -> None:
        self.gw.observer.handshake_rejected(rejection.error)
        body = rejection.body()
        await send({"type": "websocket.http.response.start", "status": rejection.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                *rejection.headers()]})
        await send({"type": "websocket.http.response.body", "body": body})

    async def room_socket(self, room: str, scope: Scope, receive: Receive, send: Send) -> None:
        """One connection, from the upgrade request to its end."""
        gw = self.gw
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            admission, after, epoch = await self._admit(room, scope)
        except Rejection as refused:
            await self._refuse(refused, send)
            return
        claims = admission.claims

        cfg = gw.config.room
        transport = FrameWriter(send)
        session = Session(
            next(_session_ids), claims.user, claims.name, transport,
            outbox_limit=cfg.outbox_limit, max_frame_messages=cfg.max_frame_messages,
            send_timeout=cfg.send_timeout, close_timeout=cfg.close_timeout,
            moderator=claims.moderates(room),
        )
        owner = (claims.user, admission.ip)
        expires_at = claims.expires_at
        # Not needed past the join: this frame lives as long as the connection.
        del claims, admission
        gw.connection_opened(transport, owner)
        actor: RoomActor | None = None
        inbound: _Inbound | None = None
        accepted = released = False
        try:
            try:
                for attempt in range(2):
                    actor = gw.registry.get(room)
                    try:
                        plan = await actor.join(session, after=after, expires_at=expires_at,
                                                epoch=epoch)
                        break
                    except RoomStopped:
                        # The room just went idle or crashed: the next get() starts a fresh one.
                        if attempt or gw.draining:
                            raise
            except RoomError as exc:
                await self._refuse(rejection_for(exc), send)
                return
            assert actor is not None
            inbound = _Inbound(gw, actor, session)
            # HTTP/1.1: Hypercorn hands us each frame itself, so no reader task and no queue
            # hop per frame (and an idle connection has one task of ours, not two).
            inline = transport.take_inbound(inbound.put)
            await send({"type": "websocket.accept"})
            accepted = True
            _forget_handshake(scope)
            transport.forget_handshake()
            if inline:
                # One loop turn: Hypercorn's reading task, woken by the accept, goes back to
                # waiting for data, and only then can the transport's reading be taken over.
                await asyncio.sleep(0)
                transport.read_directly(inbound.text)
            # The session keeps the plan only until its welcome is sent.
            writer = session.run_writer(plan, room, gw.store, cfg.history_page)
            del plan
            if inline:
                await writer
                released = await self._release(transport, cfg.close_timeout)
            else:
                async with asyncio.TaskGroup() as tg:
                    # The reader runs until the socket is gone: Hypercorn's app queue is
                    # bounded, and the client's close frame is only seen once the frames
                    # before it are taken.
                    reader = tg.create_task(self._read_loop(inbound, receive))
                    await writer
                    released = await self._release(transport, cfg.close_timeout)
                    reader.cancel()
        finally:
            try:
                if inbound is not None:
                    await inbound.aclose()
                if actor is not None:
                    actor.leave_nowait(session.id)
                if accepted and not released:
                    # Failed or cancelled: drop whatever is left of the connection.
                    transport.abort()
            finally:
                # Whatever happened above: a connection never uncounted holds a drain open for
                # its whole timeout (and exits 1).
                gw.connection_closed(transport, owner)
                transport.detach()

    async def _release(self, transport: FrameWriter, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the TCP connection to end, then abort it. True when gone.

        A client that answers our close frame ends it at once; one that stopped reading never
        would, and its socket and buffers would stay with us forever (issue 13, bug 4).
        """
        try:
            async with asyncio.timeout(timeout):
                await transport.wait_closed()
            return True
        except TimeoutError:
            log.info("connection not closed within %.1fs of its close frame; aborting", timeout)
        transport.abort()
        try:  # the abort closes the socket on the next loop iteration
            async with asyncio.timeout(timeout):
                await transport.wait_closed()
        except TimeoutError:
            return False
        return True

    async def _read_loop(self, inbound: _Inbound, receive: Receive) -> None:
        """Feed ``inbound`` from ``receive()`` until the socket is gone (shapes where
        Hypercorn cannot call it directly: HTTP/2)."""
        while True:
            message = await receive()
            await inbound.put(message)
            if message["type"] == "websocket.disconnect":
                return

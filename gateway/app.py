"""``create_app(config)``: the Quart app, and ``Gateway``, the state it serves from.

The store and the room registry open in ``before_serving`` and close in ``after_serving``;
``Gateway.drain()`` (called by the server's shutdown trigger, *before* Hypercorn stops) closes
every socket with 1012 so shutdown never hangs on open WebSockets, and drops (aborts) whatever is
still open at its deadline: a client that stopped reading must not hold the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Protocol

from quart import Quart, Response, request, send_file

from gateway import admin, api, history, tickets, ws
from gateway.auth import API_SCOPE, AuthError, make_issuer, make_verifier, valid_room_name
from gateway.config import Config
from gateway.errors import Rejection, rejection_for
from gateway.limits import ClientAddresses, Limit, LimitExceeded, Limits, parse_networks
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.revocation import Revocations
from rooms.engine import Engine, open_engine
from rooms.errors import Banned, StoreError
from rooms.protocol import dumps
from rooms.registry import RoomRegistry

log = logging.getLogger("roomchat.gateway")

# After the drain's deadline has aborted the stragglers, how long their handlers get to unwind
# (an abort completes on the next loop iterations; this only bounds a surprise).
ABORT_GRACE = 1.0


class Abortable(Protocol):
    """A connection the drain can drop at its deadline (``gateway.fastsend.FrameWriter``)."""

    def abort(self) -> None: ...

PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
            "object-src 'none'")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def static_dir() -> Path:
    """The browser client: packaged as ``gateway/static`` in a wheel, ``static/`` in a checkout."""
    packaged = Path(str(resources.files("gateway"))) / "static"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "static"


def is_loopback_bind(bind: str) -> bool:
    host = bind.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Gateway:
    """What the routes share: config, auth, store, rooms, metrics, connection count."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.verifier = make_verifier(config)
        self.issuer = make_issuer(config) if config.dev_login else None
        self.revocations = Revocations()
        # Abuse caps (raise ValueError on a bad setting, before anything starts).
        self.limits = Limits.from_config(config)
        self.addresses = ClientAddresses(parse_networks(config.trusted_proxies),
                                         config.client_ip_header)
        if config.gc_freeze_after < 0:
            raise ValueError("ROOMCHAT_GC_FREEZE_AFTER must be 0 (never freeze) or more")
        if config.gc_thaw_share <= 0:
            raise ValueError("ROOMCHAT_GC_THAW_SHARE must be more than 0")
        self._watcher: asyncio.Task[None] | None = None
        self.observer = Metrics()
        self.draining = False
        self.connections = 0
        self.opened_total = 0  # since start: what gateway.gcsteward reads
        self.closed_total = 0
        # Every open WebSocket the drain can drop; bounded by the sockets Hypercorn accepted.
        self._abortable: set[Abortable] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._store: Engine | None = None
        self._registry: RoomRegistry | None = None

    @property
    def store(self) -> Engine:
        """The engine: the shared log, live feed and presence of every room."""
        if self._store is None:
            raise StoreError("the store is not open (server not started)")
        return self._store

    @property
    def started(self) -> bool:
        """``start()`` has run: the store is open and rooms can start."""
        return self._registry is not None

    @property
    def registry(self) -> RoomRegistry:
        if self._registry is None:
            raise StoreError("rooms are not running (server not started)")
        return self._registry

    async def start(self) -> None:
        self._store = await open_engine(
            self.config.resolved_store_url, on_commit=self._committed,
            sqlite_synchronous=self.config.store_synchronous,
            max_connections=self.config.store_connections,
            timeout=self.config.room.store_timeout)
        self._registry = RoomRegistry(self.config.room, self._store, observer=self.observer,
                                      max_rooms=self.config.max_live_rooms)
        await self.revocations.load(self._store)
        # Owned here: cancelled and awaited in stop().
        self._watcher = asyncio.create_task(self.revocations.watch(
            self._store, self.config.revocation_poll, self._registry.revoke_nowait),
            name="revocations")

    def _committed(self, seconds: float, count: int) -> None:
        self.observer.messages_stored(count, seconds)  # prometheus_client is thread-safe

    def connection_opened(self, transport: Abortable | None = None,
                          owner: tuple[str, str] | None = None) -> None:
        """A WebSocket counts from here until ``connection_closed``: call that only once its
        socket is really gone (room sockets: ``gateway.ws``), so closing sockets count toward
        ``max_connections`` too. ``transport``: what the drain may abort at its deadline.
        ``owner``: ``(user, client ip)`` admitted by ``limits.admit``, counted toward the
        per-user and per-IP caps as long; give the same to ``connection_closed``."""
        if owner is not None:
            self.limits.opened(*owner)
        self.connections += 1
        self.opened_total += 1
        self.observer.connections.inc()
        self._idle.clear()
        if transport is not None:
            self._abortable.add(transport)

    def connection_closed(self, transport: Abortable | None = None,
                          owner: tuple[str, str] | None = None) -> None:
        if owner is not None:
            self.limits.closed(*owner)
        self.connections -= 1
        self.closed_total += 1
        self.observer.connections.dec()
        if transport is not None:
            self._abortable.discard(transport)
        if self.connections == 0:
            self._idle.set()

    @contextlib.contextmanager
    def abortable(self, transport: Abortable) -> Iterator[None]:
        """Let the drain abort ``transport`` while inside (for sockets counted elsewhere)."""
        self._abortable.add(transport)
        try:
            yield
        finally:
            self._abortable.discard(transport)

    async def drain(self, timeout: float) -> None:
        """Refuse new connections, close every socket with 1012, wait up to ``timeout`` s, then
        abort what is left and give it ``ABORT_GRACE`` s to unwind. Returns within about
        ``timeout + ABORT_GRACE`` whatever the clients do."""
        if self.draining:
            return
        self.draining = True
        stager: asyncio.Task[None] | None = None
        if self._registry is not None:
            # Staged: drain_batch connections every drain_step seconds, but all of them within
            # half the timeout, so the last wave still has time to close.
            open_now = max(1, self.connections)
            waves = -(-open_now // max(1, self.config.drain_batch))
            step = min(self.config.drain_step, timeout / 2 / max(1, waves - 1))
            stager = asyncio.create_task(self._registry.drain_staged(self.config.drain_batch,
                                                                     step))
        try:
            await self._wait_closed(timeout)
        finally:
            if stager is not None:  # owned here: finished or cancelled before returning
                stager.cancel()
                await asyncio.wait([stager])

    async def _wait_closed(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return
        except TimeoutError:
            log.warning("drain: %d connections still open after %.1fs; aborting them",
                        self.connections, timeout)
        for transport in list(self._abortable):
            transport.abort()
        try:
            async with asyncio.timeout(ABORT_GRACE):
                await self._idle.wait()
        except TimeoutError:
            log.warning("drain: %d connections still counted after aborting", self.connections)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher])
        if self._registry is not None:
            await self._registry.aclose(self.config.drain_timeout)
        if self._store is not None:
            await self._store.close()


def create_app(config: Config) -> Quart:
    """The roomchat ASGI app. ``app.extensions["roomchat"]`` is its ``Gateway``."""
    if config.dev_login and not config.dev_login_force and not is_loopback_bind(config.bind):
        raise ValueError("dev login is refused on a non-loopback bind "
                         "(set ROOMCHAT_DEV_LOGIN_FORCE=1 if you really mean it)")
    static = static_dir()
    app = Quart(__name__, static_folder=str(static), static_url_path="/static")
    gw = Gateway(config)
    app.extensions["roomchat"] = gw
    app.register_blueprint(history.blueprint)
    app.register_blueprint(api.blueprint)

    @app.before_serving
    async def _start() -> None:
        await gw.start()

    @app.after_serving
    async def _stop() -> None:
        await gw.drain(config.drain_timeout)
        await gw.stop()

    @app.after_request
    async def _headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if response.mimetype == "text/html":
            # Every HTML response, including the pages reached through /static/, carries the
            # pages' CSP and is never cached (the CSP protects only the responses that send it).
            response.headers["Content-Security-Policy"] = PAGE_CSP
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(Rejection)
    async def _rejected(exc: Rejection) -> Response:
        return exc.response()

    async def page(name: str) -> Response:
        """An HTML page of static/, with the strict CSP and never cached (it is tiny)."""
        response = await send_file(static / name, mimetype="text/html")
        response.headers["Content-Security-Policy"] = PAGE_CSP
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/healthz")
    async def healthz() -> Response:
        # The pid tells which worker of `serve --workers N` answered.
        return Response(f'{{"status":"ok","pid":{os.getpid()}}}',
                        content_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        if gw.draining or not gw.started:
            return Response('{"status":"draining"}', status=503,
                            content_type="application/json")
        return Response('{"status":"ready"}', content_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gw.observer.render(), content_type=CONTENT_TYPE)

    @app.get("/")
    async def index() -> Response:
        return Response("", status=302, headers={"Location": "/rooms/lobby"})

    @app.get("/rooms/<room>")
    async def room_page(room: str) -> Response:
        if not valid_room_name(room):
            raise Rejection(404, "bad_room", "room names are 1-64 of [A-Za-z0-9_-]")
        return await page("index.html")

    @app.get("/api/info")
    async def info() -> Response:
        return Response(f'{{"dev_login":{"true" if config.dev_login else "false"}}}',
                        content_type="application/json")

    @app.post("/rooms/<room>/ticket")
    async def ticket(room: str) -> Response:
        """A single-use ticket for one connection to ``room`` (gateway.tickets)."""
        if not valid_room_name(room):
            raise Rejection(404, "bad_room", "room names are 1-64 of [A-Za-z0-9_-]")
        # The upgrade's checks, answered here where a page can read them (a browser sees a
        # refused upgrade only as 1006): charged as a handshake, then the credentials, origin,
        # drain, capacity and connection caps (checked, not reserved: the upgrade counts).
        ip = gw.addresses.client_ip(request.remote_addr,
                                    request.headers.getlist(gw.addresses.header))
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        try:
            gw.limits.handshake(ip, time.monotonic())
            if not ws.origin_allowed(request.headers.get("Origin"), request.headers.get("Host"),
                                     config.allowed_origins):
                raise Rejection(403, "origin_forbidden", "this page's origin is not allowed")
            if scheme.lower() != "bearer" or not token:
                raise AuthError("missing_token", "send Authorization: Bearer <token>")
            claims = gw.verifier.verify(token.strip())
            gw.revocations.check(claims)
            if claims.scope == API_SCOPE:
                raise Rejection(403, "api_credential", "an API credential cannot open a socket")
            if not claims.may_join(room):
                raise AuthError("room_forbidden", f"the token does not allow room {room}")
            if gw.draining:
                raise Rejection(503, "draining", "the server is restarting; try again shortly")
            if gw.connections >= config.max_connections:
                raise Rejection(503, "server_full", "too many connections; try again later")
            if not gw.limits.user_connections.allows(claims.user):
                raise LimitExceeded(Limit.USER_CONNECTIONS, "this user already has "
                                    f"{gw.limits.user_connections.cap} connections open")
            if not gw.limits.ip_connections.allows(ip):
                raise LimitExceeded(Limit.IP_CONNECTIONS, "this address already has "
                                    f"{gw.limits.ip_connections.cap} connections open")
            ban = await gw.store.banned(room, claims.user)
            if ban is not None:  # the upgrade would be refused: say why where a page can read it
                raise rejection_for(Banned(claims.user, ban.until, ban.reason))
            issued = await tickets.issue(gw.store, claims, room, config.ticket_ttl)
        except (AuthError, StoreError, LimitExceeded) as exc:
            raise rejection_for(exc) from None
        return Response(dumps({"ticket": issued, "expires_in": int(config.ticket_ttl)}),
                        content_type="application/json", headers={"Cache-Control": "no-store"})

    @app.post("/api/dev-login")
    async def dev_login() -> Response:
        if gw.issuer is None:
            raise Rejection(404, "not_found", "dev login is disabled")
        body = await request.get_json(silent=True)
        name = body.get("name") if isinstance(body, dict) else None
        room = body.get("room") if isinstance(body, dict) else None
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 64:
            raise Rejection(400, "bad_request", "name must be 1 to 64 characters")
        if not isinstance(room, str) or not valid_room_name(room):
            raise Rejection(400, "bad_request", "room must be a valid room name")
        user = f"guest-{secrets.token_hex(4)}"
        token = gw.issuer.issue(user, name=name, rooms=[room], ttl=config.dev_login_ttl)
        return Response(dumps({"token": token, "user": user,
                               "expires_in": int(config.dev_login_ttl)}),
                        content_type="application/json", headers={"Cache-Control": "no-store"})

    @app.get("/admin")
    async def admin_page() -> Response:
        return await page("admin.html")

    @app.websocket("/admin/ws")
    async def admin_socket() -> Response | None:
        gw.connection_opened()
        try:
            return await admin.admin_socket(gw)
        finally:
            gw.connection_closed()

    # /rooms/<room>/ws is plain ASGI in front of Quart (see gateway.ws for why).
    app.asgi_app = ws.RoomSockets(app.asgi_app, gw)  # type: ignore[method-assign,assignment]
    return app

"""``create_app(config)``: the Quart app, its routes and its lifecycle around a ``Gateway``.

``gateway.gateway.Gateway`` is the state the routes serve from: it starts in ``before_serving``
and drains and stops in ``after_serving``.
"""

from __future__ import annotations

import os
import secrets
from importlib import resources
from pathlib import Path

from quart import Quart, Response, request, send_file

from gateway import admin, api, files, history, search, tickets, ws
from gateway.access import Purpose, QuartKnock
from gateway.attachments import Attachments
from gateway.auth import valid_room_name
from gateway.config import Config
from gateway.errors import REFUSALS, Refusal, Rejection, rejection_for
from gateway.gateway import Gateway
from gateway.inputs import json_object
from gateway.metrics import CONTENT_TYPE
from rooms.protocol import dumps

# Gateway is imported from here too (gateway.server, tests): its home is gateway.gateway.
__all__ = ["PAGE_CSP", "SECURITY_HEADERS", "Gateway", "create_app", "static_dir"]

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


def create_app(config: Config) -> Quart:
    """The roomchat ASGI app. ``app.extensions["roomchat"]`` is its ``Gateway``."""
    static = static_dir()
    app = Quart(__name__, static_folder=str(static), static_url_path="/static")
    gw = Gateway(config)
    app.extensions["roomchat"] = gw
    app.register_blueprint(history.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(search.blueprint)
    uploads = files.install(app, config)

    attachments = gw.attachments = Attachments(gw, lambda: uploads.service)

    @app.before_serving
    async def _start() -> None:
        await gw.start()
        await uploads.start()
        await attachments.start()

    @app.after_serving
    async def _stop() -> None:
        await gw.drain(config.drain_timeout)
        await attachments.stop(config.drain_timeout)
        await uploads.stop()
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

    async def _refused(exc: Refusal) -> Response:
        """Any route's typed refusal (the front door's, an engine's): its HTTP answer."""
        return rejection_for(exc).response()

    for refusal in REFUSALS:
        app.register_error_handler(refusal, _refused)

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
            # A browser opening the address gets the page, which shows its own "not a room"
            # card (static/ui.js checks the name the same way); a program gets the JSON.
            wants = request.accept_mimetypes.best_match(["application/json", "text/html"])
            if wants == "text/html":
                refused = await page("index.html")
                refused.status_code = 404
                return refused
            raise Rejection(404, "bad_room", "room names are 1-64 of [A-Za-z0-9_-]")
        return await page("index.html")

    # What the page asks before it needs it (no credential): whether dev login is on, and the
    # largest upload, so a file too large is refused in words before any byte is sent.
    info_body = dumps({"dev_login": config.dev_login, "max_file_bytes": config.max_file_bytes})

    @app.get("/api/info")
    async def info() -> Response:
        return Response(info_body, content_type="application/json")

    @app.post("/rooms/<room>/ticket")
    async def ticket(room: str) -> Response:
        """A single-use ticket for one connection to ``room`` (gateway.tickets), once the front
        door has checked what the upgrade would (a browser sees a refused upgrade only as 1006;
        here a page can read why): the caps are checked, not reserved (the upgrade counts)."""
        admission = await gw.door.admit(QuartKnock(request), Purpose.TICKET, room)
        issued = await tickets.issue(gw.store, admission.claims, room, config.ticket_ttl)
        return Response(dumps({"ticket": issued, "expires_in": int(config.ticket_ttl)}),
                        content_type="application/json", headers={"Cache-Control": "no-store"})

    @app.post("/api/dev-login")
    async def dev_login() -> Response:
        if gw.issuer is None:
            raise Rejection(404, "not_found", "dev login is disabled")
        body = json_object(await request.get_data())
        name, room = body.get("name"), body.get("room")
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

    # Uploads' bodies are paced before Quart reads them (see gateway.files for why).
    app.asgi_app = files.UploadPace(  # type: ignore[method-assign,assignment]
        app.asgi_app, config.upload_read_rate)
    # /rooms/<room>/ws is plain ASGI in front of Quart (see gateway.ws for why).
    app.asgi_app = ws.RoomSockets(app.asgi_app, gw)  # type: ignore[method-assign,assignment]
    return app

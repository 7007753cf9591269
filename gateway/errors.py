"""Where typed errors become wire codes: HTTP statuses for refused upgrades (one place)."""

from __future__ import annotations

from quart import Response

from gateway.auth import AuthError
from rooms.errors import RoomError, RoomFull, RoomStopped, StoreError
from rooms.protocol import dumps


class Rejection(Exception):
    """Refuse an HTTP request or WebSocket upgrade with ``status`` and a JSON body."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail

    def body(self) -> bytes:
        """The JSON body every refusal carries: ``{"error": ..., "detail": ...}``."""
        return dumps({"error": self.error, "detail": self.detail}).encode()

    def response(self) -> Response:
        return Response(self.body(), status=self.status, content_type="application/json")


def rejection_for(exc: AuthError | RoomError) -> Rejection:
    """The HTTP answer for an error raised while admitting a connection."""
    if isinstance(exc, AuthError):
        status = 403 if exc.reason == "room_forbidden" else 401
        return Rejection(status, exc.reason, exc.detail)
    if isinstance(exc, RoomFull):
        return Rejection(503, "room_full", str(exc))
    if isinstance(exc, StoreError):
        return Rejection(503, "unavailable", "storage is unavailable; try again shortly")
    if isinstance(exc, RoomStopped):
        return Rejection(503, "draining", "the server is restarting; try again shortly")
    return Rejection(500, "internal", "internal error")

"""Where typed errors become wire codes: HTTP statuses for refused requests and upgrades (one
place). ``REFUSALS``: every typed error the front door (``gateway.access``) and the rooms raise
for a client; ``rejection_for`` maps each. ``FRAME_ERRORS``: every ``error`` code a socket frame
can get (``rooms.protocol.ErrorCode``, the log's ``rooms.messages.Refusal`` among them), as the
server API answers the same refusal of the same request (``frame_rejection``)."""

from __future__ import annotations

import math

from quart import Response

from gateway.access import AccessDenied, Denial
from gateway.auth import AuthError
from gateway.limits import Limit, LimitExceeded
from rooms.errors import (
    Banned,
    RoomBusy,
    RoomError,
    RoomFull,
    RoomStopped,
    SearchTooBroad,
    SearchUnsupported,
    StoreError,
    TooManyRooms,
    Unstorable,
)
from rooms.protocol import dumps


class Rejection(Exception):
    """Refuse an HTTP request or WebSocket upgrade with ``status`` and a JSON body.

    ``retry_after``: seconds after which a retry can succeed, when known; sent as a
    ``Retry-After`` header (whole seconds, rounded up).
    """

    def __init__(self, status: int, error: str, detail: str,
                 retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.retry_after = retry_after

    def body(self) -> bytes:
        """The JSON body every refusal carries: ``{"error": ..., "detail": ...}``."""
        return dumps({"error": self.error, "detail": self.detail}).encode()

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response's headers but ``content-type`` and ``content-length``."""
        if self.retry_after is None:
            return []
        return [(b"retry-after", str(max(1, math.ceil(self.retry_after))).encode())]

    def response(self) -> Response:
        return Response(self.body(), status=self.status, content_type="application/json",
                        headers={k.decode(): v.decode() for k, v in self.headers()})


Refusal = AuthError | AccessDenied | LimitExceeded | RoomError
REFUSALS = (AuthError, AccessDenied, LimitExceeded, RoomError)
"""The typed errors a client is refused with (catch these, answer ``rejection_for``)."""

# The process's limits: the server's load, not this client's doing.
_SERVER_LIMITS = frozenset({Limit.CONNECTION_RATE, Limit.SERVER_CONNECTIONS})


FRAME_ERRORS: dict[str, tuple[int, str]] = {
    # What the request holds: the API's one code for a malformed value, but the two text
    # codes it has always answered.
    "invalid_json": (400, "bad_request"),
    "invalid_message": (400, "bad_request"),
    "empty_text": (400, "empty_text"),
    "text_too_long": (400, "text_too_long"),
    "self_ban": (400, "self_ban"),
    # The log's rules (rooms.messages.Refusal), checked against the message's state now.
    "forbidden": (403, "forbidden"),  # not the author's to edit (or delete, acting for a user)
    "not_found": (404, "not_found"),  # no such message: never stored, pruned, a change's seq
    "already_deleted": (409, "already_deleted"),  # a tombstone cannot be edited or answered
    # Allowed once, not any more: the same as a permission the author no longer has. Not 409:
    # no later state of the message makes a retry succeed.
    "edit_window_passed": (403, "edit_window_passed"),
    "too_many_reactions": (409, "too_many_reactions"),  # until someone takes one back
    # A message's files (gateway.attachments): the uploads it names.
    "too_many_files": (400, "too_many_files"),
    "file_not_found": (404, "file_not_found"),  # no upload of this user by that id
    "file_not_attachable": (409, "file_not_attachable"),  # another room, attached, too old
    # The room's load: a retry shortly can succeed.
    "rate_limited": (429, "rate_limited"),
    "busy": (503, "busy"),
    "unavailable": (503, "unavailable"),
}
"""Every socket ``error`` code (``rooms.protocol.ErrorCode``) -> the server API's status and
``error`` for it; a test holds it to ``ErrorCode``, so a new code cannot go unmapped."""


def frame_rejection(code: str, detail: str) -> Rejection:
    """The server API's answer to a request the room refused with a socket frame's ``code``
    (a ``FrameError``'s, or a ``rooms.messages.Refusal``'s value). An unknown code is a 500:
    ``FRAME_ERRORS`` must list it."""
    status, error = FRAME_ERRORS.get(code, (500, "internal"))
    retry_after = 1.0 if status in (429, 503) else None
    return Rejection(status, error, detail, retry_after)


def rejection_for(exc: Refusal) -> Rejection:
    """The HTTP answer for an error raised while admitting or serving a request."""
    if isinstance(exc, AuthError):
        status = 403 if exc.reason == "room_forbidden" else 401
        return Rejection(status, exc.reason, exc.detail)
    if isinstance(exc, AccessDenied):
        status = 404 if exc.reason is Denial.BAD_ROOM else 403
        return Rejection(status, exc.reason.value, exc.detail)
    if isinstance(exc, LimitExceeded):
        status = 503 if exc.limit in _SERVER_LIMITS else 429
        return Rejection(status, exc.limit.value, exc.detail, exc.retry_after)
    if isinstance(exc, Banned):
        until = "" if exc.until is None else f" until {exc.until:.0f} (Unix time)"
        return Rejection(403, "banned", f"banned from this room{until}"
                         + (f": {exc.reason}" if exc.reason else ""))
    if isinstance(exc, RoomBusy):
        return Rejection(503, "busy", str(exc), retry_after=1.0)
    if isinstance(exc, RoomFull):
        return Rejection(503, "room_full", str(exc))
    if isinstance(exc, TooManyRooms):
        return Rejection(503, "too_many_rooms", str(exc))
    if isinstance(exc, SearchUnsupported):  # the engine's choice: no retry helps
        return Rejection(501, "search_unsupported", str(exc))
    if isinstance(exc, SearchTooBroad):  # the query's: the same one is refused again
        return Rejection(400, "query_too_broad", str(exc))
    if isinstance(exc, StoreError):
        return Rejection(503, "unavailable", "storage is unavailable; try again shortly")
    if isinstance(exc, Unstorable):  # a text rooms.text should have refused: the caller's
        return Rejection(400, "bad_request", f"the message {exc.reason}")
    if isinstance(exc, RoomStopped):
        return Rejection(503, "draining", "the server is restarting; try again shortly")
    return Rejection(500, "internal", "internal error")

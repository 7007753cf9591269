"""Errors raised by the rooms package.

The tree::

    RoomError
    ├── RoomStopped       the room's actor stopped (crash, idle stop, shutdown) before answering
    ├── RoomFull          the room holds ``max_room_connections`` connections already
    ├── TooManyRooms      starting the room would exceed the process's cap on live rooms
    ├── RoomBusy          the room has too many server-API messages waiting to be stored
    ├── Banned            the user is banned from the room (until ``until``, or for good)
    └── StoreError        the message store failed or is closed

Only the gateway turns these into HTTP statuses and WebSocket close codes.
"""

from __future__ import annotations


class RoomError(Exception):
    """Base class of every error of the rooms package."""


class RoomStopped(RoomError):
    """The room's actor is not running (it crashed, went idle or the server is draining)."""


class RoomFull(RoomError):
    """The room already holds its maximum number of connections."""


class TooManyRooms(RoomError):
    """The process already runs its maximum number of live rooms; this one is not running and
    is not started (rooms already running still accept joins)."""


class StoreError(RoomError):
    """The message store failed or was used after ``close()``."""


class RoomBusy(RoomError):
    """Too many messages from the server API are waiting in this room: retry shortly."""


class Banned(RoomError):
    """The user is banned from the room: ``until`` (Unix seconds, ``None`` for good) and the
    moderator's ``reason``."""

    def __init__(self, user: str, until: float | None, reason: str) -> None:
        super().__init__(f"{user} is banned from this room" + (f": {reason}" if reason else ""))
        self.user = user
        self.until = until
        self.reason = reason

"""Errors raised by the rooms package.

The tree::

    RoomError
    ├── RoomStopped       the room's actor stopped (crash, idle stop, shutdown) before answering
    ├── RoomFull          the room holds ``max_room_connections`` connections already
    ├── TooManyRooms      starting the room would exceed the process's cap on live rooms
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

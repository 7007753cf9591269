"""Errors raised by the rooms package.

The tree::

    RoomError
    ├── RoomStopped       the room's actor stopped (crash, idle stop, shutdown) before answering
    ├── RoomFull          the room holds ``max_room_connections`` connections already
    ├── TooManyRooms      starting the room would exceed the process's cap on live rooms
    ├── RoomBusy          the room has too many server-API messages waiting to be stored
    ├── Banned            the user is banned from the room (until ``until``, or for good)
    ├── Unstorable        drafts of an append that can never be stored (the others can)
    ├── LogReset          the room's log went backwards (the store lost data): a new epoch
    ├── SearchUnsupported the engine cannot search messages (Redis, or its index switched off)
    ├── SearchTooBroad    a search across rooms matches more messages than it may order
    ├── RoomNotEmpty      an import into a room that already has entries
    └── StoreError        the message store failed or is closed

Only the gateway turns these into HTTP statuses and WebSocket close codes.
"""

from __future__ import annotations

from collections.abc import Sequence


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


class Unstorable(RoomError):
    """What no attempt could ever store (a text, name or id the store cannot encode, such as a
    lone surrogate that slipped past ``rooms.text``): nothing of the call was stored. For an
    ``Engine.append``, ``indexes`` are the positions of the faulty drafts (ascending, never
    empty): append the others again without them, and tell the senders of these; for any other
    call (a ban's reason, a user id) it is empty. Never a reason to retry, unlike
    ``StoreError``."""

    def __init__(self, indexes: Sequence[int], reason: str) -> None:
        super().__init__(reason)
        self.indexes = tuple(indexes)
        self.reason = reason


class LogReset(RoomError):
    """The room's log in the store is not the one the caller knows: its epoch changed, or it
    was behind what the caller has seen stored (the store lost data: a Redis restart without
    its AOF, a flush, a failover to a replica that lagged; the engine then moved the log past
    the caller's floor, under a new epoch). Nothing was stored. ``epoch`` is the log's epoch
    now and ``top`` its top seq (at least the caller's floor): appending again, with this
    epoch, continues after it. Whoever holds the old epoch must treat its view of the room's
    history as stale (``rooms.state.RoomState.reset``)."""

    def __init__(self, epoch: str, top: int) -> None:
        super().__init__(f"the room's log changed under it (new epoch {epoch}, top seq {top})")
        self.epoch = epoch
        self.top = top


class SearchUnsupported(RoomError):
    """This engine keeps no search index (``Engine.search``): the message names the engines
    that have one, or the setting that switches it on. Never a reason to retry."""


class SearchTooBroad(RoomError):
    """A search across rooms (``Engine.search_all``) matches more than ``most`` messages:
    ordering them by time means reading every one, so it is refused before that. The caller
    narrows the query (more words) or searches one room (an index read in seq order, any size).
    Not a reason to retry the same query."""

    def __init__(self, most: int) -> None:
        super().__init__(f"q matches more than {most} messages across rooms: add words, or "
                         "search one room (/api/v1/rooms/<room>/search)")
        self.most = most


class RoomNotEmpty(RoomError):
    """An import (``import_entries``) into a room whose log already holds entries (or whose seq
    counter has gone past 0): nothing was written. Entries left by an import that did not finish
    are not this: the next import of the room removes them and starts again."""

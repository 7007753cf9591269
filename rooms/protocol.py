"""Wire protocol v1 (docs/protocol.md): parse client frames, serialize server objects. No I/O.

Client frames are parsed into frozen dataclasses or a ``FrameError`` describing why the frame was
refused. ``DeleteMessage`` and ``BanUser`` are a moderator's (whether the sender is one is the
room's rule, ``rooms.state``; parsing checks only the frame's shape). Server objects are
serialized once to ``str`` so a broadcast shares one encoding among all recipients; a server
frame is several of them joined by ``\\n`` (see ``join_frame``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import orjson

from rooms.text import TextProblem, message_text, user_id_problem


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server sends (docs/protocol.md, "Close codes")."""

    NORMAL = 1000
    UNSUPPORTED_DATA = 1003  # binary frame
    POLICY_VIOLATION = 1008  # too many invalid frames
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011  # the room crashed
    SERVICE_RESTART = 1012  # server drain
    TRY_AGAIN_LATER = 1013  # storage unavailable for longer than store_outage_timeout
    TOKEN_EXPIRED = 4001
    REVOKED = 4003  # the user's access was revoked (roomchat revoke)
    BANNED = 4004  # a moderator banned the user from this room (server API)
    RATE_ABUSE = 4008
    SLOW_CONSUMER = 4009
    HEARTBEAT_TIMEOUT = 4010


class ErrorCode(enum.StrEnum):
    """``code`` of an ``error`` object."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    RATE_LIMITED = "rate_limited"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"  # storage unreachable: the message was not accepted
    FORBIDDEN = "forbidden"  # a moderation frame from a connection that does not moderate the room
    NOT_FOUND = "not_found"  # delete: no message with that seq is stored in the room
    ALREADY_DELETED = "already_deleted"  # delete: that message is a tombstone already
    SELF_BAN = "self_ban"  # ban: a moderator cannot ban themself


@dataclass(frozen=True, slots=True)
class SendMessage:
    """A client's ``message``: ``text`` already trimmed and length-checked."""

    text: str
    id: str | None


@dataclass(frozen=True, slots=True)
class Pong:
    """A client's ``pong``."""


@dataclass(frozen=True, slots=True)
class Typing:
    """A client's ``typing``: its person is composing a message. Relayed to the room's other
    members at most once per ``TYPING_INTERVAL`` per user; never stored, never acknowledged."""

    id: None = None  # like every non-pong frame (the gateway reads ``frame.id``); always None


TYPING_INTERVAL = 3.0
"""Seconds between two ``typing`` relays of one user; clients show one for about 5 s."""


@dataclass(frozen=True, slots=True)
class FrameError:
    """A refused client frame: what to tell the client."""

    code: ErrorCode
    message: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    """A moderator's ``delete``: replace message ``seq`` by its tombstone, for everyone."""

    seq: int
    id: str | None = None  # echoed in the ``moderated`` answer or the ``error``


@dataclass(frozen=True, slots=True)
class BanUser:
    """A moderator's ``ban``: close ``user``'s sockets in the room (4004) and refuse their joins,
    for ``minutes`` or until ``until`` (Unix seconds), or until lifted when both are ``None``
    (never both set)."""

    user: str
    reason: str = ""
    minutes: float | None = None
    until: float | None = None
    id: str | None = None


ModerationFrame = DeleteMessage | BanUser

MAX_REASON_CHARS = 200
"""Longest ``reason`` of a ``ban`` (the server API's limit too)."""
MAX_BAN_MINUTES = 100 * 366 * 24 * 60
"""Longest timed ban a ``ban`` frame may ask for (about a century); longer: leave both out."""
MAX_BAN_UNTIL = 253_402_300_799.0
"""Latest end of a timed ban, Unix seconds (9999-12-31 23:59:59 UTC: the last second Python's
``datetime`` can show); later: leave ``until`` out for a ban until lifted. The server API's
bans are held to it too."""

ClientFrame = SendMessage | Pong | Typing | DeleteMessage | BanUser | FrameError


def parse_client_frame(data: str, *, max_text_chars: int, max_id_chars: int) -> ClientFrame:
    """Parse one client text frame. Never raises: a bad frame becomes a ``FrameError``."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return FrameError(ErrorCode.INVALID_JSON, "frame is not valid JSON")
    if not isinstance(obj, dict):
        return FrameError(ErrorCode.INVALID_JSON, "frame must hold one JSON object")
    kind = obj.get("type")
    if kind == "pong":
        return Pong()
    if kind == "typing":
        return Typing()
    if kind not in ("message", "delete", "ban"):
        return FrameError(ErrorCode.INVALID_MESSAGE, f"unknown type {str(kind)[:32]!r}")
    client_id = obj.get("id")
    if client_id is not None and (
        not isinstance(client_id, str) or not 1 <= len(client_id) <= max_id_chars
    ):
        return FrameError(
            ErrorCode.INVALID_MESSAGE, f"id must be a string of 1 to {max_id_chars} characters"
        )
    if kind == "delete":
        return _parse_delete(obj, client_id)
    if kind == "ban":
        return _parse_ban(obj, client_id)
    text = message_text(obj.get("text"), max_text_chars)
    if isinstance(text, TextProblem):
        return FrameError(ErrorCode(text.code), text.message, client_id)
    return SendMessage(text=text, id=client_id)


def _parse_delete(obj: dict[str, Any], client_id: str | None) -> DeleteMessage | FrameError:
    seq = obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        return FrameError(ErrorCode.INVALID_MESSAGE, "seq must be a positive integer", client_id)
    return DeleteMessage(seq, client_id)


def _parse_ban(obj: dict[str, Any], client_id: str | None) -> BanUser | FrameError:
    def refuse(message: str) -> FrameError:
        return FrameError(ErrorCode.INVALID_MESSAGE, message, client_id)

    user = obj.get("user")
    problem = user_id_problem(user)
    if problem is not None:
        return refuse(f"user {problem}")
    assert isinstance(user, str)
    reason = obj.get("reason")
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or len(reason.strip()) > MAX_REASON_CHARS:
        return refuse(f"reason must be a string of at most {MAX_REASON_CHARS} characters")
    raw_minutes, raw_until = obj.get("minutes"), obj.get("until")
    minutes = until = None
    if raw_minutes is not None:
        minutes = positive_number(raw_minutes, MAX_BAN_MINUTES)
        if minutes is None:
            return refuse(f"minutes must be a number above 0 and at most {MAX_BAN_MINUTES}; "
                          "leave it out for a ban until lifted")
    if raw_until is not None:
        until = positive_number(raw_until, MAX_BAN_UNTIL)
        if until is None:
            return refuse(f"until must be a Unix time in seconds, at most {MAX_BAN_UNTIL:.0f}; "
                          "leave it out for a ban until lifted")
    if minutes is not None and until is not None:
        return refuse("give minutes or until, not both")
    return BanUser(user, reason.strip(), minutes, until, client_id)


def positive_number(value: object, maximum: float) -> float | None:
    """``value`` as a float if it is a number (not a bool) above 0 and at most ``maximum``,
    else ``None``. NaN and the infinities are refused (they fail every comparison or the
    bound): the one check of a number a client or an API caller gives, socket frame or HTTP
    body. (A NaN ``until`` once became a permanent ban, ``1e300`` a 503 on Redis.)"""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 < value <= maximum:  # False for NaN; compared before float(): a huge int overflows
        return None
    return float(value)


def dumps(obj: dict[str, Any]) -> str:
    """Serialize one server object (compact JSON, never containing a raw newline)."""
    return orjson.dumps(obj).decode()


def join_frame(objects: list[str]) -> str:
    """One server frame holding ``objects`` in order."""
    return "\n".join(objects)


def welcome(
    room: str, user: str, name: str, seq: int, members: list[dict[str, str]], recovered: bool,
    *, moderator: bool = False, epoch: str = "",
) -> str:
    """``moderator`` (only present when true): this connection may send ``delete`` and ``ban``.
    ``epoch``: the room's log's (docs/protocol.md, "Epochs"); a resume sends it back."""
    obj: dict[str, Any] = {"type": "welcome", "room": room, "user": user, "name": name,
                           "seq": seq, "members": members, "recovered": recovered,
                           "epoch": epoch}
    if moderator:
        obj["moderator"] = True
    return dumps(obj)


def ack(client_id: str | None, seq: int, *, duplicate: bool = False) -> str:
    obj: dict[str, Any] = {"type": "ack", "id": client_id, "seq": seq}
    if duplicate:
        obj["duplicate"] = True
    return dumps(obj)


def presence(event: str, user: str, name: str, ts: int) -> str:
    return dumps({"type": "presence", "event": event, "user": user, "name": name, "ts": ts})


def typing(user: str, name: str) -> str:
    return dumps({"type": "typing", "user": user, "name": name})


def deleted(seq: int) -> str:
    """A moderator deleted message ``seq``: clients replace it by a tombstone."""
    return dumps({"type": "delete", "seq": seq})


def moderated_delete(seq: int, client_id: str | None) -> str:
    """The answer to a moderator's ``delete``: done (every member was told)."""
    return dumps({"type": "moderated", "action": "delete", "seq": seq, "id": client_id})


def moderated_ban(user: str, until: float | None, reason: str, client_id: str | None) -> str:
    """The answer to a moderator's ``ban``: stored, and the user's sockets here are closing."""
    return dumps({"type": "moderated", "action": "ban", "user": user, "until": until,
                  "reason": reason, "id": client_id})


def ping(ts: int) -> str:
    return dumps({"type": "ping", "ts": ts})


def error(
    code: ErrorCode, message: str, *, client_id: str | None = None,
    retry_after: float | None = None,
) -> str:
    obj: dict[str, Any] = {"type": "error", "code": code.value, "message": message}
    if retry_after is not None:
        obj["retry_after"] = round(retry_after, 3)
    if client_id is not None:
        obj["id"] = client_id
    return dumps(obj)

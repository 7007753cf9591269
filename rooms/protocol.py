"""Wire protocol v1 (docs/protocol.md): parse client frames, serialize server objects. No I/O.

Client frames are parsed into frozen dataclasses or a ``FrameError`` describing why the frame was
refused. Server objects are serialized once to ``str`` so a broadcast shares one encoding among
all recipients; a server frame is several of them joined by ``\\n`` (see ``join_frame``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import orjson


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


ClientFrame = SendMessage | Pong | Typing | FrameError


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
    if kind != "message":
        return FrameError(ErrorCode.INVALID_MESSAGE, f"unknown type {str(kind)[:32]!r}")
    client_id = obj.get("id")
    if client_id is not None and (
        not isinstance(client_id, str) or not 1 <= len(client_id) <= max_id_chars
    ):
        return FrameError(
            ErrorCode.INVALID_MESSAGE, f"id must be a string of 1 to {max_id_chars} characters"
        )
    text = obj.get("text")
    if not isinstance(text, str):
        return FrameError(ErrorCode.INVALID_MESSAGE, "text must be a string", client_id)
    text = text.strip()
    if not text:
        return FrameError(ErrorCode.EMPTY_TEXT, "text is empty", client_id)
    if len(text) > max_text_chars:
        return FrameError(
            ErrorCode.TEXT_TOO_LONG, f"text is longer than {max_text_chars} characters", client_id
        )
    return SendMessage(text=text, id=client_id)


def dumps(obj: dict[str, Any]) -> str:
    """Serialize one server object (compact JSON, never containing a raw newline)."""
    return orjson.dumps(obj).decode()


def join_frame(objects: list[str]) -> str:
    """One server frame holding ``objects`` in order."""
    return "\n".join(objects)


def welcome(
    room: str, user: str, name: str, seq: int, members: list[dict[str, str]], recovered: bool
) -> str:
    return dumps({"type": "welcome", "room": room, "user": user, "name": name, "seq": seq,
                  "members": members, "recovered": recovered})


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

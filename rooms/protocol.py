"""Wire protocol v1 (docs/protocol.md): parse client frames, serialize server objects. No I/O.

Client frames are parsed into frozen dataclasses or a ``FrameError`` describing why the frame was
refused: messages (``SendMessage``, with an optional reply and mentions), changes to them
(``EditMessage``, ``DeleteMessage``, ``React``), read markers (``MarkRead``), a moderator's
``BanUser``, and the light ``Pong``/``Typing``. Parsing checks the frame's shape only (one RGI
emoji, user ids, texts through ``rooms.text``); who may do what is the room's rule
(``rooms.state``) and the log's (``rooms.changes``). Server objects are
serialized once to ``str`` so a broadcast shares one encoding among all recipients; a server
frame is several of them joined by ``\\n`` (see ``join_frame``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import emoji
import orjson

from rooms.attachments import FILE_ID, FileRef
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
    FORBIDDEN = "forbidden"  # not the author's (edit, delete) or a moderator's (delete, ban)
    NOT_FOUND = "not_found"  # a change or a reply to a seq that is no stored message
    ALREADY_DELETED = "already_deleted"  # a change or a reply to a tombstone
    EDIT_WINDOW_PASSED = "edit_window_passed"  # edit: later than edit_window after the message
    TOO_MANY_REACTIONS = "too_many_reactions"  # react: a new emoji beyond max_reactions
    SELF_BAN = "self_ban"  # ban: a moderator cannot ban themself
    FILE_NOT_FOUND = "file_not_found"  # message: a file id that is no upload of the sender here
    FILE_NOT_ATTACHABLE = "file_not_attachable"  # message: attached already, or too old
    TOO_MANY_FILES = "too_many_files"  # message: more than max_files_per_message


@dataclass(frozen=True, slots=True)
class SendMessage:
    """A client's ``message``: ``text`` already trimmed and length-checked (empty only when it
    names files); ``reply_to`` the seq of the message it answers; ``mentions`` user ids
    (checked, duplicates removed, in the order given).

    ``file_ids``: the uploads it carries, as the client named them (well-formed ids, no
    duplicates, at most ``max_files_per_message``). The room never looks them up itself: the
    gateway resolves them before the frame enters the room (``gateway.attachments``) and
    hands it over with ``files``, their metadata in the same order; a frame whose
    ``files`` do not match its ``file_ids`` is refused by the room (``RoomState.receive``)."""

    text: str
    id: str | None
    reply_to: int | None = None
    mentions: tuple[str, ...] = ()
    file_ids: tuple[str, ...] = ()
    files: tuple[FileRef, ...] = ()


@dataclass(frozen=True, slots=True)
class EditMessage:
    """A client's ``edit``: replace the text of message ``seq`` (its author's) by ``text``."""

    seq: int
    text: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class React:
    """A client's ``react``: put (``on``) or take back one ``emoji`` on message ``seq``."""

    seq: int
    emoji: str
    on: bool
    id: str | None = None


@dataclass(frozen=True, slots=True)
class MarkRead:
    """A client's ``read``: its person has read the room up to ``seq``. Never answered."""

    seq: int
    id: None = None  # like every non-pong frame (the gateway reads ``frame.id``); always None


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
    """A ``delete``: replace message ``seq`` by its tombstone, for everyone (its author's, or a
    moderator's for any message)."""

    seq: int
    id: str | None = None  # echoed in the ``ack`` or the ``error``


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


ChangeFrame = EditMessage | DeleteMessage | React
"""The frames that change a stored message: each becomes an entry of the room's log."""

MAX_SEQ = 2**53
"""Highest seq a frame may name (JavaScript's exact integers: seqs never get near it)."""
MAX_EMOJI_CHARS = 32
"""Longest ``emoji`` of a ``react`` (code points): the longest RGI sequences are 10."""

MAX_REASON_CHARS = 200
"""Longest ``reason`` of a ``ban`` (the server API's limit too)."""
MAX_BAN_MINUTES = 100 * 366 * 24 * 60
"""Longest timed ban a ``ban`` frame may ask for (about a century); longer: leave both out."""
MAX_BAN_UNTIL = 253_402_300_799.0
"""Latest end of a timed ban, Unix seconds (9999-12-31 23:59:59 UTC: the last second Python's
``datetime`` can show); later: leave ``until`` out for a ban until lifted. The server API's
bans are held to it too."""

ClientFrame = (SendMessage | Pong | Typing | EditMessage | DeleteMessage | React | MarkRead
               | BanUser | FrameError)


def parse_client_frame(data: str, *, max_text_chars: int, max_id_chars: int,
                       max_mentions: int = 20, max_files: int = 10) -> ClientFrame:
    """Parse one client text frame. Never raises: a bad frame becomes a ``FrameError``.
    ``max_files``: most file ids one ``message`` may carry (``too_many_files`` beyond)."""
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
    if kind == "read":
        seq = _seq(obj.get("seq"))
        if seq is None:
            return FrameError(ErrorCode.INVALID_MESSAGE, f"seq must be an integer from 1 to "
                              f"{MAX_SEQ}")
        return MarkRead(seq)
    if kind not in ("message", "edit", "delete", "react", "ban"):
        return FrameError(ErrorCode.INVALID_MESSAGE, f"unknown type {str(kind)[:32]!r}")
    client_id = obj.get("id")
    if client_id is not None and (
        not isinstance(client_id, str) or not 1 <= len(client_id) <= max_id_chars
    ):
        return FrameError(
            ErrorCode.INVALID_MESSAGE, f"id must be a string of 1 to {max_id_chars} characters"
        )
    if kind == "ban":
        return _parse_ban(obj, client_id)
    if kind != "message":
        return _parse_change(kind, obj, client_id, max_text_chars)
    file_ids = _file_ids(obj.get("files"))
    if isinstance(file_ids, str):
        return FrameError(ErrorCode.INVALID_MESSAGE, file_ids, client_id)
    if len(file_ids) > max_files:
        return FrameError(ErrorCode.TOO_MANY_FILES, f"a message carries at most {max_files} "
                          "files", client_id)
    raw_text = obj.get("text")
    if file_ids and (raw_text is None or (isinstance(raw_text, str) and not raw_text.strip())):
        text: str | TextProblem = ""  # files alone: the text may be left out or empty
    else:
        text = message_text(raw_text, max_text_chars)
    if isinstance(text, TextProblem):
        return FrameError(ErrorCode(text.code), text.message, client_id)
    reply_to = None
    if obj.get("reply_to") is not None:
        reply_to = _seq(obj.get("reply_to"))
        if reply_to is None:
            return FrameError(ErrorCode.INVALID_MESSAGE, "reply_to must be the seq of a message "
                              f"(an integer from 1 to {MAX_SEQ})", client_id)
    mentions = _mentions(obj.get("mentions"), max_mentions)
    if isinstance(mentions, str):
        return FrameError(ErrorCode.INVALID_MESSAGE, mentions, client_id)
    return SendMessage(text, client_id, reply_to, mentions, file_ids)


def _seq(value: object) -> int | None:
    """``value`` as the seq of a message, or None when it is not one (1 to ``MAX_SEQ``)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SEQ:
        return None
    return value


def _file_ids(value: object) -> tuple[str, ...] | str:
    """A message's ``files`` (absent or null: none), duplicates removed; or why they are
    refused. The count is checked by the caller (its own error code)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
            isinstance(item, str) and FILE_ID.fullmatch(item) for item in value):
        return "files must be a list of file ids (each the id an upload answered with)"
    return tuple(dict.fromkeys(value))


def _mentions(value: object, most: int) -> tuple[str, ...] | str:
    """A message's ``mentions`` (absent: none), duplicates removed; or why they are refused."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > most:
        return f"mentions must be a list of at most {most} user ids"
    for user in value:
        problem = user_id_problem(user)
        if problem is not None:
            return f"each of mentions {problem}"
    return tuple(dict.fromkeys(value))


def _parse_change(kind: str, obj: dict[str, Any], client_id: str | None,
                  max_text_chars: int) -> EditMessage | DeleteMessage | React | FrameError:
    seq = _seq(obj.get("seq"))
    if seq is None:
        return FrameError(ErrorCode.INVALID_MESSAGE, f"seq must be the seq of a message (an "
                          f"integer from 1 to {MAX_SEQ})", client_id)
    if kind == "delete":
        return DeleteMessage(seq, client_id)
    if kind == "edit":
        text = message_text(obj.get("text"), max_text_chars)
        if isinstance(text, TextProblem):
            return FrameError(ErrorCode(text.code), text.message, client_id)
        return EditMessage(seq, text, client_id)
    glyph, on = obj.get("emoji"), obj.get("on")
    if not isinstance(glyph, str) or not 1 <= len(glyph) <= MAX_EMOJI_CHARS or \
            not emoji.is_emoji(glyph):
        return FrameError(ErrorCode.INVALID_MESSAGE, "emoji must be one emoji (a single "
                          "Unicode RGI emoji, such as \U0001f44d)", client_id)
    if not isinstance(on, bool):
        return FrameError(ErrorCode.INVALID_MESSAGE, "on must be true (put the reaction) or "
                          "false (take it back)", client_id)
    return React(seq, glyph, on, client_id)


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
    *, max_files: int, moderator: bool = False, epoch: str = "", read: int = 0, unread: int = 0,
    mentions: int = 0, capped: bool = False,
) -> str:
    """``moderator`` (only present when true): this connection may delete others' messages and
    ban users. ``epoch``: the room's log's (docs/protocol.md, "Epochs"); a resume sends it
    back. ``read``, ``unread``, ``mentions``: the user's read marker and what came after it
    (``unread_capped`` when counting stopped at ``unread_scan``). ``max_files``: the most files
    a message may carry here (``max_files_per_message``; 0: the room takes no files), so a
    client offers no more than that."""
    obj: dict[str, Any] = {"type": "welcome", "room": room, "user": user, "name": name,
                           "seq": seq, "members": members, "recovered": recovered,
                           "epoch": epoch, "read": read, "unread": unread,
                           "mentions": mentions, "max_files_per_message": max_files}
    if capped:
        obj["unread_capped"] = True
    if moderator:
        obj["moderator"] = True
    return dumps(obj)


def with_replay_upto(welcome: str, seq: int) -> str:
    """``welcome`` (as ``welcome`` serialised it) with ``replay_upto``: the seq of the last
    entry the replay after it carries (0: none). Known only once the session has read the
    replay's end, after the room built the welcome: added then, without parsing it again."""
    return f'{welcome[:-1]},"replay_upto":{seq}}}'


def ack(client_id: str | None, seq: int, *, duplicate: bool = False,
        noop: bool = False) -> str:
    """The answer to a stored message or change (``seq``: its entry's), a duplicate of one
    (the original's seq), or a reaction that changed nothing (``noop``: the seq of its
    message's last change)."""
    obj: dict[str, Any] = {"type": "ack", "id": client_id, "seq": seq}
    if duplicate:
        obj["duplicate"] = True
    if noop:
        obj["noop"] = True
    return dumps(obj)


def read(seq: int) -> str:
    """The user's read marker in the room moved to ``seq`` (on another of their connections)."""
    return dumps({"type": "read", "seq": seq})


def presence(event: str, user: str, name: str, ts: int) -> str:
    return dumps({"type": "presence", "event": event, "user": user, "name": name, "ts": ts})


def typing(user: str, name: str) -> str:
    return dumps({"type": "typing", "user": user, "name": name})


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

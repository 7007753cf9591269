"""What the Redis engine reads back from Redis, parsed as untrusted input. Pure; no I/O.

Redis holds what roomchat's scripts wrote, but anyone with access to it can write anything (an
operator's ``SET`` by hand, another program, a restore of something else), and one entry that
does not parse must not fail a join (500) or crash its room (1011). So every record is checked
here, its texts with ``rooms.text`` like any text that enters: a record that cannot be used is
``None`` (the caller skips it), one that can be mended is mended (``Parsed.repaired`` says so,
for the caller's one warning line).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Generic, TypeVar

from rooms.engine import Ban
from rooms.state import StoredMessage
from rooms.text import unsafe_text

_T = TypeVar("_T")

_DIGITS = re.compile(rb"[0-9]{1,15}")
"""A seq or a count as roomchat writes it: ASCII digits, at most 15 (below 2**53, so exact in
Lua's doubles and in a stream id)."""


@dataclass(frozen=True, slots=True)
class Parsed(Generic[_T]):
    """A record as read (``repaired`` False) or mended into something usable (True: the caller
    logs one warning naming what was wrong)."""

    value: _T
    repaired: bool = False


def text(raw: object) -> str | None:
    """``raw`` (bytes from Redis) as UTF-8 text, or None when it is not (a strict decode also
    refuses encoded surrogates, which no UTF-8 encoder writes)."""
    if not isinstance(raw, bytes):
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def identifier(raw: object) -> str | None:
    """A user id, display name, client id or reason: text that ``rooms.text.unsafe_text``
    accepts, else None."""
    value = text(raw)
    if value is None or unsafe_text(value) is not None:
        return None
    return value


def count(raw: object) -> int | None:
    """A seq or a count (bytes or an int from Redis) as roomchat writes it, else None."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw if 0 <= raw < 10**15 else None
    if isinstance(raw, bytes) and _DIGITS.fullmatch(raw):
        return int(raw)
    return None


def entry_seq(entry_id: object) -> int | None:
    """The seq of a log entry's id ``0-<seq>``; None for an id roomchat did not write."""
    if not isinstance(entry_id, bytes) or not entry_id.startswith(b"0-"):
        return None
    return count(entry_id[2:])


def message(room: str, entry_id: object, fields: object) -> Parsed[StoredMessage] | None:
    """The stored message of a log entry (fields ``user``, ``name``, ``id``, ``text``, ``ts``).
    None when it cannot be one: no usable seq, user, text or ts. A missing or unusable name
    becomes the user id, an unusable client id none (repaired)."""
    seq = entry_seq(entry_id)
    if seq is None or not isinstance(fields, dict):
        return None
    user = identifier(fields.get(b"user"))
    body = text(fields.get(b"text"))
    ts = count(fields.get(b"ts"))
    if not user or body is None or ts is None:
        return None
    repaired = False
    name = identifier(fields.get(b"name"))
    if not name:
        name, repaired = user, True
    raw_id = fields.get(b"id", b"")
    client_id = identifier(raw_id) if raw_id != b"" else ""
    if client_id is None:
        client_id, repaired = "", True
    return Parsed(StoredMessage(room, seq, user, name, client_id or None, body, ts), repaired)


def tombstone(room: str, raw_seq: object, value: object) -> StoredMessage | None:
    """A deleted message from the tombstone hash (``seq -> user\\0name\\0id\\0ts``), or None
    when the field or its value is not one."""
    seq = count(raw_seq)
    if seq is None or not isinstance(value, bytes):
        return None
    parts = value.split(b"\0")
    if len(parts) != 4:
        return None
    user, name, raw_id, raw_ts = parts
    user_id, ts = identifier(user), count(raw_ts)
    if not user_id or ts is None:
        return None
    client_id = identifier(raw_id) if raw_id else None
    return StoredMessage(room, seq, user_id, identifier(name) or user_id, client_id or None,
                         "", ts)


def ban(user: str, value: object) -> Parsed[Ban]:
    """A ban key's value ``<until>\\0<reason>`` (``until`` empty: until lifted). The key exists,
    so the user is banned whatever the value says: an unreadable end is read as "until lifted"
    (Redis still ends the key at its own expiry) and an unusable reason as none (repaired)."""
    if not isinstance(value, bytes):
        return Parsed(Ban(user, None, ""), repaired=True)
    raw_until, separator, raw_reason = value.partition(b"\0")
    repaired = not separator
    until: float | None = None
    if raw_until:
        try:
            until = float(raw_until)
        except ValueError:
            until = None
        if until is None or not math.isfinite(until):
            until, repaired = None, True
    reason = identifier(raw_reason) if raw_reason else ""
    if reason is None:
        reason, repaired = "", True
    return Parsed(Ban(user, until, reason), repaired)


def presence(field: object, value: object, now_ms: float) -> tuple[str, str] | None:
    """A live presence entry (``node\\0user -> expires_ms\\0name``) as ``(user, name)``; None
    when it has expired or is not an entry roomchat wrote."""
    if not isinstance(field, bytes) or not isinstance(value, bytes):
        return None
    _, separator, raw_user = field.partition(b"\0")
    raw_expires, value_separator, raw_name = value.partition(b"\0")
    expires = count(raw_expires)
    user, name = identifier(raw_user), identifier(raw_name)
    if not separator or not value_separator or expires is None or not user or name is None:
        return None
    return (user, name) if expires > now_ms else None

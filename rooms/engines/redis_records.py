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
from typing import Generic, TypeGuard, TypeVar

import orjson

from rooms.attachments import files_from_json
from rooms.engine import Ban
from rooms.messages import (
    Action,
    DeletedBy,
    Entry,
    Reaction,
    Reply,
    StoredChange,
    StoredMessage,
)
from rooms.text import unsafe_text

_T_co = TypeVar("_T_co", covariant=True)

_DIGITS = re.compile(rb"[0-9]{1,15}")
"""A seq or a count as roomchat writes it: ASCII digits, at most 15 (below 2**53, so exact in
Lua's doubles and in a stream id)."""


@dataclass(frozen=True, slots=True)
class Parsed(Generic[_T_co]):
    """A record as read (``repaired`` False) or mended into something usable (True: the caller
    logs one warning naming what was wrong)."""

    value: _T_co
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
    """The stored message of a log entry (fields ``user``, ``name``, ``id``, ``text``, ``ts``,
    and ``reply``, ``mentions``, ``files`` when set). None when it cannot be one: a change
    entry, no usable seq, user, text or ts. A missing or unusable name becomes the user id, an
    unusable client id none, an unusable reply, mentions or files none (repaired)."""
    seq = entry_seq(entry_id)
    if seq is None or not isinstance(fields, dict) or b"c" in fields:
        return None
    user = identifier(fields.get(b"user"))
    body = text(fields.get(b"text"))
    ts = count(fields.get(b"ts"))
    if not user or body is None or ts is None:
        return None
    name, client_id, repaired = _author(user, fields)
    reply = mentions = files = None
    raw_reply, raw_mentions = fields.get(b"reply"), fields.get(b"mentions")
    raw_files = fields.get(b"files")
    if raw_reply is not None:
        reply = _reply(_loads(raw_reply))
        repaired |= reply is None
    if raw_mentions is not None:
        mentions = _users(_loads(raw_mentions))
        repaired |= mentions is None
    if raw_files is not None:
        files = files_from_json(_loads(raw_files))
        repaired |= files is None
    if not body and not files:
        return None  # neither text nor files: no message (a tombstone is never in the stream)
    return Parsed(StoredMessage(room, seq, user, name, client_id, body, ts, reply,
                                mentions or (), files=files or ()), repaired)


_ACTIONS = {b"e": Action.EDIT, b"d": Action.DELETE, b"r": Action.REACT}


def change(room: str, entry_id: object, fields: object) -> Parsed[StoredChange] | None:
    """The change of a log entry (fields ``c``: ``e``/``d``/``r``, ``target``, ``user``,
    ``name``, ``id``, ``ts``, and ``text`` / ``by`` / ``emoji`` and ``on``). None when it
    cannot be one (not a change, no usable seq, action, target, user or ts); an unusable name
    or id is mended as for messages, an edit's unusable text read as ``""`` (repaired)."""
    seq = entry_seq(entry_id)
    if seq is None or not isinstance(fields, dict):
        return None
    action = _ACTIONS.get(fields.get(b"c"))  # type: ignore[arg-type]
    target = count(fields.get(b"target"))
    user = identifier(fields.get(b"user"))
    ts = count(fields.get(b"ts"))
    if action is None or not target or not user or ts is None:
        return None
    name, client_id, repaired = _author(user, fields)
    entry = StoredChange(room, seq, user, name, client_id, ts, action, target)
    if action is Action.EDIT:
        body = text(fields.get(b"text"))
        if body is None:
            body, repaired = "", True
        entry = StoredChange(room, seq, user, name, client_id, ts, action, target, body)
    elif action is Action.DELETE:
        by = DeletedBy.AUTHOR if fields.get(b"by") == b"author" else DeletedBy.MODERATOR
        repaired |= fields.get(b"by") not in (b"author", b"moderator")
        entry = StoredChange(room, seq, user, name, client_id, ts, action, target, by=by)
    else:
        emoji = identifier(fields.get(b"emoji"))
        if not emoji:
            return None
        entry = StoredChange(room, seq, user, name, client_id, ts, action, target,
                             emoji=emoji, on=fields.get(b"on") == b"1")
    return Parsed(entry, repaired)


def entry(room: str, entry_id: object, fields: object) -> Parsed[Entry] | None:
    """A log entry: a change when it says so (field ``c``), else a message."""
    if isinstance(fields, dict) and b"c" in fields:
        return change(room, entry_id, fields)
    return message(room, entry_id, fields)


def state(room: str, raw_seq: object, value: object) -> Parsed[StoredMessage] | None:
    """A message's current state from the room's state hash (``seq -> JSON``: ``user``,
    ``name``, ``id``, ``text``, ``ts``, ``reply``, ``mentions``, ``files``, ``edited``,
    ``reactions``
    (``[[emoji, [user, ...]], ...]``), ``d`` (deleted); log.lua writes it). None when it
    cannot be one; what can be mended is (repaired)."""
    seq = count(raw_seq)
    obj = _loads(value)
    if seq is None or not isinstance(obj, dict):
        return None
    user = _identifier(obj.get("user"))
    ts = obj.get("ts")
    if not user or not _whole(ts):
        return None
    name = _identifier(obj.get("name"))
    repaired = not name
    raw_id = obj.get("id") or ""
    client_id = _identifier(raw_id) if raw_id else ""
    if client_id is None:
        client_id, repaired = "", True
    if obj.get("d"):
        return Parsed(StoredMessage(room, seq, user, name or user, client_id or None, "", ts),
                      repaired)
    body = obj.get("text")
    files = () if obj.get("files") is None else files_from_json(obj.get("files"))
    if not isinstance(body, str) or not (body or files) or \
            unsafe_text(body) == "a lone surrogate":
        return None
    reply = None if obj.get("reply") is None else _reply(obj.get("reply"))
    mentions = () if obj.get("mentions") is None else _users(obj.get("mentions"))
    edited = obj.get("edited")
    reactions = _reactions(obj.get("reactions"))
    repaired |= (obj.get("reply") is not None and reply is None) or mentions is None or (
        edited is not None and not _whole(edited)) or reactions is None or files is None
    return Parsed(StoredMessage(room, seq, user, name or user, client_id or None, body, ts,
                                reply, mentions or (), edited if _whole(edited) else None,
                                reactions or (), files or ()), repaired)


def _author(user: str, fields: dict[object, object]) -> tuple[str, str | None, bool]:
    """An entry's name and client id, mended when unusable: the user id, none."""
    repaired = False
    name = identifier(fields.get(b"name"))
    if not name:
        name, repaired = user, True
    raw_id = fields.get(b"id", b"")
    client_id = identifier(raw_id) if raw_id != b"" else ""
    if client_id is None:
        client_id, repaired = "", True
    return name, client_id or None, repaired


def _loads(raw: object) -> object:
    """JSON from Redis, or None when it is not JSON."""
    if not isinstance(raw, bytes | str):
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _whole(value: object) -> TypeGuard[int]:
    """A seq, ts or count as JSON gives it (Lua's cjson writes whole numbers plainly)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**15


def _identifier(value: object) -> str | None:
    return value if isinstance(value, str) and unsafe_text(value) is None else None


def _reply(value: object) -> Reply | None:
    """``[seq, user, name, excerpt]``, or None."""
    if not isinstance(value, list) or len(value) != 4:
        return None
    seq, user, name, quoted = value
    if not _whole(seq) or not _identifier(user) or _identifier(name) is None or \
            not isinstance(quoted, str) or unsafe_text(quoted) == "a lone surrogate":
        return None
    return Reply(seq, user, name, quoted)


def _users(value: object) -> tuple[str, ...] | None:
    """A list of user ids, or None."""
    if not isinstance(value, list) or not all(_identifier(u) for u in value):
        return None
    return tuple(value)


def _reactions(value: object) -> tuple[Reaction, ...] | None:
    """``[[emoji, [user, ...]], ...]`` (absent: none), or None when unusable."""
    if value is None:
        return ()
    if not isinstance(value, list):
        return None
    reactions = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2 or not _identifier(item[0]):
            return None
        users = _users(item[1])
        if not users:
            return None
        reactions.append(Reaction(item[0], users))
    return tuple(reactions)


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

"""Moving rooms between engines: the export file's format, and ``roomchat import``.

An export (``roomchat export``, gateway/backup.py) is NDJSON in **sections**, one per room (or
per incremental run of one room): a header line, the room's log entries with ``seq > after``
oldest first, exactly as a resume after ``after`` replays them (messages in their current
state, change entries as stored: docs/protocol.md), and an end line::

    {"type":"export","format":1,"room":"lobby","after":0,"epoch":"9f...","top":1207}
    {"type":"message","room":"lobby","seq":1,...}
    {"type":"change","room":"lobby","seq":3,"action":"edit","target":1,...}
    {"type":"end","room":"lobby","seq":1207,"entries":1180}

``top`` is the room's seq counter when the export began, ``seq`` the last seq written (``after``
when none: ``tail -n1 | jq .seq`` gives where an incremental export goes on) and ``entries``
how many: a file cut short has no end line, or one that does not match, and is refused.
Sections of one room that follow each other (``--after`` = the last one's ``seq``) are one log:
the later changes are folded into the earlier messages as a client's replay folds them.

``import_export`` writes each room into an engine **at its seqs** (``import_entries`` of the
SQLite and Redis engines): the whole file is checked first, and every room it would write, so a
refusal writes nothing. Not carried: read markers, bans, revocations, dedup ids beyond the
entries' own, uploaded files' bytes (docs/operations.md, "Moving between engines").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from gateway.auth import valid_room_name
from rooms import changes
from rooms.attachments import files_from_json
from rooms.errors import RoomNotEmpty
from rooms.messages import (
    Action,
    DeletedBy,
    Entry,
    Reaction,
    Reply,
    StoredChange,
    StoredMessage,
)
from rooms.text import has_lone_surrogate, message_text, unsafe_text, user_id_problem

FORMAT = 1
"""The export format this version writes and reads (the header's ``format``)."""
HEADER = "export"
END = "end"
MAX_SEQ = 2**53
"""Seqs are below this (exact in JSON readers and Lua's doubles)."""


class ExportFileError(ValueError):
    """The file is not a whole export this version reads: the message is one line naming the
    file, the line and what to do."""


def header_line(room: str, after: int, epoch: str | None, top: int) -> str:
    return orjson.dumps({"type": HEADER, "format": FORMAT, "room": room, "after": after,
                         "epoch": epoch, "top": top}).decode() + "\n"


def end_line(room: str, seq: int, entries: int) -> str:
    return orjson.dumps({"type": END, "room": room, "seq": seq, "entries": entries}).decode() \
        + "\n"


@dataclass(slots=True)
class RoomLog:
    """One room of an export, its sections folded together: ``entries`` oldest first."""

    room: str
    epoch: str | None
    top: int
    entries: list[Entry]


class _Bad(Exception):
    """A field of an entry that is not what ``roomchat export`` writes."""


def _int(obj: dict[str, Any], key: str, *, low: int = 0) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < MAX_SEQ:
        raise _Bad(f"{key} must be a whole number from {low}")
    return value


def _ident(obj: dict[str, Any], key: str, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or unsafe_text(value) is not None:
        raise _Bad(f"{key} must be a non-empty string without control characters")
    return value


def _user(obj: dict[str, Any], key: str = "user") -> str:
    problem = user_id_problem(obj.get(key))
    if problem is not None:
        raise _Bad(f"{key} {problem}")
    return str(obj[key])


NUL_REPLACEMENT = "\ufffd"
"""What U+0000 in an export's texts becomes: ``rooms.text`` refuses it now (PostgreSQL cannot
hold it), but a SQLite or Redis store may have kept it before, and its export must still move."""


def _no_nul(value: object) -> object:
    return value.replace("\0", NUL_REPLACEMENT) if isinstance(value, str) else value


def _text(value: object, max_chars: int, *, empty: bool) -> str:
    """A stored text: as ``rooms.text.message_text`` keeps it (trimmed, within the limit), or
    ``""`` where ``empty`` allows (a tombstone, a files-only message, an erased edit). U+0000
    becomes ``NUL_REPLACEMENT``."""
    if value == "" and empty:
        return ""
    value = _no_nul(value)
    checked = message_text(value, max_chars)
    if not isinstance(checked, str):
        raise _Bad(checked.message + ("" if checked.code != "text_too_long"
                                     else " (ROOMCHAT_MAX_TEXT_CHARS of this server)"))
    if checked != value:
        raise _Bad("text has spaces around it (no stored text does)")
    return checked


def parse_entry(obj: dict[str, Any], room: str, max_text_chars: int) -> Entry:
    """A log entry from its wire object (docs/protocol.md), every text checked as any text
    that enters (``rooms.text``). Raises ``_Bad``."""
    if obj.get("room") != room:
        raise _Bad(f"room must be {room!r} (its section's)")
    seq = _int(obj, "seq", low=1)
    user, name = _user(obj), _ident(obj, "name")
    client_id = _ident(obj, "id", optional=True)
    ts = _int(obj, "ts")
    if obj.get("type") == "change":
        action = obj.get("action")
        target = _int(obj, "target", low=1)
        if action == Action.EDIT:
            text = _text(obj.get("text"), max_text_chars, empty=True)
            return StoredChange(room, seq, user, name, client_id, ts, Action.EDIT, target, text)
        if action == Action.DELETE:
            if obj.get("by") not in ("author", "moderator"):
                raise _Bad("by must be author or moderator")
            return StoredChange(room, seq, user, name, client_id, ts, Action.DELETE, target,
                                by=DeletedBy(obj["by"]))
        if action == Action.REACT:
            if not isinstance(obj.get("on"), bool):
                raise _Bad("on must be true or false")
            return StoredChange(room, seq, user, name, client_id, ts, Action.REACT, target,
                                emoji=_ident(obj, "emoji"), on=obj["on"])
        raise _Bad("action must be edit, delete or react")
    if obj.get("type") != "message":
        raise _Bad("type must be message or change (or the section's end)")
    if obj.get("deleted") is True:
        if obj.get("text") != "":
            raise _Bad("a deleted message's text must be empty")
        return StoredMessage(room, seq, user, name, client_id, "", ts)
    files = files_from_json(obj.get("files", []))
    if files is None:
        raise _Bad("files must be a list of file objects (docs/protocol.md)")
    text = _text(obj.get("text"), max_text_chars, empty=bool(files))
    reply = None
    if "reply_to" in obj:
        raw = obj["reply_to"]
        if not isinstance(raw, dict) or not isinstance(raw.get("excerpt"), str) \
                or has_lone_surrogate(raw["excerpt"]):
            raise _Bad("reply_to must be {seq, user, name, excerpt}")
        raw = {**raw, "excerpt": _no_nul(raw["excerpt"])}
        reply = Reply(_int(raw, "seq", low=1), _user(raw), _ident(raw, "name"), raw["excerpt"])
    mentions = obj.get("mentions", [])
    if not isinstance(mentions, list) or any(user_id_problem(m) for m in mentions):
        raise _Bad("mentions must be a list of user ids")
    edited = None if obj.get("edited") is None else _int(obj, "edited")
    reactions = []
    for raw in obj.get("reactions", []) if isinstance(obj.get("reactions", []), list) else [0]:
        if not isinstance(raw, dict) or not isinstance(raw.get("users"), list) or \
                not raw["users"] or any(user_id_problem(u) for u in raw["users"]):
            raise _Bad("reactions must be a list of {emoji, users}")
        reactions.append(Reaction(_ident(raw, "emoji"), tuple(raw["users"])))
    return StoredMessage(room, seq, user, name, client_id, text, ts, reply, tuple(mentions),
                         edited, tuple(reactions), files)


def _fold(log: dict[int, Entry], change: StoredChange, upto: int) -> None:
    """Apply ``change`` of a later section to the messages of earlier ones (seq <= ``upto``),
    as the engines do: a delete also empties its target's edits and the excerpts quoting it."""
    target = log.get(change.target)
    if change.target > upto or not isinstance(target, StoredMessage):
        return
    log[change.target] = changes.fold(target, change)
    if change.action is not Action.DELETE or target.deleted:
        return
    for seq, entry in log.items():
        if isinstance(entry, StoredChange) and entry.target == change.target \
                and entry.action is Action.EDIT and entry.text:
            log[seq] = dataclasses.replace(entry, text="")
        elif isinstance(entry, StoredMessage) and entry.reply_to is not None \
                and entry.reply_to.seq == change.target and entry.reply_to.excerpt:
            log[seq] = dataclasses.replace(
                entry, reply_to=dataclasses.replace(entry.reply_to, excerpt=""))


def read_rooms(lines: Iterable[bytes], name: str, max_text_chars: int,
               advance: Callable[[int], object] | None = None) -> Iterator[RoomLog]:
    """The rooms of an export, in file order, each once all of its sections are read.
    ``advance(n)`` after each line (its bytes). Raises ``ExportFileError``."""
    current: RoomLog | None = None
    log: dict[int, Entry] = {}
    section: dict[str, Any] | None = None  # the open section's header
    count = last = 0
    seen: set[str] = set()
    number = 0
    for number, raw in enumerate(lines, start=1):
        if advance is not None:
            advance(len(raw))
        where = f"{name} line {number}"
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            if section is not None and not raw.endswith(b"\n"):
                raise ExportFileError(f"{where} is cut short: the file is truncated; export "
                                      "the room again") from None
            raise ExportFileError(f"{where} is not JSON: not a roomchat export") from None
        if not isinstance(obj, dict):
            raise ExportFileError(f"{where} is not a JSON object: not a roomchat export")
        kind = obj.get("type")
        if section is None:
            if kind != HEADER:
                raise ExportFileError(
                    f"{where} is no export header: not a file `roomchat export` writes (one "
                    "from a version before `roomchat import` has none: export again)")
            if obj.get("format") != FORMAT:
                raise ExportFileError(f"{where}: export format {obj.get('format')!r}, this "
                                      f"version reads {FORMAT}")
            room = obj.get("room")
            epoch = obj.get("epoch")
            try:
                after, top = _int(obj, "after"), _int(obj, "top")
            except _Bad as exc:
                raise ExportFileError(f"{where}: {exc}") from None
            if not isinstance(room, str) or not valid_room_name(room) or not (
                    epoch is None or (isinstance(epoch, str) and unsafe_text(epoch) is None)):
                raise ExportFileError(f"{where}: a header with no valid room or epoch")
            if current is not None and current.room == room and after == last:
                current.top = max(current.top, top)  # the same log, going on
            else:
                if current is not None:
                    current.entries = list(log.values())
                    yield current
                if room in seen:
                    raise ExportFileError(f"{where}: room {room!r} again, not right after its "
                                          "last section: import the files one by one")
                seen.add(room)
                current, log, last = RoomLog(room, epoch, top, []), {}, after
            section, count = obj, 0
            continue
        assert current is not None
        if kind == END:
            if obj.get("room") != current.room or obj.get("seq") != last or \
                    obj.get("entries") != count:
                raise ExportFileError(f"{where}: the end line does not match the {count} "
                                      f"entries before it: the file was changed or cut")
            section = None
            continue
        try:
            entry = parse_entry(obj, current.room, max_text_chars)
        except _Bad as exc:
            raise ExportFileError(f"{where}: {exc}") from None
        if entry.seq <= last:
            raise ExportFileError(f"{where}: seq {entry.seq} is not above the one before "
                                  f"({last})")
        if isinstance(entry, StoredChange):
            _fold(log, entry, section["after"])
        log[entry.seq] = entry
        last = entry.seq
        count += 1
    if section is not None:
        raise ExportFileError(f"{name} is truncated: room {section['room']!r} has no end line "
                              f"(line {number} is the last): export it again")
    if current is None:
        raise ExportFileError(f"{name} is empty: not a roomchat export")
    current.entries = list(log.values())
    yield current


class ImportTarget(Protocol):
    """What an engine offers an import (the SQLite and Redis engines; memory:// does not)."""

    async def importable(self, room: str) -> bool: ...

    async def import_entries(self, room: str, entries: Sequence[Entry], *, top: int,
                             epoch: str | None = None, dedup_window: int = 0,
                             progress: Callable[[int], object] | None = None) -> bool: ...


@dataclass(frozen=True, slots=True)
class Imported:
    """What ``import_export`` did: ``rooms`` written (room -> entries), ``skipped`` (they had
    entries), ``new_epoch``: rooms whose clients' resumes start afresh (the target's epoch is
    another than their export's: an embedded database holding other rooms already)."""

    rooms: dict[str, int]
    skipped: tuple[str, ...]
    new_epoch: tuple[str, ...]


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from f


async def import_export(path: Path, engine: ImportTarget, *, room: str | None = None,
                        skip_existing: bool = False, dedup_window: int = 0,
                        max_text_chars: int = 2000,
                        checking: Callable[[int], object] | None = None,
                        writing: Callable[[int], object] | None = None,
                        counted: Callable[[int], object] | None = None) -> Imported:
    """Import the export at ``path`` (only ``room`` if given) into ``engine``, every seq kept.
    First the whole file is read and checked (``checking(bytes)``) and every room it would
    write asked whether it is empty: a bad file, or a room with entries (unless
    ``skip_existing``), refuses the import with nothing written. Then each room is written
    (``writing(entries)``, after ``counted(total)``), all or nothing per room
    (``import_entries``: a rerun after a crash finishes it). Raises ``ExportFileError``,
    ``RoomNotEmpty``, ``StoreError``, ``OSError``."""
    name = str(path)
    counts: dict[str, int] = {}
    for found in read_rooms(_lines(path), name, max_text_chars, checking):
        if room is None or found.room == room:
            counts[found.room] = len(found.entries)
    if room is not None and room not in counts:
        raise ExportFileError(f"{name} has no room {room!r}")
    skipped = tuple([r for r in counts if not await engine.importable(r)])
    if skipped and not skip_existing:
        raise RoomNotEmpty(f"room {skipped[0]!r} already has entries in the target store: "
                           "nothing imported (--skip-existing imports the others)")
    if counted is not None:
        counted(sum(n for r, n in counts.items() if r not in skipped))
    written: dict[str, int] = {}
    new_epoch: list[str] = []
    for found in read_rooms(_lines(path), name, max_text_chars):
        if found.room not in counts or found.room in skipped:
            continue
        top = max([found.top, *(e.seq for e in found.entries[-1:])])
        kept = await engine.import_entries(found.room, found.entries, top=top,
                                           epoch=found.epoch, dedup_window=dedup_window,
                                           progress=writing)
        if not kept and found.epoch:
            new_epoch.append(found.room)
        written[found.room] = len(found.entries)
    return Imported(written, skipped, tuple(new_epoch))

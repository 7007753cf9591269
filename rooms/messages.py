"""The value types the room's state machine and the engines share: what a room's log holds and
how a stored entry travels. Pure data; no I/O. (Not in ``rooms.state``: the storage interface,
``rooms.engine``, must not depend on the room's rules.)

A room's log is one sequence of **entries**, each with its own ``seq`` (docs/protocol.md): a
``StoredMessage`` (``"type":"message"``), or a ``StoredChange`` (``"type":"change"``) to an
earlier message: an edit, a delete (by its author or a moderator), a reaction added or removed.
A message is also known in its **current state**: its text after the last edit, ``edited``,
its reactions, or its tombstone; engines keep it up to date as changes are appended
(``rooms.changes`` holds the rules), so pages never replay changes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from rooms import protocol
from rooms.attachments import FileRef


class Action(enum.StrEnum):
    """What a change entry does to its target message (the wire's ``action``)."""

    EDIT = "edit"
    DELETE = "delete"
    REACT = "react"


class DeletedBy(enum.StrEnum):
    """Who deleted a message (a delete entry's ``by``): its author, or someone who moderates the
    room (a moderator's socket, the server API's ``DELETE``, an erasure request)."""

    AUTHOR = "author"
    MODERATOR = "moderator"


class Refusal(enum.StrEnum):
    """Why the log's rules refused a draft: nothing was stored, no seq was used. The values are
    the wire's error codes (``rooms.protocol.ErrorCode``)."""

    NOT_FOUND = "not_found"
    """The target (or a message's ``reply_to``) is not a message stored in the room: never
    stored, pruned by retention, or a change entry's seq."""
    ALREADY_DELETED = "already_deleted"
    """The target is a tombstone: it cannot be edited, deleted, reacted to or answered."""
    FORBIDDEN = "forbidden"
    """An edit by someone else than the author; a delete by someone who is neither the author
    nor a moderator."""
    EDIT_WINDOW_PASSED = "edit_window_passed"
    """An edit more than ``LogRules.edit_window`` seconds after the message's ``ts``."""
    TOO_MANY_REACTIONS = "too_many_reactions"
    """A reaction with a new emoji on a message that has ``LogRules.max_reactions`` already."""


@dataclass(frozen=True, slots=True)
class LogRules:
    """The limits the log checks when it appends a change or a reply (atomically with the
    append, whichever process sends it): from ``rooms.config.RoomConfig``."""

    edit_window: float = 0.0
    """Seconds after a message's ``ts`` during which its author may edit it; 0: forever."""
    max_reactions: int = 20
    """Distinct emoji one message may carry."""
    reply_excerpt_chars: int = 100
    """Longest ``reply_to.excerpt`` (characters, the ellipsis included)."""


DEFAULT_RULES = LogRules()


@dataclass(frozen=True, slots=True)
class Reply:
    """What a message answers (``reply_to`` on the wire): the answered message's seq, author,
    and an excerpt of its text as it was when the reply was stored (``rooms.changes.excerpt``);
    ``""`` once the answered message is erased."""

    seq: int
    user: str
    name: str
    excerpt: str

    def to_obj(self) -> dict[str, Any]:
        return {"seq": self.seq, "user": self.user, "name": self.name, "excerpt": self.excerpt}


@dataclass(frozen=True, slots=True)
class Reaction:
    """One emoji on a message and who put it there, in the order they did."""

    emoji: str
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One chat message as stored, in its current state (or, in a replay, possibly ahead of
    the change entries that follow it: applying them again changes nothing).

    A deleted one (tombstone) keeps its seq, user, name, id and ts, with ``text`` empty and
    nothing else (no reply, mentions, files, reactions or edit time); its wire form adds
    ``"deleted": true``. A message's text is never empty otherwise, unless it carries files
    (``files``: metadata only, ``rooms.attachments``)."""

    room: str
    seq: int
    user: str
    name: str
    id: str | None
    text: str
    ts: int
    reply_to: Reply | None = None
    mentions: tuple[str, ...] = ()
    edited: int | None = None
    """The ``ts`` of its last edit (milliseconds), None if never edited."""
    reactions: tuple[Reaction, ...] = ()
    """In first-reaction order; an emoji nobody has any more is not listed."""
    files: tuple[FileRef, ...] = ()
    """The files it carries, in the order sent; an edit keeps them, a delete removes them."""

    @property
    def deleted(self) -> bool:
        """A tombstone: a message's text is never empty otherwise, unless it has files."""
        return not self.text and not self.files

    def to_obj(self) -> dict[str, Any]:
        """The wire object (docs/protocol.md): optional fields only when set."""
        obj: dict[str, Any] = {"type": "message", "room": self.room, "seq": self.seq,
                               "id": self.id, "user": self.user, "name": self.name,
                               "text": self.text, "ts": self.ts}
        if self.deleted:
            obj["deleted"] = True
            return obj
        if self.files:
            obj["files"] = [f.to_obj() for f in self.files]
        if self.reply_to is not None:
            obj["reply_to"] = self.reply_to.to_obj()
        if self.mentions:
            obj["mentions"] = list(self.mentions)
        if self.edited is not None:
            obj["edited"] = self.edited
        if self.reactions:
            obj["reactions"] = [{"emoji": r.emoji, "users": list(r.users)}
                                for r in self.reactions]
        return obj

    def to_wire(self) -> str:
        return protocol.dumps(self.to_obj())


@dataclass(frozen=True, slots=True)
class StoredChange:
    """A change entry of the log: ``user`` (``name``) did ``action`` to message ``target`` at
    ``ts``. An edit carries the new ``text`` (``""`` once the message is deleted or its author
    erased: the text leaves storage with it); a delete ``by`` (``DeletedBy``); a reaction its
    ``emoji`` and whether it was put (``on``) or taken back."""

    room: str
    seq: int
    user: str
    name: str
    id: str | None
    ts: int
    action: Action
    target: int
    text: str = ""
    by: DeletedBy | None = None
    emoji: str = ""
    on: bool = False

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"type": "change", "room": self.room, "seq": self.seq,
                               "action": self.action.value, "target": self.target,
                               "id": self.id, "user": self.user, "name": self.name,
                               "ts": self.ts}
        if self.action is Action.EDIT:
            obj["text"] = self.text
        elif self.action is Action.DELETE:
            obj["by"] = (self.by or DeletedBy.MODERATOR).value
        else:
            obj["emoji"] = self.emoji
            obj["on"] = self.on
        return obj

    def to_wire(self) -> str:
        return protocol.dumps(self.to_obj())


@dataclass(frozen=True, slots=True)
class WireMessage:
    """A stored entry (message or change) known by its seq and its wire form only: another
    process's, as the engine's live feed carries it, or one the engine serialised itself
    (Redis: append.lua). Serialised once, where it was stored."""

    seq: int
    wire: str

    def to_wire(self) -> str:
        return self.wire


Entry = StoredMessage | StoredChange
"""An entry of a room's log, as read back."""
Delivered = StoredMessage | StoredChange | WireMessage
"""An entry as the room delivers it: its seq and its wire form."""


@dataclass(frozen=True, slots=True)
class Draft:
    """An accepted message not yet stored: the engine gives it its seq. ``reply_to``: the seq
    of the message it answers (the engine checks it and stores the ``Reply``); ``mentions``:
    user ids, already checked and without duplicates (``rooms.protocol``); ``files``: the
    files it carries, resolved and checked by the gateway (``text`` may be empty then)."""

    user: str
    name: str
    id: str | None
    text: str
    ts: int
    reply_to: int | None = None
    mentions: tuple[str, ...] = ()
    files: tuple[FileRef, ...] = ()

    def stored(self, room: str, seq: int, reply: Reply | None = None) -> StoredMessage:
        """As stored with ``seq`` (``reply``: what the engine made of ``reply_to``)."""
        return StoredMessage(room, seq, self.user, self.name, self.id, self.text, self.ts,
                             reply, self.mentions, files=self.files)


@dataclass(frozen=True, slots=True)
class ChangeDraft:
    """An accepted change not yet stored: ``user`` does ``action`` to message ``target``. The
    engine checks it against the target's current state (``rooms.changes``), atomically with
    the append, and gives it its seq, or refuses it (``Appended.refused``). ``moderator``:
    the sender moderates the room (may delete others' messages; never edit them)."""

    user: str
    name: str
    id: str | None
    ts: int
    action: Action
    target: int
    text: str = ""  # edit: the new text (``rooms.text.message_text``)
    emoji: str = ""  # react: one RGI emoji (``rooms.protocol``)
    on: bool = False  # react: put (True) or take back (False)
    moderator: bool = False

    def stored(self, room: str, seq: int, by: DeletedBy | None = None) -> StoredChange:
        """As stored with ``seq`` (``by``: a delete's, as the rules found it)."""
        return StoredChange(room, seq, self.user, self.name, self.id, self.ts, self.action,
                            self.target, self.text, by, self.emoji, self.on)


AnyDraft = Draft | ChangeDraft


MAX_STORED_INT = 2**63 - 1
"""The largest integer a store keeps (SQLite's and Redis's 64-bit signed integers; the memory
engine refuses larger ones too, so a client gets the same answer from every engine)."""


def unencodable(draft: AnyDraft) -> bool:
    """Whether ``draft`` holds what no engine could store or send: a text with a lone surrogate
    (its wire form could not be encoded either) or an integer beyond 64 bits. The engines ask
    it to find which drafts of a batch fail alone (``Unstorable``)."""
    texts: list[str | None] = [draft.user, draft.name, draft.id]
    numbers = [draft.ts]
    if isinstance(draft, Draft):
        texts += [draft.text, *draft.mentions]
        numbers.append(draft.reply_to or 0)
    else:
        texts += [draft.text, draft.emoji]
        numbers.append(draft.target)
    try:
        for text in texts:
            if text is not None:
                text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return not all(isinstance(n, int) and -MAX_STORED_INT <= n <= MAX_STORED_INT
                   for n in numbers)


@dataclass(frozen=True, slots=True)
class Appended:
    """What the engine did with one draft.

    - Stored: ``seq`` is its new seq; ``entry`` the entry as stored (with what the engine
      added: a delete's ``by``, a reply's excerpt), for the caller to deliver.
    - ``duplicate``: its ``(user, id)`` was stored before; ``seq`` is the original's.
    - ``refused``: the log's rules refused it (``seq`` 0); nothing was stored.
    - ``noop``: a reaction that changes nothing (put again, or taken back when not there):
      nothing was stored; ``seq`` is that of the target's last change (its own when it never
      changed), so an answer sent once ``seq`` is delivered follows the state it refers to.
    """

    seq: int
    duplicate: bool = False
    refused: Refusal | None = None
    noop: bool = False
    entry: Delivered | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Unread:
    """A user's place in a room (``Engine.unread``): their read marker (0: never set, and then
    nothing is unread), the messages after it that are not theirs and not deleted, and those
    of them that mention them, counted over at most the room's last ``scan`` messages
    (``capped``: the count hit that bound, so there may be more)."""

    read: int = 0
    unread: int = 0
    mentions: int = 0
    capped: bool = False


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    """What the store knows of a room when its actor starts."""

    last_seq: int = 0
    oldest_seq: int = 1  # lowest seq still stored; last_seq + 1 when nothing is stored
    recent_ids: tuple[tuple[str, str, int], ...] = ()  # (user, client id, seq), oldest first
    """Messages' and changes' ids. Empty when the engine deduplicates itself (Redis): the
    room's map is then only a cache."""
    epoch: str = ""
    """The log's epoch (docs/protocol.md, "Epochs"): one unbroken life of the room's log."""
    resume_floor: int = 0
    """Seqs up to this one may be missing from the log (it went backwards and was moved past
    them: ``rooms.errors.LogReset``): a resume from before it is not recovered."""

"""The value types the room's state machine and the engines share: what is stored and how a
stored entry travels. Pure data; no I/O. (Not in ``rooms.state``: the storage interface,
``rooms.engine``, must not depend on the room's rules.)"""

from __future__ import annotations

from dataclasses import dataclass

from rooms import protocol


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One chat message as stored and broadcast. A deleted one (tombstone) keeps its seq,
    user, name, id and ts, with ``text`` empty; its wire form adds ``"deleted": true``."""

    room: str
    seq: int
    user: str
    name: str
    id: str | None
    text: str
    ts: int

    @property
    def deleted(self) -> bool:
        """A moderator's tombstone: a message's text is never empty otherwise."""
        return not self.text

    def to_wire(self) -> str:
        obj = {"type": "message", "room": self.room, "seq": self.seq, "id": self.id,
               "user": self.user, "name": self.name, "text": self.text, "ts": self.ts}
        if not self.text:
            obj["deleted"] = True
        return protocol.dumps(obj)


@dataclass(frozen=True, slots=True)
class WireMessage:
    """A stored message known by its seq and its wire form only: another process's, as the
    engine's live feed carries it (serialised once, where it was stored)."""

    seq: int
    wire: str

    def to_wire(self) -> str:
        return self.wire


Delivered = StoredMessage | WireMessage


@dataclass(frozen=True, slots=True)
class Draft:
    """An accepted message not yet stored: the engine gives it its seq."""

    user: str
    name: str
    id: str | None
    text: str
    ts: int

    def stored(self, room: str, seq: int) -> StoredMessage:
        return StoredMessage(room, seq, self.user, self.name, self.id, self.text, self.ts)


@dataclass(frozen=True, slots=True)
class Appended:
    """What the engine did with one draft: its seq, and whether it was stored before (a retried
    ``(user, id)``; then ``seq`` is the original's)."""

    seq: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    """What the store knows of a room when its actor starts."""

    last_seq: int = 0
    oldest_seq: int = 1  # lowest seq still stored; last_seq + 1 when nothing is stored
    recent_ids: tuple[tuple[str, str, int], ...] = ()  # (user, client id, seq), oldest first
    """Empty when the engine deduplicates itself (Redis): the room's map is then only a cache."""
    epoch: str = ""
    """The log's epoch (docs/protocol.md, "Epochs"): one unbroken life of the room's log."""
    resume_floor: int = 0
    """Seqs up to this one may be missing from the log (it went backwards and was moved past
    them: ``rooms.errors.LogReset``): a resume from before it is not recovered."""

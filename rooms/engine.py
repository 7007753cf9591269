"""The one small interface through which everything shared by a room's processes goes.

A room's actor owns its own process's sockets, heartbeats and rate-limit buckets; an ``Engine``
owns what every process serving the room must agree on: the message log (seq allocation,
deduplication by ``(user, id)``, durable append, history reads), the live feed of messages
appended by other processes, and the presence of members connected to other processes.

Two engines, chosen by URL with ``open_engine`` (each imported only when used):

- ``sqlite:///path`` — ``rooms.engines.embedded.EmbeddedEngine``: SQLite, one process, nothing
  to share (the default).
- ``redis://host:port/db`` (``rediss://``, ``unix://``) — ``rooms.engines.redis.RedisEngine``:
  a stream per room, Lua scripts for atomic append-and-publish, sharded pub/sub for live fan-out,
  a presence hash per room. Any process can serve any member of any room.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from rooms.state import Appended, Draft, RoomSnapshot, StoredMessage, WireMessage

__all__ = ["ERASE_PAUSE", "ERASE_STEP", "Appended", "Ban", "Engine", "ErasedObserver",
           "HistoryReader", "RoomListener", "RoomSync", "open_engine"]

CommitObserver = Callable[[float, int], None]
"""Called after each durable append with (seconds, messages); must not block."""
ErasedObserver = Callable[[str, list[int]], None]
"""Called by ``Engine.erase`` after each step with (room, seqs it tombstoned); must not block."""

ERASE_STEP = 256
"""Most tombstones one step of ``Engine.erase`` makes in one room, announced together. Every
member gets one ``delete`` object per tombstone, and a session's outbox holds
``outbox_limit`` (1024) objects before it is closed as too slow: an erasure of thousands of
messages at once would close every member of the room (measured: 5,000 in one go did)."""
ERASE_PAUSE = 0.05
"""Seconds ``Engine.erase`` waits between two steps in one room that tombstone something, so
its members' outboxes drain (at most 5,120 deletes a second per room; other rooms don't wait)."""


@dataclass(frozen=True, slots=True)
class RoomSync:
    """A periodic comparison of a room with the shared state (``Engine.sync``)."""

    top: int
    """The highest seq stored for the room."""
    others: dict[str, str]
    """Members connected to *other* processes (user -> name); the room's members are the union
    of these and this process's own."""
    tombstones: int | None = None
    """How many tombstones the room has, from an engine whose delete announcements can be lost
    (pub/sub is at-most-once): when it changes, the room reads ``Engine.tombstones`` and tells
    its members of the deletes it missed. None: every delete reaches the room (one process)."""
    banned: tuple[tuple[str, str], ...] = ()
    """This process's members (of those ``sync`` was given) banned from the room now, with the
    ban's reason: the room closes them even when the ban's announcement was lost."""
    epoch: str | None = None
    """The log's epoch now (None: the engine does not say). Another than the room's: the log
    went backwards or was replaced (``rooms.errors.LogReset``); ``top`` is where it goes on."""


@dataclass(frozen=True, slots=True)
class Ban:
    """A moderator's ban of ``user`` from a room (``Engine.ban``)."""

    user: str
    until: float | None
    """Unix seconds when it ends; ``None``: until lifted."""
    reason: str


class HistoryReader(Protocol):
    """What a session needs to replay history."""

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[StoredMessage]:
        """Stored messages with ``after < seq <= upto``, oldest first, at most ``limit``."""
        ...


class RoomListener(Protocol):
    """How an engine hands a room's actor what other processes did. Every method is called on
    the event loop, must not block and must not raise."""

    def remote_messages(self, messages: list[WireMessage]) -> None:
        """Messages appended by another process (in seq order within one call; calls may arrive
        out of order or not at all: pub/sub is at-most-once)."""

    def remote_presence(self) -> None:
        """Another process's members of this room changed: sync presence soon."""

    def resync(self) -> None:
        """The live feed was interrupted (reconnect to the engine): compare with the log."""

    def remote_deleted(self, seq: int) -> None:
        """Another process deleted message ``seq`` (its tombstone is stored): tell members."""

    def remote_banned(self, user: str, reason: str) -> None:
        """Another process banned ``user`` from the room: close their sessions here."""


class Engine(Protocol):
    """The shared side of rooms. Async methods may raise ``StoreError`` (engine unavailable or
    failing); the others never raise."""

    shared: bool
    """Whether other processes may serve the same rooms (then the feed and presence matter)."""
    node: str
    """This process's identity in the engine (presence entries, published batches)."""

    @property
    def healthy(self) -> bool:
        """False while the engine is known to be unreachable (new joins are refused)."""
        ...

    async def load(self, room: str, dedup_window: int) -> RoomSnapshot:
        """The room's latest seq, lowest stored seq, its log's epoch, and (where the engine
        needs the room's actor to deduplicate) its last ``dedup_window`` client ids. A log
        found behind what this engine saw stored in the room moves on past it under a new
        epoch (``RoomSnapshot.resume_floor``)."""
        ...

    async def append(self, room: str, drafts: Sequence[Draft], *, retention: int,
                     dedup_window: int, epoch: str | None = None,
                     floor: int = 0) -> list[Appended]:
        """Store ``drafts`` durably, in order, all or none, allocating consecutive seqs; a draft
        whose ``(user, id)`` is among the room's last ``dedup_window`` ids gets that message's
        seq and ``duplicate`` (engines that leave dedup to the room's actor ignore it). Keeps
        ``retention`` messages per room (0: all). Other processes serving the room receive the
        new messages through their listeners.

        ``epoch`` is the log's epoch as the caller knows it (None: any) and ``floor`` the
        highest seq the caller has seen stored in the room. Raises ``LogReset`` when the log's
        epoch is another, or its top is below ``floor`` (the store lost data; the engine then
        moves the log past ``floor`` under a new epoch, so no seq is allocated twice): nothing
        was stored; take the new epoch and append again. Raises ``Unstorable`` when some
        drafts can never be stored (nothing of the batch was: append the others again, and
        tell the senders of those), ``StoreError`` when storing failed (retry the same batch).
        One room's faulty draft never fails another room's append, whatever the engine
        batches together underneath."""
        ...

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[StoredMessage]:
        """Stored messages with ``after < seq <= upto``, oldest first, at most ``limit``."""
        ...

    async def sync(self, room: str, members: dict[str, str], ttl: float, *,
                   floor: int = 0) -> RoomSync:
        """Publish this process's ``members`` of ``room`` (valid ``ttl`` seconds unless synced
        again; an empty dict withdraws them) and return the room's shared state. A log found
        behind ``floor`` (as for ``append``) moves on past it under a new epoch."""
        ...

    def subscribe(self, room: str, listener: RoomListener) -> None:
        """Start feeding ``listener`` what other processes do in ``room`` (no-op if unshared)."""
        ...

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        """Stop feeding ``listener`` (only if it is still the room's listener)."""
        ...

    async def stash(self, key: str, value: bytes, ttl: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl`` seconds, for one ``take`` by any process
        (single-use tickets). Durable across restarts of the engine's processes."""
        ...

    async def take(self, key: str) -> bytes | None:
        """The value stashed under ``key`` if it has not expired, removing it: of concurrent
        ``take``s of one key, in any processes, exactly one gets it."""
        ...

    async def revoke(self, user: str, at: float) -> None:
        """Record that ``user``'s access was revoked at ``at`` (Unix seconds)."""
        ...

    async def revocations(self, since: float) -> list[tuple[str, float]]:
        """Revocations recorded after ``since`` (``(user, at)``, oldest first); every process
        polls this to close the user's sockets and refuse their older tokens."""
        ...

    async def delete(self, room: str, seq: int) -> bool:
        """Replace stored message ``seq`` by its tombstone (same seq, user, name, id and ts;
        empty text: ``read`` returns it with ``deleted``) and tell the other processes serving
        the room (``remote_deleted``). False when no message ``seq`` is stored."""
        ...

    async def erase(self, user: str,
                    erased: ErasedObserver | None = None) -> dict[str, list[int]]:
        """Replace every stored message of ``user``, in every room, by its tombstone (as
        ``delete`` does). Works in steps of at most ``ERASE_STEP`` tombstones in one room,
        ``ERASE_PAUSE`` apart; after each, tells the other processes serving the room
        (``remote_deleted``) and calls ``erased(room, seqs)``, through which the caller tells
        this process's live room. Returns everything it erased: room -> seqs, ascending;
        messages that already were tombstones are not in it (a second erase returns ``{}``).
        Not atomic: if it raises ``StoreError`` half way, the steps before stay done (run it
        again for the rest). Messages the user stores while it runs may be missed: revoke or
        ban them first."""
        ...

    async def ban(self, room: str, ban: Ban) -> None:
        """Record ``ban`` (replacing any earlier ban of the user in ``room``; it lapses by
        itself at ``until``) and tell the other processes serving the room (``remote_banned``)."""
        ...

    async def unban(self, room: str, user: str) -> bool:
        """Lift ``user``'s ban from ``room``; False when there was none in force."""
        ...

    async def banned(self, room: str, user: str) -> Ban | None:
        """``user``'s ban from ``room`` if one is in force now."""
        ...

    async def top(self, room: str) -> int:
        """The highest seq stored for ``room`` (0 for none); read-only."""
        ...

    async def tombstones(self, room: str) -> list[int]:
        """The seqs of ``room``'s tombstones, ascending; read-only."""
        ...

    async def presence(self, room: str) -> dict[str, str]:
        """Members of ``room`` connected to *other* processes as the engine knows them (user ->
        name); read-only ({} for an engine that is not shared)."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release resources. Further calls raise ``StoreError``."""
        ...


SHARED_SCHEMES = ("redis://", "rediss://", "unix://")


def is_shared_url(url: str) -> bool:
    """Whether ``url`` names an engine several processes can share."""
    return url.startswith(SHARED_SCHEMES)


async def open_engine(url: str, *, on_commit: CommitObserver | None = None,
                      sqlite_synchronous: str = "FULL", max_connections: int = 32,
                      timeout: float | None = None) -> Engine:
    """The engine a URL names: ``sqlite:///path/to/db`` or ``redis://host:port/db``.

    Raises ``ValueError`` for an unknown scheme and ``StoreError`` when the engine cannot be
    reached or opened. ``max_connections`` bounds the connections to a networked engine, and
    ``timeout`` (seconds; default: ``RoomConfig.store_timeout``'s) each of its calls: one that
    takes longer fails with ``StoreError``. (The embedded engine's calls are local; the rooms
    bound their own appends, ``RoomConfig.store_timeout``.)
    """
    if is_shared_url(url):
        from rooms.engines.redis import DEFAULT_TIMEOUT, RedisEngine

        return await RedisEngine.open(url, on_commit=on_commit, max_connections=max_connections,
                                      timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
    if url.startswith("sqlite://"):
        from rooms.engines.embedded import EmbeddedEngine

        return await EmbeddedEngine.open(url.removeprefix("sqlite://"),
                                         synchronous=sqlite_synchronous, on_commit=on_commit)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///path or redis://host:port")

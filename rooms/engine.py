"""The one small interface through which everything shared by a room's processes goes.

A room's actor owns its own process's sockets, heartbeats and rate-limit buckets; an ``Engine``
owns what every process serving the room must agree on: the room's log (seq allocation,
deduplication by ``(user, id)``, the rules of changes checked atomically with their append,
durable append, replay and history reads, messages' current state), the live feed of entries
appended by other processes, read markers, and the presence of members connected to other
processes. The log's entries are messages and changes to them (``rooms.messages``): one
sequence, so a resume, gap repair, dedup, fan-out and retention work for both alike.

Three engines, chosen by URL with ``rooms.engines.open_engine`` (each imported when used):

- ``sqlite:///path`` — ``rooms.engines.embedded.EmbeddedEngine``: SQLite, one process, nothing
  to share (the default).
- ``redis://host:port/db`` (``rediss://``, ``unix://``) — ``rooms.engines.redis.RedisEngine``:
  a stream per room, Lua scripts for atomic append-and-publish, sharded pub/sub for live fan-out,
  a presence hash per room. Any process can serve any member of any room.
- ``memory://`` — ``rooms.engines.memory.MemoryEngine``: one process, every log in its memory
  (bounded by retention), **not durable**: a restart loses everything and starts a new epoch.
- ``postgresql://user@host/db`` — ``rooms.engines.split.SplitEngine`` over a PostgreSQL ``Log``
  (``rooms.engines.postgres.PostgresLog``) and a ``Bus``: with a ``redis://`` bus URL the Redis
  one (``rooms.engines.redis_bus.RedisBus``: any process serves any room), with a
  ``postgresql://`` one PostgreSQL's ``LISTEN/NOTIFY`` (``rooms.engines.postgres_bus.NotifyBus``:
  the same, with one server to run), else the in-process one (``rooms.engines.split.LocalBus``:
  one process).

An ``Engine`` is, underneath, a **log** (``Log``: what is stored, and everything every process
must agree on) and a **bus** (``Bus``: how processes tell each other that something happened,
and who is connected where). The embedded and Redis engines keep the two fused (their
atomicity rests on it: docs/design/log-and-bus.md); ``SplitEngine`` combines any log with any
bus and implements ``Engine`` over them, so rooms see nothing new.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from rooms.messages import (
    DEFAULT_RULES,
    AnyDraft,
    Appended,
    Entry,
    LogRules,
    RoomSnapshot,
    StoredChange,
    StoredMessage,
    Unread,
    WireMessage,
)
from rooms.search import Place, RoomsPage, SearchPage

__all__ = ["ERASE_PAUSE", "ERASE_STEP", "Appended", "Ban", "Bus", "Engine", "ErasedObserver",
           "HistoryReader", "Log", "LogState", "RoomListener", "RoomSync", "is_shared_url"]

CommitObserver = Callable[[float, int], None]
"""Called after each durable append with (seconds, entries stored); must not block."""
AppendDone = Callable[[list[Appended] | None, BaseException | None], bool]
"""Told an ``Engine.append_soon``'s outcome: its results, or the error ``append`` would raise.
Returns whether the caller took it; False: it had stopped waiting (its deadline passed) and
appends the same drafts again, which the engine then answers with this outcome instead of
storing them twice."""
ErasedObserver = Callable[[str, list[int]], None]
"""Called by ``Engine.erase`` after each step with (room, seqs of the messages it deleted);
must not block."""

ERASE_STEP = 256
"""Most entries one step of ``Engine.erase`` appends to one room (a delete entry per message, a
take-back per reaction; one append). Every member gets one ``change`` object per entry, and a
session's outbox holds ``outbox_limit`` (1024) objects before it is closed as too slow: an
erasure of thousands of messages at once would close every member of the room (measured:
5,000 in one go did)."""
ERASE_PAUSE = 0.05
"""Seconds ``Engine.erase`` waits between two steps in one room that delete something, so
its members' outboxes drain (at most 5,120 deletes a second per room; other rooms don't wait)."""


@dataclass(frozen=True, slots=True)
class RoomSync:
    """A periodic comparison of a room with the shared state (``Engine.sync``)."""

    top: int
    """The highest seq stored for the room."""
    others: dict[str, str]
    """Members connected to *other* processes (user -> name); the room's members are the union
    of these and this process's own."""
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
    """What a session needs to replay history: the raw log after a resume's ``after``
    (``read``), or the newest messages in their current state for a fresh join
    (``history``)."""

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[Entry]:
        """As ``Engine.read``."""
        ...

    async def history(self, room: str, *, after: int = 0, before: int, limit: int,
                      newest: bool = False) -> list[StoredMessage]:
        """As ``Engine.history``."""
        ...


class RoomListener(Protocol):
    """How an engine hands a room's actor what other processes did. Every method is called on
    the event loop, must not block and must not raise."""

    def remote_messages(self, messages: list[WireMessage]) -> None:
        """Log entries (messages and changes) appended by another process, or by this process
        outside the room's actor (an erasure), in seq order within one call; calls may arrive
        out of order or not at all (pub/sub is at-most-once): the room repairs gaps from the
        log."""

    def remote_presence(self) -> None:
        """Another process's members of this room changed: sync presence soon."""

    def resync(self) -> None:
        """The live feed was interrupted (reconnect to the engine): compare with the log."""

    def remote_banned(self, user: str, reason: str) -> None:
        """Another process banned ``user`` from the room: close their sessions here."""

    def remote_read(self, user: str, seq: int) -> None:
        """``user``'s read marker in the room moved to ``seq`` on another process (at most
        once per move; may be lost, like every pub/sub message): tell their sessions here."""


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

    async def append(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                     dedup_window: int, epoch: str | None = None, floor: int = 0,
                     rules: LogRules = DEFAULT_RULES) -> list[Appended]:
        """Store ``drafts`` durably as entries of the room's log, in order, all or none,
        allocating consecutive seqs to those stored. Any process may append to any room, at
        any time (the seqs, the rules and the dedup are the log's, not a caller's).

        - A draft whose ``(user, id)`` is among the room's last ``dedup_window`` ids (messages'
          and changes' alike) gets that entry's seq and ``duplicate`` (engines that leave dedup
          to the room's actor ignore it).
        - A ``ChangeDraft``, and a ``Draft`` with ``reply_to``, is checked against its target's
          current state as the drafts before it in the batch left it, atomically with the
          append (``rooms.changes``, with ``rules``): refused (``Appended.refused``: nothing
          stored, no seq), a no-op reaction (``noop``), or stored. Storing a change updates
          the target's current state in the same atomic step, so ``read``, ``history`` and
          every later check see it.
        - Each stored entry comes back as ``Appended.entry`` (a delete's ``by``, a reply's
          excerpt filled in): the caller delivers these, in seq order.

        Keeps the last ``retention`` entries per room (0: all); a change whose target is
        pruned goes with it. Other processes serving the room receive the stored entries
        through their listeners (``RoomListener.remote_messages``).

        ``epoch`` is the log's epoch as the caller knows it (None: any) and ``floor`` the
        highest seq the caller has seen stored in the room. Raises ``LogReset`` when the log's
        epoch is another, or its top is below ``floor`` (the store lost data; the engine then
        moves the log past ``floor`` under a new epoch, so no seq is allocated twice): nothing
        was stored; take the new epoch and append again. Raises ``Unstorable`` when some
        drafts can never be stored (nothing of the batch was: append the others again, and
        tell the senders of those), ``StoreError`` when storing failed (retry the same batch:
        if it was stored after all, a retry of drafts with ids is answered as duplicates).
        One room's faulty draft never fails another room's append, whatever the engine
        batches together underneath."""
        ...

    def append_soon(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                    dedup_window: int, epoch: str | None, floor: int, rules: LogRules,
                    done: AppendDone) -> bool:
        """``append`` without awaiting it, for a room handling a frame where it arrives
        (``rooms.actor``): start the append and return True; ``done(results, None)``, or
        ``done(None, error)`` with what ``append`` would raise, is then called on the event
        loop, once (possibly before this returns). False when this engine does not (nothing
        was started: await ``append``); a ``shared`` engine does not. The caller appends the
        room's next batch only once ``done`` was called."""
        ...

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[Entry]:
        """The room's log entries with ``after < seq <= upto``, oldest first, at most ``limit``:
        what a resume after ``after`` replays, and what repairs a gap in the live feed.

        Messages come in their **current state** (a change that follows one in the log may be
        folded into it already: applying it again changes nothing), change entries as stored:
        an edit of a message deleted since has ``text`` ``""``; a change whose target was
        pruned is left out, as are edits removed with their deleted message (the seqs of the
        answer may have gaps). An empty answer means nothing more is stored up to ``upto``."""
        ...

    async def history(self, room: str, *, after: int = 0, before: int, limit: int,
                      newest: bool = False) -> list[StoredMessage]:
        """The room's **messages** (no change entries) with ``after < seq < before``, each in
        its current state, oldest first: the oldest ``limit`` of them, or with ``newest`` the
        newest ``limit``. What history pages, the server API's reads and a join without
        ``after`` serve; it costs what reading as many plain messages does."""
        ...

    async def search(self, room: str, query: str, *, before: int | None,
                     limit: int) -> SearchPage:
        """The room's messages matching ``query`` (``rooms.search``: words and quoted phrases,
        all required, case and Latin accents ignored, ``word*`` a prefix; nothing of it is the
        index's syntax, so no query is an error), **newest first**, those with ``seq < before``
        (None: from the newest), at most ``limit``, each in its current state with the pieces
        of its text that matched (``Found.fragments``). Only what the message says now is found:
        an edit's old words are not, a deleted or erased message is not, reactions and change
        entries never are. A query with no letter or digit finds nothing. The page's
        ``before`` continues it (None: nothing older matches). Read-only.

        Raises ``SearchUnsupported`` when the engine keeps no search index (the Redis engine:
        the sentence names those that do; the embedded engine opened with its index switched
        off: the sentence names the setting that turns it on), ``StoreError`` as any read."""
        ...

    async def search_all(self, query: str, *, before: Place | None, limit: int,
                         most: int) -> RoomsPage:
        """Every room's messages matching ``query`` (as ``search``: current state, fragments),
        **newest first** in ``Place`` order (``ts``, then room, then seq, all descending), those
        below ``before`` (None: from the newest), at most ``limit``. The page's ``before``
        continues it (None: nothing older matches). Time is not the index's order, so every
        match is read to order them: at most ``most`` + 1 are, and a query matching more than
        ``most`` messages in all raises ``SearchTooBroad`` (whatever ``before`` is, so that
        every page of one query is answered or none). Read-only.

        Raises ``SearchUnsupported`` as ``search`` does, ``StoreError`` as any read."""
        ...

    async def unread(self, room: str, user: str, *, scan: int) -> Unread:
        """``user``'s read marker in ``room`` and what came after it: messages with a higher
        seq that are not ``user``'s and not deleted, and those of them that mention ``user``,
        counted over at most the room's last ``scan`` non-deleted messages. A user with no
        marker (they never said they read the room) has nothing unread: ``Unread()``, and
        nothing is scanned (every join asks; a scan of a busy room's last 1,000 messages cost
        ~400 us of CPU, most of a handshake). Read-only."""
        ...

    async def mark_read(self, room: str, user: str, seq: int) -> int:
        """Move ``user``'s read marker in ``room`` forward to ``seq`` (never back: a lower
        ``seq`` changes nothing) and return the marker now. When it moved, other processes
        serving the room are told (``RoomListener.remote_read``); this process's room tells
        its own sessions."""
        ...

    async def markers(self, user: str) -> dict[str, int]:
        """Every read marker ``user`` has: room -> seq. Read-only."""
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

    async def erase(self, user: str,
                    erased: ErasedObserver | None = None) -> dict[str, list[int]]:
        """Delete every stored message of ``user``, in every room: each gets a delete entry
        (``"by": "moderator"``, from ``user`` themself: their erasure request) appended to its
        room's log like any change, so members online and every later resume learn of it,
        and its text leaves storage (its edits' texts, and the excerpts quoting it, too: on
        Redis the streams it removed entries from are rewritten, so no byte of them stays).
        The user's reactions go too: a react-off entry from them (a take-back) for each
        message not deleted and emoji they ever reacted with on it, appended like the
        deletes, after which their earlier reaction entries leave the log (not the take-backs
        of an earlier erasure: clients that resumed past what those replace need them); a
        resume from any seq then folds to exactly the current state. Works in steps of at most
        ``ERASE_STEP`` new entries in one room, ``ERASE_PAUSE`` apart; after each step that
        deleted messages, calls ``erased(room, seqs)`` with their seqs. The room's members are
        told as for any append by another process (``RoomListener.remote_messages``, in this
        process too). Returns everything it erased: room -> message seqs, ascending;
        messages already deleted are not in it (a second erase returns ``{}``). Not atomic:
        if it raises ``StoreError`` half way, the steps before stay done (run it again for
        the rest). Messages the user stores while it runs may be missed: revoke or ban them
        first."""
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

    async def presence(self, room: str) -> dict[str, str]:
        """Members of ``room`` connected to *other* processes as the engine knows them (user ->
        name); read-only ({} for an engine that is not shared)."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release resources. Further calls raise ``StoreError``."""
        ...


ErasedStep = Callable[[str, list[StoredChange]], None]
"""Called by ``Log.erase`` on the event loop after each step with (room, the entries it
appended: delete entries, or the erased user's react-off entries); must not block."""


@dataclass(frozen=True, slots=True)
class LogState:
    """What ``Log.state`` says of a room (the log's half of ``Engine.sync``)."""

    top: int
    """The highest seq stored (at least the ``floor`` asked with: see ``Log.state``)."""
    epoch: str
    """The room's log's epoch now."""
    banned: tuple[tuple[str, str], ...] = ()
    """Of the members asked about, those banned now, with the ban's reason."""


class Log(Protocol):
    """The durable half of an ``Engine`` (docs/design/log-and-bus.md, section 1): seqs, dedup,
    the rules of changes, current state, epochs, markers, bans, tickets, revocations, erasure
    and imports. Each method keeps the contract of the ``Engine`` method of the same name,
    except that a log tells nobody: announcing is the ``Bus``'s (``SplitEngine`` does it after
    the log answers). Async methods may raise ``StoreError``; ``append`` also ``LogReset`` and
    ``Unstorable``, as ``Engine.append``."""

    shared: bool
    """Whether other processes may append to the same rooms (then the log deduplicates)."""

    @property
    def healthy(self) -> bool:
        """False while the log is known to be unreachable."""
        ...

    async def load(self, room: str, dedup_window: int) -> RoomSnapshot: ...

    async def append(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                     dedup_window: int, epoch: str | None = None, floor: int = 0,
                     rules: LogRules = DEFAULT_RULES) -> list[Appended]: ...

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[Entry]: ...

    async def history(self, room: str, *, after: int = 0, before: int, limit: int,
                      newest: bool = False) -> list[StoredMessage]: ...

    async def search(self, room: str, query: str, *, before: int | None,
                     limit: int) -> SearchPage: ...

    async def search_all(self, query: str, *, before: Place | None, limit: int,
                         most: int) -> RoomsPage: ...

    async def top(self, room: str) -> int: ...

    async def state(self, room: str, floor: int, members: Iterable[str]) -> LogState:
        """The room's top and epoch, moved past ``floor`` under a new epoch when the log is
        behind it (as ``Engine.sync``), and which of ``members`` are banned now."""
        ...

    async def unread(self, room: str, user: str, *, scan: int) -> Unread: ...

    async def mark_read(self, room: str, user: str, seq: int) -> tuple[int, bool]:
        """As ``Engine.mark_read``, and whether the marker moved (then the bus tells)."""
        ...

    async def markers(self, user: str) -> dict[str, int]: ...

    async def ban(self, room: str, ban: Ban) -> None: ...

    async def unban(self, room: str, user: str) -> bool: ...

    async def banned(self, room: str, user: str) -> Ban | None: ...

    async def stash(self, key: str, value: bytes, ttl: float) -> None: ...

    async def take(self, key: str) -> bytes | None: ...

    async def revoke(self, user: str, at: float) -> None: ...

    async def revocations(self, since: float) -> list[tuple[str, float]]: ...

    async def erase(self, user: str, step: ErasedStep) -> dict[str, list[int]]:
        """As ``Engine.erase``, calling ``step(room, entries)`` after each step that appended
        something (the caller tells the room's listeners and calls its ``ErasedObserver``)."""
        ...

    async def rooms(self) -> list[str]: ...

    async def log_epoch(self, room: str) -> str | None: ...

    async def importable(self, room: str) -> bool: ...

    async def import_entries(self, room: str, entries: Sequence[Entry], *, top: int,
                             epoch: str | None = None, dedup_window: int = 0,
                             progress: Callable[[int], object] | None = None) -> bool: ...

    async def close(self) -> None: ...


class Bus(Protocol):
    """The live half of an ``Engine``: how this process's rooms hear what others did, and
    presence. At most once, like any pub/sub: rooms repair from the log (gap reads, ``sync``).
    The publishing methods never block and never raise (a notice that cannot go is dropped)."""

    shared: bool
    """Whether other processes are on this bus (then ``Engine.shared``)."""
    node: str
    """This process's identity on the bus."""

    @property
    def healthy(self) -> bool: ...

    def subscribe(self, room: str, listener: RoomListener) -> None:
        """As ``Engine.subscribe``: ``listener`` is the room's actor in this process."""
        ...

    def unsubscribe(self, room: str, listener: RoomListener) -> None: ...

    def feed(self, room: str, messages: list[WireMessage]) -> None:
        """Hand entries appended in this process outside the room's actor (an erasure) to the
        room's listener here, if it has one."""
        ...

    def entries(self, room: str, messages: list[WireMessage]) -> None:
        """Tell the other processes serving ``room`` of entries this process stored (in seq
        order; after the log's commit)."""
        ...

    def read_moved(self, room: str, user: str, seq: int) -> None:
        """Tell the other processes that ``user``'s read marker in ``room`` moved to ``seq``."""
        ...

    def banned(self, room: str, user: str, reason: str) -> None:
        """Tell the other processes that ``user`` was banned from ``room``."""
        ...

    async def presence(self, room: str, members: dict[str, str], ttl: float) -> dict[str, str]:
        """Publish this process's ``members`` of ``room`` (as ``Engine.sync``) and return the
        members connected to other processes."""
        ...

    async def others(self, room: str) -> dict[str, str]:
        """As ``Engine.presence``: the members of ``room`` connected to other processes."""
        ...

    async def close(self) -> None: ...


SHARED_SCHEMES = ("redis://", "rediss://", "unix://")


def is_shared_url(url: str) -> bool:
    """Whether ``url`` names an engine several processes can share."""
    return url.startswith(SHARED_SCHEMES)

"""``MemoryEngine``: ephemeral rooms, for one process: every room's log in this process's
memory, nothing on disk.

**Not durable.** A restart (or a crash) loses every message, read marker, ban, revocation and
stashed ticket; the engine starts with a new epoch, so clients resuming from before it are told
their history is gone (docs/protocol.md, "Epochs") instead of being taken as recovered. Use it
where a chat needs no durability: live-event rooms, demos, tests, and benchmarks against
servers that store nothing. Nothing is shared either: like the embedded engine it serves one
process (``--workers`` needs Redis).

Memory is bounded by ``history_retention`` entries per room (0 keeps all: unbounded, so the
config refuses it with this engine), times the rooms that ever had a message.

What it keeps per room (``_Log``): every entry by seq (a message in its current state, a
change as stored), the seqs in order (a sorted list: appends go at its end, reads find their
start by bisection, pruning advances a head index), and the indexes the log's rules need: the
changes and the replies of each message, and the room's last ``dedup_window`` ids (it
deduplicates itself, like Redis, and also hands them to the room on ``load``, like the
embedded engine). An append costs O(1) per draft plus what pruning frees; a read or a history
page O(log n + its length).
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from rooms import changes
from rooms import engine as contract
from rooms.engine import AppendDone, Ban, ErasedObserver, RoomListener, RoomSync
from rooms.errors import LogReset, SearchUnsupported, StoreError, Unstorable
from rooms.messages import (
    DEFAULT_RULES,
    Action,
    AnyDraft,
    Appended,
    ChangeDraft,
    DeletedBy,
    Draft,
    Entry,
    LogRules,
    Refusal,
    Reply,
    RoomSnapshot,
    StoredChange,
    StoredMessage,
    Unread,
    WireMessage,
    unencodable,
)
from rooms.search import Place, RoomsPage, SearchPage

SEARCH_UNSUPPORTED = ("searching messages needs an engine with a search index: the embedded "
                      "engine (SQLite) and the PostgreSQL log have one; this server keeps "
                      "messages in memory (memory://), which has none")
"""What ``search`` raises ``SearchUnsupported`` with (the HTTP 501's detail)."""
COMPACT_AT = 1024
"""Pruned seqs at the head of a room's ordered lists before they are cut off (amortised: a
cut happens once the dead head is also half the list)."""


def _storable(*texts: str) -> None:
    """Raise ``Unstorable`` (no draft: ``indexes`` empty) if a text has a lone surrogate: the
    other engines could not store it, and no wire form of it could be sent."""
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Unstorable((), f"cannot be stored: {exc}") from exc


@dataclass(slots=True)
class _Ordered:
    """Seqs in ascending order, appended at the end; those up to ``head`` are pruned. Others may
    be gone from the log too (an erasure's reaction entries): readers skip seqs not in it."""

    seqs: list[int] = field(default_factory=list)
    head: int = 0

    def add(self, seq: int) -> None:
        self.seqs.append(seq)

    def prune(self, cutoff: int) -> list[int]:
        """Drop the seqs up to ``cutoff``; returns them."""
        start = self.head
        end = bisect.bisect_right(self.seqs, cutoff, lo=start)
        dropped = self.seqs[start:end]
        self.head = end
        if end >= COMPACT_AT and end * 2 >= len(self.seqs):
            del self.seqs[:end]
            self.head = 0
        return dropped

    def after(self, seq: int) -> int:
        """The index of the first live seq above ``seq``."""
        return bisect.bisect_right(self.seqs, seq, lo=self.head)

    def before(self, seq: int) -> int:
        """The index just past the last live seq below ``seq``."""
        return bisect.bisect_left(self.seqs, seq, lo=self.head)


@dataclass(slots=True)
class _Log:
    """One room's log and the indexes its rules need."""

    top: int = 0
    entries: dict[int, Entry] = field(default_factory=dict)  # seq -> messages' current state
    order: _Ordered = field(default_factory=_Ordered)  # every entry's seq
    messages: _Ordered = field(default_factory=_Ordered)  # messages' seqs
    last_change: dict[int, int] = field(default_factory=dict)  # message -> its last change
    changes: dict[int, list[int]] = field(default_factory=dict)  # message -> its changes
    replies: dict[int, list[int]] = field(default_factory=dict)  # message -> replies to it
    ids: OrderedDict[tuple[str, str], int] = field(default_factory=OrderedDict)
    taken_back: set[int] = field(default_factory=set)  # react-offs an erasure appended

    def message(self, seq: int | None) -> StoredMessage | None:
        entry = self.entries.get(seq) if seq is not None else None
        return entry if isinstance(entry, StoredMessage) else None

    def add(self, entry: Entry) -> None:
        self.top = entry.seq
        self.entries[entry.seq] = entry
        self.order.add(entry.seq)
        if isinstance(entry, StoredMessage):
            self.messages.add(entry.seq)
            if entry.reply_to is not None:
                self.replies.setdefault(entry.reply_to.seq, []).append(entry.seq)
        else:
            self.changes.setdefault(entry.target, []).append(entry.seq)
            self.last_change[entry.target] = entry.seq

    def remember(self, user: str, client_id: str | None, seq: int, window: int) -> None:
        if client_id is None or window <= 0:
            return
        self.ids[(user, client_id)] = seq
        self.ids.move_to_end((user, client_id))
        while len(self.ids) > window:
            self.ids.popitem(last=False)

    def deleted(self, target: int) -> None:
        """``target`` was deleted: its text leaves its edits and the replies quoting it."""
        for seq in self.changes.get(target, ()):
            entry = self.entries.get(seq)
            if isinstance(entry, StoredChange) and entry.action is Action.EDIT and entry.text:
                self.entries[seq] = StoredChange(
                    entry.room, entry.seq, entry.user, entry.name, entry.id, entry.ts,
                    entry.action, entry.target, "", entry.by, entry.emoji, entry.on)
        for seq in self.replies.get(target, ()):
            reply = self.message(seq)
            if reply is not None and reply.reply_to is not None and reply.reply_to.excerpt:
                r = reply.reply_to
                self.entries[seq] = StoredMessage(
                    reply.room, reply.seq, reply.user, reply.name, reply.id, reply.text,
                    reply.ts, Reply(r.seq, r.user, r.name, ""), reply.mentions, reply.edited,
                    reply.reactions, reply.files)

    def prune(self, retention: int) -> None:
        """Keep the last ``retention`` seqs, and no change of a message pruned."""
        if not retention:
            return
        cutoff = self.top - retention
        for seq in self.order.prune(cutoff):
            entry = self.entries.pop(seq, None)
            if isinstance(entry, StoredMessage):
                for change in self.changes.pop(seq, ()):
                    self.entries.pop(change, None)
                self.replies.pop(seq, None)
                self.last_change.pop(seq, None)
        self.messages.prune(cutoff)

    def oldest(self) -> int:
        seqs = self.order.seqs
        for index in range(self.order.head, len(seqs)):
            if seqs[index] in self.entries:
                return seqs[index]
        return self.top + 1


class MemoryEngine:
    """``MemoryEngine()`` (or ``open_engine("memory://")``); implements ``rooms.engine.Engine``
    without durability (see the module docstring). Every call completes without waiting for
    anything but the event loop; after ``close`` they raise ``StoreError``."""

    shared = False

    def __init__(self) -> None:
        self.node = f"memory-{os.getpid()}"
        self.epoch = secrets.token_hex(8)
        """New with every engine: a restart loses the logs, and clients must learn it."""
        self._logs: dict[str, _Log] = {}
        self._listeners: dict[str, RoomListener] = {}
        self._markers: dict[str, dict[str, int]] = {}  # room -> user -> seq
        self._user_markers: dict[str, dict[str, int]] = {}  # user -> room -> seq
        self._bans: dict[str, dict[str, Ban]] = {}  # room -> user -> ban
        self._stash: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires)
        self._expiries: list[tuple[float, str]] = []  # heap of the stash's (expires, key)
        self._revocations: dict[str, float] = {}
        self._closed = False

    @property
    def healthy(self) -> bool:
        return not self._closed

    def _open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    def _log(self, room: str) -> _Log:
        found = self._logs.get(room)
        if found is None:
            found = self._logs[room] = _Log()
        return found

    async def load(self, room: str, dedup_window: int) -> RoomSnapshot:
        self._open()
        found = self._logs.get(room)
        if found is None:
            return RoomSnapshot(epoch=self.epoch)
        recent = [(user, client_id, seq) for (user, client_id), seq in found.ids.items()
                  if seq > found.top - dedup_window]
        recent.sort(key=lambda item: item[2])
        return RoomSnapshot(last_seq=found.top, oldest_seq=found.oldest(),
                            recent_ids=tuple(recent), epoch=self.epoch)

    async def append(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                     dedup_window: int = 0, epoch: str | None = None, floor: int = 0,
                     rules: LogRules = DEFAULT_RULES) -> list[Appended]:
        """As ``Engine.append``, atomic because it never awaits: deduplicates by ``(user,
        id)`` itself (a room that stopped waiting for an append gets its results again as
        duplicates). The log cannot go backwards under this one process: ``floor`` is never
        above what it stored."""
        return self._append_now(room, drafts, retention, dedup_window, epoch, rules)

    def append_soon(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                    dedup_window: int, epoch: str | None, floor: int, rules: LogRules,
                    done: AppendDone) -> bool:
        """As ``Engine.append_soon``: stored, and ``done`` told, before it returns."""
        try:
            results = self._append_now(room, drafts, retention, dedup_window, epoch, rules)
        except (LogReset, Unstorable, StoreError) as exc:
            done(None, exc)
        else:
            done(results, None)
        return True

    def _append_now(self, room: str, drafts: Sequence[AnyDraft], retention: int,
                    dedup_window: int, epoch: str | None, rules: LogRules) -> list[Appended]:
        self._open()
        if epoch is not None and epoch != self.epoch:
            raise LogReset(self.epoch, self._logs[room].top if room in self._logs else 0)
        bad = [index for index, draft in enumerate(drafts) if unencodable(draft)]
        if bad:
            raise Unstorable(bad, "cannot be stored: a lone surrogate or an integer beyond "
                             "64 bits")
        if not drafts:
            return []
        return self._append(self._log(room), room, drafts, retention, dedup_window, rules)

    def _append(self, log: _Log, room: str, drafts: Sequence[AnyDraft], retention: int,
                dedup_window: int, rules: LogRules, *, erase: bool = False) -> list[Appended]:
        # Nothing below can fail: the drafts were checked (``unencodable``).
        results: list[Appended] = []
        top = log.top
        for draft in drafts:
            if draft.id is not None and dedup_window > 0:
                seen = log.ids.get((draft.user, draft.id))
                if seen is not None and seen > log.top - dedup_window:
                    results.append(Appended(seen, duplicate=True))
                    continue
            if isinstance(draft, Draft):
                reply = None
                if draft.reply_to is not None:
                    answered = changes.reply(log.message(draft.reply_to), rules)
                    if isinstance(answered, Refusal):
                        results.append(Appended(0, refused=answered))
                        continue
                    reply = answered
                message = draft.stored(room, log.top + 1, reply)
                log.add(message)
                log.remember(draft.user, draft.id, message.seq, dedup_window)
                results.append(Appended(message.seq, entry=message))
                continue
            target = log.message(draft.target)
            if erase and target is not None and target.user != draft.user:
                results.append(Appended(0, refused=Refusal.FORBIDDEN))  # one user's only
                continue
            outcome = changes.apply(target, draft, rules)
            if outcome.refused is not None:
                results.append(Appended(0, refused=outcome.refused))
                continue
            if outcome.noop or outcome.message is None or target is None:
                last = log.last_change.get(draft.target, draft.target) if target else \
                    draft.target
                results.append(Appended(last, noop=True))
                continue
            change = draft.stored(room, log.top + 1,
                                  DeletedBy.MODERATOR if erase else outcome.by)
            log.add(change)
            log.entries[draft.target] = outcome.message
            if draft.action is Action.DELETE:
                log.deleted(draft.target)
            log.remember(draft.user, draft.id, change.seq, dedup_window)
            results.append(Appended(change.seq, entry=change))
        if log.top > top:
            log.prune(retention)
        return results

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[Entry]:
        self._open()
        log = self._logs.get(room)
        if log is None or limit <= 0:
            return []
        seqs, entries = log.order.seqs, log.entries
        found: list[Entry] = []
        for index in range(log.order.after(after), len(seqs)):
            seq = seqs[index]
            if seq > upto:
                break
            entry = entries.get(seq)
            if entry is not None:
                found.append(entry)
                if len(found) >= limit:
                    break
        return found

    async def history(self, room: str, *, after: int = 0, before: int, limit: int,
                      newest: bool = False) -> list[StoredMessage]:
        self._open()
        log = self._logs.get(room)
        if log is None or limit <= 0:
            return []
        seqs = log.messages.seqs
        start, end = log.messages.after(after), log.messages.before(before)
        window = range(end - 1, start - 1, -1) if newest else range(start, end)
        found: list[StoredMessage] = []
        for index in window:
            message = log.message(seqs[index])
            if message is not None:
                found.append(message)
                if len(found) >= limit:
                    break
        if newest:
            found.reverse()
        return found

    async def search(self, room: str, query: str, *, before: int | None,
                     limit: int) -> SearchPage:
        """Raises ``SearchUnsupported``, as the Redis engine does: an index of words beside
        the logs would cost every append and, here, memory the retention does not bound."""
        self._open()
        raise SearchUnsupported(SEARCH_UNSUPPORTED)

    async def search_all(self, query: str, *, before: Place | None, limit: int,
                         most: int) -> RoomsPage:
        """Raises ``SearchUnsupported``, as ``search`` does."""
        self._open()
        raise SearchUnsupported(SEARCH_UNSUPPORTED)

    async def unread(self, room: str, user: str, *, scan: int) -> Unread:
        self._open()
        read = self._markers.get(room, {}).get(user, 0)
        log = self._logs.get(room)
        if not read or scan <= 0 or log is None:
            return Unread(read)
        scanned = unread = mentions = 0
        seqs = log.messages.seqs
        for index in range(len(seqs) - 1, log.messages.head - 1, -1):
            if seqs[index] <= read or scanned >= scan:
                break
            message = log.message(seqs[index])
            if message is None or message.deleted:
                continue  # deleted messages are not looked at (as in the other engines)
            scanned += 1
            if message.user != user:
                unread += 1
                mentions += user in message.mentions
        return Unread(read, unread, mentions, capped=scanned >= scan)

    async def mark_read(self, room: str, user: str, seq: int) -> int:
        # One process: the room tells its own sessions; nobody else to tell.
        self._open()
        _storable(room, user)
        markers = self._markers.setdefault(room, {})
        marker = max(markers.get(user, 0), seq)
        markers[user] = marker
        self._user_markers.setdefault(user, {})[room] = marker
        return marker

    async def markers(self, user: str) -> dict[str, int]:
        self._open()
        return dict(sorted(self._user_markers.get(user, {}).items()))

    async def sync(self, room: str, members: dict[str, str], ttl: float, *,
                   floor: int = 0) -> RoomSync:
        self._open()
        log = self._logs.get(room)
        return RoomSync(top=log.top if log else 0, others={}, epoch=self.epoch)

    def subscribe(self, room: str, listener: RoomListener) -> None:
        # Nothing else serves the room, but an erasure appends outside its actor: it hears of
        # those entries through here.
        self._listeners[room] = listener

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        if self._listeners.get(room) is listener:
            del self._listeners[room]

    async def stash(self, key: str, value: bytes, ttl: float) -> None:
        self._open()
        _storable(key)
        now = time.time()
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:  # forget what expired: bounded by use
            _, old = heapq.heappop(expiries)
            kept = self._stash.get(old)
            if kept is not None and kept[1] <= now:
                del self._stash[old]
        self._stash[key] = (value, now + ttl)
        heapq.heappush(expiries, (now + ttl, key))

    async def take(self, key: str) -> bytes | None:
        self._open()
        kept = self._stash.pop(key, None)
        return kept[0] if kept is not None and kept[1] > time.time() else None

    async def revoke(self, user: str, at: float) -> None:
        self._open()
        _storable(user)
        self._revocations[user] = max(at, self._revocations.get(user, at))

    async def revocations(self, since: float) -> list[tuple[str, float]]:
        self._open()
        return sorted(((user, at) for user, at in self._revocations.items() if at > since),
                      key=lambda item: item[1])

    async def erase(self, user: str,
                    erased: ErasedObserver | None = None) -> dict[str, list[int]]:
        """As ``Engine.erase``: per room, the user's messages deleted (a delete entry each,
        ``by`` moderator), then a take-back (react-off) for each message not deleted and
        emoji they ever reacted with, in steps of ``ERASE_STEP`` entries, round robin over the
        rooms with ``ERASE_PAUSE`` between rounds; then their reaction entries leave the log
        (not an erasure's take-backs, nor the room's top entry, whose seq is the log's top)."""
        self._open()
        step = contract.ERASE_STEP
        steps: dict[str, list[tuple[list[tuple[int, str, str]], bool]]] = {}
        forget: dict[str, int] = {}
        for room, log in self._logs.items():
            deletes: list[tuple[int, str, str]] = []
            pairs: dict[tuple[int, str], str] = {}
            for index in range(log.order.head, len(log.order.seqs)):
                entry = log.entries.get(log.order.seqs[index])
                if entry is None or entry.user != user:
                    continue
                if isinstance(entry, StoredMessage):
                    if not entry.deleted:
                        deletes.append((entry.seq, "", entry.name))
                elif entry.action is Action.REACT and entry.seq not in log.taken_back:
                    pairs[(entry.target, entry.emoji)] = entry.name
                    forget[room] = entry.seq
            backs = [(target, emoji, name) for (target, emoji), name in pairs.items()]
            room_steps = [(deletes[i:i + step], True) for i in range(0, len(deletes), step)]
            room_steps += [(backs[i:i + step], False) for i in range(0, len(backs), step)]
            if room_steps:
                steps[room] = room_steps
        done: dict[str, list[int]] = {}
        for index in range(max(map(len, steps.values()), default=0)):
            told = False
            for room, room_steps in steps.items():
                if index >= len(room_steps):
                    continue
                self._open()
                log = self._log(room)
                now = int(time.time() * 1000)
                work, deleting = room_steps[index]
                drafts: list[AnyDraft] = [
                    ChangeDraft(user, name, None, now, Action.REACT, target, emoji=emoji)
                    if not deleting else
                    ChangeDraft(user, name, None, now, Action.DELETE, target, moderator=True)
                    for target, emoji, name in work]
                if deleting:
                    results = self._append(log, room, drafts, 0, 0, DEFAULT_RULES, erase=True)
                else:
                    results = self._take_back(log, room, drafts)
                entries = [r.entry for r in results if isinstance(r.entry, StoredChange)]
                if not entries:
                    continue
                deleted = [e.target for e in entries if e.action is Action.DELETE]
                if deleted:
                    done.setdefault(room, []).extend(deleted)
                listener = self._listeners.get(room)
                if listener is not None:
                    listener.remote_messages([WireMessage(e.seq, e.to_wire()) for e in entries])
                if erased is not None and deleted:
                    erased(room, deleted)
                told = told or index + 1 < len(room_steps)
            if told:
                await asyncio.sleep(contract.ERASE_PAUSE)
        for room, last in forget.items():
            self._forget_reactions(self._log(room), user, last)
        return done

    @staticmethod
    def _take_back(log: _Log, room: str, drafts: list[AnyDraft]) -> list[Appended]:
        """A react-off entry for each draft whose target is a message not deleted, whether or
        not the reaction is on now (the entries that said so are about to go)."""
        results: list[Appended] = []
        for draft in drafts:
            assert isinstance(draft, ChangeDraft)
            message = log.message(draft.target)
            if message is None or message.deleted:
                continue  # a tombstone has no reactions to take back
            change = draft.stored(room, log.top + 1)
            log.add(change)
            log.taken_back.add(change.seq)
            log.entries[draft.target] = changes.fold(message, change)
            results.append(Appended(change.seq, entry=change))
        return results

    @staticmethod
    def _forget_reactions(log: _Log, user: str, upto: int) -> None:
        """Remove ``user``'s reaction entries up to ``upto`` (not an erasure's take-backs, not
        the room's top entry: its seq is the log's top)."""
        seqs = log.order.seqs
        for index in range(log.order.head, len(seqs)):
            seq = seqs[index]
            if seq > upto:
                break
            entry = log.entries.get(seq)
            if (isinstance(entry, StoredChange) and entry.user == user
                    and entry.action is Action.REACT and seq not in log.taken_back
                    and seq < log.top):
                del log.entries[seq]

    async def ban(self, room: str, ban: Ban) -> None:
        self._open()
        _storable(room, ban.user, ban.reason)
        self._bans.setdefault(room, {})[ban.user] = ban

    async def unban(self, room: str, user: str) -> bool:
        self._open()
        ban = self._bans.get(room, {}).pop(user, None)
        return ban is not None and (ban.until is None or ban.until > time.time())

    async def banned(self, room: str, user: str) -> Ban | None:
        self._open()
        ban = self._bans.get(room, {}).get(user)
        if ban is None or (ban.until is not None and ban.until <= time.time()):
            return None
        return ban

    async def top(self, room: str) -> int:
        self._open()
        log = self._logs.get(room)
        return log.top if log else 0

    async def presence(self, room: str) -> dict[str, str]:
        self._open()
        return {}

    async def close(self) -> None:
        """Forget everything (the point of this engine); further calls raise ``StoreError``."""
        self._closed = True
        self._logs.clear()
        self._listeners.clear()

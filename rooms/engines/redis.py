"""``RedisEngine``: rooms shared by any number of processes, on Redis's own primitives.

Per room, keys sharing one hash tag (one Redis Cluster slot): ``roomchat:{<room>}:log`` (a
stream, entry ids ``0-<seq>``: messages and changes), ``:seq`` (the last allocated seq),
``:epoch`` (the log's epoch: room_top.lua, docs/protocol.md "Epochs"), ``:ids`` and ``:idq`` (the
dedup window: ``user\\0id -> seq`` and its insertion order), ``:state`` and ``:changed`` (the
current state of each changed message, ``seq -> JSON``, and their seqs: log.lua), ``:read``
(read markers, ``user -> seq``), ``:presence`` (``node\\0user -> expires\\0name``),
``:ban:<user>`` (``until\\0reason``, expiring at ``until``), and the shard channel
``roomchat:{<room>}:ch``; per user, ``roomchat:user:{<user>}:read`` (``room -> seq``).

- Append (``append.lua``): dedup, seq allocation, ``XADD``, trim and ``SPUBLISH`` in one script,
  so a batch is stored and announced atomically, whichever process sends it. The appends that
  rooms issue in one turn of the event loop go to Redis as one pipeline (``_Appends``): in many
  small rooms each room appends alone, and one round trip per room was most of what a message
  cost this process.
- Live fan-out: one ``SSUBSCRIBE`` connection per process, subscribed to the rooms that have an
  actor here. Pub/sub is at-most-once: the room's state spots a seq jump and reads the gap from
  the stream; after any reconnect every room resyncs. A connection that goes silently stale
  (centrifugo#1189) is probed with ``PING`` when idle and replaced when the probe goes
  unanswered; each room also compares its last delivered seq with the log's top on every sync
  (``sync.lua``), repairing any difference without ever disconnecting a client.
- Presence (``sync.lua``): each process's members of a room, with an expiry it refreshes; a
  killed process's entries expire and are removed by the next sync of any other process.

- Changes (edits, deletes, reactions) are entries of the log like messages: append.lua checks
  each against its target's current state and updates that state atomically (log.lua), so a
  page overlays the ``:state`` of the changed messages it holds and merges in deleted ones
  (which leave the stream: their text, and their edits', is gone from Redis). Tombstones of
  versions before change entries (``:deleted``) are moved into ``:state`` once.
- Bans are announced on the room's channel (``b`` messages), read markers too (``r``):
  at-most-once, like every pub/sub message; a lost ban announcement is caught up at the next
  sync, a lost marker at the user's next join.
- Erasure requests (``erase``): there is no index from users to rooms (it would cost every
  append, and a key outside the room's hash tag), so ``erase`` finds the room logs with ``SCAN``
  and walks each in pages of ``ERASE_PAGE`` entries with ``erase.lua``, which appends a delete
  entry for each of the user's messages and a take-back for each of their reactions (at most
  ``rooms.engine.ERASE_STEP`` per step) and publishes them to every process, this one
  included. Its cost is one pass over every stored message, in short steps (Redis serves
  others between them). Then each stream it removed entries from is rewritten
  (``rewrite.lua``, ``REWRITE_STEP`` entries per step): ``XDEL`` alone leaves their bytes.

- A log that lost data (a restart without the AOF, a flush, a failover to a replica behind):
  every load, append and sync passes the highest seq this process saw stored in the room
  (``floor``: the room's, or remembered for ``TOPS_REMEMBERED`` rooms); room_top.lua finds the
  log behind it, or without its epoch, and moves it past the floor under a new epoch, so no seq
  is allocated twice; an append is then refused with ``LogReset`` and the room starts over with
  its members (``RoomState.reset``).

- On a Redis Cluster (``?cluster=1`` in the URL, ``split_cluster_url``): each room is one slot
  (its hash tag), so every script touches one slot; the per-user markers, revocations and
  stash are single-key calls; the room list is a ``SCAN`` of each master. Scripts refused while
  their slot moves (``TRYAGAIN``) are sent again (``_Retrying``), and a room whose slot left
  its node is subscribed again on the new one. docs/scaling.md, "On a Redis Cluster".

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always`` an acked message
survives a crash of Redis too (not a failover to a replica that lagged: replication is
asynchronous).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    ClusterError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rooms import engine as contract
from rooms.attachments import files_to_json
from rooms.backoff import backoff_delay
from rooms.config import RoomConfig
from rooms.engine import AppendDone, Ban, CommitObserver, ErasedObserver, RoomListener, RoomSync
from rooms.engines import redis_records as records
from rooms.engines.redis_feed import FAILURES, RedisFeed, room_of, where
from rooms.errors import LogReset, RoomNotEmpty, SearchUnsupported, StoreError, Unstorable
from rooms.messages import (
    DEFAULT_RULES,
    Action,
    AnyDraft,
    Appended,
    Draft,
    Entry,
    LogRules,
    Refusal,
    RoomSnapshot,
    StoredChange,
    StoredMessage,
    Unread,
    WireMessage,
)
from rooms.search import SEARCH_UNSUPPORTED, Place, RoomsPage, SearchPage

log = logging.getLogger("roomchat.redis")

REVOCATIONS = "roomchat:revocations"
"""Sorted set: user -> Unix time of their latest revocation (shared by every room)."""
DEFAULT_TIMEOUT = RoomConfig().store_timeout
"""Seconds each call may take when the opener gives no ``timeout`` (the CLI's commands);
the server passes its ``store_timeout`` setting."""
TOPS_REMEMBERED = 20_000
"""Rooms whose top seq the engine remembers (least recently seen forgotten first; four times
the default cap on live rooms): a room's log found behind it lost data
(``rooms.errors.LogReset``), and goes on after it. ~200 bytes each (measured: 194), ~4 MB."""
WARNED_KEYS = 10_000
"""Malformed records the engine remembers having warned about (one warning line each, however
often they are read); past this many it forgets them all and may warn again."""
ERASE_PAGE = 1000
"""Log entries one step of ``erase`` examines (one script call: Redis serves other clients
between steps), and the ``COUNT`` hint of its ``SCAN`` for room logs."""
REWRITE_STEP = 1000
"""Stream entries one step of rewriting a room's stream after an erasure copies (one script
call: Redis serves other clients between steps). Measured on a 100,000-entry stream on this
2-core machine shared with other work: 5-10 ms of Redis's time per step of 1,000 (5,000:
20-40 ms), ~0.5 s for the whole rewrite in steps."""
REWRITE_ATTEMPTS = 3
"""Times a stream's rewrite in steps begins again when entries other than the oldest were
removed from it meanwhile (a delete), before the last attempt copies it in one call: that one
blocks Redis for as long as the stream is long (measured: 0.4-1.0 s for 100,000 entries)."""
RETRY_MIN = 0.02
"""Seconds before a call refused during a slot's move (``TRYAGAIN``) is sent again; the wait
doubles up to ``RETRY_MAX``, for as long as the call's timeout allows."""
RETRY_MAX = 0.5
"""Longest wait between two attempts of a call refused during a slot's move."""
REWRITE_COPY_TTL = 60.0
"""Seconds a stream's copy under way outlives its last step (a rewrite whose process died
leaves no copy behind for longer)."""


def _keys(room: str) -> tuple[str, str, str, str, str, str]:
    base = f"roomchat:{{{room}}}"
    return (f"{base}:log", f"{base}:seq", f"{base}:ids", f"{base}:idq", f"{base}:presence",
            f"{base}:ch")


def _epoch_key(room: str) -> str:
    return f"roomchat:{{{room}}}:epoch"


def _state_keys(room: str) -> tuple[str, str, str]:
    """The room's current-state hash, its sorted set of changed seqs, and the tombstones hash
    of versions before change entries (migrated: log.lua)."""
    base = f"roomchat:{{{room}}}"
    return f"{base}:state", f"{base}:changed", f"{base}:deleted"


def _read_key(room: str) -> str:
    """The room's read markers: user -> seq."""
    return f"roomchat:{{{room}}}:read"


def _markers_key(user: str) -> str:
    """A user's read markers, every room: room -> seq (its own hash slot)."""
    return f"roomchat:user:{{{user}}}:read"


def _new_epoch() -> str:
    """An epoch for a log that needs one (room_top.lua): random, 16 hex digits."""
    return secrets.token_hex(8)


def _top(counter: object, last: list[Any]) -> int | None:
    """The room's top seq from its counter, else (missing: a log written before counters
    existed) its last log entry; None when the counter is not a number (malformed)."""
    if counter is not None:
        return records.count(counter)
    return (records.entry_seq(last[0][0]) or 0) if last else 0


def _script(name: str, *, room_top: bool = False, log: bool = False) -> str:
    """A Lua script of this package; ``room_top``: with room_top.lua's function in front;
    ``log``: with log.lua's (the log's rules for changes) after it."""
    scripts = resources.files("rooms.engines")
    text = (scripts / name).read_text(encoding="utf-8")
    if log:
        text = (scripts / "log.lua").read_text(encoding="utf-8") + "\n" + text
    if room_top:
        text = (scripts / "room_top.lua").read_text(encoding="utf-8") + "\n" + text
    return text


_MIGRATE = "migrate(KEYS[1], KEYS[2], KEYS[3])\nreturn 1\n"
"""After log.lua: move the tombstones of an older version into the state hash (KEYS: the
tombstones hash, the state hash, the changed set)."""
_CHUNK = 2
"""A page of ``history`` reads this many times its ``limit`` log entries per round trip
(change entries sit between messages: a busy room's page of 50 messages spans ~70)."""


def split_cluster_url(url: str) -> tuple[str, bool]:
    """``url`` without its ``cluster`` query parameter, and whether it names a Redis Cluster
    (``cluster=1``, ``yes`` or ``true``; ``0``, ``no``, ``false`` or no parameter: a single
    Redis). Raises ``ValueError`` for another value. A parameter rather than a scheme of its
    own: every tool that takes ``redis://`` and ``rediss://`` URLs (the configuration's
    checks, ``roomchat check``, the Compose files) takes a cluster's unchanged, and TLS
    (``rediss://...?cluster=1``) comes with it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    flags = [value.lower() for name, value in query if name == "cluster"]
    if not flags:
        return url, False
    if len(flags) > 1 or flags[0] not in _CLUSTER_FLAGS:
        raise ValueError(f"store URL parameter cluster={','.join(flags)!r}: use cluster=1 "
                         "for a Redis Cluster, or leave it out")
    rest = urlencode([(name, value) for name, value in query if name != "cluster"])
    return urlunsplit(parts._replace(query=rest)), _CLUSTER_FLAGS[flags[0]]


_CLUSTER_FLAGS = {"1": True, "yes": True, "true": True, "0": False, "no": False,
                  "false": False}


def _refused(exc: object) -> bool:
    """Whether ``exc`` says Redis Cluster refused a call without running it, so sending it
    again cannot apply it twice: ``TRYAGAIN`` (a multi-key call in a slot being moved, its
    keys on both sides), or redis-py's ``TTL exhausted`` after following redirections (MOVED,
    ASK, TRYAGAIN: each a refusal) as often as it will. ``CLUSTERDOWN`` is a refusal too (a
    failover under way)."""
    return isinstance(exc, TryAgainError) or type(exc) is ClusterError or (
        isinstance(exc, RedisError) and str(exc).startswith("CLUSTERDOWN"))


class _Retrying:
    """A registered script whose calls are sent again, with backoff, while Redis Cluster
    refuses them during a slot's move (``_refused``), for at most ``timeout`` seconds; then
    the refusal is raised (the engine turns it into ``StoreError``). Not while a call may
    have run: any other error is raised at once."""

    def __init__(self, script: Any, timeout: float) -> None:
        self._script = script
        self._timeout = timeout
        self.sha = script.sha

    async def __call__(self, *, keys: list[str],
                       args: Sequence[str | bytes | int]) -> Any:
        deadline = time.monotonic() + self._timeout
        attempt = 0
        while True:
            try:
                return await self._script(keys=keys, args=args)
            except RedisError as exc:
                delay = backoff_delay(attempt, base=RETRY_MIN, cap=RETRY_MAX)
                if not _refused(exc) or time.monotonic() + delay > deadline:
                    raise
            attempt += 1
            await asyncio.sleep(delay)


_Pending = tuple[list[str], list[str | bytes | int], "asyncio.Future[list[Any]]"]


class _Appends:
    """Sends the append scripts issued in one turn of the event loop as one pipeline.

    ``submit`` queues a script call and returns the future of its result; the first call of a
    turn schedules the flush for the end of that turn (``call_soon``). Each flush is a task of
    its own, owned here (``close`` cancels and awaits them), so a slow round trip does not hold
    back the next turn's appends: flushes overlap like the single calls they replace, each on a
    connection of the pool. The queue needs no bound of its own: every room awaits its append
    before the next, so it holds at most one entry per room with an actor here.

    A script call that fails alone (an error from the script or from Redis) fails only its own
    future; a lost connection fails every future of its flush. After a Redis restart the
    script is unknown there: those calls are retried one by one through ``script``, which loads
    it. Results and errors are what redis-py gave (errors: ``FAILURES``): the engine turns the
    errors into ``StoreError`` as it did for single calls. A call whose waiter was cancelled
    may still be carried out, as a single call in flight could be.
    """

    def __init__(self, client: Any, script: Any,
                 slots: asyncio.Semaphore | None = None) -> None:
        self._redis = client
        self._script = script  # the registered script (its sha, and the reload)
        self._slots = slots  # the engine's bound on calls in flight (a cluster's), if any
        self._queued: list[_Pending] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # pipelines sent (a statistic; tests read it)

    def submit(self, keys: list[str],
               args: list[str | bytes | int]) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.append((keys, args, future))
        return future

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        if batch:
            task = asyncio.create_task(self._send(batch), name="redis-appends")
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        """One pipeline for ``batch``; every future of it is resolved on every path, also when
        this is cancelled during a reload after ``NOSCRIPT`` (``_fail`` skips resolved ones)."""
        self.round_trips += 1
        try:
            async with self._slots or contextlib.nullcontext():
                await self._answer(batch)
        except asyncio.CancelledError:
            _fail(batch, StoreError("store is closed"))
            raise
        except Exception as exc:  # handed to every waiter not yet answered, which raises it
            _fail(batch, exc)

    async def _answer(self, batch: list[_Pending]) -> None:
        """Send ``batch`` as one pipeline and resolve each future with its call's outcome."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        again: list[tuple[list[str], list[str | bytes | int], asyncio.Future[list[Any]]]] = []
        for (keys, args, future), sent in zip(batch, results, strict=True):
            if future.done():
                continue  # its room stopped waiting
            if isinstance(sent, NoScriptError) or _refused(sent):
                # Redis restarted and lost the script: this call loads it and runs again.
                # Or Redis Cluster refused it (its room's slot is moving): sent again, with
                # backoff, until it runs (``_Retrying``), once the others are answered.
                again.append((keys, args, future))
            elif isinstance(sent, Exception):
                future.set_exception(sent)
            else:
                future.set_result(sent)
        for keys, args, future in again:
            try:
                outcome = await self._script(keys=keys, args=args)
            except Exception as exc:  # handed to the waiter
                if not future.done():
                    future.set_exception(exc)
                continue
            if not future.done():
                future.set_result(outcome)

    async def close(self) -> None:
        """Cancel the flushes in flight and wait for them; their waiters get ``StoreError``."""
        _fail(self._queued, StoreError("store is closed"))
        self._queued = []
        for task in list(self._flushes):
            task.cancel()
        if self._flushes:
            await asyncio.wait(list(self._flushes))


def _fail(batch: list[_Pending], error: BaseException) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(error)


class RedisEngine:
    """``await RedisEngine.open("redis://host:port/db")``; implements ``rooms.engine.Engine``."""

    shared = True

    def __init__(self, url: str, client: Any, on_commit: CommitObserver | None, *,
                 timeout: float = DEFAULT_TIMEOUT, cluster: bool = False,
                 max_connections: int = 32) -> None:
        self._url = url
        self._redis = client
        self._timeout = timeout
        self._cluster = cluster
        # On a cluster redis-py's pools do not wait for a free connection (they raise
        # MaxConnectionsError): the calls wait here instead. A call uses at most one
        # connection per node at a time, so this bounds every node's pool.
        self._slots = asyncio.Semaphore(max_connections) if cluster else None

        def script(text: str) -> _Retrying:
            return _Retrying(client.register_script(text), timeout)

        self._appends = _Appends(client, script(_script("append.lua", room_top=True, log=True)),
                                 self._slots)
        self._load = script(_script("load.lua", room_top=True, log=True))
        self._sync = script(_script("sync.lua", room_top=True))
        self._erase = script(_script("erase.lua", room_top=True, log=True))
        self._rewrite_step = script(_script("rewrite.lua"))
        self._migrate = script(
            (resources.files("rooms.engines") / "log.lua").read_text(encoding="utf-8")
            + "\n" + _MIGRATE)
        self._unread = script(_script("unread.lua"))
        self._mark_read = script(_script("mark_read.lua"))
        self._user_read = script(_script("user_read.lua"))
        self._on_commit = on_commit
        self.node = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._feed = RedisFeed(url, self.node, client, timeout=timeout, cluster=cluster)
        self._closed = False
        self._warned: set[str] = set()  # malformed records already warned about (bounded)
        # room -> the highest seq this process saw stored in it, the most recently seen rooms
        # (TOPS_REMEMBERED): a floor for the room's log even after its actor here stopped.
        self._tops: OrderedDict[str, int] = OrderedDict()

    @classmethod
    async def open(cls, url: str, *, on_commit: CommitObserver | None = None,
                   max_connections: int = 32, timeout: float = DEFAULT_TIMEOUT) -> RedisEngine:
        """Connect with a pool of at most ``max_connections`` shared by all rooms (rooms wait
        for a free one), plus one subscription connection. Each call fails with
        ``StoreError`` when Redis has not answered it within ``timeout`` seconds (a hung or
        partitioned Redis: redis-py's own socket timeout is 5 s). Raises ``StoreError`` if
        Redis cannot be reached, or is a cluster node and the URL does not say so (or the
        other way round), and ``ValueError`` for a bad ``cluster`` parameter.

        ``?cluster=1`` in the URL (``split_cluster_url``) names a Redis Cluster: the URL's
        host is one node (a seed), the client finds the others and follows the slots as they
        move; at most ``max_connections`` calls are in flight (each node's pool holds as many,
        plus the subscription's)."""
        plain, cluster = split_cluster_url(url)
        client: Any
        if cluster:
            try:
                client = RedisCluster.from_url(
                    plain, max_connections=max_connections + 1, decode_responses=False,
                    health_check_interval=30, socket_timeout=timeout,
                    socket_connect_timeout=timeout)
            except RedisClusterException as exc:  # a database other than 0, a unix socket
                raise StoreError(f"bad Redis Cluster URL {where(url)!r}: {exc}") from exc
        else:
            pool = aioredis.BlockingConnectionPool.from_url(
                plain, max_connections=max_connections, timeout=None, decode_responses=False,
                health_check_interval=30, socket_timeout=timeout,
                socket_connect_timeout=timeout)
            client = aioredis.Redis(connection_pool=pool)
        try:
            async with asyncio.timeout(timeout):
                if cluster:
                    await client.initialize()
                    enabled = True
                else:
                    # A cluster node answers a plain client for its own slots and MOVED for
                    # the rest: rooms would work or fail by their name's hash.
                    enabled = bool((await client.info("cluster")).get("cluster_enabled"))
        except FAILURES as exc:
            await client.aclose()
            if cluster and "not enabled" in str(exc):  # redis-py: "Cluster mode is not ..."
                raise StoreError(f"Redis at {where(url)} is not a node of a Redis Cluster: "
                                 "remove ?cluster=1 from the store URL") from exc
            raise StoreError(f"cannot reach Redis at {where(url)}: "
                             f"{exc or f'no answer within {timeout}s'}") from exc
        if enabled and not cluster:
            await client.aclose()
            raise StoreError(f"Redis at {where(url)} is a node of a Redis Cluster: add "
                             "?cluster=1 to the store URL")
        engine = cls(plain, client, on_commit, timeout=timeout, cluster=cluster,
                     max_connections=max_connections)
        engine._feed.start("redis-subscriber")
        return engine

    @property
    def healthy(self) -> bool:
        return self._feed.healthy and not self._closed

    @property
    def reconnects(self) -> int:
        """Times the feed's connection was established again (a statistic)."""
        return self._feed.reconnects

    def _check(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    def _malformed(self, key: str, what: str, done: str) -> None:
        """One warning line about a malformed record in Redis (roomchat never writes it so):
        ``what`` is wrong with it and ``done`` says what the engine did instead of failing.
        Once per ``key`` (up to ``WARNED_KEYS`` of them): read again and again, it would flood
        the log."""
        if key in self._warned:
            return
        if len(self._warned) >= WARNED_KEYS:
            self._warned.clear()
        self._warned.add(key)
        log.warning("malformed data in Redis at %s: %s; %s", key, what, done)

    def _saw(self, room: str, top: int) -> None:
        """The room's log reached ``top`` (an answer of Redis's): remember it."""
        tops = self._tops
        if top > tops.get(room, 0):
            tops[room] = top
        if room in tops:
            tops.move_to_end(room)
            if len(tops) > TOPS_REMEMBERED:
                tops.popitem(last=False)

    def _floor(self, room: str, floor: int) -> int:
        """The highest seq known stored in ``room``: the caller's ``floor`` or what this
        process saw, if higher."""
        return max(floor, self._tops.get(room, 0))

    def _failed(self, what: str, exc: Exception) -> StoreError:
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError, RuntimeError,
                            RedisClusterException)):
            self._feed.unhealthy()
        if isinstance(exc, TimeoutError) and not str(exc):  # our own deadline
            return StoreError(f"{what} failed: no answer from Redis within {self._timeout}s")
        return StoreError(f"{what} failed: {exc}")

    @contextlib.asynccontextmanager
    async def _calling(self, what: str, *, own: bool = True) -> AsyncIterator[None]:
        """Around the Redis calls of one operation: they must end within the timeout, and
        what they raise on failure (``FAILURES``, the deadline included) becomes
        ``StoreError``; a failure of the connection marks the engine unhealthy. ``own``:
        the calls are sent from inside (on a cluster they wait for one of the engine's
        ``max_connections``); not for appends, which ``_Appends`` sends."""
        try:
            async with asyncio.timeout(self._timeout), \
                    (self._slots if own and self._slots else contextlib.nullcontext()):
                yield
        except UnicodeEncodeError as exc:  # a text redis-py cannot send: the caller's fault
            raise Unstorable((), f"cannot be stored: {exc}") from exc
        except FAILURES as exc:
            raise self._failed(what, exc) from exc

    # -- the log ----------------------------------------------------------------------------

    async def load(self, room: str, dedup_window: int) -> RoomSnapshot:
        # Redis deduplicates in append.lua: the room's own map is only a cache, left empty.
        self._check()
        log_key, seq_key, *_ = _keys(room)
        epoch_key = _epoch_key(room)
        async with self._calling("load"):
            top, oldest, epoch, reset, repaired = await self._load(
                keys=[log_key, seq_key, epoch_key, *_state_keys(room)],
                args=[_new_epoch(), self._floor(room, 0)])
        self._feed.reachable()
        if repaired:
            self._malformed(seq_key, "the seq counter is not a number", "repaired")
        top = int(top)
        self._saw(room, top)
        if reset:
            log.warning("room %s: its log in Redis was behind seq %d (Redis lost data); it "
                        "goes on after it, epoch %s", room, top, epoch.decode())
        return RoomSnapshot(last_seq=top, oldest_seq=int(oldest) or top + 1,
                            epoch=epoch.decode(), resume_floor=top if reset else 0)

    def append_soon(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                    dedup_window: int, epoch: str | None, floor: int, rules: LogRules,
                    done: AppendDone) -> bool:
        """As ``Engine.append_soon``: not on a shared engine (its rooms' appends are awaited,
        between syncs with other processes)."""
        return False

    async def append(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                     dedup_window: int = 0, epoch: str | None = None, floor: int = 0,
                     rules: LogRules = DEFAULT_RULES) -> list[Appended]:
        self._check()
        if not drafts:
            return []
        started = time.perf_counter()
        log_key, seq_key, ids_key, idq_key, _, channel = _keys(room)
        args: list[str | bytes | int] = [
            retention, dedup_window, channel, self.node, room, _new_epoch(),
            self._floor(room, floor), epoch or "", round(rules.edit_window * 1000),
            rules.max_reactions, rules.reply_excerpt_chars]
        # Encoded here, draft by draft: redis-py would encode them while packing the pipeline
        # that carries other rooms' appends too, and one text it cannot encode (a lone
        # surrogate) failed all of them with an error no room expected (1011 everywhere).
        unstorable: list[int] = []
        for index, d in enumerate(drafts):
            try:
                args += _draft_args(d)
            except UnicodeEncodeError:
                unstorable.append(index)
        if unstorable:
            raise Unstorable(unstorable, "not valid Unicode (a lone surrogate)")
        async with self._calling("append", own=False):
            raw = await self._appends.submit(
                [log_key, seq_key, ids_key, idq_key, _epoch_key(room), *_state_keys(room)],
                args)
        self._feed.reachable()
        stored, log_epoch, top, repaired, *flat = raw
        if repaired:
            self._malformed(f"{seq_key} or {ids_key}", "a seq counter or a dedup entry that "
                            "is not a number", "repaired")
        self._saw(room, int(top))
        if not stored:
            raise LogReset(log_epoch.decode(), int(top))
        results: list[Appended] = []
        fresh = 0
        for i in range(0, len(flat), 3):
            seq, status, wire = int(flat[i]), flat[i + 1], flat[i + 2]
            if not status:
                fresh += 1
                results.append(Appended(seq, entry=WireMessage(seq, wire.decode())))
            elif status == b"dup":
                results.append(Appended(seq, duplicate=True))
            elif status == b"noop":
                results.append(Appended(seq, noop=True))
            else:
                results.append(Appended(0, refused=Refusal(status.decode())))
        if fresh and self._on_commit is not None:
            self._on_commit(time.perf_counter() - started, fresh)
        return results

    async def _migrated(self, room: str) -> None:
        """Move the room's tombstones of an older version into its state hash (log.lua)."""
        state_key, changed_key, deleted_key = _state_keys(room)
        async with self._calling("read"):
            await self._migrate(keys=[deleted_key, state_key, changed_key], args=[])

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[Entry]:
        """Entries that are not entries roomchat wrote are left out (one warning each): a
        page that holds only such entries is followed by the next, so an empty answer still
        means that nothing more is stored up to ``upto``."""
        self._check()
        log_key = _keys(room)[0]
        _, changed_key, deleted_key = _state_keys(room)
        while after < upto:
            async with self._calling("read"), self._redis.pipeline(transaction=False) as pipe:
                pipe.xrange(log_key, min=f"0-{after + 1}", max=f"0-{upto}", count=limit)
                pipe.zrangebyscore(changed_key, f"({after}", upto, start=0, num=limit)
                pipe.xrange(log_key, count=1)
                pipe.zrange(changed_key, 0, 0)
                pipe.exists(deleted_key)
                entries, changed, first, lowest, legacy = await pipe.execute()
            if legacy:
                await self._migrated(room)
                continue
            full = len(entries) == limit
            end = (records.entry_seq(entries[-1][0]) or upto) if full else upto
            states = await self._states(room, [seq for seq in map(records.count, changed)
                                               if seq is not None and seq <= end])
            oldest = min([seq for seq in (records.entry_seq(first[0][0]) if first else None,
                                          records.count(lowest[0]) if lowest else None)
                          if seq is not None], default=0)
            found: dict[int, Entry] = {}
            for entry_id, fields in entries:
                parsed = records.entry(room, entry_id, fields)
                if parsed is None:
                    self._malformed(f"{log_key} entry {entry_id!r}", "not an entry roomchat "
                                    "wrote (a field missing or unreadable)",
                                    "left out of history")
                    continue
                if parsed.repaired:
                    self._malformed(f"{log_key} entry {entry_id!r}", "some of its fields are "
                                    "unreadable", "read without them")
                value = parsed.value
                if isinstance(value, StoredChange):
                    if value.target < oldest:
                        continue  # its message was pruned: it goes with it
                    found[value.seq] = value
                else:
                    found[value.seq] = states.pop(value.seq, value)
            found.update(states)  # deleted messages: not in the stream, their state is
            entries_read = sorted(found.values(), key=lambda e: e.seq)[:limit]
            if entries_read or not full:
                return entries_read
            after = end  # a full page of entries that are not roomchat's: read on
        return []

    async def search(self, room: str, query: str, *, before: int | None,
                     limit: int) -> SearchPage:
        """Raises ``SearchUnsupported``: a stream keeps no index of words, and building one in
        Redis would hold every room's words in memory beside their messages."""
        raise SearchUnsupported(SEARCH_UNSUPPORTED)

    async def search_all(self, query: str, *, before: Place | None, limit: int,
                         most: int) -> RoomsPage:
        """Raises ``SearchUnsupported``, as ``search`` does."""
        raise SearchUnsupported(SEARCH_UNSUPPORTED)

    async def history(self, room: str, *, after: int = 0, before: int, limit: int,
                      newest: bool = False) -> list[StoredMessage]:
        """Messages in their current state: the stream's message entries (change entries
        skipped), each overlaid with its state when it changed, and deleted messages'
        tombstones (their state) merged in."""
        self._check()
        log_key = _keys(room)[0]
        _, changed_key, deleted_key = _state_keys(room)
        last = min(before - 1, 2**53)
        if last <= after or limit <= 0:
            return []
        chunk = _CHUNK * limit
        messages: dict[int, StoredMessage] = {}
        cursor = last if newest else after + 1  # next seq to read, inclusive
        changed: list[bytes] = []
        first_round = True
        while True:
            async with self._calling("history"), \
                    self._redis.pipeline(transaction=False) as pipe:
                if newest:
                    pipe.xrevrange(log_key, max=f"0-{cursor}", min=f"0-{after + 1}",
                                   count=chunk)
                else:
                    pipe.xrange(log_key, min=f"0-{cursor}", max=f"0-{last}", count=chunk)
                if first_round:
                    # The first ``limit`` changed messages from the page's side: every
                    # one the page can hold (each is a message of it).
                    if newest:
                        pipe.zrevrangebyscore(changed_key, last, f"({after}", start=0,
                                              num=limit)
                    else:
                        pipe.zrangebyscore(changed_key, f"({after}", last, start=0,
                                           num=limit)
                    pipe.exists(deleted_key)
                answer = await pipe.execute()
            entries = answer[0]
            if first_round:
                if answer[2]:
                    await self._migrated(room)
                    continue
                changed = answer[1]
                first_round = False
            for entry_id, fields in entries:
                parsed = records.message(room, entry_id, fields)
                if parsed is not None:
                    messages[parsed.value.seq] = parsed.value
                elif b"c" not in fields:
                    self._malformed(f"{log_key} entry {entry_id!r}", "not a message (a field "
                                    "missing or unreadable)", "left out of history")
            if len(messages) >= limit or len(entries) < chunk:
                break
            scanned = records.entry_seq(entries[-1][0])
            if scanned is None:
                break
            cursor = scanned - 1 if newest else scanned + 1
        # The page's reach: up to its limit-th message, or the whole range when it has fewer.
        ordered = sorted(messages, reverse=newest)
        low, high = after + 1, last
        if len(ordered) >= limit:
            if newest:
                low = ordered[limit - 1]
            else:
                high = ordered[limit - 1]
        states = await self._states(room, [seq for seq in map(records.count, changed)
                                           if seq is not None and low <= seq <= high])
        messages.update(states)
        page = sorted(messages.values(), key=lambda m: m.seq)
        return page[-limit:] if newest else page[:limit]

    async def _states(self, room: str, seqs: list[int]) -> dict[int, StoredMessage]:
        """The current state of the changed messages ``seqs``, from the room's state hash."""
        if not seqs:
            return {}
        state_key = _state_keys(room)[0]
        async with self._calling("read"):
            values = await self._redis.hmget(state_key, seqs)
        states: dict[int, StoredMessage] = {}
        for seq, value in zip(seqs, values, strict=True):
            if value is None:
                continue  # pruned meanwhile
            parsed = records.state(room, seq, value)
            if parsed is None:
                self._malformed(f"{state_key} field {seq}", "not a message's state",
                                "left out of history")
                continue
            if parsed.repaired:
                self._malformed(f"{state_key} field {seq}", "some of its fields are "
                                "unreadable", "read without them")
            states[seq] = parsed.value
        return states

    async def unread(self, room: str, user: str, *, scan: int) -> Unread:
        self._check()
        if scan <= 0:  # (unread.lua counts nothing either for a user with no marker)
            async with self._calling("unread"):
                marker = await self._redis.hget(_read_key(room), user)
            return Unread(records.count(marker) or 0)
        async with self._calling("unread"):
            read, unread, mentions, capped = await self._unread(
                keys=[_keys(room)[0], _read_key(room)], args=[user, scan, min(scan, 1000)])
        return Unread(int(read), int(unread), int(mentions), bool(capped))

    async def mark_read(self, room: str, user: str, seq: int) -> int:
        self._check()
        async with self._calling("mark_read"):
            marker = await self._mark_read(keys=[_read_key(room)],
                                           args=[user, seq, _keys(room)[5], self.node])
            # The user's own index (another hash slot: a call of its own).
            await self._user_read(keys=[_markers_key(user)], args=[room, int(marker)])
        return int(marker)

    async def markers(self, user: str) -> dict[str, int]:
        self._check()
        async with self._calling("markers"):
            raw = await self._redis.hgetall(_markers_key(user))
        found: dict[str, int] = {}
        for room, seq in raw.items():
            name, number = records.text(room), records.count(seq)
            if name and number is not None:
                found[name] = number
        return dict(sorted(found.items()))

    # -- moderation ---------------------------------------------------------------------------

    async def erase(self, user: str,
                    erased: ErasedObserver | None = None) -> dict[str, list[int]]:
        self._check()
        done: dict[str, list[int]] = {}
        # Each step within the timeout (the whole erasure may take long): the SCAN for room
        # logs, then one script call per step.
        rooms = await self._room_logs("erase")
        # Round robin: one step in each room per round, one pause per round (it is for each
        # room's members; rooms need not wait for each other). room -> next seq to examine.
        cursors = dict.fromkeys(sorted(rooms), 1)
        dirty: set[str] = set()  # rooms whose stream had entries removed: to be rewritten
        while cursors:
            told = False
            for room, first in list(cursors.items()):
                log_key, seq_key, *_, channel = _keys(room)
                async with self._calling("erase"):
                    examined, last, removed, stopped, *raw = await self._erase(
                        keys=[log_key, seq_key, _epoch_key(room), *_state_keys(room)],
                        args=[user, first, ERASE_PAGE, channel, room, contract.ERASE_STEP,
                              _new_epoch(), int(time.time() * 1000)])
                if int(removed):
                    dirty.add(room)
                if raw:
                    seqs = [int(seq) for seq in raw]
                    done.setdefault(room, []).extend(seqs)
                    if erased is not None:
                        erased(room, seqs)
                if int(examined) < ERASE_PAGE and not int(stopped):
                    del cursors[room]  # the end of its log
                    if room in dirty:  # at once: a crash before the end would leave its bytes
                        await self._rewrite(room)
                else:
                    cursors[room] = int(last) + 1
                    told = told or bool(int(stopped))
            if told:
                await asyncio.sleep(contract.ERASE_PAUSE)
        if dirty:
            await self._persisted_again()
        return done

    async def _rewrite(self, room: str) -> None:
        """Rewrite ``room``'s stream into a fresh key (rewrite.lua): the bytes of the entries
        removed from it leave Redis's memory, so they are in no later RDB snapshot or AOF
        rewrite. ``REWRITE_STEP`` entries per call; begun again (at most
        ``REWRITE_ATTEMPTS`` times) when entries were removed from the stream meanwhile (a
        delete, a trim), then done in one call, whatever the stream's length."""
        log_key = _keys(room)[0]
        copy = f"{log_key}:rewrite:{secrets.token_hex(6)}"
        for attempt in range(REWRITE_ATTEMPTS + 1):
            step = REWRITE_STEP if attempt < REWRITE_ATTEMPTS else 0
            after, began = "", ""
            while True:
                async with self._calling("erase"):
                    status, after, began = await self._rewrite_step(
                        keys=[log_key, copy, _state_keys(room)[0]],
                        args=[after, step, began, int(REWRITE_COPY_TTL * 1000)])
                if status != b"more":
                    break
            if status != b"again":
                return
            log.info("room %s: entries removed while its stream was rewritten: begun again",
                     room)
        log.warning("room %s: its stream could not be rewritten; erased bytes may remain "
                    "until the next erasure in it", room)

    async def _persisted_again(self) -> None:
        """After an erasure rewrote streams: ask Redis to rewrite its append-only file (it
        still holds the commands that wrote the erased entries) when it keeps one, and to
        give freed memory back to the system (each master, on a cluster). Best effort: a
        Redis that refuses (a renamed command, a managed service) is logged, and
        docs/operations.md says what to run."""
        for node in self._nodes():
            at = where(self._url) if node is None else node.name
            target = {} if node is None else {"target_nodes": node}
            try:
                async with self._calling("erase"):
                    persistence = await self._redis.info("persistence", **target)
                    if persistence.get("aof_enabled"):
                        await self._redis.bgrewriteaof(**target)
            except StoreError as exc:  # e.g. a rewrite already under way (it started early)
                log.warning("after an erasure, Redis at %s did not start rewriting its AOF "
                            "(%s): run BGREWRITEAOF there once it is idle "
                            "(docs/operations.md)", at, exc)
            try:
                async with self._calling("erase"):
                    await self._redis.execute_command("MEMORY", "PURGE", **target)
            except StoreError as exc:
                log.info("after an erasure, Redis at %s did not purge memory: %s", at, exc)

    async def ban(self, room: str, ban: Ban) -> None:
        self._check()
        key = f"roomchat:{{{room}}}:ban:{ban.user}"
        value = f"{'' if ban.until is None else repr(ban.until)}\0{ban.reason}"
        async with self._calling("ban"), self._redis.pipeline(transaction=True) as pipe:
            if ban.until is None:
                pipe.set(key, value)
            else:
                pipe.set(key, value, pxat=max(1, int(ban.until * 1000)))
            pipe.spublish(_keys(room)[5],
                          f"b{self.node}\n{ban.user}\n{ban.reason}".encode())
            await pipe.execute()

    async def unban(self, room: str, user: str) -> bool:
        self._check()
        async with self._calling("unban"):
            return bool(await self._redis.delete(f"roomchat:{{{room}}}:ban:{user}"))

    async def banned(self, room: str, user: str) -> Ban | None:
        self._check()
        async with self._calling("banned"):
            value = await self._redis.get(f"roomchat:{{{room}}}:ban:{user}")
        if value is None:
            return None
        parsed = records.ban(user, value)
        if parsed.repaired:
            self._malformed(f"roomchat:{{{room}}}:ban:{user}", "not a ban roomchat wrote",
                            f"read as a ban until {parsed.value.until or 'lifted'}")
        return parsed.value

    async def top(self, room: str) -> int:
        self._check()
        log_key, seq_key, *_ = _keys(room)
        async with self._calling("top"), self._redis.pipeline(transaction=False) as pipe:
            pipe.get(seq_key)
            pipe.xrevrange(log_key, count=1)
            counter, last = await pipe.execute()
        top = _top(counter, last)
        if top is None:
            self._malformed(seq_key, "the seq counter is not a number",
                            "read the log's top instead (the next append repairs it)")
            return (records.entry_seq(last[0][0]) or 0) if last else 0
        return top

    # -- moving between engines (gateway/importer.py) ---------------------------------------

    async def rooms(self) -> list[str]:
        """Every room with a log (``SCAN``, as ``erase`` finds them), sorted."""
        self._check()
        return sorted(await self._room_logs("rooms"))

    def _nodes(self) -> list[Any]:
        """Where keys live: the cluster's masters (each holds its slots' keys), else [None]
        (the one Redis)."""
        return list(self._redis.get_primaries()) if self._cluster else [None]

    async def _room_logs(self, what: str) -> set[str]:
        """Every room with a log: ``SCAN`` (``ERASE_PAGE`` per step, each step within the
        timeout) of the Redis, or of each master of a cluster in turn. A room whose slot
        moves to a master already scanned while this runs can be missed (docs/scaling.md)."""
        rooms: set[str] = set()
        for node in self._nodes():
            cursor = 0
            while True:
                async with self._calling(what):
                    if node is None:
                        cursor, keys = await self._redis.scan(
                            cursor, match="roomchat:{*}:log", count=ERASE_PAGE,
                            _type="stream")
                    else:
                        cursors, keys = await self._redis.scan(
                            cursor, match="roomchat:{*}:log", count=ERASE_PAGE,
                            _type="stream", target_nodes=node)
                        cursor = cursors[node.name]
                rooms.update(room_of(key) for key in keys)
                if not cursor:
                    break
        return rooms

    async def log_epoch(self, room: str) -> str | None:
        """The epoch of ``room``'s log (None: it has none yet)."""
        self._check()
        async with self._calling("epoch"):
            raw = await self._redis.get(_epoch_key(room))
        return records.text(raw)

    async def importable(self, room: str) -> bool:
        """As ``SqliteStore.importable``: no key of the room's log, or an unfinished import's."""
        self._check()
        log_key, seq_key, *_ = _keys(room)
        async with self._calling("import"):
            if await self._redis.exists(_importing_key(room)):
                return True
            return not await self._redis.exists(log_key, seq_key, *_state_keys(room))

    async def import_entries(self, room: str, entries: Sequence[Entry], *, top: int,
                             epoch: str | None = None, dedup_window: int = 0,
                             progress: Callable[[int], object] | None = None) -> bool:
        """As ``SqliteStore.import_entries``, into the room's keys as append.lua leaves them:
        messages not deleted as stream entries, changes too, and each message that changed or
        is answered by a reply its state (its last change ``c``, its edits ``e``, the replies
        ``a`` that a later delete empties; a tombstone is its state alone); then the seq
        counter at ``top``, the epoch (``epoch``, else a new one) and the dedup window (the
        last ``dedup_window`` ids). In steps of ``IMPORT_STEP`` entries (one pipeline each,
        ``progress(n)`` after each) after a marker key, which the last step removes with the
        counter: an import that stopped half way is removed and started again. Returns True
        (the epoch is the room's own). Raises ``RoomNotEmpty``, ``StoreError``."""
        self._check()
        log_key, seq_key, ids_key, idq_key, *_ = _keys(room)
        state_key, changed_key, deleted_key = _state_keys(room)
        marker = _importing_key(room)
        begin = self._redis.register_script(_IMPORT_BEGIN)
        async with self._calling("import"):
            began = await begin(keys=[marker, log_key, seq_key, _epoch_key(room), ids_key,
                                      idq_key, state_key, changed_key, deleted_key], args=[])
        if int(began) < 0:
            raise RoomNotEmpty(f"room {room!r} already has entries")
        states = _import_states(entries)
        for start in range(0, len(entries), IMPORT_STEP):
            step = entries[start:start + IMPORT_STEP]
            async with self._calling("import"), \
                    self._redis.pipeline(transaction=False) as pipe:
                for entry in step:
                    state = states.get(entry.seq)
                    if state is not None:
                        pipe.hset(state_key, str(entry.seq), orjson.dumps(state))
                        pipe.zadd(changed_key, {str(entry.seq): entry.seq})
                    if not (isinstance(entry, StoredMessage) and entry.deleted):
                        pipe.xadd(log_key, _stream_fields(entry), id=f"0-{entry.seq}")
                await pipe.execute()
            if progress is not None:
                progress(len(step))
        ids = [(f"{e.user}\0{e.id}", e.seq) for e in entries if e.id][-dedup_window:] \
            if dedup_window > 0 else []
        async with self._calling("import"), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(seq_key, top)
            pipe.set(_epoch_key(room), epoch or _new_epoch())
            if ids:
                pipe.hset(ids_key, mapping=dict(ids))
                pipe.rpush(idq_key, *(field for field, _ in ids))
            pipe.delete(marker)
            await pipe.execute()
        return True

    async def presence(self, room: str) -> dict[str, str]:
        self._check()
        async with self._calling("presence"):
            entries = await self._redis.hgetall(_keys(room)[4])
        now_ms = time.time() * 1000
        members: dict[str, str] = {}
        for field, value in entries.items():
            # (Entries that are not presence are removed by the room's next sync.)
            member = records.presence(field, value, now_ms)
            if member is not None:
                members[member[0]] = member[1]
        return members

    async def sync(self, room: str, members: dict[str, str], ttl: float, *,
                   floor: int = 0) -> RoomSync:
        self._check()
        log_key, seq_key, _, _, presence_key, channel = _keys(room)
        now_ms = int(time.time() * 1000)
        args: list[str | int] = [self.node, now_ms, now_ms + int(ttl * 1000), channel,
                                 int(ttl * 2000), _new_epoch(), self._floor(room, floor)]
        keys = [presence_key, seq_key, log_key, _epoch_key(room)]
        for user, name in members.items():
            args += [user, name]
            keys.append(f"roomchat:{{{room}}}:ban:{user}")
        async with self._calling("sync"):
            top, flat, bans, repaired, epoch = await self._sync(keys=keys, args=args)
        self._feed.reachable()
        self._saw(room, int(top))
        if repaired:
            self._malformed(f"{presence_key} or {seq_key}", f"{repaired} record(s) roomchat "
                            "did not write (presence entries, a seq counter)", "repaired")
        others: dict[str, str] = {}
        for i in range(0, len(flat) - 1, 2):
            other, other_name = records.identifier(flat[i]), records.identifier(flat[i + 1])
            if other and other_name is not None:
                others[other] = other_name
        banned = []
        for i in range(0, len(bans) - 1, 2):
            member = records.identifier(bans[i])
            if member:  # one of the members given: it came from here
                banned.append((member, records.ban(member, bans[i + 1]).value.reason))
        return RoomSync(top=int(top), others=others, banned=tuple(banned),
                        epoch=epoch.decode())

    # -- small keyed records: single-use tickets, revocations -------------------------------

    async def stash(self, key: str, value: bytes, ttl: float) -> None:
        self._check()
        async with self._calling("stash"):
            await self._redis.set(f"roomchat:stash:{key}", value, px=max(1, int(ttl * 1000)))

    async def take(self, key: str) -> bytes | None:
        self._check()
        async with self._calling("take"):
            value = await self._redis.getdel(f"roomchat:stash:{key}")
        return bytes(value) if value is not None else None

    async def revoke(self, user: str, at: float) -> None:
        self._check()
        async with self._calling("revoke"):
            await self._redis.zadd(REVOCATIONS, {user: at}, gt=True)

    async def revocations(self, since: float) -> list[tuple[str, float]]:
        self._check()
        async with self._calling("revocations"):
            rows = await self._redis.zrangebyscore(REVOCATIONS, f"({since!r}", "+inf",
                                                   withscores=True)
        revoked = []
        for raw, at in rows:
            user = records.identifier(raw)
            if user is None:  # no token can name it: it revokes nobody
                self._malformed(f"{REVOCATIONS} member {raw!r}", "not a user id", "ignored")
            else:
                revoked.append((user, float(at)))
        return revoked

    # -- the live feed ----------------------------------------------------------------------

    def subscribe(self, room: str, listener: RoomListener) -> None:
        self._feed.subscribe(room, listener)

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        self._feed.unsubscribe(room, listener)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._feed.close()
        await self._appends.close()
        await self._redis.aclose()


_KIND = {Action.EDIT: b"e", Action.DELETE: b"d", Action.REACT: b"r"}


def _draft_args(d: AnyDraft) -> list[bytes | int]:
    """append.lua's nine arguments for one draft. Raises ``UnicodeEncodeError`` for a text
    that cannot be encoded."""
    if isinstance(d, Draft):
        mentions = orjson.dumps(list(d.mentions)) if d.mentions else b""
        files = orjson.dumps(files_to_json(d.files)) if d.files else b""
        return [b"m", d.user.encode(), d.name.encode(), (d.id or "").encode(), d.ts,
                d.reply_to or 0, d.text.encode(), mentions, files]
    if d.action is Action.EDIT:
        a, b = d.text.encode(), b""
    elif d.action is Action.DELETE:
        a, b = (b"1" if d.moderator else b"0"), b""
    else:
        a, b = d.emoji.encode(), (b"1" if d.on else b"0")
    return [_KIND[d.action], d.user.encode(), d.name.encode(), (d.id or "").encode(), d.ts,
            d.target, a, b, b""]


def _importing_key(room: str) -> str:
    """The marker of an import of ``room`` under way (``RedisEngine.import_entries``)."""
    return f"roomchat:{{{room}}}:importing"


IMPORT_STEP = 1000
"""Entries one pipeline of ``RedisEngine.import_entries`` writes."""
_IMPORT_BEGIN = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9])
  return 1
end
if redis.call('EXISTS', KEYS[2], KEYS[3], KEYS[7], KEYS[9]) > 0 then
  return -1
end
redis.call('SET', KEYS[1], '1')
return 0
"""
"""Start an import of a room, atomically (KEYS: the marker, then the log, seq, epoch, ids,
idq, state, changed and old tombstones keys): after an unfinished import (its marker is
there) remove what it wrote (1); refuse a room with a log, a counter or states (-1); else set
the marker (0)."""


def _stream_fields(entry: Entry) -> dict[str, bytes | int]:
    """``entry``'s fields in the room's stream, as append.lua writes them (a message with its
    current text: its state, when it changed, says the rest)."""
    fields: dict[str, bytes | int]
    if isinstance(entry, StoredMessage):
        fields = {"user": entry.user.encode(), "name": entry.name.encode(),
                  "id": (entry.id or "").encode(), "text": entry.text.encode(), "ts": entry.ts}
        if entry.reply_to is not None:
            fields["reply"] = orjson.dumps(
                [entry.reply_to.seq, entry.reply_to.user, entry.reply_to.name,
                 entry.reply_to.excerpt])
        if entry.mentions:
            fields["mentions"] = orjson.dumps(list(entry.mentions))
        if entry.files:
            fields["files"] = orjson.dumps(files_to_json(entry.files))
        return fields
    fields = {"c": _KIND[entry.action], "target": entry.target, "user": entry.user.encode(),
              "name": entry.name.encode(), "id": (entry.id or "").encode(), "ts": entry.ts}
    if entry.action is Action.EDIT:
        fields["text"] = entry.text.encode()
    elif entry.action is Action.DELETE:
        fields["by"] = (entry.by.value if entry.by is not None else "moderator").encode()
    else:
        fields["emoji"] = entry.emoji.encode()
        fields["on"] = b"1" if entry.on else b"0"
    return fields


def _import_states(entries: Sequence[Entry]) -> dict[int, dict[str, Any]]:
    """The state hash's value (log.lua) of each message of ``entries`` that changed, is
    answered by a reply, or was deleted: seq -> its JSON object."""
    changes: dict[int, list[StoredChange]] = {}
    answers: dict[int, list[int]] = {}
    for entry in entries:
        if isinstance(entry, StoredChange):
            changes.setdefault(entry.target, []).append(entry)
        elif entry.reply_to is not None:
            answers.setdefault(entry.reply_to.seq, []).append(entry.seq)
    states: dict[int, dict[str, Any]] = {}
    for m in entries:
        if not isinstance(m, StoredMessage):
            continue
        mine = changes.get(m.seq, [])
        if not (mine or m.seq in answers or m.deleted or m.edited is not None or m.reactions):
            continue
        state: dict[str, Any] = {"user": m.user, "name": m.name, "id": m.id or "",
                                 "text": m.text, "ts": m.ts, "c": mine[-1].seq if mine else m.seq}
        if m.deleted:
            state["d"] = 1
            states[m.seq] = state
            continue
        if m.reply_to is not None:
            state["reply"] = [m.reply_to.seq, m.reply_to.user, m.reply_to.name,
                              m.reply_to.excerpt]
        if m.mentions:
            state["mentions"] = list(m.mentions)
        if m.files:
            state["files"] = files_to_json(m.files)
        if m.edited is not None:
            state["edited"] = m.edited
        if m.reactions:
            state["reactions"] = [[r.emoji, list(r.users)] for r in m.reactions]
        edits = [c.seq for c in mine if c.action is Action.EDIT]
        if edits:
            state["e"] = edits
        if m.seq in answers:
            state["a"] = answers[m.seq]
        states[m.seq] = state
    return states

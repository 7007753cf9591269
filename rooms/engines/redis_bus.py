"""``RedisBus``: the Redis engine's live feed as the ``Bus`` of a ``SplitEngine`` whose log is
elsewhere (PostgreSQL: docs/design/log-and-bus.md, sections 1 and 3), so that any process
serves any member of any room.

The same channel, messages and presence as ``rooms.engines.redis`` (a process of one engine
could read the other's feed): per room the shard channel ``roomchat:{<room>}:ch`` carrying

- ``m<node>\\n<first seq>\\n<wire>\\n<wire>...``: entries a process stored, consecutive seqs
  from ``first`` (the Redis engine's append.lua sends the same);
- ``p<node>``: that process's members of the room changed (``presence.lua``);
- ``r<node>\\n<user>\\n<seq>``: a read marker moved; ``b<node>\\n<user>\\n<reason>``: a ban;

and the presence hash ``roomchat:{<room>}:presence`` (``node\\0user -> expires_ms\\0name``),
kept by ``presence.lua``, the presence half of the Redis engine's sync.lua.

What the split costs (the design's section 1): the publish follows the log's commit instead of
being part of it, so a process killed between the two leaves a batch unannounced, and two
processes appending to one room may publish seq 6 before 5. Both are what a lost or late
pub/sub message already is: the receiving room holds a seq past a gap for
``gap_repair_delay`` and then reads the log, and every ``sync`` compares its last seq with the
log's top.

Publishing never blocks and never raises: a notice goes into a bounded queue
(``PUBLISH_QUEUE``) that the bus's own task sends to Redis in pipelines, in the order queued
(one process's batches of a room reach the others in seq order). A full queue, or a send that
fails, drops notices and counts them (``dropped``): the receivers repair from the log at their
next sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from rooms.backoff import backoff_delay
from rooms.engine import RoomListener
from rooms.engines import redis_records as records

# What the Redis engine's feed already defines, shared rather than copied (the feed's code
# itself is ``RedisFeed`` below; the Redis engine keeps its own copy until both use this one).
from rooms.engines.redis import (
    FAILURES,
    HEALTH_PROBE,
    POLL,
    PROBE_IDLE,
    PROBE_TIMEOUT,
    RECONNECT_MAX,
    RECONNECT_MIN,
    _quietly_close,
    _where,
)
from rooms.errors import StoreError
from rooms.messages import WireMessage

log = logging.getLogger("roomchat.redis")

PUBLISH_QUEUE = 10_000
"""Notices (a batch of entries, a marker, a ban) waiting to be sent; past it a notice is
dropped and counted (``RedisBus.dropped``). At ~1,000 batches a second per process, ten seconds
of Redis being slow or away: longer than that, the rooms' syncs (every 5 s) repair faster than
a backlog would."""
PUBLISH_BATCH = 256
"""Most notices one pipeline to Redis carries (one round trip)."""
DROP_WARNING = 10.0
"""Seconds between two warnings about dropped notices (one line per burst, not per notice)."""


def channel(room: str) -> str:
    """The room's shard channel (the Redis engine's ``_keys(room)[5]``)."""
    return f"roomchat:{{{room}}}:ch"


def presence_key(room: str) -> str:
    """The room's presence hash (the Redis engine's ``_keys(room)[4]``)."""
    return f"roomchat:{{{room}}}:presence"


def room_of(channel_name: bytes) -> str:
    text = channel_name.decode()
    return text[text.index("{") + 1:text.rindex("}")]


def runs(messages: Sequence[WireMessage]) -> Iterator[list[WireMessage]]:
    """``messages`` (ascending seqs) cut into runs of consecutive seqs: an ``m`` notice says
    only its first seq."""
    run: list[WireMessage] = []
    for m in messages:
        if run and m.seq != run[-1].seq + 1:
            yield run
            run = []
        run.append(m)
    if run:
        yield run


def batch_notice(node: str, run: Sequence[WireMessage]) -> bytes:
    """The ``m`` notice of a run of consecutive seqs (each wire object is one line: JSON
    escapes newlines)."""
    return f"m{node}\n{run[0].seq}\n".encode() + "\n".join(m.wire for m in run).encode()


class RedisFeed:
    """One ``SSUBSCRIBE`` connection carrying the channels of the rooms with a listener here,
    and the dispatch of what arrives to them. Owns its task (``start``, ``close``).

    The connection is probed with ``PING`` after ``PROBE_IDLE`` seconds without traffic and
    replaced when the probe goes unanswered for ``PROBE_TIMEOUT`` (a silently stale connection:
    centrifugo#1189); on any failure it reconnects with backoff (``RECONNECT_MIN`` doubling to
    ``RECONNECT_MAX``), subscribes every room again, and each room resyncs once Redis confirms
    its subscription (anything published meanwhile is in the log). ``healthy`` is false while
    the connection is down, or after ``unhealthy()`` until a ``PING`` on ``client`` answers.
    """

    def __init__(self, url: str, node: str, client: Any, *, timeout: float) -> None:
        self._url = url
        self.node = node
        self._node_bytes = node.encode()
        self._client = client  # the owner's pool: the health probe
        self._timeout = timeout
        self._listeners: dict[str, RoomListener] = {}
        self._changes: set[str] = set()  # rooms whose subscription the task must fix
        self._healthy = True
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    def unhealthy(self) -> None:
        """A call on Redis failed: unhealthy until the feed's probe finds Redis back."""
        self._healthy = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="redis-bus-subscriber")

    def subscribe(self, room: str, listener: RoomListener) -> None:
        # The task sends the SSUBSCRIBE (one task owns the connection); once Redis confirms
        # it the listener is told to resync, which covers anything published before.
        self._listeners[room] = listener
        self._changes.add(room)

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        if self._listeners.get(room) is listener:
            del self._listeners[room]
            self._changes.add(room)

    def listener(self, room: str) -> RoomListener | None:
        return self._listeners.get(room)

    async def _listen(self) -> None:
        failures = 0
        first = True
        while not self._closed:
            pubsub = None
            try:
                # No retries inside redis-py: a silent reconnect would hide lost messages.
                client = aioredis.Redis.from_url(self._url, decode_responses=False,
                                                 retry=Retry(NoBackoff(), 0),
                                                 socket_connect_timeout=self._timeout,
                                                 socket_timeout=self._timeout)
                pubsub = client.pubsub()
                await pubsub.connect()  # type: ignore[no-untyped-call]
                self._changes = set(self._listeners)  # (re)subscribe every room we serve
                self._healthy = True
                if not first:
                    self.reconnects += 1
                    log.info("bus: pub/sub reconnected; resubscribing %d rooms",
                             len(self._changes))
                first = False
                failures = 0
                await self._dispatch_loop(pubsub)
            except asyncio.CancelledError:
                raise
            except FAILURES as exc:
                self._healthy = False
                backoff = backoff_delay(failures, base=RECONNECT_MIN, cap=RECONNECT_MAX)
                failures += 1
                log.warning("bus: pub/sub connection to Redis at %s lost (%s); retrying in "
                            "%.1fs", _where(self._url), exc, backoff)
                await asyncio.sleep(backoff)
            finally:
                if pubsub is not None:
                    await _quietly_close(pubsub)

    async def _apply_changes(self, pubsub: Any) -> None:
        changes, self._changes = self._changes, set()
        add = [channel(room) for room in changes if room in self._listeners]
        drop = [channel(room) for room in changes if room not in self._listeners]
        if add:
            await pubsub.ssubscribe(*add)
        if drop:
            await pubsub.sunsubscribe(*drop)

    async def _dispatch_loop(self, pubsub: Any) -> None:
        last_rx = time.monotonic()
        probe_sent: float | None = None
        last_health_probe = 0.0
        while not self._closed:
            if not self._healthy and time.monotonic() - last_health_probe >= HEALTH_PROBE:
                last_health_probe = time.monotonic()
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._client.ping()
                    self._healthy = True
                    log.info("bus: Redis at %s is reachable again", _where(self._url))
                except FAILURES:
                    pass
            if self._changes:
                await self._apply_changes(pubsub)
            if not pubsub.subscribed:
                await asyncio.sleep(POLL)  # get_message needs a subscription
                last_rx = time.monotonic()
                continue
            message = await pubsub.get_message(timeout=POLL)
            now = time.monotonic()
            if message is None:
                if probe_sent is not None:
                    if now - probe_sent > PROBE_TIMEOUT:
                        raise RedisConnectionError("pub/sub probe unanswered: stale connection")
                elif now - last_rx > PROBE_IDLE:
                    await pubsub.ping()
                    probe_sent = now
                continue
            last_rx, probe_sent = now, None
            kind = message["type"]
            if kind == "smessage":
                try:
                    self.dispatch(message["channel"], message["data"])
                except Exception:  # anyone may publish on a room's channel: not our feed's end
                    log.exception("bus: undecodable pub/sub message on %r", message["channel"])
            elif kind == "ssubscribe":
                listener = self._listeners.get(room_of(message["channel"]))
                if listener is not None:
                    listener.resync()  # anything published before this is in the log

    def dispatch(self, channel_name: bytes, data: bytes) -> None:
        """Hand one notice to its room's listener here (none: ignored); notices from this
        process are skipped (its rooms were told directly)."""
        listener = self._listeners.get(room_of(channel_name))
        if listener is None or not data:
            return
        kind = data[:1]
        if kind == b"m":
            node, _, rest = data[1:].partition(b"\n")
            if node == self._node_bytes:
                return
            first, _, body = rest.partition(b"\n")
            try:
                seq = int(first)
                messages = [WireMessage(seq + i, line.decode())
                            for i, line in enumerate(body.split(b"\n"))]
            except (ValueError, UnicodeDecodeError) as exc:
                log.warning("room %s: undecodable batch from %s: %r", room_of(channel_name),
                            node, exc)
                listener.resync()
                return
            listener.remote_messages(messages)
        elif kind == b"p" and data[1:] != self._node_bytes:
            listener.remote_presence()
        elif kind in (b"r", b"b"):
            origin, _, tail = data[1:].decode(errors="replace").partition("\n")
            if origin == self.node:
                return
            if kind == b"r":
                user, _, raw_seq = tail.partition("\n")
                marker = records.count(raw_seq.encode())
                if user and marker is not None:
                    listener.remote_read(user, marker)
            else:
                user, _, reason = tail.partition("\n")
                listener.remote_banned(user, reason)

    async def close(self) -> None:
        self._closed = True
        self._listeners.clear()
        if self._task is not None:
            # Repeated: redis-py can turn a cancellation that lands while it connects into an
            # error of its own, which the listen loop treats as a lost connection.
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait([self._task], timeout=0.5)


class RedisBus:
    """``await RedisBus.open("redis://host:port/db")``; implements ``rooms.engine.Bus``.

    One pool of at most ``max_connections`` connections (presence calls and the publishing
    task) and the feed's subscription connection. ``presence`` and ``others`` raise
    ``StoreError`` when Redis fails them (or takes longer than ``timeout``); the publishing
    methods never raise."""

    shared = True

    def __init__(self, url: str, client: Any, *, timeout: float,
                 queue_limit: int = PUBLISH_QUEUE) -> None:
        self._url = url
        self._redis = client
        self._timeout = timeout
        self.node = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._feed = RedisFeed(url, self.node, client, timeout=timeout)
        self._presence = client.register_script(
            (resources.files("rooms.engines") / "presence.lua").read_text(encoding="utf-8"))
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(queue_limit)
        self._publisher: asyncio.Task[None] | None = None
        self._closed = False
        self._warned = 0.0
        self.dropped = 0
        """Notices never sent (queue full, or Redis failed them): receivers repair from the
        log. A statistic: tests and /metrics read it."""
        self.published = 0

    @classmethod
    async def open(cls, url: str, *, max_connections: int = 32, timeout: float = 5.0,
                   queue_limit: int = PUBLISH_QUEUE) -> RedisBus:
        """Connect (raises ``StoreError`` if Redis cannot be reached within ``timeout``) and
        start the feed and the publishing task (``close`` stops both)."""
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None, decode_responses=False,
            health_check_interval=30, socket_timeout=timeout, socket_connect_timeout=timeout)
        client = aioredis.Redis(connection_pool=pool)
        try:
            async with asyncio.timeout(timeout):
                await client.ping()
        except FAILURES as exc:
            await client.aclose()
            raise StoreError(f"cannot reach Redis at {_where(url)} (the bus): "
                             f"{exc or f'no answer within {timeout}s'}") from exc
        bus = cls(url, client, timeout=timeout, queue_limit=queue_limit)
        bus._feed.start()
        bus._publisher = asyncio.create_task(bus._publish(), name="redis-bus-publisher")
        return bus

    @property
    def healthy(self) -> bool:
        return self._feed.healthy and not self._closed

    @property
    def reconnects(self) -> int:
        """Times the feed's connection was established again (a statistic)."""
        return self._feed.reconnects

    # -- the live feed ----------------------------------------------------------------------

    def subscribe(self, room: str, listener: RoomListener) -> None:
        self._feed.subscribe(room, listener)

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        self._feed.unsubscribe(room, listener)

    def feed(self, room: str, messages: list[WireMessage]) -> None:
        listener = self._feed.listener(room)
        if listener is not None and messages:
            listener.remote_messages(messages)

    # -- publishing: queued, never blocks, never raises ------------------------------------

    def entries(self, room: str, messages: list[WireMessage]) -> None:
        for run in runs(messages):
            self._put(room, batch_notice(self.node, run))

    def read_moved(self, room: str, user: str, seq: int) -> None:
        self._put(room, f"r{self.node}\n{user}\n{seq}".encode())

    def banned(self, room: str, user: str, reason: str) -> None:
        self._put(room, f"b{self.node}\n{user}\n{reason}".encode())

    def _put(self, room: str, notice: bytes) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait((channel(room), notice))
        except asyncio.QueueFull:
            self._drop(1, "the queue is full")

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._warned >= DROP_WARNING:
            self._warned = now
            log.warning("bus: %d notice(s) to other processes dropped (%s; %d in all); their "
                        "rooms repair from the log at their next sync", count, why,
                        self.dropped)

    async def _publish(self) -> None:
        """Send what is queued, up to ``PUBLISH_BATCH`` notices a pipeline, in order; owned
        by the bus (``close`` cancels and awaits it). A pipeline that fails is dropped (its
        notices counted) and the next waits a backoff: Redis away fills the queue, which then
        drops, rather than this spinning."""
        failures = 0
        while True:
            batch = [await self._queue.get()]
            while len(batch) < PUBLISH_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                async with asyncio.timeout(self._timeout), \
                        self._redis.pipeline(transaction=False) as pipe:
                    for name, notice in batch:
                        pipe.spublish(name, notice)
                    await pipe.execute()
                self.published += len(batch)
                failures = 0
            except FAILURES as exc:
                self._feed.unhealthy()
                self._drop(len(batch), f"Redis at {_where(self._url)} failed: "
                                       f"{exc or 'no answer'}")
                await asyncio.sleep(backoff_delay(failures, base=RECONNECT_MIN,
                                                  cap=RECONNECT_MAX))
                failures += 1
            except Exception:  # not Redis's failure: a bug, logged; the task goes on
                log.exception("bus: publishing %d notice(s) failed", len(batch))
                self._drop(len(batch), "an unexpected error")
            finally:
                for _ in batch:
                    self._queue.task_done()

    # -- presence ---------------------------------------------------------------------------

    async def presence(self, room: str, members: dict[str, str], ttl: float) -> dict[str, str]:
        """Publish this process's ``members`` (valid ``ttl`` seconds; none withdraws them) and
        return the other processes' live members of the room (presence.lua). Raises
        ``StoreError``."""
        self._check()
        now_ms = int(time.time() * 1000)
        args: list[str | int] = [self.node, now_ms, now_ms + int(ttl * 1000), channel(room),
                                 int(ttl * 2000)]
        for user, name in members.items():
            args += [user, name]
        try:
            async with asyncio.timeout(self._timeout):
                flat, repaired = await self._presence(keys=[presence_key(room)], args=args)
        except FAILURES as exc:
            raise self._failed("presence", exc) from exc
        if repaired:
            log.warning("malformed data in Redis at %s: %d presence entries roomchat did not "
                        "write; removed", presence_key(room), repaired)
        others: dict[str, str] = {}
        for i in range(0, len(flat) - 1, 2):
            other, other_name = records.identifier(flat[i]), records.identifier(flat[i + 1])
            if other and other_name is not None:
                others[other] = other_name
        return others

    async def others(self, room: str) -> dict[str, str]:
        self._check()
        try:
            async with asyncio.timeout(self._timeout):
                entries = await self._redis.hgetall(presence_key(room))
        except FAILURES as exc:
            raise self._failed("presence", exc) from exc
        now_ms = time.time() * 1000
        members: dict[str, str] = {}
        for field, value in entries.items():
            member = records.presence(field, value, now_ms)
            if member is not None:
                members[member[0]] = member[1]
        return members

    def _check(self) -> None:
        if self._closed:
            raise StoreError("the bus is closed")

    def _failed(self, what: str, exc: Exception) -> StoreError:
        self._feed.unhealthy()
        if isinstance(exc, TimeoutError) and not str(exc):  # our own deadline
            return StoreError(f"{what} failed: no answer from Redis (the bus) within "
                              f"{self._timeout}s")
        return StoreError(f"{what} failed: {exc}")

    async def close(self) -> None:
        """Send what is queued (for at most ``timeout`` seconds: the rest is dropped, and the
        other processes repair from the log), then stop the feed, the publishing task and the
        pool."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._publisher is not None and not self._publisher.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._timeout):
                        await self._queue.join()
            await self._feed.close()
        finally:
            if self._publisher is not None:
                self._publisher.cancel()
                await asyncio.gather(self._publisher, return_exceptions=True)
            await self._redis.aclose()

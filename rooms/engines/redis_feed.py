"""``RedisFeed``: a process's live feed from Redis, shared by the Redis engine
(``rooms.engines.redis``) and the Redis bus of a split engine (``rooms.engines.redis_bus``).

Per room the shard channel ``roomchat:{<room>}:ch`` carries

- ``m<node>\\n<first seq>\\n<wire>\\n<wire>...``: entries a process stored, consecutive seqs
  from ``first``, each already in its wire form (the Redis engine's append.lua publishes them
  in the script that stores them; the bus after the log's commit);
- ``p<node>``: that process's members of the room changed;
- ``r<node>\\n<user>\\n<seq>``: a read marker moved; ``b<node>\\n<user>\\n<reason>``: a ban.

One ``SSUBSCRIBE`` connection (on a Redis Cluster, one per node that serves a subscribed
room's slot: redis-py's ``ClusterPubSub``) carries the channels of the rooms with a listener
here. Pub/sub is at-most-once, so every gap in what it delivers is the room's to repair from
the log: a room resyncs whenever Redis confirms its subscription (the first, and again after
each reconnect or slot move), and each room compares its last seq with the log's top on every
sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from rooms.backoff import backoff_delay
from rooms.cancelled import raise_if_cancelled
from rooms.engine import RoomListener
from rooms.engines import redis_records as records
from rooms.messages import WireMessage

log = logging.getLogger("roomchat.redis")

FAILURES = (RedisError, RedisClusterException, OSError, RuntimeError)
"""What a call to Redis raises when it fails (the engine turns each into ``StoreError``):
redis-py's errors (its cluster client's are not all ``RedisError``s: no node reachable, a
slot no node serves), the socket's (``TimeoutError``, the engine's own deadline, is one), and
uvloop's ``RuntimeError`` for a write on a transport that closed under it ("the handler is
closed": Redis crashing while redis-py connects), which redis-py passes on."""
PROBE_IDLE = 5.0
"""Seconds without any pub/sub traffic before the subscription is probed with PING."""
PROBE_TIMEOUT = 3.0
"""Seconds a probe may go unanswered before the subscription connection is replaced."""
HEALTH_PROBE = 1.0
"""Seconds between checks that Redis is back, while the feed's owner is marked unhealthy."""
POLL = 0.1
"""Seconds the listen task waits for a message before applying subscription changes."""
RECONNECT_MIN = 0.1
"""Seconds before the pub/sub connection's first reconnect (then doubling to ``RECONNECT_MAX``)."""
RECONNECT_MAX = 5.0
"""Longest wait between two attempts to re-establish the subscription."""


def channel(room: str) -> str:
    """The room's shard channel (its hash tag: the slot of the room's keys)."""
    return f"roomchat:{{{room}}}:ch"


def room_of(channel_name: bytes) -> str:
    """The room whose channel ``channel_name`` is."""
    text = channel_name.decode()
    return text[text.index("{") + 1:text.rindex("}")]


def where(url: str) -> str:
    """``url`` without its credentials: what may be logged."""
    return url.rsplit("@", maxsplit=1)[-1]


async def quietly_close(pubsub: Any) -> None:
    """Close a pub/sub object and its connections, ignoring a connection already gone."""
    try:
        await pubsub.aclose()
        if pubsub.connection_pool is not None:  # (a cluster's has none: its client's)
            await pubsub.connection_pool.disconnect()
    except FAILURES:
        pass


class RedisFeed:
    """One subscription connection (``cluster``: redis-py's cluster pub/sub, one connection per
    node) carrying the channels of the rooms with a listener here, and the dispatch of what
    arrives to them. Owns its task (``start``, ``close``).

    The connection is probed with ``PING`` after ``PROBE_IDLE`` seconds without traffic and
    replaced when the probe goes unanswered for ``PROBE_TIMEOUT`` (a silently stale connection:
    centrifugo#1189); on any failure it reconnects with backoff (``RECONNECT_MIN`` doubling to
    ``RECONNECT_MAX``), subscribes every room again, and each room resyncs once Redis confirms
    its subscription (anything published meanwhile is in the log). ``healthy`` is false while
    the connection is down, or after ``unhealthy()`` until ``reachable()`` or a ``PING`` on
    ``client`` (the owner's pool) answers.
    """

    def __init__(self, url: str, node: str, client: Any, *, timeout: float,
                 cluster: bool = False, name: str = "pub/sub") -> None:
        self._url = url
        self.node = node
        self._node_bytes = node.encode()
        self._client = client
        self._timeout = timeout
        self._cluster = cluster
        self._name = name  # how log lines name this feed
        self._listeners: dict[str, RoomListener] = {}
        self._changes: set[str] = set()  # rooms whose subscription the task must fix
        self._changed = asyncio.Event()  # set when _changes gains a room
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

    def reachable(self) -> None:
        """A call on Redis was answered: healthy again."""
        self._healthy = True

    def start(self, task_name: str) -> None:
        self._task = asyncio.create_task(self._listen(), name=task_name)

    def subscribe(self, room: str, listener: RoomListener) -> None:
        # The task sends the SSUBSCRIBE (one task owns the connection); once Redis confirms
        # it the listener is told to resync, which covers anything published before.
        self._listeners[room] = listener
        self._change(room)

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        if self._listeners.get(room) is listener:
            del self._listeners[room]
            self._change(room)

    def listener(self, room: str) -> RoomListener | None:
        return self._listeners.get(room)

    def _change(self, room: str) -> None:
        self._changes.add(room)
        self._changed.set()

    async def _listen(self) -> None:
        failures = 0
        first = True
        while not self._closed:
            pubsub: Any = None
            client: Any = None
            try:
                # No retries inside redis-py: a silent reconnect would hide lost messages.
                # (On a cluster redis-py moves subscriptions between nodes as slots move and
                # subscribes again after a node's reconnect: each confirmation resyncs the
                # room, see _dispatch_loop.)
                options: dict[str, Any] = {
                    "decode_responses": False, "retry": Retry(NoBackoff(), 0),
                    "socket_connect_timeout": self._timeout, "socket_timeout": self._timeout}
                if self._cluster:
                    client = RedisCluster.from_url(self._url, **options)
                    await client.initialize()
                    pubsub = client.pubsub()
                else:
                    client = aioredis.Redis.from_url(self._url, **options)
                    pubsub = client.pubsub()
                    await pubsub.connect()
                self._changes = set(self._listeners)  # (re)subscribe every room we serve
                self._healthy = True
                if not first:
                    self.reconnects += 1
                    log.info("%s reconnected; resubscribing %d rooms", self._name,
                             len(self._changes))
                first = False
                failures = 0
                await self._dispatch_loop(pubsub)
            except asyncio.CancelledError:
                raise
            except FAILURES as exc:
                self._healthy = False
                # No jitter: a few processes per Redis, and each retries on its own failure.
                backoff = backoff_delay(failures, base=RECONNECT_MIN, cap=RECONNECT_MAX)
                failures += 1
                log.warning("%s connection to Redis at %s lost (%s); retrying in %.1fs",
                            self._name, where(self._url), exc, backoff)
                await asyncio.sleep(backoff)
            finally:
                if pubsub is not None:
                    await quietly_close(pubsub)
                if self._cluster and client is not None:
                    with contextlib.suppress(*FAILURES):
                        await client.aclose()

    async def _apply_changes(self, pubsub: Any) -> None:
        self._changed.clear()
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
            raise_if_cancelled()  # a stop that redis-py lost (rooms.cancelled)
            if not self._healthy and time.monotonic() - last_health_probe >= HEALTH_PROBE:
                # Marked unhealthy by a failed call, and nothing may run another one (new
                # rooms are refused meanwhile): find out ourselves when Redis is back.
                last_health_probe = time.monotonic()
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._client.ping()
                    self._healthy = True
                    log.info("Redis at %s is reachable again", where(self._url))
                except FAILURES:
                    pass
            if self._changes:
                await self._apply_changes(pubsub)
            if not pubsub.subscribed:
                # Nothing to read until a room subscribes (get_message needs a subscription):
                # wait for one, and send its SSUBSCRIBE at once. The first room of a process
                # hears nothing from others until then (its resync covers that time). The
                # event is cleared first: left set (a change a reconnect already covered), the
                # wait would return without yielding, and this loop would hold the event loop.
                if not self._changes:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(POLL):
                            await self._changed.wait()
                last_rx = time.monotonic()
                continue
            if self._cluster:
                message = await pubsub.get_sharded_message(timeout=POLL)
            else:
                message = await pubsub.get_message(timeout=POLL)
            now = time.monotonic()
            if message is None:
                if probe_sent is not None:
                    if now - probe_sent > PROBE_TIMEOUT:
                        raise RedisConnectionError("pub/sub probe unanswered: stale connection")
                elif now - last_rx > PROBE_IDLE:
                    # On a cluster, each node's connection (the answers come back one by
                    # one: the first resets the clock; a node that stays silent is
                    # redis-py's to reconnect, and its rooms resync when it has).
                    for node_pubsub in (pubsub.node_pubsub_mapping.values() if self._cluster
                                        else [pubsub]):
                        await node_pubsub.ping()
                    probe_sent = now
                continue
            last_rx, probe_sent = now, None
            kind = message["type"]
            if kind == "smessage":
                try:
                    self.dispatch(message["channel"], message["data"])
                except Exception:  # anyone may publish on a room's channel: not our feed's end
                    log.exception("undecodable pub/sub message on %r", message["channel"])
            elif kind == "ssubscribe":
                listener = self._listeners.get(room_of(message["channel"]))
                if listener is not None:
                    listener.resync()  # anything published before this is in the log
            elif kind == "sunsubscribe" and room_of(message["channel"]) in self._listeners:
                # Not asked for (the room is still served here): its slot moved to another
                # node of the cluster, whose Redis dropped the subscription. Subscribed
                # again (on the slot's new node); the confirmation resyncs the room.
                self._change(room_of(message["channel"]))

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
                return  # our own batch: the room delivered it when append returned
            first, _, body = rest.partition(b"\n")
            try:
                seq = int(first)
                # Each line is a message object as clients get it: passed on without parsing
                # or serialising it again.
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
                return  # ours: this process's rooms were told directly
            if kind == b"r":  # a read marker moved
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

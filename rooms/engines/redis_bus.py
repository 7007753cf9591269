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
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any

from redis import asyncio as aioredis

from rooms.engine import RoomListener
from rooms.engines import redis_records as records
from rooms.engines.notices import Batch, Notices, Publishing
from rooms.engines.redis_feed import (
    FAILURES,
    RECONNECT_MAX,
    RECONNECT_MIN,
    RedisFeed,
    channel,
    where,
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


def presence_key(room: str) -> str:
    """The room's presence hash (the Redis engine's ``_keys(room)[4]``)."""
    return f"roomchat:{{{room}}}:presence"


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


class RedisBus(Publishing[bytes]):
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
        self._feed = RedisFeed(url, self.node, client, timeout=timeout, name="bus: pub/sub")
        self._presence = client.register_script(
            (resources.files("rooms.engines") / "presence.lua").read_text(encoding="utf-8"))
        self._notices: Notices[bytes] = Notices(queue_limit, PUBLISH_BATCH, log)
        self._publisher: asyncio.Task[None] | None = None
        self._closed = False
        """Notices never sent (queue full, or Redis failed them): receivers repair from the
        log. A statistic: tests and /metrics read it."""

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
            raise StoreError(f"cannot reach Redis at {where(url)} (the bus): "
                             f"{exc or f'no answer within {timeout}s'}") from exc
        bus = cls(url, client, timeout=timeout, queue_limit=queue_limit)
        bus._feed.start("redis-bus-subscriber")
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
        if not self._closed:
            self._notices.put(channel(room), notice)

    async def _publish(self) -> None:
        """The publishing task (``rooms.engines.notices``), owned by the bus (``close``
        cancels and awaits it): up to ``PUBLISH_BATCH`` notices a pipeline."""
        await self._notices.publish(self._send, self._send_failed, base=RECONNECT_MIN,
                                    cap=RECONNECT_MAX)

    async def _send(self, batch: Batch[bytes]) -> None:
        async with asyncio.timeout(self._timeout), \
                self._redis.pipeline(transaction=False) as pipe:
            for name, notice in batch:
                pipe.spublish(name, notice)
            await pipe.execute()

    def _send_failed(self, exc: Exception) -> str | None:
        if not isinstance(exc, FAILURES):
            return None
        self._feed.unhealthy()
        return f"Redis at {where(self._url)} failed: {exc or 'no answer'}"

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
                await self._notices.flush(self._timeout)
            await self._feed.close()
        finally:
            if self._publisher is not None:
                self._publisher.cancel()
                await asyncio.gather(self._publisher, return_exceptions=True)
            await self._redis.aclose()

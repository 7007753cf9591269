"""``RedisStore``: the message store on Redis, for running beyond one process.

One stream per room, ``roomchat:{<room>}:log``, with explicit entry ids ``0-<seq>``. Redis
refuses an id that is not above the stream's last one, so two processes that both believe they
own a room cannot write conflicting seqs: the second one's append fails (``StoreError``), its
room restarts from storage, and its clients resume. Retention is ``XTRIM MAXLEN``; the stream
remembers its last id after trimming, so seqs are never reused.

Durability is Redis's: an append returns once Redis has applied it; with ``appendonly yes`` and
``appendfsync always`` that means fsynced (what roomchat's "an acked message is never lost"
needs; ``everysec`` can lose the last second on a power cut, not on a roomchat crash).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from rooms.errors import StoreError
from rooms.state import RoomSnapshot, StoredMessage
from rooms.store import CommitObserver

# All or nothing, and only if the batch continues the stream exactly (seqs last+1, last+2...):
# a script (like MULTI) keeps the writes made before an error, so everything is checked first.
_APPEND = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local expected = 1
if #last > 0 then
  expected = tonumber(string.match(last[1][1], '-(%d+)$')) + 1
end
-- Check the whole batch before writing anything: Redis does not roll a script back.
for i = 3, #ARGV, 6 do
  if tonumber(ARGV[i]) ~= expected then
    return redis.error_reply('SEQ conflict: expected ' .. expected .. ', got ' .. ARGV[i])
  end
  expected = expected + 1
end
local n = 0
for i = 3, #ARGV, 6 do
  redis.call('XADD', KEYS[1], '0-' .. ARGV[i], 'user', ARGV[i + 1], 'name', ARGV[i + 2],
             'id', ARGV[i + 3], 'text', ARGV[i + 4], 'ts', ARGV[i + 5])
  n = n + 1
end
local retention = tonumber(ARGV[1])
if retention > 0 then
  redis.call('XTRIM', KEYS[1], 'MAXLEN', retention)
end
return n
"""


def _key(room: str) -> str:
    # The hash tag keeps a room's keys on one slot if this ever runs on Redis Cluster.
    return f"roomchat:{{{room}}}:log"


def _seq(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[1])


def _message(room: str, entry_id: bytes, fields: dict[bytes, bytes]) -> StoredMessage:
    client_id = fields.get(b"id", b"").decode()
    return StoredMessage(room=room, seq=_seq(entry_id), user=fields[b"user"].decode(),
                         name=fields[b"name"].decode(), id=client_id or None,
                         text=fields[b"text"].decode(), ts=int(fields[b"ts"]))


class RedisStore:
    """``await RedisStore.open("redis://host:port/db")``; implements ``MessageStore``."""

    def __init__(self, client: Any, on_commit: CommitObserver | None) -> None:
        self._redis = client
        self._append = client.register_script(_APPEND)
        self._on_commit = on_commit
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, on_commit: CommitObserver | None = None,
                   max_connections: int = 32) -> RedisStore:
        """Connect to ``url`` with a pool of at most ``max_connections``, shared by all rooms.

        When every connection is busy a room waits for one (redis-py's default pool raises
        instead: with 1,000 busy rooms that crashed most of them, found by bench/).
        """
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None, decode_responses=False,
            health_check_interval=30)
        client = aioredis.Redis(connection_pool=pool)
        try:
            await client.ping()
        except RedisError as exc:
            await client.aclose()
            where = url.rsplit("@", maxsplit=1)[-1]  # never log a password in the URL
            raise StoreError(f"cannot reach Redis at {where}: {exc}") from exc
        return cls(client, on_commit)

    def _check(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    async def load(self, room: str, dedup_window: int) -> RoomSnapshot:
        self._check()
        key = _key(room)
        try:
            last = await self._redis.xrevrange(key, count=1)
            if not last:
                return RoomSnapshot()
            first = await self._redis.xrange(key, count=1)
            recent = await self._redis.xrevrange(key, count=dedup_window) if dedup_window else []
        except RedisError as exc:
            raise StoreError(f"load failed: {exc}") from exc
        last_seq = _seq(last[0][0])
        ids = tuple((f[b"user"].decode(), f[b"id"].decode(), _seq(eid))
                    for eid, f in reversed(recent) if f.get(b"id"))
        return RoomSnapshot(last_seq=last_seq, oldest_seq=_seq(first[0][0]), recent_ids=ids)

    async def append(self, messages: Sequence[StoredMessage], retention: int) -> None:
        self._check()
        if not messages:
            return
        started = time.perf_counter()
        args: list[str | int] = [retention, len(messages)]
        for m in messages:
            args += [m.seq, m.user, m.name, m.id or "", m.text, m.ts]
        try:
            await self._append(keys=[_key(messages[0].room)], args=args)
        except RedisError as exc:
            raise StoreError(f"append failed: {exc}") from exc
        if self._on_commit is not None:
            self._on_commit(time.perf_counter() - started, len(messages))

    async def read(self, room: str, after: int, upto: int, limit: int) -> list[StoredMessage]:
        self._check()
        if after >= upto:
            return []
        try:
            entries = await self._redis.xrange(_key(room), min=f"0-{after + 1}",
                                               max=f"0-{upto}", count=limit)
        except RedisError as exc:
            raise StoreError(f"read failed: {exc}") from exc
        return [_message(room, eid, fields) for eid, fields in entries]

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._redis.aclose()

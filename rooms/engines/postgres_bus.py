"""``NotifyBus``: PostgreSQL's ``LISTEN``/``NOTIFY`` as the ``Bus`` of a ``SplitEngine``
(docs/design/log-and-bus.md, section 3), for deployments that want one server to run:
``ROOMCHAT_STORE_URL=postgresql://...`` with ``ROOMCHAT_BUS_URL=postgresql://...`` (the same
server or another) lets several processes serve one room. The same contract as
``rooms.engines.redis_bus.RedisBus``; where NOTIFY stops scaling is in docs/scaling.md.

**Channels.** A channel name is an identifier of at most 63 bytes and a room name is not: a
room's channel is ``rc_`` + 16 hex digits of BLAKE2b(room). Every notice names its room (a
JSON string on its second line), so a hash collision only delivers a notice that the receiver
drops. Notices (``<node>`` is the sender's ``node``; the receiver skips its own):

- ``m<node>\\n<room>\\n<first seq>\\n<wire>\\n<wire>...``: entries stored, consecutive seqs from
  ``first`` (each wire object is one line: JSON escapes newlines);
- ``M<node>\\n<room>\\n<first>\\n<last>``: entries ``first..last`` stored that do not fit in a
  notice (PostgreSQL refuses a payload of 8,000 bytes or more): the receiving room is told to
  resync, which reads them from the log (``pointers`` counts them);
- ``p<node>\\n<room>``: that process's members of the room changed;
- ``r<node>\\n<room>\\n<user>\\n<seq>``: a read marker moved; ``b<node>\\n<room>\\n<user>\\n
  <reason>``: a ban.

**Publishing after the commit, in batches.** ``SplitEngine`` announces after the log's commit,
as with the Redis bus: a notice goes into a bounded queue (``PUBLISH_QUEUE``) that the bus's own
task sends, up to ``PUBLISH_BATCH`` notices in **one** transaction (one ``SELECT pg_notify`` over
arrays). Not inside the append's transaction (the design's first idea): a transaction that
notifies takes a cluster-wide lock at commit, held until its commit record is flushed, so every
notifying commit waits for the previous one's WAL flush; one transaction per batch of notices
instead of one per append is what keeps that lock off the append path (bench/notify.py). What
that costs is what the Redis bus costs: a process killed between commit and publish leaves a
batch unannounced, and two processes may announce seq 6 before 5; receivers repair both from
the log (gap reads, ``sync``). A full queue, or a send that fails, drops notices and counts them
(``dropped``).

**Listening.** One connection per process, not from the pool, owned by the bus's task:
``LISTEN``/``UNLISTEN`` as rooms subscribe and stop (applied by the task between reads), each
room told to resync once its ``LISTEN`` is done (what was committed before is in the log); a
``SELECT 1`` probe after ``PROBE_IDLE`` seconds of silence; on any failure, reconnect with
backoff, listen to every room again and resync each. The task hands notices to the rooms'
listeners, which never block: it never stops reading (a listener that stops reading fills
PostgreSQL's notification queue, and when it is full every NOTIFY fails).

**Presence** lives in an ``UNLOGGED`` table, ``bus_presence`` (room, node, user -> name,
expiry), not in the processes' memory: a process that starts, or reconnects, learns the room's
other members with one query instead of waiting for every other process to announce itself
again, and a killed process's members expire by their time as in the Redis hash. Unlogged:
no WAL and no fsync for what is ephemeral (a crash of PostgreSQL empties it; every process
fills it again within one sync). One statement per room per ``sync``: this process's rows
written, its departed members' and other processes' expired rows deleted (``SKIP LOCKED``: two
processes' syncs never wait for each other), and a ``p`` notice in the same transaction when
something changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson

from rooms.backoff import backoff_delay
from rooms.cancelled import raise_if_cancelled
from rooms.engine import RoomListener
from rooms.engines.notices import Batch, Notices, Publishing
from rooms.engines.postgres import _shut_down, connection_within
from rooms.errors import StoreError
from rooms.messages import WireMessage

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("roomchat.bus")

PUBLISH_QUEUE = 10_000
"""Notices waiting to be sent; past it a notice is dropped and counted (``NotifyBus.dropped``):
ten seconds at ~1,000 batches a second, longer than the rooms' syncs (every 5 s) take to repair
(as ``redis_bus.PUBLISH_QUEUE``)."""
PUBLISH_BATCH = 256
"""Most notices one transaction sends (one commit, one turn of PostgreSQL's notify lock)."""
PAYLOAD_MAX = 7999
"""Bytes of a notice's payload PostgreSQL accepts (``NOTIFY``: "shorter than 8000 bytes");
entries that do not fit go as a pointer (``M``)."""
POOL_SIZE = 4
"""Pooled connections per process for publishing and presence (fewer when ``max_connections``
says so); the listening connection is one more."""
POLL = 0.05
"""Seconds the listening task waits for notices before it applies rooms' (un)subscriptions:
the most a new room waits for its ``LISTEN``."""
PROBE_IDLE = 5.0
"""Seconds without a notice before the listening connection is probed (``SELECT 1``)."""
RECONNECT_MIN = 0.1
RECONNECT_MAX = 5.0
"""Backoff of the listening connection's reconnects (doubling from the first to the second)."""
HEALTH_PROBE = 1.0
"""Seconds between probes of the pool while a call failed (``healthy`` false until one works)."""
APPLICATION = "roomchat-bus"
"""``application_name`` of the bus's connections (``pg_stat_activity`` tells them apart)."""

_SCHEMA = """
CREATE UNLOGGED TABLE IF NOT EXISTS bus_presence (
    room text NOT NULL,
    node text NOT NULL,
    user_id text NOT NULL,
    name text NOT NULL,
    expires double precision NOT NULL,
    PRIMARY KEY (room, node, user_id)
)"""
_SCHEMA_LOCK = 0x726F6F6D63686174  # "roomchat": two processes creating the table at once

# This node's rows for the room are set to exactly ``members``; other nodes' expired rows go
# (those another sync holds are skipped, not waited for); the others' live members come back
# with ``changed``, which says whether a ``p`` notice is due.
_PRESENCE = """
WITH mine AS (
    SELECT * FROM unnest(%(users)s::text[], %(names)s::text[]) AS m(user_id, name)
), gone AS (
    DELETE FROM bus_presence p WHERE p.ctid IN (
        SELECT ctid FROM bus_presence WHERE room = %(room)s AND (
            (node = %(node)s AND user_id <> ALL(%(users)s::text[]))
            OR (node <> %(node)s AND expires <= %(now)s))
        FOR UPDATE SKIP LOCKED)
    RETURNING 1
), put AS (
    INSERT INTO bus_presence (room, node, user_id, name, expires)
    SELECT %(room)s, %(node)s, user_id, name, %(expires)s FROM mine
    ON CONFLICT (room, node, user_id) DO UPDATE SET name = excluded.name,
        expires = excluded.expires
    RETURNING (xmax = 0) AS added
)
SELECT
    (SELECT count(*) FROM gone) + (SELECT count(*) FROM put WHERE added) AS changed,
    o.users, o.names
FROM (SELECT coalesce(array_agg(user_id ORDER BY user_id), '{}') AS users,
             coalesce(array_agg(name ORDER BY user_id), '{}') AS names
      FROM bus_presence
      WHERE room = %(room)s AND node <> %(node)s AND expires > %(now)s) AS o
"""


def channel(room: str) -> str:
    """The room's channel: an identifier PostgreSQL accepts whatever the room's name."""
    return "rc_" + hashlib.blake2b(room.encode(), digest_size=8).hexdigest()


def _quoted(room: str) -> bytes:
    return orjson.dumps(room)


def runs(messages: Sequence[WireMessage]) -> Iterator[list[WireMessage]]:
    """``messages`` (ascending seqs) cut into runs of consecutive seqs."""
    run: list[WireMessage] = []
    for m in messages:
        if run and m.seq != run[-1].seq + 1:
            yield run
            run = []
        run.append(m)
    if run:
        yield run


def entry_notices(node: str, room: str, messages: Sequence[WireMessage],
                  limit: int = PAYLOAD_MAX) -> list[str]:
    """The notices announcing ``messages`` (ascending seqs), each at most ``limit`` bytes: runs
    of consecutive seqs packed into ``m`` notices, and entries that fit in none (alone past the
    limit) as ``M`` pointers, consecutive ones in one pointer. Pure."""
    head = f"{node}\n{_quoted(room).decode()}\n"
    fixed = 1 + len(head.encode()) + 1  # kind, head, the newline after the first seq
    notices: list[str] = []
    for run in runs(messages):
        group: list[WireMessage] = []  # a pending ``m`` notice
        size = 0  # bytes of its lines
        big: list[int] = []  # seqs of a pending pointer
        for m in run:
            line = len(m.wire.encode())
            if fixed + len(str(m.seq)) + line > limit:  # alone too big: read from the log
                if group:
                    notices.append(_batch(head, group))
                    group = []
                big.append(m.seq)
                continue
            if big:
                notices.append(f"M{head}{big[0]}\n{big[-1]}")
                big = []
            if group and fixed + len(str(group[0].seq)) + size + 1 + line > limit:
                notices.append(_batch(head, group))
                group = []
            size = size + 1 + line if group else line
            group.append(m)
        if group:
            notices.append(_batch(head, group))
        if big:
            notices.append(f"M{head}{big[0]}\n{big[-1]}")
    return notices


def _batch(head: str, group: Sequence[WireMessage]) -> str:
    return f"m{head}{group[0].seq}\n" + "\n".join(m.wire for m in group)


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, at a character boundary."""
    return text.encode()[:max(0, limit)].decode(errors="ignore")


class NotifyBus(Publishing[str]):
    """``await NotifyBus.open("postgresql://...")``; implements ``rooms.engine.Bus``.

    ``presence`` and ``others`` raise ``StoreError`` when PostgreSQL fails them (or takes longer
    than ``timeout``); the publishing methods never block and never raise."""

    shared = True

    def __init__(self, url: str, pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]],
                 *, timeout: float, queue_limit: int = PUBLISH_QUEUE) -> None:
        self._url = url
        self._pool = pool
        self._timeout = timeout
        self.node = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._listeners: dict[str, RoomListener] = {}
        self._listening: dict[str, str] = {}  # channel -> room, LISTENed on the connection
        self._changes: set[str] = set()  # rooms whose LISTEN the task must fix
        self._notices: Notices[str] = Notices(queue_limit, PUBLISH_BATCH, log)
        self._listen_ok = True
        self._calls_ok = True
        self._failed_at = 0.0  # when a call on the pool last failed (monotonic)
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        """Notices never sent (queue full, or PostgreSQL failed them): a statistic."""
        """Notices sent (a statistic)."""
        self.pointers = 0
        """``M`` notices received: entries read from the log instead (a statistic)."""
        self.reconnects = 0
        """Times the listening connection was established again (a statistic)."""
        self.listener_pid: int | None = None
        """The listening connection's backend pid (tests terminate it)."""

    @classmethod
    async def open(cls, url: str, *, max_connections: int = POOL_SIZE, timeout: float = 5.0,
                   queue_limit: int = PUBLISH_QUEUE) -> NotifyBus:
        """Connect, create the presence table if missing, and start the listening and the
        publishing tasks (``close`` stops both). Raises ``StoreError`` (one line) when
        PostgreSQL cannot be reached within ``timeout`` or psycopg is missing."""
        try:
            import psycopg
            from psycopg_pool import AsyncConnectionPool, PoolTimeout
        except ImportError:
            raise StoreError("the PostgreSQL bus needs psycopg: "
                             "pip install 'roomchat[postgres]'") from None
        ms = max(1, int(timeout * 1000))
        settings = cls._settings(timeout)
        settings["options"] = f"-c statement_timeout={max(1, int(ms * 0.9))}"
        pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            url, min_size=1, max_size=max(1, min(POOL_SIZE, max_connections)), open=False,
            timeout=timeout, kwargs={"autocommit": True, **settings})
        try:
            async with asyncio.timeout(max(timeout, 1) * 3):
                async with await psycopg.AsyncConnection.connect(
                        url, autocommit=True, **settings) as conn, \
                        conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    await conn.execute(_SCHEMA)
                await pool.open(wait=True, timeout=max(timeout, 1) * 3)
        except (psycopg.Error, PoolTimeout, OSError, TimeoutError) as exc:
            await pool.close()
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise StoreError(f"cannot reach PostgreSQL (the bus): {detail}") from None
        bus = cls(url, pool, timeout=timeout, queue_limit=queue_limit)
        bus._tasks = [asyncio.create_task(bus._listen(), name="notify-bus-listener"),
                      asyncio.create_task(bus._publish(), name="notify-bus-publisher")]
        return bus

    @staticmethod
    def _settings(timeout: float) -> dict[str, Any]:
        return {"connect_timeout": max(1, int(timeout) + 1), "application_name": APPLICATION}

    @property
    def healthy(self) -> bool:
        return self._listen_ok and self._calls_ok and not self._closed

    # -- the live feed ----------------------------------------------------------------------

    def subscribe(self, room: str, listener: RoomListener) -> None:
        # The task sends the LISTEN (one task owns the connection), then tells the listener to
        # resync, which covers anything committed before.
        self._listeners[room] = listener
        self._changes.add(room)

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        if self._listeners.get(room) is listener:
            del self._listeners[room]
            self._changes.add(room)

    def feed(self, room: str, messages: list[WireMessage]) -> None:
        listener = self._listeners.get(room)
        if listener is not None and messages:
            listener.remote_messages(messages)

    async def _listen(self) -> None:
        """The listening connection's life: connect, LISTEN every room, dispatch; on failure,
        reconnect with backoff. Owned by the bus (``close`` cancels and awaits it)."""
        import psycopg

        failures = 0
        first = True
        while not self._closed:
            conn: AsyncConnection[tuple[Any, ...]] | None = None
            try:
                async with asyncio.timeout(max(self._timeout, 1) * 2):
                    conn = await psycopg.AsyncConnection.connect(
                        self._url, autocommit=True, **self._settings(self._timeout))
                self.listener_pid = conn.info.backend_pid
                self._listen_ok = True
                failures = 0
                self._listening = {}
                self._changes = set(self._listeners)  # LISTEN again to every room we serve
                if not first:
                    self.reconnects += 1
                    log.info("bus: LISTEN connection to PostgreSQL back; listening to %d rooms "
                             "again", len(self._changes))
                first = False
                await self._dispatch_loop(conn)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self._listen_ok = False
                delay = backoff_delay(failures, base=RECONNECT_MIN, cap=RECONNECT_MAX)
                failures += 1
                log.warning("bus: LISTEN connection to PostgreSQL lost (%s); retrying in %.1fs",
                            " ".join(str(exc).split()) or type(exc).__name__, delay)
                await asyncio.sleep(delay)
            except Exception:  # a bug, not PostgreSQL's failure: logged, and the feed goes on
                self._listen_ok = False
                log.exception("bus: the LISTEN task failed; connecting again")
                await asyncio.sleep(backoff_delay(failures, base=RECONNECT_MIN,
                                                  cap=RECONNECT_MAX))
                failures += 1
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def _dispatch_loop(self, conn: AsyncConnection[tuple[Any, ...]]) -> None:
        last_rx = time.monotonic()
        last_health_probe = 0.0
        while not self._closed:
            raise_if_cancelled()  # a stop that a call lost (rooms.cancelled)
            since = time.monotonic() - max(last_health_probe, self._failed_at)
            if not self._calls_ok and since >= HEALTH_PROBE:
                # A call on the pool failed: healthy again once one works (nothing else may
                # call while new rooms are refused).
                last_health_probe = time.monotonic()
                with contextlib.suppress(StoreError):
                    async with self._call() as pooled:
                        await pooled.execute("SELECT 1")
            if self._changes:
                await self._apply_changes(conn)
                self._listen_ok = True
            async for notice in conn.notifies(timeout=POLL):
                last_rx = time.monotonic()
                try:
                    self.dispatch(notice.channel, notice.payload)
                except Exception:  # anyone may NOTIFY on a room's channel: not our feed's end
                    log.exception("bus: undecodable notice on %s", notice.channel)
            if time.monotonic() - last_rx > PROBE_IDLE:
                await self._bounded(conn, "SELECT 1")
                last_rx = time.monotonic()
                self._listen_ok = True

    async def _bounded(self, conn: AsyncConnection[tuple[Any, ...]], sql: str) -> None:
        """Run ``sql`` on the listening connection within ``timeout``; past it the socket is
        shut down (a hung server: psycopg's own cancellation would wait on it) and the call
        fails."""
        loop = asyncio.get_running_loop()
        expired: list[bool] = []
        timer = loop.call_later(self._timeout, _shut_down, conn, expired)
        try:
            await conn.execute(sql.encode())
        finally:
            timer.cancel()

    async def _apply_changes(self, conn: AsyncConnection[tuple[Any, ...]]) -> None:
        changes, self._changes = self._changes, set()
        statements: list[str] = []
        added: list[str] = []
        for room in changes:
            name = channel(room)
            if room in self._listeners and name not in self._listening:
                statements.append(f"LISTEN {name}")
                self._listening[name] = room
                added.append(room)
            elif room not in self._listeners and self._listening.get(name) == room:
                statements.append(f"UNLISTEN {name}")
                del self._listening[name]
            elif room in self._listeners:
                added.append(room)  # subscribed again while listened to: resync as well
        if statements:
            # Not applied if this raises: the next connection LISTENs to every room anyway.
            await self._bounded(conn, "; ".join(statements))
        for room in added:
            listener = self._listeners.get(room)
            if listener is not None:
                listener.resync()  # anything committed before the LISTEN is in the log

    def dispatch(self, channel_name: str, payload: str) -> None:
        """Hand one notice to its room's listener here (none, or another room's: ignored);
        this process's own notices are skipped (its rooms were told directly)."""
        if not payload:
            return
        kind = payload[0]
        node, _, rest = payload[1:].partition("\n")
        if node == self.node:
            return
        quoted, _, body = rest.partition("\n")
        room = orjson.loads(quoted)
        if not isinstance(room, str) or self._listening.get(channel_name) != room:
            return
        listener = self._listeners.get(room)
        if listener is None:
            return
        if kind == "m":
            first, _, lines = body.partition("\n")
            try:
                seq = int(first)
            except ValueError:
                log.warning("room %s: undecodable batch from %s", room, node)
                listener.resync()
                return
            listener.remote_messages([WireMessage(seq + i, line)
                                      for i, line in enumerate(lines.split("\n"))])
        elif kind == "M":
            self.pointers += 1
            listener.resync()  # too big to carry: the room reads them from the log
        elif kind == "p":
            listener.remote_presence()
        elif kind == "r":
            user, _, raw = body.partition("\n")
            if user and raw.isdigit():
                listener.remote_read(user, int(raw))
        elif kind == "b":
            user, _, reason = body.partition("\n")
            listener.remote_banned(user, reason)

    # -- publishing: queued, never blocks, never raises ------------------------------------

    def _head(self, kind: str, room: str) -> str:
        return f"{kind}{self.node}\n{_quoted(room).decode()}\n"

    def entries(self, room: str, messages: list[WireMessage]) -> None:
        for notice in entry_notices(self.node, room, messages):
            self._put(room, notice)

    def read_moved(self, room: str, user: str, seq: int) -> None:
        self._put(room, f"{self._head('r', room)}{user}\n{seq}")

    def banned(self, room: str, user: str, reason: str) -> None:
        head = f"{self._head('b', room)}{user}\n"
        # A reason past the payload's limit is cut (the ban itself is in the log, whole).
        self._put(room, head + _cut(reason, PAYLOAD_MAX - len(head.encode())))

    def _put(self, room: str, notice: str) -> None:
        if not self._closed:
            self._notices.put(channel(room), notice)

    async def _publish(self) -> None:
        """The publishing task (``rooms.engines.notices``), owned by the bus (``close``
        cancels and awaits it): up to ``PUBLISH_BATCH`` notices a transaction."""
        await self._notices.publish(self._send, _send_failed, base=RECONNECT_MIN,
                                    cap=RECONNECT_MAX)

    async def _send(self, batch: Batch[str]) -> None:
        async with self._call() as conn:
            await conn.execute(
                "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS x(c, p)",
                ([c for c, _ in batch], [p for _, p in batch]))

    # -- calls on the pool ------------------------------------------------------------------

    @asynccontextmanager
    async def _call(self) -> AsyncIterator[AsyncConnection[tuple[Any, ...]]]:
        """A pooled connection (autocommit) within ``timeout``; PostgreSQL's failures as
        ``StoreError``, and ``healthy`` false until a call works again; the deadline is
        ``postgres.connection_within``'s."""
        import psycopg
        from psycopg_pool import PoolTimeout

        if self._closed:
            raise StoreError("the bus is closed")
        expired: list[bool] = []
        try:
            async with connection_within(self._pool, self._timeout, expired) as conn:
                yield conn
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            self._calls_ok = False
            self._failed_at = time.monotonic()
            if expired:
                raise StoreError(f"PostgreSQL (the bus) did not answer within "
                                 f"{self._timeout} s") from exc
            raise StoreError(f"PostgreSQL (the bus) failed: "
                             f"{' '.join(str(exc).split())}") from exc
        self._calls_ok = True

    # -- presence ---------------------------------------------------------------------------

    async def presence(self, room: str, members: dict[str, str], ttl: float) -> dict[str, str]:
        """Publish this process's ``members`` (valid ``ttl`` seconds; none withdraws them) and
        return the other processes' live members of the room, in one transaction that also
        notifies the room (``p``) when something changed. Raises ``StoreError``."""
        now = time.time()
        params = {"room": room, "node": self.node, "now": now, "expires": now + ttl,
                  "users": list(members), "names": list(members.values())}
        async with self._call() as conn, conn.transaction():
            cursor = await conn.execute(_PRESENCE, params)
            row = await cursor.fetchone()
            assert row is not None
            changed, users, names = row
            if changed:
                await conn.execute("SELECT pg_notify(%s, %s)",
                                   (channel(room), self._head("p", room)))
        return {str(user): str(name) for user, name in zip(users, names, strict=True)}

    async def others(self, room: str) -> dict[str, str]:
        async with self._call() as conn:
            cursor = await conn.execute(
                "SELECT user_id, name FROM bus_presence WHERE room = %s AND expires > %s",
                (room, time.time()))
            return {str(user): str(name) for user, name in await cursor.fetchall()}

    async def close(self) -> None:
        """Send what is queued (for at most ``timeout`` seconds: the rest is dropped, and the
        other processes repair from the log), withdraw nothing (presence expires), then stop
        both tasks and the pool."""
        if self._closed:
            return
        try:
            publisher = self._tasks[1] if self._tasks else None
            if publisher is not None and not publisher.done():
                await self._notices.flush(self._timeout)
        finally:
            self._closed = True
            self._listeners.clear()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._pool.close()


def _send_failed(exc: Exception) -> str | None:
    """Why a batch failed, when PostgreSQL failed (``NotifyBus._call``'s ``StoreError``)."""
    return str(exc) if isinstance(exc, StoreError) else None

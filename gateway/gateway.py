"""``Gateway``: the state every route and socket of one process serves from.

Its own module so that the modules serving requests (``gateway.ws``, ``api``, ``history``,
``admin``) and the one assembling them (``gateway.app``) all import it without importing each
other: ``app`` imports them, none of them imports ``app``.

The store and the room registry open in ``start()`` (``before_serving``) and close in ``stop()``;
``drain()`` (called by the server's shutdown trigger, *before* Hypercorn stops) closes every
socket with 1012 so shutdown never hangs on open WebSockets, and drops (aborts) whatever is
still open at its deadline: a client that stopped reading must not hold the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Protocol

from gateway.access import FrontDoor
from gateway.auth import make_issuer, make_verifier
from gateway.config import Config
from gateway.limits import ClientAddresses, Limits, parse_networks
from gateway.metrics import Metrics
from gateway.revocation import Revocations
from gateway.slots import SearchSlots
from rooms.engine import Engine
from rooms.engines import open_engine
from rooms.errors import StoreError
from rooms.messages import AnyDraft, Appended
from rooms.protocol import SendMessage
from rooms.registry import RoomRegistry

log = logging.getLogger("roomchat.gateway")

# After the drain's deadline has aborted the stragglers, how long their handlers get to unwind
# (an abort completes on the next loop iterations; this only bounds a surprise).
ABORT_GRACE = 1.0


class MessageFiles(Protocol):
    """Messages' files (``gateway.attachments.Attachments``; a protocol here so that this
    module, which everyone imports, imports none of them)."""

    async def resolve(self, room: str, user: str, frame: SendMessage) -> SendMessage:
        """``frame`` with its files' metadata; raises ``gateway.attachments.Refused``."""
        ...

    def stored(self, room: str, batch: Sequence[AnyDraft],
               results: Sequence[Appended]) -> None:
        """The rooms' ``rooms.actor.Stored`` hook."""
        ...


class Abortable(Protocol):
    """A connection the drain can drop at its deadline (``gateway.hypercorn_ext.FrameWriter``)."""

    def abort(self) -> None: ...


class Gateway:
    """What the routes share: config, the front door (``door``: every credential is checked
    there), store, rooms, metrics, connection count."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.verifier = make_verifier(config)
        self.issuer = make_issuer(config) if config.dev_login else None
        self.revocations = Revocations()
        # Abuse caps (their settings are checked by Config).
        self.limits = Limits.from_config(config)
        self.addresses = ClientAddresses(parse_networks(config.trusted_proxies),
                                         config.client_ip_header,
                                         ipv6_prefix=config.client_ipv6_prefix)
        self._watcher: asyncio.Task[None] | None = None
        self.observer = Metrics()
        self.draining = False
        self.connections = 0
        self.opened_total = 0  # since start: what gateway.gcsteward reads
        self.closed_total = 0
        self.searches = SearchSlots(config.search_concurrency)
        # Every open WebSocket the drain can drop; bounded by the sockets Hypercorn accepted.
        self._abortable: set[Abortable] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._store: Engine | None = None
        self._registry: RoomRegistry | None = None
        self.attachments: MessageFiles | None = None
        """Messages' files (``gateway.attachments``), set by ``gateway.app`` before ``start``:
        without it a message naming files is refused (``unavailable``)."""
        self.door = FrontDoor(self, verifier=self.verifier, revocations=self.revocations,
                              limits=self.limits, addresses=self.addresses,
                              allowed_origins=config.allowed_origins,
                              max_connections=config.max_connections, api_key=config.api_key)

    @property
    def store(self) -> Engine:
        """The engine: the shared log, live feed and presence of every room."""
        if self._store is None:
            raise StoreError("the store is not open (server not started)")
        return self._store

    @property
    def started(self) -> bool:
        """``start()`` has run: the store is open and rooms can start."""
        return self._registry is not None

    @property
    def registry(self) -> RoomRegistry:
        if self._registry is None:
            raise StoreError("rooms are not running (server not started)")
        return self._registry

    async def start(self) -> None:
        self._store = await open_engine(
            self.config.resolved_store_url, bus_url=self.config.bus_url or None,
            on_commit=self._committed,
            sqlite_synchronous=self.config.store_synchronous,
            search_index=self.config.search_index,
            max_connections=self.config.store_connections,
            timeout=self.config.room.store_timeout,
            search_language=self.config.search_language,
            allow_async_commit=self.config.store_allow_async_commit)
        self._registry = RoomRegistry(
            self.config.room, self._store, observer=self.observer,
            max_rooms=self.config.max_live_rooms,
            on_stored=None if self.attachments is None else self.attachments.stored)
        await self.revocations.load(self._store)
        # Owned here: cancelled and awaited in stop().
        self._watcher = asyncio.create_task(self.revocations.watch(
            self._store, self.config.revocation_poll, self._registry.revoke_nowait),
            name="revocations")

    def _committed(self, seconds: float, count: int) -> None:
        self.observer.messages_stored(count, seconds)  # prometheus_client is thread-safe

    def connection_opened(self, transport: Abortable | None = None,
                          owner: tuple[str, str] | None = None) -> None:
        """A WebSocket counts from here until ``connection_closed``: call that only once its
        socket is really gone (room sockets: ``gateway.ws``), so closing sockets count toward
        ``max_connections`` too. ``transport``: what the drain may abort at its deadline.
        ``owner``: ``(user, client ip)`` admitted by ``limits.admit``, counted toward the
        per-user and per-IP caps as long; give the same to ``connection_closed``."""
        if owner is not None:
            self.limits.opened(*owner)
        self.connections += 1
        self.opened_total += 1
        self.observer.connections.inc()
        self._idle.clear()
        if transport is not None:
            self._abortable.add(transport)

    def connection_closed(self, transport: Abortable | None = None,
                          owner: tuple[str, str] | None = None) -> None:
        if owner is not None:
            self.limits.closed(*owner)
        self.connections -= 1
        self.closed_total += 1
        self.observer.connections.dec()
        if transport is not None:
            self._abortable.discard(transport)
        if self.connections == 0:
            self._idle.set()

    @contextlib.contextmanager
    def abortable(self, transport: Abortable) -> Iterator[None]:
        """Let the drain abort ``transport`` while inside (for sockets counted elsewhere)."""
        self._abortable.add(transport)
        try:
            yield
        finally:
            self._abortable.discard(transport)

    async def drain(self, timeout: float) -> None:
        """Refuse new connections, close every socket with 1012, wait up to ``timeout`` s, then
        abort what is left and give it ``ABORT_GRACE`` s to unwind. Returns within about
        ``timeout + ABORT_GRACE`` whatever the clients do."""
        if self.draining:
            return
        self.draining = True
        stager: asyncio.Task[None] | None = None
        if self._registry is not None:
            # Staged: drain_batch connections every drain_step seconds, but all of them within
            # half the timeout, so the last wave still has time to close.
            open_now = max(1, self.connections)
            waves = -(-open_now // max(1, self.config.drain_batch))
            step = min(self.config.drain_step, timeout / 2 / max(1, waves - 1))
            stager = asyncio.create_task(self._registry.drain_staged(self.config.drain_batch,
                                                                     step))
        try:
            await self._wait_closed(timeout)
        finally:
            if stager is not None:  # owned here: finished or cancelled before returning
                stager.cancel()
                await asyncio.wait([stager])

    async def _wait_closed(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return
        except TimeoutError:
            log.warning("drain: %d connections still open after %.1fs; aborting them",
                        self.connections, timeout)
        for transport in list(self._abortable):
            transport.abort()
        try:
            async with asyncio.timeout(ABORT_GRACE):
                await self._idle.wait()
        except TimeoutError:
            log.warning("drain: %d connections still counted after aborting", self.connections)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher])
        if self._registry is not None:
            await self._registry.aclose(self.config.drain_timeout)
        if self._store is not None:
            await self._store.close()

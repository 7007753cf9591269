"""The engines behind ``rooms.engine.Engine``: embedded (SQLite, ``rooms.engines.embedded`` over
``rooms.engines.sqlite``), Redis (``rooms.engines.redis``), memory (``rooms.engines.memory``:
ephemeral, not durable) and split (``rooms.engines.split``: a ``Log``, such as PostgreSQL's in
``rooms.engines.postgres``, beside a ``Bus``: this process's, Redis's in
``rooms.engines.redis_bus`` or PostgreSQL's ``LISTEN/NOTIFY`` in
``rooms.engines.postgres_bus``), and ``open_engine``, which picks one by URL. The
interface itself (``rooms.engine``) knows none of them."""

from __future__ import annotations

from rooms.engine import SHARED_SCHEMES, Bus, CommitObserver, Engine, is_shared_url

__all__ = ["LOCAL_BUS", "POSTGRES_SCHEMES", "bus_refusal", "open_engine"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
POSTGRES_MAX_CONNECTIONS = 8
"""Connections to PostgreSQL per process when the caller leaves ``max_connections`` unset
(every one is a server process: PostgreSQL's own ``max_connections`` bounds them all)."""


LOCAL_BUS = "local:"
"""The bus URL that names this process's own bus (the same as none)."""


def bus_refusal(store_url: str, bus_url: str | None) -> str | None:
    """Why the bus ``bus_url`` cannot go with the store ``store_url`` (one sentence saying what
    to set instead), or None when they go together (docs/design/log-and-bus.md, section 1):
    a Redis bus (``redis://``, ``rediss://``, ``unix://``) or a PostgreSQL ``LISTEN/NOTIFY``
    one (``postgresql://``: the log's server or another) beside the PostgreSQL log; the
    Redis engine with no bus or its own URL (it announces in its append script, on its own
    server); SQLite and memory with none (their log serves one process: no bus can share it).
    Pure: nothing is connected."""
    if not bus_url or bus_url == LOCAL_BUS:
        return None
    if bus_url.startswith(POSTGRES_SCHEMES):
        if store_url.startswith(POSTGRES_SCHEMES):
            return None
        return ("the PostgreSQL LISTEN/NOTIFY bus goes with the PostgreSQL log only: use "
                "postgresql:// as ROOMCHAT_STORE_URL too, or leave ROOMCHAT_BUS_URL unset")
    if not bus_url.startswith(SHARED_SCHEMES):
        return ("unknown bus URL: use redis://host:port/db or postgresql://user@host/db (a "
                f"bus between processes) or {LOCAL_BUS} (this process only)")
    if is_shared_url(store_url):
        if bus_url == store_url:
            return None
        return ("the Redis store announces messages itself, on its own server (in the script "
                "that stores them): leave ROOMCHAT_BUS_URL unset with ROOMCHAT_STORE_URL "
                "redis://...")
    if store_url.startswith(POSTGRES_SCHEMES):
        return None
    what = "memory" if store_url.startswith("memory://") else "SQLite"
    return (f"the {what} log serves one process; a bus cannot share it: use postgresql:// or "
            "redis:// as ROOMCHAT_STORE_URL, or leave ROOMCHAT_BUS_URL unset")


async def open_engine(url: str, *, bus_url: str | None = None,
                      on_commit: CommitObserver | None = None,
                      sqlite_synchronous: str = "FULL", search_index: bool = True,
                      max_connections: int | None = None,
                      timeout: float | None = None, search_language: str = "simple",
                      allow_async_commit: bool = False) -> Engine:
    """The engine a URL names: ``sqlite:///path/to/db``, ``redis://host:port/db``,
    ``postgresql://user@host:port/db`` (the PostgreSQL log; with ``bus_url`` ``redis://...``,
    or ``postgresql://...`` for PostgreSQL's ``LISTEN/NOTIFY``, beside it any number of
    processes share it, without one it serves this process only) or
    ``memory://`` (nothing after it: every message in this process's memory, lost on restart).
    ``bus_url`` (None, ``""`` or ``local:``: this process's own) must go with ``url``
    (``bus_refusal``).

    Raises ``ValueError`` for an unknown scheme or a bus that cannot go with the store (the
    sentence of ``bus_refusal``) and ``StoreError`` when the engine cannot be reached or
    opened; nothing is left open when it raises. ``max_connections`` bounds the connections
    to a networked engine (and to a Redis bus), and ``timeout`` (seconds; default:
    ``RoomConfig.store_timeout``'s) each of its calls: one that takes longer fails with
    ``StoreError``. (The embedded engine's calls are local; the rooms bound their own
    appends, ``RoomConfig.store_timeout``.) ``sqlite_synchronous`` and ``search_index`` are
    the embedded engine's (``SqliteStore.open``: off drops its search index and search is
    refused, on builds it if missing); ``search_language`` and ``allow_async_commit``
    are the PostgreSQL log's (``PostgresLog.open``); the others ignore them.
    """
    from rooms.config import RoomConfig

    timeout = RoomConfig().store_timeout if timeout is None else timeout
    refusal = bus_refusal(url, bus_url)
    if refusal is not None:
        raise ValueError(refusal)
    if is_shared_url(url):
        from rooms.engines.redis import RedisEngine

        return await RedisEngine.open(url, on_commit=on_commit,
                                      max_connections=max_connections or 32, timeout=timeout)
    if url.startswith(POSTGRES_SCHEMES):
        import os

        from rooms.engines.postgres import PostgresLog
        from rooms.engines.split import LocalBus, SplitEngine

        log = await PostgresLog.open(url, max_connections=max_connections
                                     or POSTGRES_MAX_CONNECTIONS, timeout=timeout,
                                     on_commit=on_commit, search_language=search_language,
                                     allow_async_commit=allow_async_commit)
        if not bus_url or bus_url == LOCAL_BUS:
            return SplitEngine(log, LocalBus(f"postgres-{os.getpid()}"))
        bus: Bus | None = None
        try:
            if bus_url.startswith(POSTGRES_SCHEMES):
                from rooms.engines.postgres_bus import NotifyBus

                bus = await NotifyBus.open(bus_url, max_connections=max_connections
                                           or POSTGRES_MAX_CONNECTIONS, timeout=timeout)
            else:
                from rooms.engines.redis_bus import RedisBus

                bus = await RedisBus.open(bus_url, max_connections=max_connections or 32,
                                          timeout=timeout)
        finally:
            if bus is None:  # the bus failed (or we were cancelled): the log is not left open
                await log.close()
        return SplitEngine(log, bus)
    if url.startswith("sqlite://"):
        from rooms.engines.embedded import EmbeddedEngine

        return await EmbeddedEngine.open(url.removeprefix("sqlite://"),
                                         synchronous=sqlite_synchronous, on_commit=on_commit,
                                         search_index=search_index)
    if url.startswith("memory://"):
        if url != "memory://":
            raise ValueError(f"unsupported store URL {url!r}: memory:// takes nothing after it")
        from rooms.engines.memory import MemoryEngine

        return MemoryEngine()
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///path, redis://host:port, "
                     "postgresql://user@host/db or memory://")

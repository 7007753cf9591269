"""The engines behind ``rooms.engine.Engine``: embedded (SQLite, ``rooms.engines.embedded`` over
``rooms.engines.sqlite``), Redis (``rooms.engines.redis``), memory (``rooms.engines.memory``:
ephemeral, not durable) and split (``rooms.engines.split``: a ``Log``, such as PostgreSQL's in
``rooms.engines.postgres``, beside a ``Bus``), and ``open_engine``, which picks one by URL. The
interface itself (``rooms.engine``) knows none of them."""

from __future__ import annotations

from rooms.engine import CommitObserver, Engine, is_shared_url

__all__ = ["POSTGRES_SCHEMES", "open_engine"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
POSTGRES_MAX_CONNECTIONS = 8
"""Connections to PostgreSQL per process when the caller leaves ``max_connections`` unset
(every one is a server process: PostgreSQL's own ``max_connections`` bounds them all)."""


async def open_engine(url: str, *, on_commit: CommitObserver | None = None,
                      sqlite_synchronous: str = "FULL", search_index: bool = True,
                      max_connections: int | None = None,
                      timeout: float | None = None, search_language: str = "simple",
                      allow_async_commit: bool = False) -> Engine:
    """The engine a URL names: ``sqlite:///path/to/db``, ``redis://host:port/db``,
    ``postgresql://user@host:port/db`` (the PostgreSQL log with this process's bus: one
    process) or ``memory://`` (nothing after it: every message in this process's memory, lost
    on restart).

    Raises ``ValueError`` for an unknown scheme and ``StoreError`` when the engine cannot be
    reached or opened. ``max_connections`` bounds the connections to a networked engine, and
    ``timeout`` (seconds; default: ``RoomConfig.store_timeout``'s) each of its calls: one that
    takes longer fails with ``StoreError``. (The embedded engine's calls are local; the rooms
    bound their own appends, ``RoomConfig.store_timeout``.) ``sqlite_synchronous`` and
    ``search_index`` are the embedded engine's (``SqliteStore.open``: off drops its search index
    and search is refused, on builds it if missing); ``search_language`` and
    ``allow_async_commit`` are the PostgreSQL log's (``PostgresLog.open``); the others ignore
    them.
    """
    from rooms.config import RoomConfig

    timeout = RoomConfig().store_timeout if timeout is None else timeout
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
        return SplitEngine(log, LocalBus(f"postgres-{os.getpid()}"))
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

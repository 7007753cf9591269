"""The PostgreSQL log's schema: a short list of versioned steps, applied at start.

No migration tool: Alembic would bring SQLAlchemy for a handful of statements. ``MIGRATIONS``
holds ``(version, sql)`` steps in order; ``migrate`` applies each one newer than the database's
``schema_version`` in a transaction of its own (PostgreSQL's DDL is transactional: a step that
fails leaves nothing), under a transaction-scoped advisory lock, so processes starting together
apply each step once. A database whose version is newer than this code knows is refused
(``SchemaTooNew``): an older roomchat must not write a layout it does not know.

The layout (docs/design/log-and-bus.md, section 2): one ``entries`` table for a room's whole
log (messages in their current state, and changes), hash-partitioned by room from the start
(re-partitioning later would rewrite everything); a row per room in ``rooms`` holding its seq
counter (``top``), what retention pruned (``low``) and its epoch; markers, bans, tickets and
revocations in tables of their own.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from rooms.errors import StoreError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

ADVISORY_LOCK = 0x726F6F6D63686174  # "roomchat": the key every process takes to migrate
PARTITIONS = 16
"""Hash partitions of ``entries``, fixed by version 1 (vacuum, reindex and erasure's compaction
work on one at a time)."""
SEARCH_CONFIG = "roomchat_simple"
"""The text search configuration version 1 made, for the default language: ``simple`` (no
stemming, no stop words, as SQLite's FTS5 index) with ``unaccent`` in front, so Latin accents
are ignored (``use_language`` makes ``roomchat_<language>`` likewise for another)."""
DEFAULT_LANGUAGE = "simple"
LANGUAGE_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
"""What a ``ROOMCHAT_SEARCH_LANGUAGE`` may be (a PostgreSQL text search configuration's name,
lower case): it becomes part of an identifier, ``roomchat_<language>``."""
UNACCENTED = ("word", "hword", "hword_part")
"""The parser's token types that may hold non-ASCII letters: ``unaccent`` goes in front of their
dictionaries (the ASCII ones have no accents to remove)."""


def _partitions() -> str:
    return "\n".join(
        f"CREATE TABLE entries_p{i} PARTITION OF entries "
        f"FOR VALUES WITH (MODULUS {PARTITIONS}, REMAINDER {i});" for i in range(PARTITIONS))


_VERSION_1 = f"""
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE TEXT SEARCH CONFIGURATION {SEARCH_CONFIG} (COPY = simple);
ALTER TEXT SEARCH CONFIGURATION {SEARCH_CONFIG}
    ALTER MAPPING FOR hword, hword_part, word WITH unaccent, simple;

CREATE TABLE rooms (
    room  text   PRIMARY KEY,
    top   bigint NOT NULL DEFAULT 0,
    low   bigint NOT NULL DEFAULT 0,
    epoch text   NOT NULL
);

CREATE TABLE entries (
    room      text     NOT NULL,
    seq       bigint   NOT NULL,
    kind      smallint NOT NULL,
    user_id   text     NOT NULL,
    name      text     NOT NULL,
    client_id text,
    text      text     NOT NULL,
    ts        bigint   NOT NULL,
    target    bigint,
    detail    text,
    reply     jsonb,
    mentions  text[],
    edited    bigint,
    reactions jsonb,
    files     jsonb,
    changed   bigint,
    search    tsvector,
    PRIMARY KEY (room, seq)
) PARTITION BY HASH (room);
{_partitions()}
CREATE UNIQUE INDEX entries_dedup ON entries (room, user_id, client_id)
    WHERE client_id IS NOT NULL;
CREATE INDEX entries_by_target ON entries (room, target) WHERE target IS NOT NULL;
CREATE INDEX entries_by_user ON entries (user_id, room, seq);
CREATE INDEX entries_search ON entries USING gin (search) WHERE search IS NOT NULL;

CREATE TABLE reads (room text, user_id text, seq bigint NOT NULL, PRIMARY KEY (room, user_id));
CREATE INDEX reads_by_user ON reads (user_id);
CREATE TABLE bans (room text, user_id text, until double precision, reason text NOT NULL,
                   PRIMARY KEY (room, user_id));
CREATE TABLE stash (key text PRIMARY KEY, value bytea NOT NULL,
                    expires double precision NOT NULL);
CREATE TABLE revocations (user_id text PRIMARY KEY, at double precision NOT NULL);
CREATE INDEX revocations_at ON revocations (at);
CREATE TABLE imports (room text PRIMARY KEY);
"""

_VERSION_2 = """
-- Version 1 indexed every message with roomchat_simple and did not say so: a database that
-- holds messages records it; an empty one takes the language of the first roomchat to open it.
INSERT INTO meta (key, value) SELECT 'search_language', 'simple'
    WHERE EXISTS (SELECT 1 FROM entries) ON CONFLICT (key) DO NOTHING;
"""

MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _VERSION_1), (2, _VERSION_2))
"""Every step, oldest first; a new one is appended, never edited once released."""
LATEST = MIGRATIONS[-1][0]


class SchemaTooNew(StoreError):
    """The database was migrated by a newer roomchat than this one. ``str()`` is one line."""


class SearchLanguageRefused(StoreError):
    """``ROOMCHAT_SEARCH_LANGUAGE`` names no configuration PostgreSQL has, or another language
    than the database's search index was built with. ``str()`` is one line saying what to
    set."""


def search_config(language: str) -> str:
    """The text search configuration roomchat builds ``entries.search`` with for
    ``language`` (a ``LANGUAGE_NAME``): ``roomchat_<language>``."""
    if not LANGUAGE_NAME.fullmatch(language):
        raise ValueError(f"not a text search language: {language!r}")
    return f"roomchat_{language}"


async def use_language(conn: AsyncConnection[Any], language: str) -> str:
    """Make sure the database searches in ``language`` and return the configuration's name
    (``search_config``): ``roomchat_<language>`` is made if missing, a copy of PostgreSQL's
    ``language`` configuration with ``unaccent`` in front of the dictionaries of
    ``UNACCENTED`` tokens, so case and Latin accents are ignored in every language; the
    language is recorded in ``meta`` (``search_language``) by the first roomchat to open an
    empty database. ``conn`` must not be in a transaction (this is one, under the migration's
    lock). Raises ``SearchLanguageRefused`` (nothing changed) when PostgreSQL has no such
    configuration, or the database's index was built in another language: its entries'
    ``search`` columns would not match this language's queries."""
    config = search_config(language)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
        cursor = await conn.execute(
            "INSERT INTO meta (key, value) VALUES ('search_language', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = meta.value RETURNING value", (language,))
        row = await cursor.fetchone()
        recorded = str(row[0]) if row is not None else language
        if recorded != language:
            raise SearchLanguageRefused(
                f"ROOMCHAT_SEARCH_LANGUAGE is {language}, but this database's search index was "
                f"built with {recorded}: set ROOMCHAT_SEARCH_LANGUAGE={recorded} (this version "
                "cannot rebuild the index in another language)")
        cursor = await conn.execute("SELECT 1 FROM pg_ts_config WHERE cfgname = %s", (config,))
        if await cursor.fetchone() is not None:
            return config
        cursor = await conn.execute(
            "SELECT t.alias, string_agg(quote_ident(d.dictname), ', ' ORDER BY m.mapseqno) "
            "FROM pg_ts_config c JOIN pg_ts_config_map m ON m.mapcfg = c.oid "
            "JOIN ts_token_type(c.cfgparser) t ON t.tokid = m.maptokentype "
            "JOIN pg_ts_dict d ON d.oid = m.mapdict "
            "WHERE c.cfgname = %s AND t.alias = ANY(%s) GROUP BY t.alias",
            (language, list(UNACCENTED)))
        mappings = await cursor.fetchall()
        if not mappings:
            cursor = await conn.execute("SELECT string_agg(cfgname, ', ' ORDER BY cfgname) FROM "
                                        "pg_ts_config WHERE cfgname NOT LIKE 'roomchat\\_%%'")
            known = await cursor.fetchone()
            raise SearchLanguageRefused(
                f"ROOMCHAT_SEARCH_LANGUAGE is {language}, a text search configuration this "
                f"PostgreSQL does not have: use one of {known[0] if known else 'simple'}")
        # ``language`` and ``config`` are LANGUAGE_NAMEs (checked above): safe as identifiers.
        await conn.execute(f"CREATE TEXT SEARCH CONFIGURATION {config} (COPY = {language})")
        for alias, dictionaries in mappings:
            await conn.execute(f"ALTER TEXT SEARCH CONFIGURATION {config} ALTER MAPPING FOR "
                               f"{alias} WITH unaccent, {dictionaries}")
    return config


async def version(conn: AsyncConnection[Any]) -> int:
    """The database's schema version (0: none yet)."""
    cursor = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = await cursor.fetchone()
    if row is None or not row[0]:
        return 0
    cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def migrate(conn: AsyncConnection[Any],
                  migrations: tuple[tuple[int, str], ...] = MIGRATIONS) -> list[int]:
    """Bring the database up to the last of ``migrations``; returns the versions applied.
    ``conn`` must not be in a transaction (each step is one). Raises ``SchemaTooNew`` (nothing
    changed) and whatever psycopg raises for a step that fails (that step left nothing)."""
    latest = migrations[-1][0]
    applied: list[int] = []
    for number, sql in migrations:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
            found = await version(conn)
            if found > latest:
                raise SchemaTooNew(
                    f"the PostgreSQL database's schema is version {found}; this roomchat knows "
                    f"up to {latest}: upgrade roomchat (or point ROOMCHAT_STORE_URL at another "
                    "database)")
            if found >= number:
                continue
            if found == 0:
                await conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
            await conn.execute(sql)
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
            applied.append(number)
    return applied

"""One frozen ``Config`` for the whole server, from defaults, ``ROOMCHAT_*`` environment
variables and command-line flags (in increasing priority).

Every field of ``Config`` and of ``rooms.config.RoomConfig`` is a setting named
``ROOMCHAT_<FIELD>`` in upper case; ``settings_table()`` renders them all for
docs/configuration.md and ``settings_in_effect()`` beside the values in effect
(``roomchat settings``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn, TypeVar, get_type_hints
from urllib.parse import urlsplit

from rooms.config import RoomConfig
from rooms.engines import bus_refusal
from rooms.engines.postgres_schema import LANGUAGE_NAME

_T = TypeVar("_T")

MAX_PILLOW_PIXELS = 178_956_970
"""Pillow refuses an image of more pixels at ``open`` (twice its ``Image.MAX_IMAGE_PIXELS``),
whatever ``max_image_pixels`` says (``files.images.PILLOW_PIXEL_GUARD``; a test checks both)."""


HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"})
JWT_ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS
"""The values ``jwt_algorithm`` takes (``gateway.auth`` verifies and signs with each)."""
MIN_SECRET_CHARS = 32
"""Shortest HMAC secret or API key accepted (``jwt_secret``, ``jwt_keys``, ``api_key``)."""
CLIENT_IP_HEADERS = ("x-forwarded-for", "forwarded")
"""The values ``client_ip_header`` takes (``gateway.limits.forwarded_chain`` reads both)."""
LOG_LEVELS = ("debug", "info", "warning", "error")
"""The values ``--log-level`` / ``ROOMCHAT_LOG_LEVEL`` take (any case)."""
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL", "EXTRA")
"""The values ``store_synchronous`` takes (any case; the SQLite engine's own guard agrees)."""
SHARED_SCHEMES = ("redis", "rediss", "unix")
"""Store URL schemes whose engine every process can share (``--workers`` > 1 needs one)."""
POSTGRES_SCHEMES = ("postgresql", "postgres")
"""Store URL schemes of the PostgreSQL log (one process; many with a ``bus_url``,
docs/design/log-and-bus.md)."""

# The numeric settings' ranges, checked by ``Config._check_numbers`` (the files' settings are
# ``_check_files``'s; every float must also be finite).
_AT_LEAST_ONE = ("workers", "max_connections", "listen_backlog", "max_connections_per_user",
                 "max_connections_per_ip", "handshake_burst", "connection_burst",
                 "user_rate_connections", "user_joins_per_minute", "max_live_rooms",
                 "max_message_bytes", "history_fetch_limit", "drain_batch", "api_burst",
                 "gc_gen0_threshold", "search_concurrency")
_POSITIVE = ("handshake_rate", "connection_rate", "ticket_ttl", "revocation_poll", "api_rate",
             "dev_login_ttl", "gc_thaw_share")
_NOT_NEGATIVE = ("jwt_leeway", "jwt_cache_size", "drain_step", "drain_timeout", "gc_freeze_after",
                 "store_connections")


def _setting(default: _T, help: str) -> _T:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class Config:
    """Gateway settings; ``room`` holds every room limit.

    Ours rather than a settings library's (pydantic-settings, environs): one frozen dataclass
    per package, no dependency, whose fields' help texts generate docs/configuration.md and
    ``roomchat settings``, and whose ``__post_init__`` refuses a bad value in one line naming
    the variable."""

    bind: str = _setting("127.0.0.1:8000", "Address to listen on, HOST:PORT.")
    workers: int = _setting(
        1, "Processes serving the one port (`serve --workers`), restarted if they die; SIGHUP "
           "replaces them one at a time. More than 1 needs a shared store (Redis, or "
           "PostgreSQL with a `bus_url`).")
    data_dir: Path = _setting(Path("./var"),
                              "Where the database and the generated JWT secret live.")
    jwt_secret: str | None = _setting(
        None, "HMAC secret (HS* algorithms), at least 32 characters. Unset: generated once "
              "into DATA_DIR/jwt-secret.")
    jwt_algorithm: str = _setting(
        "HS256", "The only JWT algorithm accepted: HS256/384/512, RS256, ES256 or EdDSA.")
    jwt_public_key_file: Path | None = _setting(
        None, "PEM public key that verifies tokens (RS256/ES256/EdDSA).")
    jwt_private_key_file: Path | None = _setting(
        None, "PEM private key `roomchat token` signs with (RS256/ES256/EdDSA).")
    jwt_keys: tuple[str, ...] = _setting(
        (), "Extra verification keys chosen by a token's `kid` header (key rotation): "
            "comma-separated `kid=secret` (HS*) or `kid=/path/to/public.pem`. Tokens without "
            "`kid` use the main key.")
    jwt_kid: str | None = _setting(
        None, "The `kid` (an entry of `jwt_keys`) `roomchat token` signs with (HS* only).")
    jwt_audience: str = _setting("roomchat", "Required `aud` claim.")
    jwt_issuer: str = _setting("roomchat", "Required `iss` claim.")
    jwt_leeway: float = _setting(10.0, "Seconds of clock skew allowed on `exp`/`iat`.")
    jwt_cache_size: int = _setting(
        4096, "Verified tokens remembered (by their SHA-256) until their `exp`, so a reconnect "
              "with the same token skips the signature check; least recently used dropped "
              "first. Revocations and bans are still checked every time. 0: no cache.")
    allowed_origins: tuple[str, ...] = _setting(
        (), "Comma-separated extra origins allowed to open WebSockets (the server's own "
            "origin always is).")
    max_connections: int = _setting(10_000, "Open WebSockets per process; more get HTTP 503.")
    listen_backlog: int = _setting(
        4096, "Connections the kernel queues before the server accepts them (`listen()` "
              "backlog; capped by net.core.somaxconn). When a reconnect storm overflows it the "
              "kernel drops SYNs, which clients retry only after 1, 3, 7 s.")
    max_connections_per_user: int = _setting(
        20, "Open room sockets of one user (token `sub`) per process; more get HTTP 429 "
            "`too_many_user_connections`.")
    max_connections_per_ip: int = _setting(
        200, "Open room sockets from one client IP per process; more get HTTP 429 "
             "`too_many_ip_connections`.")
    handshake_rate: float = _setting(
        10.0, "Upgrade requests per second from one client IP (refill of its token bucket); "
              "over it: HTTP 429 `too_many_handshakes`.")
    handshake_burst: int = _setting(
        50, "Upgrade requests one client IP may make at once (its bucket's size).")
    connection_rate: float = _setting(
        1000.0, "New connections per second for the whole process (refill of one token bucket "
                "charged by token upgrades, ticket requests and history pages, before the token "
                "is verified; an upgrade with a ticket is not charged again); over it: HTTP 503 "
                "`busy` with a jittered `Retry-After`. Keep it near what one process can "
                "verify: a jittered reconnect storm stays under it, a flood is refused cheaply.")
    connection_burst: int = _setting(
        2_000, "New connections the process takes at once before `connection_rate` applies "
               "(its bucket's size).")
    user_rate_connections: float = _setting(
        3.0, "Frames one user may send across all their sockets in this process, in connections' "
             "worth: a per-user bucket of this times `rate_burst`, refilled at this times "
             "`rate_per_sec`; over it: `rate_limited` errors. At least 1. Pongs are exempt (the "
             "per-connection bucket charges them).")
    user_joins_per_minute: int = _setting(
        60, "Room sockets one user may open per minute (all at once, then one every 60/N s); "
            "more get HTTP 429 `too_many_joins`.")
    max_live_rooms: int = _setting(
        5_000, "Rooms loaded in this process at once (members or not yet idle); a join that "
               "would start another gets HTTP 503 `too_many_rooms`.")
    trusted_proxies: tuple[str, ...] = _setting(
        ("127.0.0.1", "::1"),
        "Comma-separated IPs or CIDRs of reverse proxies whose `client_ip_header` gives the "
        "client IP (for the per-IP caps); from any other peer the header is ignored. Add a proxy "
        "that is not on this host (compose: Caddy's network), or every client looks like it. "
        "Anything on this host that relays TCP to roomchat (socat, `ssh -L`, a layer-4 load "
        "balancer) connects from loopback and inherits this trust: the header its clients send "
        "passes untouched, so each can pick the IP it is counted as. With such a forwarder, "
        "list only your real proxy's address (empty: trust no peer).")
    client_ip_header: str = _setting(
        "x-forwarded-for", "Header a trusted proxy puts the client IP in: `x-forwarded-for` "
                           "(Caddy, nginx) or `forwarded` (RFC 7239). Only the one your proxy "
                           "overwrites: a client can send the other.")
    client_ipv6_prefix: int = _setting(
        64, "Prefix length an IPv6 client is counted by for the per-IP caps "
            "(`max_connections_per_ip`, `handshake_rate`): one subscriber usually holds a /64 "
            "or more and can use any address of it. 128: each address alone; 1 to 128.")
    max_message_bytes: int = _setting(
        65_536, "Largest WebSocket message accepted; larger closes with 1009.")
    ticket_ttl: float = _setting(
        30.0, "Seconds a ticket from `POST /rooms/<room>/ticket` stays valid (single use).")
    history_fetch_limit: int = _setting(
        200, "Most messages one `GET /rooms/<room>/history` answers (a page's `limit` is capped "
             "to it).")
    search_query_max_chars: int = _setting(
        256, "Longest search query (`q` of `GET /rooms/<room>/search` and the API's search), "
             "in characters; longer: HTTP 400 `query_too_long`.")
    search_page_limit: int = _setting(
        50, "Most results one search answers (a page's `limit` is capped to it).")
    search_all_max_matches: int = _setting(
        10_000, "Most messages a search across rooms (`GET /api/v1/search`) may match: each "
                "is read to order them by time (the index's order is not time); a query "
                "matching more: HTTP 400 `query_too_broad` (add words, or search one room).")
    search_concurrency: int = _setting(
        8, "Searches one process runs or has waiting for a search thread at once; one more: "
           "HTTP 503 `search_busy` with `Retry-After: 1`.")
    revocation_poll: float = _setting(
        1.0, "Seconds between checks for `roomchat revoke` (its sockets close within this).")
    drain_batch: int = _setting(
        10_000, "On shutdown, connections closed (1012) per wave: more than this are closed in "
                "waves `drain_step` apart, so clients reconnect in waves, not all at once.")
    drain_step: float = _setting(
        2.0, "Seconds between drain waves (shortened so every wave fits in half of "
             "`drain_timeout`).")
    api_key: str | None = _setting(
        None, "A static key for the server API (`/api/v1`, `Authorization: Bearer <key>`), "
              "compared in constant time; unset: only JWTs with `\"scope\": \"api\"` "
              "(`roomchat token --api`). At least 32 characters.")
    api_rate: float = _setting(
        50.0, "Server API requests per second per credential (refill of its token bucket); "
              "over it: HTTP 429 `rate_limited`.")
    api_burst: int = _setting(100, "Server API requests one credential may make at once.")
    drain_timeout: float = _setting(
        10.0, "Seconds a shutdown waits for sockets to close and rooms to store.")
    store_url: str = _setting(
        "", "Message store: empty for SQLite in DATA_DIR, `sqlite:///path`, "
            "`redis://host:port/db` (Redis with `appendonly yes`, `appendfsync always`; "
            "`redis://node:port/0?cluster=1` for a Redis Cluster, one node as seed: "
            "docs/scaling.md), "
            "`postgresql://user@host/db` (the PostgreSQL log, `pip install 'roomchat[postgres]'`;"
            " one process, or many with `bus_url`), or "
            "`memory://` (not durable: every message is lost on restart; one process).")
    bus_url: str = _setting(
        "", "How processes tell each other about new messages, presence, markers and bans, "
            "beside a PostgreSQL `store_url`: `redis://host:port/db` (any number of processes "
            "serve any room: `--workers` > 1, several hosts; Redis keeps only presence and the "
            "feed, no history), `postgresql://user@host/db` (PostgreSQL's LISTEN/NOTIFY, the "
            "store's server or another: one server to run, for small deployments, "
            "docs/scaling.md) or empty (`local:`: this process only). The Redis store is its "
            "own bus (leave this empty); SQLite and memory serve one process and refuse one.")
    store_connections: int = _setting(
        0, "Connections to a networked store, shared by all rooms; rooms wait for one. 0: the "
           "engine's own, 32 for Redis (a connection is a socket) and 8 for PostgreSQL (a "
           "connection is a server process: with many roomchat processes, their sum must stay "
           "under PostgreSQL's `max_connections`).")
    store_synchronous: str = _setting(
        "FULL", "SQLite `synchronous`: FULL flushes every commit (an acked message survives "
                "power loss), NORMAL only at checkpoints (it survives a crash of the process, "
                "not of the machine); EXTRA is FULL here. Costs: docs/production.md.")
    search_language: str = _setting(
        "simple", "The PostgreSQL log's search language: `simple` (every word as written, as "
                  "on SQLite) or a text search configuration PostgreSQL has (`english`, "
                  "`german`, ...: stemming and stop words); case and Latin accents are ignored "
                  "in every one. Fixed by the first start on a database: another one later is "
                  "refused.")
    store_allow_async_commit: bool = _setting(
        False, "Let the PostgreSQL log start when its sessions' `synchronous_commit` is `off` "
               "or `local`: a message is then acknowledged before it is safe (a PostgreSQL "
               "crash or a failover can lose it). Off: such a start is refused.")
    search_index: bool = _setting(
        True, "Keep the SQLite store's search index (search needs it). Off: it is dropped at "
              "start, appends take ~1.7x less CPU one message a commit and ~3x less in "
              "batches, and search answers 501 `search_unsupported`; on again: rebuilt at "
              "start (~6-12 s per million messages). Redis keeps none either way.")
    files_url: str = _setting(
        "", "Where uploaded files live: empty for `file://DATA_DIR/files`, `file:///path` (a "
            "directory every instance may share: writes are renamed into place) or "
            "`s3://bucket[/prefix][?endpoint=URL&region=NAME]` (the `s3` extra; credentials "
            "from boto3's usual chain: `AWS_ACCESS_KEY_ID`, a profile, a role).")
    max_file_bytes: int = _setting(
        26_214_400, "Largest upload in bytes (25 MiB); a larger one gets HTTP 413 "
                    "`file_too_large` as soon as it passes this, and nothing of it is kept.")
    max_user_storage_bytes: int = _setting(
        1_073_741_824, "Bytes of files one user may have stored, all rooms together (1 GiB); an "
                       "upload past it gets HTTP 413 `quota_exceeded`. At least "
                       "`max_file_bytes`.")
    upload_rate: float = _setting(
        0.2, "Uploads per second per user (refill of their token bucket); over it: HTTP 429 "
             "`too_many_uploads` with `Retry-After`.")
    upload_burst: int = _setting(10, "Uploads one user may make at once (their bucket's size).")
    max_image_pixels: int = _setting(
        50_000_000, "Largest image in pixels, all frames of an animation together; a larger "
                    "one gets HTTP 413 `image_too_large` before it is decoded (decompression "
                    f"bombs). At most {MAX_PILLOW_PIXELS} (Pillow's own guard).")
    image_workers: int = _setting(
        2, "Worker processes that decode and re-encode uploaded images (started on the first "
           "image), each holding one image's pixels in memory (4 bytes a pixel); other "
           "uploads wait their turn.")
    upload_read_rate: float = _setting(
        33_554_432.0, "Bytes a second one process reads of all uploads together (32 MiB/s); "
                      "faster senders wait (TCP backpressure). Bounds the share of the "
                      "process's core that uploads take from its rooms: a 25 MiB upload at full "
                      "speed raised a busy room's p99 (bench/filesp99.py). `0`: no bound.")
    upload_idle_timeout: float = _setting(
        30.0, "Seconds an upload may send nothing before it is dropped (HTTP 408 "
              "`upload_stalled`).")
    file_url_ttl: float = _setting(
        3600.0, "Seconds a signed file URL stays valid, at least (from 600 s on, expiries are "
                "rounded up to the minute so a browser's cache serves repeated views); then "
                "HTTP 403 `url_expired`. Signed with a key derived from the JWT secret: with "
                "RS256/ES256/EdDSA set `ROOMCHAT_JWT_SECRET` too, the same on every instance.")
    file_orphan_ttl: float = _setting(
        86_400.0, "Seconds an upload may wait to be attached to a message before it is deleted "
                  "(checked every quarter of this, 1 s to 1 h; a file can no longer be "
                  "attached in its last minute).")
    file_jobs_limit: int = _setting(
        10_000, "File jobs a process may have waiting after messages were stored (attach a "
                "message's uploads, remove the files of deleted or pruned messages); beyond "
                "it a job is dropped with a warning (an unattached upload is then collected "
                "after `file_orphan_ttl`).")
    max_file_urls: int = _setting(
        100, "File ids one `POST /rooms/<room>/files/urls` may ask signed URLs for.")
    compression: bool = _setting(
        False, "Accept permessage-deflate when clients offer it (costs CPU per recipient).")
    fast_paths: bool = _setting(
        True, "Our replacements for parts of Hypercorn, wsproto and asyncio (direct frame "
              "reads and writes, lean per-connection state, close frames, deflate declined and "
              "bounded), each installed only where the library is the version it was verified "
              "against (docs/upstream.md). `0`: none, Hypercorn's plain ASGI path (more CPU "
              "and memory per connection; permessage-deflate then accepted whenever offered, "
              "unbounded; no dropping of peers that stopped reading).")
    dev_login: bool = _setting(
        False, "Let the page get a short-lived token by name (`POST /api/dev-login`); refused "
               "on a non-loopback bind unless `dev_login_force`.")
    dev_login_force: bool = _setting(False, "Allow `dev_login` on a non-loopback bind.")
    dev_login_ttl: float = _setting(3600.0, "Lifetime of dev-login tokens, seconds.")
    certfile: Path | None = _setting(None, "TLS certificate (PEM); with KEYFILE serves HTTPS/h2.")
    keyfile: Path | None = _setting(None, "TLS private key (PEM).")
    gc_gen0_threshold: int = _setting(
        20_000, "Python's first GC threshold (Python's default: 700). Higher: rarer "
                "collections, and far rarer full ones, which scan every open connection's "
                "objects.")
    gc_freeze_after: int = _setting(
        1000, "Connections opened since the last GC freeze that make the next one: everything "
              "alive then is skipped by every later collection (0: never freeze).")
    gc_thaw_share: float = _setting(
        0.5, "Share of the connections open at the last freeze that, once closed, make the "
             "GC thaw: one full collection frees the cycles they left, then freezes again.")
    log_json: bool = _setting(False, "Log one JSON object per line.")
    log_level: str = _setting("info", "debug, info, warning or error.")
    room: RoomConfig = field(default_factory=RoomConfig)

    def __post_init__(self) -> None:
        """Every check of a gateway setting's value, so a mistake is refused where the settings
        are loaded (every ``roomchat`` command, ``serve --check``), before anything opens.
        Raises ``ValueError``: one line naming the variable, what it takes and what it got.
        Checks needing I/O (key files, TLS files, directories, Redis) are ``gateway.preflight``'s
        and ``gateway.auth``'s. ``load_config`` and ``replace`` run it."""
        self._check_numbers()
        self._check_credentials()
        self._check_network()
        self._check_serving()
        self._check_files()
        for name in ("search_query_max_chars", "search_page_limit", "search_all_max_matches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{env_name(name)} must be at least 1, got {getattr(self, name)}")

    def engine_options(self) -> dict[str, Any]:
        """What every command opening the store passes to ``rooms.engines.open_engine`` besides
        the URL: the settings that decide what the store's own schema holds (the SQLite search
        index, the PostgreSQL search language) or whether it may open at all."""
        return {"search_index": self.search_index, "search_language": self.search_language,
                "allow_async_commit": self.store_allow_async_commit}

    def _check_numbers(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                # NaN passes every comparison below; infinity makes no timer fire.
                _refuse(f.name, "a finite number", value)
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                _refuse(name, "at least 1", getattr(self, name))
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                _refuse(name, "more than 0", getattr(self, name))
        for name in _NOT_NEGATIVE:
            if getattr(self, name) < 0:
                _refuse(name, "0 or more", getattr(self, name))
        if not 1 <= self.client_ipv6_prefix <= 128:
            _refuse("client_ipv6_prefix", "a prefix length from 1 to 128",
                    self.client_ipv6_prefix)

    def _check_credentials(self) -> None:
        if self.jwt_algorithm not in JWT_ALGORITHMS:
            _refuse("jwt_algorithm", f"one of {', '.join(sorted(JWT_ALGORITHMS))}",
                    self.jwt_algorithm)
        for name in ("jwt_secret", "api_key"):
            secret = getattr(self, name)
            if secret is not None and len(secret) < MIN_SECRET_CHARS:
                raise ValueError(f"{env_name(name)} must be at least {MIN_SECRET_CHARS} "
                                 f"characters, got {len(secret)} (make one: "
                                 "python -c 'import secrets; print(secrets.token_urlsafe(48))')")
        kids = set()
        for entry in self.jwt_keys:
            kid, sep, value = entry.partition("=")
            if not sep or not kid or not value:
                raise ValueError(f"{env_name('jwt_keys')} entries must be kid=secret or "
                                 f"kid=/path/to/public.pem, got {kid!r} without one")
            if self.jwt_algorithm in HMAC_ALGORITHMS and len(value) < MIN_SECRET_CHARS:
                raise ValueError(f"{env_name('jwt_keys')}: the secret of {kid!r} must be at "
                                 f"least {MIN_SECRET_CHARS} characters, got {len(value)}")
            kids.add(kid)
        if self.jwt_kid is not None:
            if self.jwt_algorithm in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"{env_name('jwt_kid')} is for HS* keys: with "
                                 f"{self.jwt_algorithm} `roomchat token` signs with "
                                 f"{env_name('jwt_private_key_file')}; unset "
                                 f"{env_name('jwt_kid')}")
            if self.jwt_kid not in kids:
                raise ValueError(f"{env_name('jwt_kid')} {self.jwt_kid!r} is not in "
                                 f"{env_name('jwt_keys')} (kids: "
                                 f"{', '.join(sorted(kids)) or 'none'})")

    def _check_network(self) -> None:
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                _refuse("trusted_proxies", "comma-separated IP addresses or CIDRs "
                        "(e.g. 10.0.0.0/8)", entry)
        if self.client_ip_header.strip().lower() not in CLIENT_IP_HEADERS:
            _refuse("client_ip_header", " or ".join(CLIENT_IP_HEADERS), self.client_ip_header)
        if self.dev_login and not self.dev_login_force and not is_loopback_bind(self.bind):
            raise ValueError(f"dev login is refused on a non-loopback bind ({env_name('dev_login')}"
                             f" with --bind {self.bind}): anyone reaching it could log in as "
                             f"anyone (set {env_name('dev_login_force')}=1 if you really mean it)")
        if (self.certfile is None) != (self.keyfile is None):
            given, missing = (("--certfile", "--keyfile (ROOMCHAT_KEYFILE)")
                              if self.keyfile is None
                              else ("--keyfile", "--certfile (ROOMCHAT_CERTFILE)"))
            raise ValueError(f"{given} without {missing}: TLS needs the certificate and its "
                             "private key (`roomchat dev-cert` makes a pair for localhost)")

    def _check_serving(self) -> None:
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"--log-level {self.log_level!r} ({env_name('log_level')}): use "
                             f"{', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}")
        if not LANGUAGE_NAME.fullmatch(self.search_language):
            _refuse("search_language", "a text search configuration's name (lower-case letters, "
                    "digits, _)", self.search_language)
        if self.store_synchronous.upper() not in SQLITE_SYNCHRONOUS:
            _refuse("store_synchronous", " or ".join(SQLITE_SYNCHRONOUS),
                    self.store_synchronous)
        scheme = store_scheme(self.resolved_store_url)
        if scheme not in ("sqlite", "memory", *SHARED_SCHEMES, *POSTGRES_SCHEMES):
            raise ValueError(f"unknown store URL {redact(self.resolved_store_url)!r} "
                             f"(--store-url / {env_name('store_url')}): use "
                             "sqlite:///path/to/db, redis://host:port/db, "
                             "postgresql://user@host/db or memory://")
        if scheme == "memory" and self.resolved_store_url != "memory://":
            raise ValueError(f"store URL {redact(self.resolved_store_url)!r} "
                             f"(--store-url / {env_name('store_url')}): memory:// takes "
                             "nothing after it")
        if scheme == "memory" and not self.room.history_retention:
            raise ValueError(
                f"{env_name('history_retention')}=0 keeps every message, and memory:// keeps "
                "them in this process's memory: set a number of entries per room (default "
                "100000)")
        refusal = bus_refusal(self.resolved_store_url, self.bus_url)
        if refusal is not None:
            raise ValueError(f"bus URL {redact(self.bus_url)!r} (--bus-url / "
                             f"{env_name('bus_url')}) with store {scheme}://: {refusal}")
        if self.workers > 1 and scheme in POSTGRES_SCHEMES and not self.shared_bus:
            raise ValueError(
                f"--workers {self.workers} with PostgreSQL and no bus between the processes: "
                f"set {env_name('bus_url')}=redis://host:port/db or postgresql://... "
                f"(--bus-url), or run one "
                f"worker ({env_name('workers')}=1)")
        if self.workers > 1 and scheme not in SHARED_SCHEMES and not self.shared_bus:
            raise ValueError(
                f"--workers {self.workers} needs a shared store: each worker is its own "
                f"process, and with {scheme} a room's members would be split between them (set "
                f"--store-url redis://host:port/db, or run one worker: {env_name('workers')}=1)")

    def _check_files(self) -> None:
        def positive(name: str) -> None:
            if not getattr(self, name) > 0:
                raise ValueError(f"{env_name(name)} must be more than 0, "
                                 f"got {getattr(self, name)}")

        for name in ("max_file_bytes", "upload_rate", "upload_burst", "max_image_pixels",
                     "image_workers", "upload_idle_timeout", "file_url_ttl", "file_orphan_ttl",
                     "file_jobs_limit", "max_file_urls"):
            positive(name)
        if self.upload_read_rate < 0:
            raise ValueError(f"{env_name('upload_read_rate')} must be 0 (no bound) or more, "
                             f"got {self.upload_read_rate}")
        if self.max_user_storage_bytes < self.max_file_bytes:
            raise ValueError(f"{env_name('max_user_storage_bytes')} must be at least "
                             f"{env_name('max_file_bytes')} ({self.max_file_bytes}), got "
                             f"{self.max_user_storage_bytes}")
        if self.max_image_pixels > MAX_PILLOW_PIXELS:
            raise ValueError(f"{env_name('max_image_pixels')} must be at most "
                             f"{MAX_PILLOW_PIXELS} (Pillow refuses larger images itself), got "
                             f"{self.max_image_pixels}")
        if self.files_url and not self.files_url.startswith(("file:///", "s3://")):
            raise ValueError(f"{env_name('files_url')} must be file:///path/to/dir or "
                             f"s3://bucket[/prefix], got {self.files_url!r}")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "roomchat.sqlite3"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite://{self.db_path.absolute()}"

    @property
    def shared_bus(self) -> bool:
        """A bus between processes is set (``bus_url``: Redis, or PostgreSQL's
        ``LISTEN/NOTIFY``; checked against the store)."""
        return store_scheme(self.bus_url) in (*SHARED_SCHEMES, *POSTGRES_SCHEMES)

    @property
    def resolved_files_url(self) -> str:
        return self.files_url or (self.data_dir / "files").absolute().as_uri()


def env_name(name: str) -> str:
    return f"ROOMCHAT_{name.upper()}"


def _refuse(name: str, takes: str, got: object) -> NoReturn:
    raise ValueError(f"{env_name(name)} must be {takes}, got {got!r}")


def is_loopback_bind(bind: str) -> bool:
    host = bind.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def store_scheme(url: str) -> str:
    """The store URL's scheme (``""`` without one); ``Config`` refuses all but ``sqlite``,
    ``memory`` and ``SHARED_SCHEMES``."""
    return urlsplit(url).scheme if "://" in url else ""


def redact(url: str) -> str:
    """``url`` without its user and password (safe to print)."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()


_ROOM_SETTING = re.compile(r"\b(" + "|".join(f.name for f in fields(RoomConfig)) + r")\b")


def _room_config(**values: Any) -> RoomConfig:
    """``RoomConfig(**values)``, its ``ValueError`` naming the variables: ``rooms`` knows its
    fields, not the environment."""
    try:
        room = RoomConfig(**values)
    except ValueError as exc:
        raise ValueError(_ROOM_SETTING.sub(lambda m: env_name(m[0]), str(exc))) from None
    return room


def _parse(kind: Any, raw: str, name: str) -> Any:
    if kind is bool:
        value = raw.strip().lower()
        if value in {"1", "true", "yes", "on"}:
            return True
        if value in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"{env_name(name)}: expected true/false, got {raw!r}")
    try:
        if kind is int:
            return int(raw.replace("_", ""))
        if kind is float:
            return float(raw)
    except ValueError:
        raise ValueError(f"{env_name(name)}: expected a number, got {raw!r}") from None
    if kind in (Path, Path | None):
        return Path(raw) if raw else None
    if kind == tuple[str, ...]:
        return tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    if kind in (str | None,):
        return raw or None
    return raw


def _parsed(cls: type, values: Mapping[str, str]) -> dict[str, Any]:
    """The settings of ``cls`` among ``values`` (raw text by field name), parsed."""
    hints = get_type_hints(cls)
    return {f.name: _parse(hints[f.name], values[f.name], f.name)
            for f in fields(cls) if f.name in values and f.name != "room"}


def load_config(env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Defaults, then ``ROOMCHAT_*`` from ``env`` (default ``os.environ``), then ``overrides``
    (flag values; ``None`` means "not given"). Raises ``ValueError`` with the setting's name."""
    env = os.environ if env is None else env
    from_env = {f.name: env[env_name(f.name)]
                for f in (*fields(Config), *fields(RoomConfig)) if env_name(f.name) in env}
    given = {k: v for k, v in overrides.items() if v is not None}
    room_names = {f.name for f in fields(RoomConfig)}
    # One construction each, environment and flags together: a setting checked against another
    # (--workers against the store URL, a certificate against its key) may come from either.
    room = _room_config(**{**_parsed(RoomConfig, from_env),
                                      **{k: v for k, v in given.items() if k in room_names}})
    return Config(**{**_parsed(Config, from_env),
                     **{k: v for k, v in given.items() if k not in room_names}}, room=room)


def settings_table() -> str:
    """The settings table of docs/configuration.md (Markdown), generated from the dataclasses."""
    rows = ["| environment variable | default | meaning |", "|---|---|---|"]
    for obj in (Config(), RoomConfig()):
        for f in fields(obj):
            if f.name == "room":
                continue
            default = getattr(obj, f.name)
            if isinstance(default, tuple):
                default = ",".join(default) or "(none)"
            shown = "(unset)" if default is None else f"`{default}`"
            rows.append(f"| `{env_name(f.name)}` | {shown} | {f.metadata['help']} |")
    return "\n".join(rows)


SECRET_SETTINGS = frozenset({"jwt_secret", "api_key", "jwt_keys"})
"""Settings whose values are never printed (``roomchat settings`` shows only that they are set)."""


def _shown(name: str, value: Any) -> str:
    if value is None:
        return "(unset)"
    if name in SECRET_SETTINGS:
        if name == "jwt_keys":  # kid=secret: the kids are safe to show, the secrets are not
            return ",".join(f"{entry.partition('=')[0]}=***" for entry in value) or "(none)"
        return "(set, hidden)"
    if isinstance(value, tuple):
        return ",".join(value) or "(none)"
    return str(value) if value != "" else "(empty)"


@dataclass(frozen=True, slots=True)
class SettingInEffect:
    """One row of ``roomchat settings``: the value in effect, the default, and where it came
    from (``"default"``, ``"env"`` or ``"flag"``). Secret values are already hidden."""

    env: str
    value: str
    default: str
    source: str


def settings_in_effect(config: Config, env: Mapping[str, str] | None = None,
                       flags: frozenset[str] = frozenset()) -> list[SettingInEffect]:
    """Every setting of ``config`` (as built by ``load_config(env, **flags)``) beside its
    default; ``flags`` names the settings a command-line flag set."""
    env = os.environ if env is None else env
    rows = []
    for obj, default_obj in ((config, Config()), (config.room, RoomConfig())):
        for f in fields(obj):
            if f.name == "room":
                continue
            source = ("flag" if f.name in flags
                      else "env" if env_name(f.name) in env else "default")
            rows.append(SettingInEffect(env_name(f.name), _shown(f.name, getattr(obj, f.name)),
                                        _shown(f.name, getattr(default_obj, f.name)), source))
    return rows


__all__ = ["Config", "RoomConfig", "SettingInEffect", "dataclasses", "env_name", "load_config",
           "settings_in_effect", "settings_table"]

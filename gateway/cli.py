"""``roomchat serve | token | revoke | erase | export | import | backup | restore | settings``: the
command line (a stable interface)."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.auth import API_SCOPE, make_issuer, parse_ttl
from gateway.config import (
    HMAC_ALGORITHMS,
    LOG_LEVELS,
    Config,
    RoomConfig,
    env_name,
    load_config,
    settings_in_effect,
    settings_table,
)
from gateway.logs import setup_logging
from rooms.text import MAX_USER_CHARS, unsafe_text

# ROOMCHAT_* variables that are not settings of the server but are read by its tests and tools
# (tests/support.py, tests/chaos, infra/compose.yaml, infra/Caddyfile, scripts/): no warning.
_TOOL_VARIABLES = frozenset({"ROOMCHAT_TLS", "ROOMCHAT_DOMAIN", "ROOMCHAT_UPSTREAMS",
                             "ROOMCHAT_IMAGE", "ROOMCHAT_REDIS_IMAGE", "ROOMCHAT_HTTP_PORT",
                             "ROOMCHAT_HTTPS_PORT"})
_TOOL_PREFIXES = ("ROOMCHAT_TEST_", "ROOMCHAT_SOAK_", "ROOMCHAT_CHAOS_", "ROOMCHAT_CADDY_",
                  "ROOMCHAT_PUBLISH_")
_TTL_WITHOUT_UNIT = re.compile(r"\s*\d+(?:\.\d+)?\s*")
# Flags other servers take for what --bind says (`roomchat serve --port 9000`).
_BIND_LOOKALIKES = frozenset({"--port", "-p", "--host", "-H", "--listen", "--address"})
# The serve flags that are settings (flag name = Config field name); `settings` takes them too.
_CONFIG_FLAGS = ("bind", "workers", "data_dir", "store_url", "bus_url", "certfile", "keyfile",
                 "dev_login", "compression", "log_json", "log_level")
ERASE_TIMEOUT = 300.0
"""Seconds `erase` waits for the server's answer (it walks every stored message once)."""
ERASE_TOKEN_TTL = 600.0
"""Lifetime of the service credential `erase` mints for its one request, seconds."""
ERASE_TOKEN_USER = "roomchat-erase"
"""The `sub` of that credential (what the server's logs and rate buckets see)."""


def _version() -> str:
    try:
        return version("roomchat")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", help="HOST:PORT to listen on (default 127.0.0.1:8000)")
    parser.add_argument("--workers", type=int, help="processes serving the port (default 1; "
                        "more than 1 needs a Redis store or bus); SIGHUP replaces them one at a "
                        "time")
    parser.add_argument("--data-dir", type=Path, help="data directory (default ./var)")
    parser.add_argument("--store-url", help="sqlite:///path, redis://host:port/db or "
                        "postgresql://user@host/db (default: SQLite in the data directory)")
    parser.add_argument("--bus-url", help="redis://host:port/db beside a postgresql:// store: "
                        "many processes share its rooms (default: this process only)")
    parser.add_argument("--certfile", type=Path, help="TLS certificate (PEM): serve HTTPS + h2")
    parser.add_argument("--keyfile", type=Path, help="TLS private key (PEM)")
    parser.add_argument("--dev-login", action="store_true", default=None,
                        help="let the page get a short-lived token by name (loopback only)")
    parser.add_argument("--compression", action="store_true", default=None,
                        help="accept permessage-deflate (off by default: CPU per recipient)")
    parser.add_argument("--log-json", action="store_true", default=None,
                        help="log one JSON object per line")
    parser.add_argument("--log-level", help=", ".join(LOG_LEVELS[:-1]) + f" or {LOG_LEVELS[-1]}")


def _config_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in _CONFIG_FLAGS}


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each command's parser by name (for the hints on unknown
    arguments)."""
    parser = argparse.ArgumentParser(
        prog="roomchat", description="Real-time chat rooms. Every setting also has a "
        "ROOMCHAT_<NAME> environment variable (see `roomchat settings`).")
    sub = parser.add_subparsers(dest="command", required=True)

    parser.add_argument("--version", action="version", version=f"roomchat {_version()}")
    serve = sub.add_parser("serve", help="run the server")
    _add_config_flags(serve)
    serve.add_argument("--check", action="store_true",
                       help="check everything a start checks (settings, keys, data directory, "
                       "store, TLS files, the bind) and exit: 0 if it would start")
    # Internal: how the supervisor starts a worker (listening fd, control socket fd).
    serve.add_argument("--worker-fds", help=argparse.SUPPRESS)

    token = sub.add_parser("token", help="print a signed JWT")
    token.add_argument("--user", help="user id (the `sub` claim; required but with --api, "
                       "where it defaults to `api`)")
    token.add_argument("--name", help="display name (default: the user id)")
    token.add_argument("--room", action="append", default=[], help="a room it may join "
                       "(repeatable)")
    token.add_argument("--all-rooms", action="store_true", help="any room (rooms: [\"*\"])")
    token.add_argument("--admin", action="store_true", help="add the admin claim")
    token.add_argument("--moderator", action="store_true", help="moderates every room it may "
                       "join: deletes messages and bans users from the page (\"moderator\": "
                       "true)")
    token.add_argument("--mod", action="append", default=[], metavar="ROOM",
                       help="a room it moderates (repeatable; the \"mod\" claim)")
    token.add_argument("--api", action="store_true",
                       help="a service credential for /api/v1 (\"scope\": \"api\"; all rooms "
                       "unless --room); it cannot open a chat socket")
    token.add_argument("--ttl", default="1h", help="lifetime with its unit: 90s, 15m, 1h, 7d "
                       "(default 1h)")
    token.add_argument("--data-dir", type=Path, help="data directory (for the generated secret)")
    token.add_argument("--link", metavar="BASE_URL",
                       help="print BASE_URL/rooms/<first room>#token=<jwt> instead "
                       "(BASE_URL/admin#token=<jwt> for --admin without --room)")

    cert = sub.add_parser("dev-cert", help="create a local CA and a localhost certificate")
    cert.add_argument("--data-dir", type=Path, help="data directory (default ./var)")

    revoke = sub.add_parser(
        "revoke", help="close every connection of a user, on every process, and refuse their "
        "tokens issued before now (run beside the server: same data dir or store URL)")
    revoke.add_argument("--user", required=True, help="the user id (the tokens' `sub`)")
    revoke.add_argument("--data-dir", type=Path, help="data directory (default ./var)")
    revoke.add_argument("--store-url", help="the server's store URL (default: its SQLite)")

    erase = sub.add_parser(
        "erase", help="erasure request: every message of a user, in every room, becomes a "
        "tombstone (with the texts of their edits, their reactions and the excerpts of their "
        "messages quoted in replies), and members online see the deletes (asks the running "
        "server)")
    erase.add_argument("--user", required=True, help="the user id (the tokens' `sub`)")
    erase.add_argument("--url", metavar="BASE_URL",
                       help="the running server's base URL (default: from ROOMCHAT_BIND, "
                       "https with ROOMCHAT_CERTFILE)")
    erase.add_argument("--data-dir", type=Path,
                       help="data directory (default ./var): the keys to sign the request")
    erase.add_argument("--store-url", help="the server's store URL (with --offline)")
    erase.add_argument("--compact", action="store_true",
                       help="PostgreSQL log only: then rewrite the partitions of the rooms "
                       "erased in (VACUUM FULL), CHECKPOINT and switch the WAL, so no byte of "
                       "the texts stays in their files (a maintenance step: appends to those "
                       "rooms wait while their partition is rewritten)")
    erase.add_argument("--offline", action="store_true",
                       help="erase in the store directly, without a server (on SQLite, members "
                       "online are not told; on Redis, every process is)")

    export = sub.add_parser("export", help="print rooms' stored logs as NDJSON (a section "
                            "per room: a header line, one wire object per entry, oldest first: "
                            "messages in their current state and the changes to them, an end "
                            "line); `roomchat import` reads it")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--room", help="the room")
    which.add_argument("--all-rooms", action="store_true", help="every room with a log")
    export.add_argument("--after", type=int, default=0, help="only entries with a higher seq")
    export.add_argument("--data-dir", type=Path, help="data directory (default ./var)")
    export.add_argument("--store-url", help="the server's store URL (default: its SQLite)")

    imp = sub.add_parser("import", help="write what `roomchat export` wrote into a store (SQLite "
                         "or Redis), every seq kept (stop the servers on it first)")
    imp.add_argument("file", type=Path, help="the export (NDJSON)")
    imp.add_argument("--room", help="only this room of the file")
    imp.add_argument("--skip-existing", action="store_true",
                     help="skip rooms that already have entries in the store (without it, "
                     "one such room refuses the whole import)")
    imp.add_argument("--data-dir", type=Path, help="data directory (default ./var)")
    imp.add_argument("--store-url", help="the store to write into (default: the SQLite in the "
                     "data directory, created if missing)")

    backup = sub.add_parser("backup", help="copy the embedded store consistently while the "
                            "server runs (SQLite online backup)")
    backup.add_argument("--to", required=True, type=Path, help="the new backup file")
    backup.add_argument("--data-dir", type=Path, help="data directory (default ./var)")

    restore = sub.add_parser("restore", help="check a backup and put it in place of the "
                             "embedded store (stop the server first)")
    restore.add_argument("--from", dest="source", required=True, type=Path,
                         help="the backup file")
    restore.add_argument("--data-dir", type=Path, help="data directory (default ./var)")
    restore.add_argument("--force", action="store_true",
                         help="replace an existing database")

    settings = sub.add_parser(
        "settings", help="print every setting's value in effect (environment and these flags "
        "applied) beside its default; --markdown: the table of docs/configuration.md")
    settings.add_argument("--markdown", action="store_true",
                          help="print the defaults as docs/configuration.md's Markdown table")
    _add_config_flags(settings)
    return parser, dict(sub.choices)


def warn_unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One warning line for each ``ROOMCHAT_*`` variable of ``env`` that is no setting (nor one
    the tests and tools read), suggesting the closest setting's name."""
    known = [env_name(f.name) for f in (*fields(Config), *fields(RoomConfig)) if f.name != "room"]
    lines = []
    for name in sorted(env):
        if (not name.startswith("ROOMCHAT_") or name in known or name in _TOOL_VARIABLES
                or name.startswith(_TOOL_PREFIXES)):
            continue
        # Compared without the common prefix, which would make every name look close.
        close = difflib.get_close_matches(name.removeprefix("ROOMCHAT_"),
                                          [k.removeprefix("ROOMCHAT_") for k in known], n=1)
        hint = (f" (did you mean ROOMCHAT_{close[0]}?)" if close
                else " (`roomchat settings` lists them)")
        lines.append(f"roomchat: warning: {name} is not a setting and is ignored{hint}")
    return lines


def unknown_arguments(command: str, options: Sequence[str], extra: Sequence[str]) -> str:
    """The one line for arguments ``command`` does not take (``extra``, as argparse left them),
    saying what to give instead: ``--bind`` for the usual port and host flags, else the
    closest of ``options`` or where the list is."""
    flag, _, value = extra[0].partition("=")
    if flag in _BIND_LOOKALIKES and "--bind" in options:
        value = value or (extra[1] if len(extra) > 1 else "")
        example = (f"127.0.0.1:{value}" if value.isdigit() else f"{value}:8000" if value
                   else "127.0.0.1:8000")
        return f"{command} has no {flag}: use --bind HOST:PORT, e.g. --bind {example}"
    close = difflib.get_close_matches(flag, options, n=1) if flag.startswith("-") else []
    hint = (f"did you mean {close[0]}?" if close
            else f"`roomchat {command} --help` lists what it takes")
    return f"{command}: unrecognized argument{'s' if len(extra) > 1 else ''}: " \
           f"{' '.join(extra)} ({hint})"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse would print the top-level usage and a bare "unrecognized arguments"
        # argparse lists a parser's flags only in this attribute (unchanged since 2.7).
        options = list(commands[args.command]._option_string_actions)
        print(f"roomchat: {unknown_arguments(args.command, options, extra)}", file=sys.stderr)
        return 2
    for line in warn_unknown_variables(os.environ):
        print(line, file=sys.stderr)
    try:
        if args.command == "settings":
            return _settings(args)
        if args.command == "token":
            return _token(args)
        if args.command == "revoke":
            return _revoke(args)
        if args.command == "erase":
            return _erase(args)
        if args.command in ("export", "backup", "restore", "import"):
            return _data(args)
        if args.command == "dev-cert":
            from gateway.tls import make_dev_cert

            print(make_dev_cert(load_config(data_dir=args.data_dir).data_dir).instructions())
            return 0
        return _serve(args, argv)
    except ValueError as exc:  # bad settings and every preflight StartupError: one line
        print(f"roomchat: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace, argv: list[str]) -> int:
    config = load_config(**_config_flags(args))  # every setting's value checked here
    setup_logging(config.log_level, config.log_json)
    if args.worker_fds:
        from gateway.supervisor import run_worker

        listen_fd, control_fd = (int(fd) for fd in args.worker_fds.split(","))
        run_worker(config, listen_fd, control_fd)
        return 0
    from gateway.config import redact
    from gateway.preflight import preflight

    sock = preflight(config)
    if args.check:
        sock.close()
        from gateway.app import create_app

        create_app(config)  # what the app checks as it is built: keys, dev login, limits
        bus = f", bus {redact(config.bus_url)}" if config.bus_url else ""
        print(f"roomchat: ready to serve on {config.bind} (store "
              f"{redact(config.resolved_store_url)}{bus})")
        return 0
    if config.workers > 1:
        from gateway.supervisor import Supervisor

        return Supervisor(config, sock, argv).run()
    from gateway.server import run

    run(config, fd=sock.detach())
    return 0


def _settings(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_table())
        return 0
    flags = _config_flags(args)
    config = load_config(**flags)
    rows = settings_in_effect(config, os.environ,
                              frozenset(k for k, v in flags.items() if v is not None))
    header = ("setting", "in effect", "default", "from")
    table = [header, *((r.env, r.value, r.default, r.source) for r in rows)]
    # The long values (trusted proxies...) would push every column right: cap the widths.
    widths = [min(40, max(len(row[i]) for row in table)) for i in range(3)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]).rstrip())
    return 0


def _user_id(user: str) -> str:
    """``--user`` checked as a user id (a token's ``sub``): 1 to ``MAX_USER_CHARS`` characters,
    no control character or lone surrogate (``rooms.text.unsafe_text``). Raises ``ValueError``
    (one line): call it before anything is opened or created."""
    if not 1 <= len(user) <= MAX_USER_CHARS:
        raise ValueError(f"--user must be 1 to {MAX_USER_CHARS} characters")
    problem = unsafe_text(user)
    if problem is not None:
        # repr(): the line shows the offending character escaped, never raw on the terminal.
        raise ValueError(f"--user {user!r} contains {problem}: no user id does")
    return user


def _existing_store(config: Config) -> str:
    """The store URL a command that changes stored data opens. An embedded (SQLite) store must
    already exist: opening would create an empty database, and a mistyped ``--data-dir`` would
    then look "done" while the server's store was never touched. Raises ``ValueError``."""
    from rooms.engine import is_shared_url

    url = config.resolved_store_url
    if url.startswith("memory://"):
        raise ValueError("the store is memory://: its messages live only inside the running "
                         "server, so no other command can reach them")
    if not is_shared_url(url) and url.startswith("sqlite://") and \
            not Path(url.removeprefix("sqlite://")).exists():
        raise ValueError(f"no database at {url.removeprefix('sqlite://')}: give the "
                         "server's --data-dir or --store-url")
    return url


def _revoke(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from rooms.engines import open_engine
    from rooms.errors import StoreError

    user = _user_id(args.user)
    config = load_config(data_dir=args.data_dir, store_url=args.store_url)
    setup_logging("warning", False)
    url = _existing_store(config)

    async def record() -> None:
        # The server's setting: opening with another would build or drop the index.
        engine = await open_engine(url, **config.engine_options())
        try:
            await engine.revoke(user, time.time())
        finally:
            await engine.close()

    try:
        asyncio.run(record())
    except StoreError as exc:
        raise ValueError(f"cannot record the revocation: {exc}") from None
    print(f"revoked {user!r}: their connections close within "
          f"{config.revocation_poll:g} s; tokens issued before now are refused")
    return 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _erase(args: argparse.Namespace) -> int:
    """``erase --user U``: through the running server's ``POST /api/v1/users/U/erase`` (the
    server tells its live rooms, the engine the other processes), or with ``--offline`` in the
    store directly."""
    _user_id(args.user)
    config = load_config(data_dir=args.data_dir, store_url=args.store_url)
    setup_logging("warning", False)
    if args.offline and args.url:
        raise ValueError("give --url or --offline, not both")
    from rooms.engines import POSTGRES_SCHEMES

    if args.compact and not config.resolved_store_url.startswith(POSTGRES_SCHEMES):
        raise ValueError("--compact is for the PostgreSQL log (ROOMCHAT_STORE_URL="
                         "postgresql://...): SQLite's erasure overwrites in place "
                         "(secure_delete) and Redis's rewrites its streams")
    erased = (_erase_offline(config, args.user) if args.offline
              else _erase_online(config, args.user, args.url))
    if erased is None:
        return 1
    count = sum(map(len, erased.values()))
    print(f"erased {_plural(count, 'message')} of {args.user} in "
          f"{_plural(len(erased), 'room')}")
    if args.compact:
        partitions = _compact(config, list(erased))
        print(f"compacted {_plural(len(partitions), 'partition')} of the PostgreSQL log"
              f"{': ' + ', '.join(partitions) if partitions else ''}")
    return 0


def _compact(config: Config, rooms: list[str]) -> list[str]:
    """``PostgresLog.compact`` of ``rooms`` on the configured store: the partitions
    rewritten. Raises ``ValueError`` with PostgreSQL's one line."""
    import asyncio

    from rooms.engines.postgres import PostgresLog
    from rooms.errors import StoreError

    async def run() -> list[str]:
        log = await PostgresLog.open(config.resolved_store_url, max_connections=1,
                                     timeout=config.room.store_timeout,
                                     search_language=config.search_language,
                                     allow_async_commit=config.store_allow_async_commit)
        try:
            return await log.compact(rooms)
        finally:
            await log.close()

    try:
        return asyncio.run(run())
    except StoreError as exc:
        raise ValueError(f"cannot compact the PostgreSQL log: {exc}") from None


def _erase_offline(config: Config, user: str) -> dict[str, list[int]]:
    import asyncio

    from rooms.engine import is_shared_url
    from rooms.engines import open_engine
    from rooms.errors import StoreError

    url = _existing_store(config)
    shared = is_shared_url(url)

    async def run() -> dict[str, list[int]]:
        # The server's setting: opening with another would build or drop the index.
        engine = await open_engine(url, **config.engine_options())
        try:
            return await engine.erase(user)
        finally:
            await engine.close()

    try:
        erased = asyncio.run(run())
    except StoreError as exc:
        raise ValueError(f"cannot erase in the store: {exc}") from None
    if not shared and erased:
        print("roomchat: erased in the store directly: members online (if a server runs on "
              "it) were not told; they see the tombstones when they next load the history",
              file=sys.stderr)
    return erased


def _erase_online(config: Config, user: str, url: str | None) -> dict[str, list[int]] | None:
    """What the server erased; ``None`` (after one line on stderr) when it failed on its side.
    Raises ``ValueError`` for what the operator can fix."""
    import json
    import ssl
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    if url is None:
        host, _, port = config.bind.rpartition(":")
        if host in ("", "0.0.0.0", "::", "[::]"):  # listening everywhere: ask over loopback
            host = "127.0.0.1"
        url = f"{'https' if config.certfile else 'http'}://{host}:{port}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url {url!r}: give the server's base URL with its scheme, e.g. "
                         "http://127.0.0.1:8000")
    base = url.rstrip("/")
    request = urllib.request.Request(f"{base}/api/v1/users/{quote(user, safe='')}/erase",
                                     data=b"", method="POST")
    request.add_header("Authorization", f"Bearer {_service_credential(config)}")
    context = None
    if parts.scheme == "https":
        context = ssl.create_default_context()
        dev_ca = config.data_dir / "tls" / "ca.pem"  # roomchat dev-cert's CA, if in use
        if dev_ca.exists():
            context.load_verify_locations(dev_ca)
    try:
        with urllib.request.urlopen(request, timeout=ERASE_TIMEOUT, context=context) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            refusal = json.loads(exc.read())
            reason = f"{exc.code} {refusal['error']}: {refusal['detail']}"
        except (ValueError, KeyError, TypeError):
            reason = f"{exc.code} {exc.reason}"
        if exc.code >= 500:
            print(f"roomchat: the server at {base} could not erase ({reason}); nothing or "
                  "part of it was erased: run the command again", file=sys.stderr)
            return None
        raise ValueError(f"the server at {base} refused: {reason}") from None
    except TimeoutError:
        print(f"roomchat: no answer from {base} within {ERASE_TIMEOUT:g} s; the erasure may "
              "still be running: run the command again to finish it", file=sys.stderr)
        return None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise ValueError(f"no server answered at {base} ({why}): start it, give its --url, or "
                         "--offline to erase in the store directly (on SQLite, members online "
                         "are then not told)") from None
    return {str(room): [int(seq) for seq in seqs] for room, seqs in body["rooms"].items()}


def _service_credential(config: Config) -> str:
    """``ROOMCHAT_API_KEY`` if set, else a short-lived ``scope: api`` JWT signed with the same
    keys as ``roomchat token --api``. Never creates a secret: one made here would be one the
    server does not know."""
    if config.api_key:
        return config.api_key
    if (config.jwt_algorithm in HMAC_ALGORITHMS and not config.jwt_secret
            and not (config.data_dir / "jwt-secret").exists()):
        raise ValueError(f"no JWT secret in {config.data_dir.absolute()}: give the server's "
                         "--data-dir (or set ROOMCHAT_JWT_SECRET or ROOMCHAT_API_KEY as it has)")
    return make_issuer(config).issue(ERASE_TOKEN_USER, rooms=["*"], ttl=ERASE_TOKEN_TTL,
                                     scope=API_SCOPE)


def _data(args: argparse.Namespace) -> int:
    """``export``, ``import``, ``backup`` and ``restore`` (gateway.backup, gateway.importer);
    each shows its progress on a terminal (gateway.progress)."""
    import asyncio

    from gateway import backup
    from gateway.progress import progress
    from rooms.errors import StoreError

    config = load_config(data_dir=args.data_dir, store_url=getattr(args, "store_url", None))
    setup_logging("warning", False)
    if args.command == "import":
        return _import(args, config)
    if args.command == "export":
        rooms = None if args.all_rooms else [args.room]
        try:
            with progress("export", unit="seq") as bar:
                done = asyncio.run(backup.export(config, rooms, args.after, sys.stdout.write,
                                                 bar.advance, bar.total))
        except StoreError as exc:
            raise ValueError(f"cannot read the store: {exc}") from None
        where = f"of {args.room!r}" if args.room else f"of {_plural(done.rooms, 'room')}"
        print(f"exported {_plural(done.messages, 'message')} and "
              f"{_plural(done.changes, 'change')} {where}", file=sys.stderr)
    elif args.command == "backup":
        with progress("backup", unit="page") as bar:
            contents = backup.backup(config, args.to, bar.advance, bar.total)
        print(f"backed up {contents} to {args.to}")
    else:
        size = args.source.stat().st_size if args.source.is_file() else None
        with progress("restore", total=size, unit="B", scale=True) as bar:
            contents = backup.restore(config, args.source, force=args.force,
                                      advance=bar.advance)
        print(f"restored {contents} into {config.db_path}")
    return 0


def _import(args: argparse.Namespace, config: Config) -> int:
    """``import FILE``: gateway.importer into the store the flags name (created if SQLite)."""
    import asyncio

    from gateway.importer import import_export
    from gateway.progress import progress
    from rooms.engines import open_engine
    from rooms.errors import RoomNotEmpty, StoreError

    url = config.resolved_store_url
    if url.startswith("memory://"):
        raise ValueError("import: the store is memory://, which keeps nothing after the "
                         "process ends: give --store-url sqlite:///path or redis://...")
    if not args.file.is_file():
        raise ValueError(f"import: {args.file} does not exist")

    async def run() -> Any:
        engine = await open_engine(url, **config.engine_options())
        try:
            with progress("check", total=args.file.stat().st_size, unit="B",
                          scale=True) as check, progress("import", unit="entry") as write:
                return await import_export(
                    args.file, engine, room=args.room,  # type: ignore[arg-type]
                    skip_existing=args.skip_existing,
                    dedup_window=config.room.dedup_window,
                    max_text_chars=config.room.max_text_chars,
                    checking=check.advance, writing=write.advance, counted=write.total)
        finally:
            await engine.close()

    try:
        done = asyncio.run(run())
    except RoomNotEmpty as exc:
        raise ValueError(f"import: {exc}") from None
    except StoreError as exc:
        raise ValueError(f"import: cannot write the store: {exc}; run the command again (a "
                         "room half written is redone)") from None
    except OSError as exc:
        raise ValueError(f"import: cannot read {args.file}: {exc}") from None
    entries = sum(done.rooms.values())
    print(f"imported {entries} entr{'y' if entries == 1 else 'ies'} of "
          f"{_plural(len(done.rooms), 'room')} into {_redacted(url)}, every seq kept"
          + (f"; skipped (they had entries): {', '.join(done.skipped)}" if done.skipped
             else ""))
    if done.new_epoch:
        print(f"roomchat: the store's epoch is not the export's for {', '.join(done.new_epoch)}"
              ": their clients' resumes start with a fresh history (nothing is lost)",
              file=sys.stderr)
    return 0


def _redacted(url: str) -> str:
    from gateway.config import redact

    return redact(url)


def _token(args: argparse.Namespace) -> int:
    if args.api:
        args.user = args.user or "api"
        args.all_rooms = args.all_rooms or not args.room
    if not args.user:
        raise ValueError("give --user")
    if not args.room and not args.all_rooms:
        raise ValueError("give at least one --room, or --all-rooms")
    if args.link and not args.room and not args.admin:
        raise ValueError("--link needs a --room to link to")
    if args.api and (args.moderator or args.mod):
        raise ValueError("an API credential moderates through /api/v1: drop --moderator/--mod")
    if args.link:
        parts = urlsplit(args.link)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--link {args.link!r}: give the server's base URL with its "
                             "scheme, e.g. http://127.0.0.1:8000 or https://chat.example.com")
    if _TTL_WITHOUT_UNIT.fullmatch(args.ttl):  # seconds? minutes? say which
        raise ValueError(f"--ttl {args.ttl!r} has no unit: use e.g. 90s, 15m, 1h or 7d")
    ttl = parse_ttl(args.ttl)  # before the issuer: a refused command creates no secret
    config = load_config(data_dir=args.data_dir)
    setup_logging("warning", False)
    rooms = ["*"] if args.all_rooms else list(dict.fromkeys(args.room))
    secret_file = config.data_dir / "jwt-secret"
    generates_secret = (config.jwt_algorithm in HMAC_ALGORITHMS and not config.jwt_secret
                        and not secret_file.exists())
    token = make_issuer(config).issue(args.user, name=args.name, rooms=rooms,
                                      ttl=ttl, admin=args.admin,
                                      scope=API_SCOPE if args.api else None,
                                      moderator=args.moderator,
                                      mod=list(dict.fromkeys(args.mod)))
    if generates_secret:
        print(f"roomchat: no secret in {config.data_dir.absolute()}: created one; a running "
              "server with another data dir will refuse these tokens", file=sys.stderr)
    if args.link:
        path = f"rooms/{args.room[0]}" if args.room else "admin"
        print(f"{args.link.rstrip('/')}/{path}#token={token}")
    else:
        print(token)
    return 0

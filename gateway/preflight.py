"""Start-up checks run by ``roomchat serve`` before Hypercorn starts: each mistake (bad bind, port
in use, unusable data directory, unknown or unusable store URL, Redis unreachable, files store
not writable or its bucket unreachable, TLS files that are missing, unreadable, not PEM,
encrypted or not a pair) becomes one ``StartupError`` whose
message is the single line the CLI prints, instead of a traceback.

``preflight()`` also binds the listening socket: that is where bind mistakes show up, and the
bound socket is what the server (or every worker of ``--workers N``) then serves on.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from hypercorn.config import Config as HyperConfig

from gateway.config import POSTGRES_SCHEMES, SHARED_SCHEMES, Config, redact, store_scheme

REDIS_PING_TIMEOUT = 3.0


class StartupError(ValueError):
    """The server cannot start as configured; ``str()`` is one line saying why and what to do.

    A ``ValueError`` so the CLI's existing handler prints it like any bad setting (exit 2).
    """


def preflight(config: Config) -> socket.socket:
    """Check everything a start-up commonly gets wrong; return the bound, listening socket.

    The caller owns the socket (hand its fd to Hypercorn, or share it with workers). Raises
    ``StartupError``; nothing is left open when it does.
    """
    scheme = store_scheme(config.resolved_store_url)  # Config: known, shared for --workers
    redis_bus = config.shared_bus and store_scheme(config.bus_url) in SHARED_SCHEMES
    if scheme in SHARED_SCHEMES or redis_bus:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise StartupError(f"the Redis {'store' if scheme in SHARED_SCHEMES else 'bus'} "
                               "needs the redis package: pip install 'roomchat[redis]'") from None
    if scheme in POSTGRES_SCHEMES:
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            raise StartupError("the PostgreSQL log needs psycopg: "
                               "pip install 'roomchat[postgres]'") from None
    check_tls(config.certfile, config.keyfile)
    for path, purpose in _needed_dirs(config):
        check_dir(path, purpose)
    if scheme in SHARED_SCHEMES:
        asyncio.run(ping_redis(config.resolved_store_url))
    if scheme in POSTGRES_SCHEMES:
        asyncio.run(check_postgres(config.resolved_store_url, config.room.store_timeout,
                                   search_language=config.search_language,
                                   allow_async_commit=config.store_allow_async_commit))
    if redis_bus:
        asyncio.run(ping_redis(config.bus_url, setting="--bus-url / ROOMCHAT_BUS_URL"))
    elif config.shared_bus:
        asyncio.run(check_notify_bus(config.bus_url, config.room.store_timeout))
    asyncio.run(check_files(config))
    return bind_socket(config.bind, config.listen_backlog)


async def check_files(config: Config) -> None:
    """Open and close the files' blob store as the server will (``ROOMCHAT_FILES_URL``): a
    directory that cannot be written, a bucket that cannot be read or a missing boto3 is one
    line here, not a traceback from Hypercorn's start-up."""
    from files.blobstore import open_blobstore
    from files.errors import BlobStoreError

    shown = redact(config.resolved_files_url)
    try:
        store = await open_blobstore(config.resolved_files_url,
                                     spool=config.data_dir / "files-spool")
    except (ValueError, BlobStoreError) as exc:
        raise StartupError(f"files store {shown} (ROOMCHAT_FILES_URL): {exc}") from None
    await store.close()


def _needed_dirs(config: Config) -> list[tuple[Path, str]]:
    dirs: list[tuple[Path, str]] = []
    if not config.jwt_secret and config.jwt_algorithm.upper().startswith("HS"):
        dirs.append((config.data_dir, "the generated JWT secret"))
    url = config.resolved_store_url
    if url.startswith("sqlite://"):
        dirs.append((Path(url.removeprefix("sqlite://")).parent, "the SQLite database"))
    return dirs


def check_dir(path: Path, purpose: str) -> None:
    """Make sure ``path`` is (or can be made) a writable directory, as the server will need."""
    shown = f"{path} (for {purpose}; --data-dir / ROOMCHAT_DATA_DIR)"
    if path.exists() and not path.is_dir():
        raise StartupError(f"data directory {shown} is not a directory")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # the secret and database live here
    except OSError as exc:
        raise StartupError(f"cannot create data directory {shown}: {exc.strerror}") from None
    try:
        # A real write, not os.access(): root passes access() checks on read-only mounts.
        fd, probe = tempfile.mkstemp(dir=path, prefix=".roomchat-write-check-")
    except OSError as exc:
        raise StartupError(f"data directory {shown} is not writable: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)


_CERTFILE = "--certfile {} (ROOMCHAT_CERTFILE)"
_KEYFILE = "--keyfile {} (ROOMCHAT_KEYFILE)"
_DEV_CERT = "`roomchat dev-cert` makes a pair for localhost"


def check_tls(certfile: Path | None, keyfile: Path | None) -> None:
    """With TLS configured (both paths given), check what Hypercorn will load: both files,
    readable, a PEM certificate and an unencrypted PEM private key of that certificate; then
    load them as Hypercorn does (``ssl.SSLContext.load_cert_chain``) for anything else OpenSSL
    refuses. ``StartupError`` naming the file and what to give instead; ssl's own errors name
    neither file nor which of the two is wrong."""
    if certfile is None or keyfile is None:  # Config: both or neither
        return
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    cert_text = _CERTFILE.format(certfile)
    key_text = _KEYFILE.format(keyfile)
    cert_pem = _read_tls_file(certfile, cert_text)  # outside the try: StartupError is a
    key_pem = _read_tls_file(keyfile, key_text)  # ValueError, as cryptography's errors are
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise StartupError(f"{cert_text} holds no PEM certificate: give the server's "
                           "certificate (-----BEGIN CERTIFICATE-----), its chain after it"
                           ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # cryptography's word for "encrypted, and no password given"
        raise StartupError(f"{key_text} is encrypted and the server cannot ask for its "
                           f"passphrase: decrypt it (openssl pkey -in {keyfile} -out key.pem)"
                           ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise StartupError(f"{key_text} holds no PEM private key: give the certificate's key "
                           "(-----BEGIN PRIVATE KEY-----)") from None
    if certs[0].public_key() != key.public_key():
        raise StartupError(f"{key_text} is not the key of {cert_text}: give the key the "
                           "certificate was issued for (the first certificate in the file)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise StartupError(f"OpenSSL refuses {cert_text} with {key_text}: "
                           f"{' '.join(str(exc).split())}") from None


def _read_tls_file(path: Path, shown: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read {shown}: {exc.strerror} ({_DEV_CERT})") from None


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``; ``StartupError`` if not."""
    host, sep, port_text = bind.rpartition(":")
    usage = "expected HOST:PORT, e.g. 127.0.0.1:8000 or [::1]:8000"
    if not sep or not port_text.isdigit():
        raise StartupError(f"bad --bind {bind!r}: {usage}")
    port = int(port_text)
    if port > 65535:
        raise StartupError(f"bad --bind {bind!r}: port {port} is out of range (0-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise StartupError(f"bad --bind {bind!r}: put an IPv6 address in brackets, [::1]:8000")
    return host, port


def bind_socket(bind: str, backlog: int = HyperConfig.backlog) -> socket.socket:
    """Bind and listen on ``bind`` like Hypercorn would (``unix:PATH`` and ``fd://N`` too),
    with ``backlog`` (``listen_backlog``); the socket is inheritable so workers can share it."""
    if bind.startswith("fd://"):
        # Already bound by whoever started us (systemd, a test): just check it is a socket.
        try:
            sock = socket.socket(fileno=int(bind.removeprefix("fd://")))
        except (ValueError, OSError) as exc:
            raise StartupError(f"bad --bind {bind!r}: not an open socket ({exc})") from None
    elif bind.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _bind(sock, bind.removeprefix("unix:"), bind)
    else:
        host, port = parse_bind(bind)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            infos = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise StartupError(f"bad --bind {bind!r}: cannot resolve {host!r} "
                               f"({exc.strerror})") from None
        sock = socket.socket(family, socket.SOCK_STREAM)
        # As Hypercorn does: a restart may rebind while old connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _bind(sock, infos[0][4], bind)
    try:
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {bind}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _bind(sock: socket.socket, address: str | tuple[object, ...], bind: str) -> None:
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"cannot listen on {bind}: the address is already in use "
                               "(is another server running?)") from None
        raise StartupError(f"cannot listen on {bind}: {exc.strerror}") from None


async def check_postgres(url: str, timeout: float, *, search_language: str = "simple",
                         allow_async_commit: bool = False) -> None:
    """Open the PostgreSQL log as the server will (its schema migrated, or refused when newer
    than this code, its search language or its ``synchronous_commit`` refused) and close it;
    ``StartupError`` with the one line if that fails."""
    from rooms.engines.postgres import PostgresLog
    from rooms.errors import StoreError

    try:
        log = await PostgresLog.open(url, max_connections=1, timeout=timeout,
                                     search_language=search_language,
                                     allow_async_commit=allow_async_commit)
    except StoreError as exc:
        reason = " ".join(str(exc).split())
        password = urlsplit(url).password
        if password:
            reason = reason.replace(password, "***")
        raise StartupError(f"store {redact(url)} (--store-url / ROOMCHAT_STORE_URL): "
                           f"{reason}") from None
    await log.close()


async def check_notify_bus(url: str, timeout: float) -> None:
    """Open PostgreSQL's ``LISTEN/NOTIFY`` bus as the server will (its presence table created
    if missing) and close it; ``StartupError`` with the one line if that fails."""
    from rooms.engines.postgres_bus import NotifyBus
    from rooms.errors import StoreError

    try:
        bus = await NotifyBus.open(url, max_connections=1, timeout=timeout)
    except StoreError as exc:
        reason = " ".join(str(exc).split())
        password = urlsplit(url).password
        if password:
            reason = reason.replace(password, "***")
        raise StartupError(f"bus {redact(url)} (--bus-url / ROOMCHAT_BUS_URL): "
                           f"{reason}") from None
    await bus.close()


async def ping_redis(url: str, timeout: float = REDIS_PING_TIMEOUT, *,
                     setting: str = "--store-url / ROOMCHAT_STORE_URL") -> None:
    """Connect to the Redis ``url`` names and PING it once; ``StartupError`` if that fails,
    naming ``setting`` (where the URL came from).

    Messages name the host and port (or socket path), never the password in the URL.
    """
    from redis import asyncio as aioredis
    from redis.exceptions import AuthenticationError

    from rooms.engines.redis import split_cluster_url
    from rooms.engines.redis_feed import FAILURES

    parts = urlsplit(url)
    where = parts.path if parts.scheme == "unix" else parts.netloc.rsplit("@", 1)[-1]
    try:
        # A cluster's URL names one of its nodes (a seed): reaching it is the check here.
        url, _ = split_cluster_url(url)
        client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout,
                                         socket_timeout=timeout)
    except ValueError as exc:
        raise StartupError(f"bad Redis URL {redact(url)!r} ({setting}): {exc}") from None
    try:
        await client.ping()
    except AuthenticationError:
        raise StartupError(f"Redis at {where} refused the credentials in the URL "
                           f"({setting})") from None
    except FAILURES as exc:
        reason = " ".join(str(exc).split())  # one line, whatever the driver says
        if parts.password:
            reason = reason.replace(parts.password, "***")
        raise StartupError(f"cannot reach Redis at {where} ({setting}): {reason}") from None
    finally:
        await client.aclose()

"""Logging set-up: plain lines or one JSON object per line. Tokens never reach a log: the
access log format uses the path without its query string."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import MutableMapping
from urllib.parse import quote

import orjson
from hypercorn.logging import Logger as HypercornLogger
from hypercorn.typing import ResponseSummary, WWWScope

ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(D)sus'
ACCESS_LOGGER = "roomchat.access"

# RFC 3986 characters that may stay as they are in a logged path; everything else (control
# characters, spaces, quotes, non-ASCII) is percent-encoded again.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


# A path of these characters only is logged as it is (what ``quote`` would return, without
# its cost: every upgrade's path is logged).
_LOGGABLE = re.compile(r"[A-Za-z0-9" + re.escape(_PATH_SAFE) + "]*")


def escape_path(path: str) -> str:
    """The request path as it can be safely logged: a decoded ``%0a`` or ``%1b`` must not forge
    a log line or inject terminal escapes, so they are percent-encoded again."""
    if _LOGGABLE.fullmatch(path):
        return path
    return quote(path, safe=_PATH_SAFE, errors="backslashreplace")


class EscapedPathFilter(logging.Filter):
    """Escapes the path atoms of Hypercorn's access log records (``%(U)s`` and friends)."""

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if isinstance(atoms, MutableMapping):
            for key in ("U", "r", "R", "Uq"):
                value = atoms.get(key)
                if isinstance(value, str):
                    atoms[key] = escape_path(value) if key == "U" else value.translate(_CONTROL)
        return True


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)}

# The access logger exists once per process; attaching here means every server (CLI, tests,
# workers) logs escaped paths, whoever configured logging.
logging.getLogger(ACCESS_LOGGER).addFilter(EscapedPathFilter())


class AccessAtoms(dict[str, str]):
    """The atoms of ``ACCESS_LOG_FORMAT`` only (any other atom reads as ``-``).

    Hypercorn's own ``AccessLogAtoms`` copies every request header and every environment
    variable into a dict for each request: with a WebSocket upgrade logged per handshake that
    was 12% of a handshake's CPU in a py-spy profile (bench/profiles/). The query string, where
    a token may be, is never read. Paths are escaped by ``EscapedPathFilter`` as before.
    """

    def __init__(self, request: WWWScope, response: ResponseSummary | None,
                 request_time: float) -> None:
        client = request.get("client")
        status = "-"
        size = "-"
        if response is not None:
            status = str(response["status"])
            for name, value in response.get("headers", ()):
                if name.lower() == b"content-length":
                    size = value.decode("latin-1")
        super().__init__(
            h=f"{client[0]}:{client[1]}" if client and len(client) == 2 else "-",
            m=request["method"] if request["type"] == "http" else "GET",
            U=request["path"],
            H=request.get("http_version", "ws"),
            s=status,
            b=size,
            D=str(int(request_time * 1_000_000)),
        )

    def __missing__(self, key: str) -> str:
        return "-"


def access_line(request: WWWScope, response: ResponseSummary | None,
                request_time: float) -> str:
    """``ACCESS_LOG_FORMAT``'s line for one request, its path escaped (``escape_path``): what
    ``AccessAtoms`` and ``EscapedPathFilter`` make of it, built directly."""
    atoms = AccessAtoms(request, response, request_time)
    return (f'{atoms["h"]} "{atoms["m"]} {escape_path(atoms["U"])} {atoms["H"]}" '
            f'{atoms["s"]} {atoms["b"]} {atoms["D"]}us')


class AccessLogger(HypercornLogger):
    """Hypercorn's logger, with ``AccessAtoms`` for the access log (``Config.logger_class``).

    Each WebSocket upgrade is logged, so a line is on every handshake's path: with our own
    format the line is built directly (no atoms dict formatted by ``logging``) and handed to
    the logger as a finished record, which skips ``logging``'s search of the stack for the
    caller's file and line (``findCaller``: the access log names none). Nothing at all is
    built when the access logger does not log INFO. Lines and records are as before, except
    that the record's ``args`` are empty (its message is the finished line).
    """

    def atoms(self, request: WWWScope, response: ResponseSummary | None,
              request_time: float) -> AccessAtoms:
        return AccessAtoms(request, response, request_time)

    async def access(self, request: WWWScope, response: ResponseSummary,
                     request_time: float) -> None:
        logger = self.access_logger
        if logger is None or not logger.isEnabledFor(logging.INFO):
            return
        if self.access_log_format != ACCESS_LOG_FORMAT:  # someone else's format: Hypercorn's
            await super().access(request, response, request_time)
            return
        line = access_line(request, response, request_time)
        logger.handle(logger.makeRecord(logger.name, logging.INFO, "(access)", 0, line, (),
                                        None))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

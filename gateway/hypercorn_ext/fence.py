"""What each part of ``gateway.hypercorn_ext`` was verified against: the installed versions and
a hash of the source of every function or class it replaces or reaches into.

A part is installed only where every target it names is unchanged: the library's installed
version is one the table lists, and the target's source (``inspect.getsource``) hashes to the
value recorded for that version. Anything else (a new version, a target changed or gone) is a
*problem*, a one-line description of what changed; the caller then leaves that part out and
serves it on Hypercorn's plain ASGI path.

Targets are named ``module:Qualified.name``. Their library is the module's top-level package,
except the standard library's ``asyncio``, which is versioned by Python's ``major.minor``.

To re-verify after an upgrade: read the diff of each changed target against the part that
reaches into it (docs/upstream.md lists them), run the WebSocket suites with the fast paths on
and off (``make test-plain-asgi``) and the Autobahn test, then paste the entries that
``python -m gateway.hypercorn_ext`` prints into ``VERIFIED`` below.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
import sys
from collections.abc import Iterable, Mapping
from typing import Any

# Per library version, each target's hash prefix (sha256 of its source text, 16 hex digits), as
# read and tested against the parts that reach into it. Verified with Hypercorn 0.18.0, wsproto
# 1.3.2, Python 3.11.7 (asyncio), uvloop 0.23.0.
VERIFIED: dict[str, dict[str, str]] = {
    "hypercorn 0.18.0": {
        "hypercorn.asyncio.task_group:TaskGroup.spawn_app": "6606faaadfc368e3",
        "hypercorn.asyncio.task_group:_handle": "e37cfe3db06eb470",
        "hypercorn.asyncio.tcp_server:TCPServer.__init__": "95a6f196b96bfa92",
        "hypercorn.asyncio.tcp_server:TCPServer._read_data": "8e7ad8f4bfca2fd2",
        "hypercorn.asyncio.tcp_server:TCPServer.protocol_send": "06144915fc094c1b",
        "hypercorn.asyncio.tcp_server:TCPServer.run": "9437d01a916d887b",
        "hypercorn.asyncio.worker_context:EventWrapper": "04c3221b13f0a31f",
        "hypercorn.asyncio.worker_context:WorkerContext": "6eeeae02ae174a68",
        "hypercorn.protocol.h11:H11Protocol.__init__": "c7c989fd6a352626",
        "hypercorn.protocol.h11:H11Protocol.handle": "3b56e067447488df",
        "hypercorn.protocol.h11:H11Protocol.stream_send": "56a36254a368d71a",
        "hypercorn.protocol.h11:H11WSConnection": "33372cf689429978",
        "hypercorn.protocol.ws_stream:Handshake.accept": "e163533bf7919793",
        "hypercorn.protocol.ws_stream:WSStream.__init__": "3534d3ebe8f7a1a4",
        "hypercorn.protocol.ws_stream:WSStream._accept": "144623ad2e13fc56",
        "hypercorn.protocol.ws_stream:WSStream._handle_events": "b90f3f595ff9fd47",
        "hypercorn.protocol.ws_stream:WSStream._send_wsproto_event": "3a4df3f0d2dfd314",
        "hypercorn.protocol.ws_stream:WSStream.app_send": "a6dd1160bfc416e7",
        "hypercorn.protocol.ws_stream:WSStream.handle": "743209f49012b8c7",
    },
    "python 3.11": {
        "asyncio.streams:FlowControlMixin": "5eea7d0e63642ff8",
        "asyncio.streams:StreamReader._wait_for_data": "3064c5757b9dd9af",
        "asyncio.streams:StreamReader.feed_data": "f1dc194f7bceb07d",
        "asyncio.streams:StreamReaderProtocol": "86a9dc62ee91fe41",
    },
    "wsproto 1.3.2": {
        "wsproto.connection:Connection": "6b70917fe888fb2c",
        "wsproto.connection:Connection.events": "e4d77be0bfef1af2",
        "wsproto.extensions:PerMessageDeflate": "809ab54469c440bb",
        "wsproto.handshake:server_extensions_handshake": "56dcd715837e35cd",
    },
}

_STDLIB = {"asyncio": "python"}


def library(target: str) -> str:
    """The distribution a target belongs to (``python`` for the standard library)."""
    top = target.split(":", 1)[0].split(".", 1)[0]
    return _STDLIB.get(top, top)


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``; Python's ``major.minor`` for
    ``python``; None when it is not installed."""
    if name == "python":
        return f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def resolve(target: str) -> Any:
    """The object ``module:Qualified.name`` names. Raises ImportError or AttributeError."""
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def source_hash(obj: Any) -> str:
    """The first 16 hex digits of the sha256 of ``obj``'s source text."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def snapshot(targets: Iterable[str]) -> dict[str, str | None]:
    """Each target's source hash as installed; None for one that is gone (or has no source).
    Take it before anything is patched: a patched attribute's source is the patch's."""
    hashes: dict[str, str | None] = {}
    for target in targets:
        try:
            hashes[target] = source_hash(resolve(target))
        except (ImportError, AttributeError, OSError, TypeError):
            hashes[target] = None
    return hashes


def problems(targets: Iterable[str], hashes: Mapping[str, str | None],
             versions: Mapping[str, str | None],
             verified: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """What differs from the table (``VERIFIED`` unless ``verified``) for ``targets``, one line
    each; empty when all match. ``hashes`` as ``snapshot`` gives them, ``versions`` by library
    (``installed_version``)."""
    verified = VERIFIED if verified is None else verified
    found: list[str] = []
    for target in targets:
        name = library(target)
        version = versions.get(name)
        key = f"{name} {version}"
        if key not in verified:
            known = ", ".join(sorted(k.split(" ", 1)[1] for k in verified
                                     if k.split(" ", 1)[0] == name)) or "none"
            line = (f"{name} {version or '(not installed)'} is not a verified version "
                    f"(verified: {known})")
            if line not in found:
                found.append(line)
            continue
        expected = verified[key].get(target)
        actual = hashes.get(target)
        if expected is None:
            found.append(f"{target} has no entry for {key}")
        elif actual is None:
            found.append(f"{target} is gone in {key}")
        elif actual != expected:
            found.append(f"{target} changed in {key}")
    return found


def table(targets: Iterable[str], hashes: Mapping[str, str | None],
          versions: Mapping[str, str | None]) -> str:
    """``VERIFIED`` entries for the installed versions (Python source, to paste)."""
    by_key: dict[str, dict[str, str | None]] = {}
    for target in sorted(set(targets)):
        name = library(target)
        by_key.setdefault(f"{name} {versions.get(name)}", {})[target] = hashes.get(target)
    lines = ["VERIFIED: dict[str, dict[str, str]] = {"]
    for key in sorted(by_key):
        lines.append(f"    {key!r}: {{")
        lines += [f"        {target!r}: {digest!r}," for target, digest in by_key[key].items()]
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines)

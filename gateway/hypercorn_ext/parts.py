"""The parts of ``gateway.hypercorn_ext``, what each reaches into, and ``install``: each part is
put in place only where what it reaches into is what it was written for (``fence``), else that
part falls back to Hypercorn's plain ASGI path, with one warning line and a count in the
metrics. The server serves correctly with no part installed (``ROOMCHAT_FAST_PATHS=0``; CI runs
the WebSocket suites both ways: ``make test-plain-asgi``).

docs/upstream.md says, per part, what it replaces, the upstream issue, and the smallest upstream
change that would retire it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from gateway.hypercorn_ext import compression, fastsend, fence, wsfixes

log = logging.getLogger("roomchat.hypercorn_ext")

_WS = "hypercorn.protocol.ws_stream"
_H11 = "hypercorn.protocol.h11"
_TCP = "hypercorn.asyncio.tcp_server"
_TASKS = "hypercorn.asyncio.task_group"
_STREAMS = "asyncio.streams"


@dataclass(frozen=True, slots=True)
class Part:
    """One thing we replace or reach into: ``targets`` are what it replaces, calls or relies
    on the shape of (``fence`` names); it works only with every part in ``requires``."""

    name: str
    what: str
    targets: tuple[str, ...]
    requires: tuple[str, ...] = ()


PARTS: tuple[Part, ...] = (
    Part("close_frames", "a close frame (1002/1007/1009) for a frame wsproto cannot parse",
         (f"{_WS}:WSStream._handle_events", f"{_WS}:WSStream._send_wsproto_event",
          "wsproto.connection:Connection.events")),
    Part("lean_app_queue", "a slotted app queue instead of an asyncio.Queue per connection",
         (f"{_TASKS}:TaskGroup.spawn_app", f"{_TASKS}:_handle")),
    Part("lean_events", "events that allocate nothing until awaited",
         ("hypercorn.asyncio.worker_context:EventWrapper",
          "hypercorn.asyncio.worker_context:WorkerContext")),
    Part("free_closed", "a closed connection's objects freed without the garbage collector",
         (f"{_TCP}:TCPServer.run",)),
    Part("deflate_off", "permessage-deflate declined unless ROOMCHAT_COMPRESSION",
         (f"{_WS}:Handshake.accept", "wsproto.handshake:server_extensions_handshake")),
    Part("deflate_bound", "inflation bounded by ROOMCHAT_MAX_MESSAGE_BYTES (deflate bombs)",
         ("wsproto.extensions:PerMessageDeflate",)),
    Part("direct_send", "text frames written to the HTTP/1.1 transport; inbound frames handed "
         "over by Hypercorn's reader; the transport handle (abort, wait_closed, TCP progress)",
         (f"{_WS}:WSStream.__init__", f"{_WS}:WSStream.handle", f"{_WS}:WSStream.app_send",
          f"{_WS}:WSStream._accept", f"{_H11}:H11Protocol.__init__",
          f"{_H11}:H11Protocol.stream_send", f"{_H11}:H11WSConnection",
          f"{_TCP}:TCPServer.__init__", f"{_TCP}:TCPServer.protocol_send",
          "wsproto.connection:Connection", f"{_STREAMS}:FlowControlMixin")),
    Part("direct_read", "simple client text frames read off the HTTP/1.1 transport",
         (f"{_TCP}:TCPServer._read_data", f"{_H11}:H11Protocol.handle",
          f"{_H11}:H11WSConnection", f"{_STREAMS}:StreamReader._wait_for_data",
          f"{_STREAMS}:StreamReader.feed_data", f"{_STREAMS}:StreamReaderProtocol"),
         requires=("direct_send",)),
)
NAMES = tuple(part.name for part in PARTS)


@dataclass(frozen=True, slots=True)
class Installed:
    """What ``install`` did: the parts in place, and per part left out for a mismatch, what
    changed (``fence.problems``). A part neither installed nor mismatched was switched off."""

    active: frozenset[str]
    mismatched: dict[str, tuple[str, ...]]


def all_targets() -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for part in PARTS for t in part.targets))


@functools.cache
def installed_hashes() -> dict[str, str | None]:
    """The targets' hashes, taken once per process, before ``install`` patches anything
    (a patched attribute's source would be ours)."""
    return fence.snapshot(all_targets())


def versions() -> dict[str, str | None]:
    """The installed versions of every library a part reaches into."""
    names = dict.fromkeys(fence.library(t) for t in all_targets())
    return {name: fence.installed_version(name) for name in names}


def verify() -> dict[str, tuple[str, ...]]:
    """Per part, what differs from ``fence.VERIFIED`` (empty tuple: it matches). A part whose
    required part differs differs too."""
    hashes, installed = installed_hashes(), versions()
    found = {part.name: tuple(fence.problems(part.targets, hashes, installed))
             for part in PARTS}
    for part in PARTS:
        if not found[part.name]:
            broken = [need for need in part.requires if found[need]]
            if broken:
                found[part.name] = tuple(f"needs {need}, which changed" for need in broken)
    return found


def _apply(active: frozenset[str], *, compression_on: bool, max_message_bytes: int) -> None:
    for name in wsfixes.PARTS:
        wsfixes.patch(name, name in active)
    compression.configure(decline="deflate_off" in active, bound="deflate_bound" in active,
                          compression=compression_on, max_message_bytes=max_message_bytes)
    fastsend.enable(direct_send="direct_send" in active, direct_read="direct_read" in active)


def install(*, enabled: bool, compression_on: bool, max_message_bytes: int,
            on_mismatch: Callable[[str], None] | None = None) -> Installed:
    """Process-wide (the last call wins; call it before serving): put in place every part
    that matches what it was written for, and Hypercorn's own code for the rest; with
    ``enabled`` False (``ROOMCHAT_FAST_PATHS=0``), Hypercorn's own code for every part.

    A mismatch is logged as one warning line naming what changed, and ``on_mismatch`` is
    called with each mismatched part's name (the server counts them in its metrics). Never
    raises for a mismatch: the server still serves, on the plain ASGI path for those parts.
    """
    installed_hashes()  # before anything is patched, whatever is asked for now
    mismatched: dict[str, tuple[str, ...]] = {}
    if enabled:
        mismatched = {name: found for name, found in verify().items() if found}
    active = frozenset(NAMES) - mismatched.keys() if enabled else frozenset()
    _apply(active, compression_on=compression_on, max_message_bytes=max_message_bytes)
    if mismatched:
        by_problem: dict[str, list[str]] = {}
        for name, found in mismatched.items():
            for problem in found:
                by_problem.setdefault(problem, []).append(name)
        log.warning(
            "fast paths left out, served on Hypercorn's plain ASGI path instead: %s; re-verify "
            "them (gateway/hypercorn_ext/fence.py, docs/upstream.md)",
            "; ".join(f"{problem} [{', '.join(names)}]" for problem, names in by_problem.items()))
        if on_mismatch is not None:
            for name in mismatched:
                on_mismatch(name)
    elif not enabled:
        log.info("ROOMCHAT_FAST_PATHS=0: Hypercorn's plain ASGI path for every WebSocket; "
                 "permessage-deflate is accepted whenever offered, inflated without bound "
                 "(docs/upstream.md)")
    return Installed(active, mismatched)

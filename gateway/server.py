"""Run the app under Hypercorn with our own shutdown: stop accepting, close sockets, then stop.

Hypercorn alone hangs on shutdown while WebSockets are open (hypercorn #308) and Quart's
after_serving runs too late to send close frames, so ``serve`` passes a ``shutdown_trigger`` that,
on SIGTERM/SIGINT (or ``shutdown``), first closes this process's listeners, then drains the
gateway (1012 to every socket, rooms store what they hold) and only then lets Hypercorn stop.

Hypercorn itself closes its listeners only after the trigger returns, so without the first step a
draining process kept accepting: on a port shared by ``--workers`` (gateway.supervisor) the kernel
went on handing it connections during a SIGHUP replacement, which it could only refuse (503
``draining``) or, once Hypercorn marked itself terminated, close unanswered.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import math
import signal
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HyperConfig
from quart import Quart

from gateway import hypercorn_ext
from gateway.app import Gateway, create_app
from gateway.config import Config
from gateway.gcsteward import Counts, FreezePolicy, GcSteward
from gateway.logs import ACCESS_LOG_FORMAT, AccessLogger

log = logging.getLogger("roomchat.server")

ACCEPT_GRACE = 0.1
"""Seconds a connection accepted just before the listeners closed gets for its request to reach
the app before the drain starts refusing (503 ``draining``). A loopback, LAN or same-host proxy
client's request is already in the socket or follows within a millisecond; it then waits only
for the event loop (without the grace, 1 of ~8,000 requests in three SIGHUP replacements under
a steady stream was refused). The shutdown waits only for what is left of it since the last
accept, so a server that accepted nothing lately starts its drain at once."""


@dataclass(eq=False)
class Listeners:
    """The listening servers Hypercorn started for one ``serve()``, and when (``loop.time()``)
    they last accepted a connection.

    Hypercorn keeps its servers to itself and closes them only after the shutdown trigger has
    returned; ``serve()`` catches them on their way through the loop's ``create_server`` (which
    ``asyncio.start_server``, Hypercorn's call, uses): see ``_catch_listeners``."""

    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    last_accept: float = -math.inf

    def close(self) -> None:
        """Stop accepting (idempotent): close this process's copies of the listening sockets.

        Connections already accepted are untouched. On the socket ``--workers`` share, the
        kernel hands queued and new connections to the other workers from now on; when this
        process held the last copy, new connections are refused, which a proxy retries on
        another instance."""
        for server in self.servers:
            server.close()

    async def settle(self, grace: float = ACCEPT_GRACE) -> None:
        """Wait until ``grace`` seconds have passed since the last accept (at once if they
        have): the requests of connections accepted before ``close()`` have reached the app."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self.last_accept + grace - loop.time()))


# The Listeners of the serve() running in this context. A context variable, not a global: each
# serve() (tests run several on one loop) catches only the servers its own task starts.
_listeners: contextvars.ContextVar[Listeners | None] = contextvars.ContextVar(
    "roomchat_listeners", default=None)
_catching: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def _catch_listeners(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap ``loop.create_server`` (this loop only, once): a server started while the caller's
    context holds a ``Listeners`` is added to it and stamps its accepts; otherwise nothing
    changes. The cost per accepted connection is one call and a clock read."""
    if loop in _catching:
        return
    create_server = loop.create_server

    async def recording_create_server(protocol_factory: Callable[[], asyncio.BaseProtocol],
                                      *args: Any, **kwargs: Any) -> asyncio.AbstractServer:
        caught = _listeners.get()
        if caught is None:
            return await create_server(protocol_factory, *args, **kwargs)

        def stamped_factory() -> asyncio.BaseProtocol:
            caught.last_accept = loop.time()
            return protocol_factory()

        server = await create_server(stamped_factory, *args, **kwargs)
        caught.servers.append(server)
        return server

    loop.create_server = recording_create_server  # type: ignore[method-assign,assignment]
    _catching.add(loop)


def hypercorn_config(config: Config, fd: int | None = None) -> HyperConfig:
    hc = HyperConfig()
    hc.bind = [f"fd://{fd}"] if fd is not None else [config.bind]
    hc.websocket_max_message_size = config.max_message_bytes
    hc.graceful_timeout = config.drain_timeout
    hc.backlog = config.listen_backlog  # asyncio listens again on a socket it is handed
    hc.accesslog = logging.getLogger("roomchat.access")
    hc.access_log_format = ACCESS_LOG_FORMAT
    hc.logger_class = AccessLogger
    hc.errorlog = logging.getLogger("hypercorn.error")
    if config.certfile is not None and config.keyfile is not None:  # Config: both or neither
        hc.certfile = str(config.certfile)
        hc.keyfile = str(config.keyfile)
    return hc


async def serve(
    config: Config, *, app: Quart | None = None, fd: int | None = None,
    shutdown: asyncio.Event | None = None, handle_signals: bool = True,
    ready: Callable[[], None] | None = None, manage_gc: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT (when ``handle_signals``) or ``shutdown`` is set; then drain
    and return. ``fd``: an already bound, listening socket that Hypercorn takes over (tests
    bind port 0). ``ready``: called in the loop once the store is open and rooms can start.
    ``manage_gc``: freeze and thaw the process's garbage collector as connections come and go
    (``gateway.gcsteward``; process-wide, so only for a process that only serves)."""
    app = app or create_app(config)
    if ready is not None:
        # before_serving hooks run in order, so this one runs after the Gateway's start().
        # Hypercorn starts accepting right after these hooks; on an already listening socket
        # a connection arriving in between waits in the backlog, it is not refused.
        app.before_serving(_as_hook(ready))
    gw: Gateway = app.extensions["roomchat"]
    gw.observer.fast_paths(hypercorn_ext.install(
        enabled=config.fast_paths, compression_on=config.compression,
        max_message_bytes=config.max_message_bytes))
    shutdown = shutdown or asyncio.Event()
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, shutdown.set)

    # Owned here: cancelled and awaited once Hypercorn has stopped. (Not a TaskGroup: that
    # would wrap Hypercorn's own errors, say a port in use, in an ExceptionGroup.)
    stewarding: asyncio.Task[None] | None = None
    if manage_gc and config.gc_freeze_after:
        steward = GcSteward(
            FreezePolicy(config.gc_freeze_after, config.gc_thaw_share),
            lambda: Counts(gw.opened_total, gw.closed_total, gw.connections))
        gw.observer.gc_frozen.set_function(steward.frozen)
        stewarding = asyncio.create_task(steward.run(), name="gc-steward")

    listeners = Listeners()
    _catch_listeners(loop)

    async def trigger() -> None:
        await shutdown.wait()
        # Before the drain: a connection accepted during it could only be refused.
        if listeners.servers:
            listeners.close()
            await listeners.settle()
        else:
            log.warning("shutting down without closing the listeners first: Hypercorn started "
                        "none through the loop's create_server (a changed Hypercorn?)")
        log.info("shutting down: stopped accepting; closing %d connections with 1012",
                 gw.connections)
        if stewarding is not None:
            # A thaw's full collection would only hold up the drain of an exiting process.
            stewarding.cancel()
        await gw.drain(config.drain_timeout)
    caught = _listeners.set(listeners)
    try:
        await hypercorn_serve(app, hypercorn_config(config, fd),
                              shutdown_trigger=trigger)
    finally:
        _listeners.reset(caught)
        if stewarding is not None:
            stewarding.cancel()
            await asyncio.wait([stewarding])
            if not stewarding.cancelled() and stewarding.exception() is not None:
                log.error("the GC steward failed", exc_info=stewarding.exception())
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("stopped")


def _as_hook(callback: Callable[[], None]) -> Callable[[], Any]:
    async def hook() -> None:
        callback()

    return hook


def tune_gc(gen0_threshold: int) -> None:
    """Fewer, cheaper garbage collections for a server holding many long-lived objects.

    With 10,000 connections, CPython's default thresholds (700, 10, 10) ran full collections
    that took ~0.5 s each: in 1,000 rooms of 10, 30% of the CPU and the p99 latency tail
    (bench/). Objects alive at start-up (modules, app) are frozen out of every scan; young
    garbage is still collected, just in larger, rarer sweeps.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, max(gen1, 20), gen2)


def run(config: Config, *, fd: int | None = None,
        ready: Callable[[], None] | None = None) -> None:
    """Blocking entry point of ``roomchat serve``: uvloop when installed. ``fd`` and
    ``ready`` as for ``serve``."""
    tune_gc(config.gc_gen0_threshold)
    loop_factory: Any = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(config, fd=fd, ready=ready, manage_gc=True))

"""The floor: Hypercorn serving a WebSocket app that does nothing but accept and wait.

``python -m bench.profiles.floor --bind HOST:PORT`` (uvloop, like ``roomchat serve``), with
``bench.profiles.memserver``'s SIGUSR1 dump. What an idle connection costs here is what any
app served by Hypercorn pays before its own first byte (bench/profiles/*-idle-memory.md).
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from bench.profiles.memserver import dump

Message = MutableMapping[str, Any]


async def app(scope: Message, receive: Callable[[], Awaitable[Message]],
              send: Callable[[Message], Awaitable[None]]) -> None:
    """Accept every WebSocket, then read until it is gone (no HTTP, no lifespan work)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profiles.floor")
    p.add_argument("--bind", required=True)
    args, _ = p.parse_known_args()
    signal.signal(signal.SIGUSR1, dump)
    config = Config()
    config.bind = [args.bind]
    import uvloop

    uvloop.run(serve(app, config))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

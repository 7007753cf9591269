"""The floor: Hypercorn serving a WebSocket app that does nothing but accept (and, with
``--welcome``, send one text frame) and wait.

``python -m bench.profiles.floor --bind HOST:PORT [--welcome]`` (uvloop, like ``roomchat
serve``), with ``bench.profiles.memserver``'s SIGUSR1 dump. What an idle connection costs
here is what any app served by Hypercorn pays before its own first byte
(bench/profiles/*-idle-memory.md).
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
WELCOME = ""
"""With ``--welcome``: one text frame sent after the accept, the size of roomchat's welcome
(what the handshake comparison counts a join to: the 101 and one frame)."""


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
    if WELCOME:
        await send({"type": "websocket.send", "text": WELCOME})
    while (await receive())["type"] != "websocket.disconnect":
        pass


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profiles.floor")
    p.add_argument("--bind", required=True)
    p.add_argument("--welcome", action="store_true", help="send one text frame after accept")
    args, _ = p.parse_known_args()
    global WELCOME
    if args.welcome:
        WELCOME = ('{"type":"welcome","room":"hs-0","user":"bench-1","name":"Bench 1",'
                   '"seq":0,"members":[],"history":[],"resume":null}')
    signal.signal(signal.SIGUSR1, dump)
    config = Config()
    config.bind = [args.bind]
    import uvloop

    uvloop.run(serve(app, config))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

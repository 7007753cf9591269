"""Baseline peer: a Python ``websockets`` chat server using ``broadcast()``, at its best settings.

Same behaviour as the Node peer: per room, parse the client's JSON, stamp the next seq, serialize
once and push the same bytes to every member (sender included) with ``websockets.broadcast()``.
No auth (the token is ignored), no storage, no presence, no acks.

"Best settings" (each can be turned off to see what it buys): compression off, uvloop as the event
loop, orjson for JSON, and the payload sent as UTF-8 bytes in a text frame (``text=True``), so
broadcast() does not re-encode it.

Usage: ``python -m bench.peers.py_websockets.server --port PORT [--no-uvloop] [--stdlib-json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

ROOM_PATH = re.compile(r"^/rooms/([A-Za-z0-9_-]{1,64})/ws$")


@dataclass
class Room:
    """A room's members and its last seq; only touched from the event loop thread."""

    seq: int = 0
    members: set[ServerConnection] = field(default_factory=set)


def make_codec(use_orjson: bool) -> tuple[Callable[[str | bytes], Any], Callable[[Any], bytes]]:
    """Return ``(loads, dumps)``; ``dumps`` yields UTF-8 bytes."""
    if use_orjson:
        return orjson.loads, orjson.dumps

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    return json.loads, dumps


class ChatServer:
    """The whole server state: rooms by name and a user counter for names."""

    def __init__(self, use_orjson: bool) -> None:
        self.rooms: dict[str, Room] = {}
        self.next_user = 0
        self.loads, self.dumps = make_codec(use_orjson)

    def check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse upgrades whose path is not ``/rooms/<room>/ws`` (before the handshake)."""
        if ROOM_PATH.match(request.path.partition("?")[0]) is None:
            return connection.respond(404, "not found\n")
        return None

    async def handle(self, connection: ServerConnection) -> None:
        """Serve one connection for its whole life."""
        path = connection.request.path if connection.request else ""
        match = ROOM_PATH.match(path.partition("?")[0])
        if match is None:
            return
        name = match.group(1)
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room()
        room.members.add(connection)
        self.next_user += 1
        user = f"u{self.next_user}"
        loads, dumps = self.loads, self.dumps
        try:
            async for data in connection:
                if not isinstance(data, str):
                    continue
                try:
                    msg = loads(data)
                except ValueError:
                    continue
                if not isinstance(msg, dict) or msg.get("type") != "message":
                    continue
                text = msg.get("text")
                if not isinstance(text, str):
                    continue
                room.seq += 1
                out = dumps(
                    {
                        "type": "message",
                        "room": name,
                        "seq": room.seq,
                        "id": msg.get("id"),
                        "user": user,
                        "name": user,
                        "text": text,
                        "ts": int(time.time() * 1000),
                    }
                )
                broadcast(room.members, out, text=True)
        finally:
            room.members.discard(connection)
            if not room.members:
                self.rooms.pop(name, None)


async def main_async(host: str, port: int, use_orjson: bool) -> None:
    """Serve until SIGTERM or SIGINT."""
    chat = ChatServer(use_orjson)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        chat.handle,
        host,
        port,
        compression=None,
        process_request=chat.check_path,
        backlog=4096,
    ):
        print(f"listening {host}:{port}", flush=True)
        await stop


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run the server."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    parser.add_argument("--stdlib-json", action="store_true", help="use json instead of orjson")
    args = parser.parse_args(argv)
    coro = main_async(args.host, args.port, not args.stdlib_json)
    if args.no_uvloop:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())

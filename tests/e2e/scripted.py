"""What the page tests share besides a real server: a scripted server (Playwright's WebSocket
routing answers the page's socket with exactly the objects a test sends, and records what the page
sends), the objects of the protocol it speaks, and a watch on what a page asks the server for."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Page, Request, WebSocketRoute

from .conftest import PageOpener
from .harness import RoomchatServer
from .pages import wait_until

ME = {"user": "alice", "name": "Alice"}
BOB = {"user": "bob", "name": "Bob"}


class ScriptedRoom:
    """Accepts the page's WebSockets and records what the page sends on each."""

    def __init__(self) -> None:
        self.sockets: list[WebSocketRoute] = []
        self.received: list[list[dict[str, Any]]] = []

    def accept(self, ws: WebSocketRoute) -> None:
        frames: list[dict[str, Any]] = []
        self.sockets.append(ws)
        self.received.append(frames)
        ws.on_message(lambda data: frames.append(json.loads(data)))

    def send(self, *objects: dict[str, Any]) -> None:
        """One frame holding every object, newline-separated, as the server coalesces them."""
        self.sockets[-1].send("\n".join(json.dumps(o) for o in objects))

    def sent_messages(self, conn: int = -1) -> list[dict[str, Any]]:
        return [f for f in self.received[conn] if f.get("type") == "message"]


def welcome(seq: int, members: list[dict[str, str]], recovered: bool = False) -> dict[str, Any]:
    return {
        "type": "welcome",
        "room": "lobby",
        **ME,
        "seq": seq,
        "members": members,
        "recovered": recovered,
    }


def message(seq: int, who: dict[str, str], text: str, msg_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "message",
        "room": "lobby",
        "seq": seq,
        "id": msg_id,
        **who,
        "text": text,
        "ts": 1764100000000 + seq * 1000,
    }


def open_scripted(server: RoomchatServer, open_page: PageOpener) -> tuple[Page, ScriptedRoom]:
    room = ScriptedRoom()
    page = open_page()
    page.route_web_socket(re.compile(r"/rooms/lobby/ws"), room.accept)
    page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    wait_until(page, lambda: len(room.sockets) == 1, "the page to connect")
    return page, room


TS = 1764100000000


def change(seq: int, action: str, target: int, who: dict[str, str] = BOB,
           **fields: Any) -> dict[str, Any]:
    return {"type": "change", "room": "lobby", "seq": seq, "action": action, "target": target,
            "id": f"x-{seq}", **who, "ts": TS + seq * 1000, **fields}


def frames(room: ScriptedRoom, kind: str, conn: int = -1) -> list[dict[str, Any]]:
    return [f for f in room.received[conn] if f.get("type") == kind]


# Long enough for a page that wrongly retried to have tried again (its first backoff is <= 1 s).
QUIET_MS = 4000


@dataclass
class Traffic:
    """What a page asked the server for: its WebSocket URLs and its ticket requests."""

    sockets: list[str] = field(default_factory=list)
    tickets: list[Request] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("websocket", lambda ws: self.sockets.append(ws.url))
        page.on("request", self._on_request)

    def _on_request(self, request: Request) -> None:
        if request.method == "POST" and urlsplit(request.url).path.endswith("/ticket"):
            self.tickets.append(request)


def open_watched(open_page: PageOpener, url: str) -> tuple[Page, Traffic]:
    page = open_page()
    traffic = Traffic()
    traffic.watch(page)
    page.goto(url)
    return page, traffic

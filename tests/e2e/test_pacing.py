"""The page paces what it sends within the rate the server enforces (docs/protocol.md: a bucket of
10 frames per connection refilled at 2 a second; a pong or typing costs 0.1): a burst of Enters
goes out in order at that pace with one line saying how many wait, a reconnect resends the queue
at that pace too, and a 4008 (which the page should never earn) is explained in words."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import Page, WebSocket, WebSocketRoute, expect

from .conftest import PageOpener
from .harness import ChatPeer, RoomchatServer
from .pages import expect_live, message_box, pending, status, texts, wait_until
from .scripted import ME, ScriptedRoom, message, open_scripted, welcome

# The server's defaults (rooms/config.py: rate_burst, rate_per_sec, pong_cost).
SERVER_BURST = 10
SERVER_RATE = 2.0
LIGHT_COST = 0.1
QUEUE_LINE = re.compile(r"^\d+ queued, next in \d+s$")


@dataclass
class Arrivals:
    """When each frame of one socket reached the test (monotonic seconds) and what it was."""

    frames: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def add(self, data: str | bytes) -> None:
        self.frames.append((time.monotonic(), json.loads(data)))

    def messages(self) -> list[dict[str, Any]]:
        return [f for _, f in self.frames if f.get("type") == "message"]

    def over_rate(self) -> list[int]:
        """Indexes of frames the server's bucket (fresh per socket) would have refused."""
        tokens, stamp, refused = float(SERVER_BURST), None, []
        for n, (at, frame) in enumerate(self.frames):
            if stamp is not None:
                tokens = min(SERVER_BURST, tokens + (at - stamp) * SERVER_RATE)
            stamp = at
            cost = LIGHT_COST if frame.get("type") in ("pong", "typing") else 1.0
            if tokens + 1e-9 < cost:
                refused.append(n)
            else:
                tokens -= cost
        return refused


def type_quickly(page: Page, texts_: list[str]) -> None:
    """Each text typed and sent with Enter, as fast as Playwright can press keys."""
    box = message_box(page)
    for text in texts_:
        box.fill(text)
        box.press("Enter")


def closes_with(server: RoomchatServer, code: int) -> float:
    """How many sessions the server closed with ``code`` (its /metrics)."""
    with urllib.request.urlopen(f"{server.base_url}/metrics", timeout=10) as res:
        body = res.read().decode()
    found = re.search(rf'^roomchat_session_closes_total\{{code="{code}"\}} (\S+)$', body, re.M)
    return float(found.group(1)) if found else 0.0


def test_forty_quick_enters_are_all_delivered_in_order_without_a_4008(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    burst = [f"burst {n:02d}" for n in range(1, 41)]
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        page = open_page()
        sockets: list[WebSocket] = []
        refusals: list[dict[str, Any]] = []
        codes: list[str] = []

        def watch(ws: WebSocket) -> None:
            sockets.append(ws)

            def received(payload: str | bytes) -> None:
                for line in str(payload).split("\n"):
                    obj = json.loads(line) if line.strip() else {}
                    if obj.get("type") == "error":
                        refusals.append(obj)

            ws.on("framereceived", received)

        page.on("websocket", watch)
        page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
        expect_live(page)
        page.evaluate("""() => new MutationObserver(() => {
            const code = document.querySelector('#status').dataset.code;
            if (code) (window.__codes = window.__codes || []).push(code);
          }).observe(document.querySelector('#status'), {attributes: true})""")

        type_quickly(page, burst)
        line = page.locator("#queue-status")
        expect(line).to_be_visible()
        expect(line).to_have_text(QUEUE_LINE)
        # At most one bubble tells a countdown (the next to go); the rest say they are queued.
        assert len([t for t in pending(page).all_inner_texts() if "sending in" in t.lower()]) <= 1

        expect(texts(page)).to_have_text(burst, timeout=90_000)
        expect(pending(page)).to_have_count(0)
        expect(line).to_be_hidden()
        codes = page.evaluate("window.__codes || []")

        # The server's side: one connection, never closed for abuse, and every message stored
        # once, in order (what another member received).
        assert len(sockets) == 1, [ws.url for ws in sockets]
        assert "4008" not in codes, codes
        assert closes_with(server, 4008) == 0
        got: list[str] = []
        while len(got) < len(burst):
            obj = bob.next_of("message")
            got.append(obj["text"])
        assert got == burst
        # Pacing mirrors the server's bucket with a margin: nothing was refused on the way.
        assert refusals == [], refusals


def test_a_queue_resent_after_a_reconnect_is_paced_too(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    room = ScriptedRoom()
    arrivals: list[Arrivals] = []

    def accept(ws: WebSocketRoute) -> None:
        record = Arrivals()
        arrivals.append(record)
        room.accept(ws)
        ws.on_message(record.add)

    page = open_page()
    page.route_web_socket(re.compile(r"/rooms/lobby/ws"), accept)
    page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    wait_until(page, lambda: len(room.sockets) == 1, "the page to connect")
    room.send(welcome(0, [ME]))
    expect_live(page)

    # 30 messages the scripted server never acknowledges: the page sends them at the pace the
    # server allows, then the server restarts with most of them still unanswered.
    queued = [f"queued {n:02d}" for n in range(1, 31)]
    type_quickly(page, queued)
    wait_until(page, lambda: len(arrivals[0].messages()) >= 14, "part of the queue")
    room.sockets[0].close(code=1012, reason="server restart")
    wait_until(page, lambda: len(room.sockets) == 2, "a reconnect after 1012", timeout_s=10)
    room.send(welcome(0, [ME], recovered=True))
    expect_live(page)
    # Everything unanswered is resent (same ids, in order), paced again: no burst of 30.
    wait_until(page, lambda: len(arrivals[1].messages()) == 30, "the whole queue resent", 60)
    assert [m["text"] for m in arrivals[1].messages()] == queued
    first_ids = {m["text"]: m["id"] for m in arrivals[0].messages()}
    for resent in arrivals[1].messages():
        assert first_ids.get(resent["text"], resent["id"]) == resent["id"], "a new id"
    for n, record in enumerate(arrivals):
        assert record.over_rate() == [], f"socket {n} sent faster than the server allows"


def test_a_rate_limit_refusal_pauses_the_queue_and_one_line_says_so(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    room.send(welcome(0, [ME]))
    expect_live(page)
    type_quickly(page, [f"m{n}" for n in range(1, 6)])
    wait_until(page, lambda: len(room.sent_messages()) == 5, "five messages")
    sent = room.sent_messages()
    # The server (configured stricter than the page assumed) refuses the last two.
    for m in sent[3:]:
        room.send({"type": "error", "code": "rate_limited", "message": "slow down",
                   "retry_after": 4, "id": m["id"]})
    line = page.locator("#queue-status")
    expect(line).to_have_text(QUEUE_LINE)
    expect(line).to_contain_text("2 queued")
    # One countdown (the next to go), not one per bubble.
    countdowns = [t for t in pending(page).all_inner_texts() if "sending in" in t.lower()]
    assert len(countdowns) == 1, countdowns
    page.wait_for_timeout(2000)
    assert len(room.sent_messages()) == 5, "resent before the server's retry_after"
    wait_until(page, lambda: len(room.sent_messages()) == 7, "the two resent", 20)
    assert [m["id"] for m in room.sent_messages()[5:]] == [m["id"] for m in sent[3:]]
    room.send(*[{"type": "ack", "id": m["id"], "seq": n + 1} for n, m in enumerate(sent)],
              *[message(n + 1, ME, m["text"], m["id"]) for n, m in enumerate(sent)])
    expect(pending(page)).to_have_count(0)
    expect(line).to_be_hidden()


def test_a_4008_is_explained_in_words(server: RoomchatServer, open_page: PageOpener) -> None:
    page, room = open_scripted(server, open_page)
    room.send(welcome(0, [ME]))
    expect_live(page)
    room.sockets[0].close(code=4008, reason="rate limit abuse")
    expect(status(page)).to_have_attribute("data-code", "4008")
    expect(status(page)).to_have_attribute("data-wait", "too_fast")
    expect(status(page)).to_contain_text(re.compile(r"Sent too fast · reconnecting in \d+s"))
    expect(page.locator("#composer-note")).to_contain_text(
        "disconnected this page for sending too many messages too fast")
    expect(page.locator("#status-live")).to_have_text("Disconnected for sending too fast; "
                                                      "will reconnect")

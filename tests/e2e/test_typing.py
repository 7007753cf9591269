"""Typing indicators: "Bob is typing…" in the other people's pages, relayed at most once per 3 s
per user by the server, gone after about 5 s or when the message arrives, never stored."""

from __future__ import annotations

import json

from playwright.sync_api import Page, WebSocket, expect

from .conftest import PageOpener
from .harness import ChatPeer, RoomchatServer
from .pages import expect_live, message_box, send, texts


def count_typing_frames(page: Page) -> list[str]:
    """Every `typing` object the page receives, as the user it names (watched from now on)."""
    seen: list[str] = []

    def on_socket(ws: WebSocket) -> None:
        def on_frame(payload: str | bytes) -> None:
            text = payload.decode() if isinstance(payload, bytes) else payload
            for line in text.split("\n"):
                if '"typing"' in line:
                    seen.append(json.loads(line)["user"])

        ws.on("framereceived", on_frame)

    page.on("websocket", on_socket)
    return seen


def test_typing_shows_in_the_other_pages_throttled_and_ephemeral(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    alice = open_page()
    seen = count_typing_frames(alice)
    alice.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(alice)
    bob = open_page(server.link("lobby", server.token("bob", ["lobby"], name="Bob")))
    expect_live(bob)
    typing_line = alice.locator("#typing")
    expect(typing_line).to_be_hidden()

    # Bob types a sentence, key by key: Alice sees it once, Bob does not see himself.
    message_box(bob).press_sequentially("hello there, Alice", delay=40)
    expect(typing_line).to_have_text("Bob is typing…")
    expect(bob.locator("#typing")).to_be_hidden()
    assert seen == ["bob"], seen

    # A client that sends typing frames as fast as it can is relayed once per 3 s.
    with ChatPeer(server, "lobby", "carol", name="Carol") as carol:
        for _ in range(10):
            carol.ws.send('{"type":"typing"}')
        expect(typing_line).to_have_text("Bob and Carol are typing…")
        alice.wait_for_timeout(1000)
        assert seen == ["bob", "carol"], seen

        # Gone about 5 s after the last signal, with nothing sent meanwhile.
        expect(typing_line).to_be_hidden(timeout=10_000)
        expect(texts(alice)).to_have_count(0)

    # A message ends its author's typing at once.
    message_box(bob).fill("")
    message_box(bob).press_sequentially("hi!", delay=40)
    expect(typing_line).to_have_text("Bob is typing…")
    message_box(bob).press("Enter")
    expect(texts(alice)).to_have_text(["hi!"])
    expect(typing_line).to_be_hidden(timeout=2000)

    # Never stored: a newcomer's history holds only the message.
    with ChatPeer(server, "lobby", "dave") as dave:
        assert [m["text"] for m in dave.read_history()] == ["hi!"]
        assert dave.welcome["seq"] == 1
    send(alice, "bye")

"""Replies in the page (issue 21), against the real server: the quote of the message answered
above the message box (Escape or its button cancels it), the sent message showing the quote
(name and excerpt) for everyone, a click on the quote going to the original, loading older
pages when it is far back, and a deleted original."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.apicall import call_sync
from tests.support import make_token

from .conftest import PageOpener, Shooter
from .harness import ChatPeer, RoomchatServer, fill
from .pages import (
    expect_live,
    in_view,
    item_of,
    message_box,
    message_item,
    open_menu,
    send,
    seqs,
    texts,
)


def test_reply_shows_the_quote_for_everyone_and_a_click_goes_to_the_original(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        original = bob.send("Who brings the cake on Friday?", "b-1")["seq"]
        bob.send("And the candles?", "b-2")
        alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
        expect_live(alice)
        expect(texts(alice)).to_have_count(2)

        # The mouse's way: the reply arrow beside the bubble. Escape cancels.
        message_item(alice, "And the candles?").hover()
        message_item(alice, "And the candles?").get_by_role("button", name="Reply").click()
        bar = alice.locator("#reply-bar")
        expect(bar).to_have_text(re.compile(r"Replying to Bob: And the candles\?"))
        expect(message_box(alice)).to_be_focused()
        message_box(alice).press("Escape")
        expect(bar).to_be_hidden()

        # The menu's way, to the first one; the quote stays while typing; Enter sends.
        menu = open_menu(alice, "Who brings the cake on Friday?")
        menu.get_by_role("button", name="Reply").click()
        expect(bar).to_have_text(re.compile(r"Replying to Bob: Who brings the cake on Friday\?"))
        expect(message_box(alice)).to_be_focused()
        shoot(alice, "reply-composer")
        send(alice, "I do!")
        expect(bar).to_be_hidden()
        sent = bob.next_of("message")
        while sent.get("text") != "I do!":
            sent = bob.next_of("message")
        assert sent["reply_to"]["seq"] == original
        assert sent["reply_to"]["name"] == "Bob"
        assert sent["reply_to"]["excerpt"] == "Who brings the cake on Friday?"

        quote = message_item(alice, "I do!").locator(".reply-quote")
        expect(quote.locator(".reply-name")).to_have_text("Bob")
        expect(quote.locator(".reply-excerpt")).to_have_text("Who brings the cake on Friday?")
        expect(quote).to_have_accessible_name(
            re.compile(r"^In reply to Bob: Who brings the cake on Friday\?"))
        shoot(alice, "reply-sent")

    # Someone else's page shows the same quote; a click (or Enter) goes to the original.
    carol = open_page(server.link("lobby", server.token("carol", ["lobby"], name="Carol")))
    expect_live(carol)
    quote = message_item(carol, "I do!").locator(".reply-quote")
    expect(quote.locator(".reply-excerpt")).to_have_text("Who brings the cake on Friday?")
    quote.focus()
    carol.keyboard.press("Enter")
    target = item_of(carol, original)
    expect(target).to_be_focused()
    expect(target).to_have_class(re.compile(r"\bhighlight\b"))


def test_a_quote_of_a_message_far_back_loads_older_pages_to_show_it(
    busy_server: RoomchatServer, open_page: PageOpener
) -> None:
    server = busy_server
    fill(server, "lobby", 160)  # message n has seq n
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        # The original (Bob's) was edited since: the page loaded from history shows its current
        # text.
        bob.change({"type": "edit", "seq": 2, "text": "m002, edited", "id": "e-1"})
        bob.send("answering the second", "b-r", reply_to=2)
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(alice)
    expect(texts(alice)).to_have_count(50)
    assert 2 not in seqs(alice)
    quote = message_item(alice, "answering the second").locator(".reply-quote")
    # The excerpt is the text that was answered (taken when the reply was accepted).
    expect(quote.locator(".reply-excerpt")).to_have_text("m002, edited")
    quote.click()
    target = item_of(alice, 2)
    expect(target).to_be_focused()
    expect(target.locator(".text")).to_have_text("m002, edited")
    expect(target.locator(".edited")).to_have_count(1)
    assert in_view(alice, 2)
    # Every message between is there: the pages were put on top in order, no gap.
    shown = seqs(alice)
    assert shown == sorted(shown) and shown[0] <= 2 and len(shown) == len(set(shown))
    messages = [s for s in shown if s <= 160]
    assert messages == list(range(messages[0], 161))


def test_a_reply_to_a_deleted_message_says_so(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        original = bob.send("soon gone", "b-1")["seq"]
        bob.send("a reply", "b-2", reply_to=original)
        alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
        expect_live(alice)
        quote = message_item(alice, "a reply").locator(".reply-excerpt")
        expect(quote).to_have_text("soon gone")
        # Alice starts a reply to it; it is deleted meanwhile: the page drops the quote and says so.
        open_menu(alice, "soon gone").get_by_role("button", name="Reply").click()
        expect(alice.locator("#reply-bar")).to_be_visible()
        api = make_token("backend", ["*"], secret=server.secret, scope="api")
        status_, _, _ = call_sync(server.port, "DELETE", f"/rooms/lobby/messages/{original}",
                                  token=api)
        assert status_ == 200
        # Live: the original becomes a tombstone, and the quote of it is emptied as the server's.
        expect(texts(alice)).to_have_text(["message deleted", "a reply"])
        expect(quote).to_have_text("message deleted")
        expect(alice.locator("#reply-bar")).to_be_hidden()
        expect(alice.locator("#composer-note")).to_have_text(
            "The message you were replying to was deleted.")
    alice.reload()
    expect_live(alice)
    expect(message_item(alice, "a reply").locator(".reply-excerpt")).to_have_text(
        "message deleted")

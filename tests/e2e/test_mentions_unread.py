"""Mentions and unread in the page (issue 21), against the real server.

Mentions: "@" offers the room's members (online, then recent authors), from the keyboard or the
mouse; the message lists the ids picked that are still in its text; mentions show highlighted and a
message mentioning you is marked. Unread: the read marker moves as messages are seen (tab shown and
focused), reaches the user's other tabs, and after a reload a "New since you left" line sits
above the first unread message, the count is in the title, and "Jump to first unread" loads
older pages to get there."""

from __future__ import annotations

import re
import time
from typing import Any

from playwright.sync_api import Page, expect

from .conftest import PageOpener, Shooter
from .harness import ChatPeer, RoomchatServer, fill
from .pages import (
    HIDDEN_TAB,
    expect_live,
    in_view,
    item_of,
    message_box,
    message_item,
    set_hidden,
    texts,
)

TITLE = "#lobby · roomchat"


def unread_of(server: RoomchatServer, user: str) -> dict[str, Any]:
    """The server's read marker and counts for ``user`` in lobby, as a new connection of theirs
    is told in its welcome."""
    with ChatPeer(server, "lobby", user) as peer:
        welcome = peer.welcome
    return {key: welcome[key] for key in ("read", "unread", "mentions")}


def wait_for_marker(server: RoomchatServer, user: str, seq: int, timeout_s: float = 20) -> None:
    """Until the server holds ``user``'s read marker at ``seq`` or beyond (the page sends it at
    most every 2 s)."""
    deadline = time.monotonic() + timeout_s
    while unread_of(server, user)["read"] < seq:
        assert time.monotonic() < deadline, f"read marker never reached {seq}"
        time.sleep(0.2)  # polling the server's state, not a timing assumption


def test_at_mentions_offer_members_and_mark_the_mentioned(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    with ChatPeer(server, "lobby", "carol", name="Carol Jones") as carol:
        carol.send("carol was here", "c-1")  # a recent author, gone by the time Alice types
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    bob = open_page(server.link("lobby", server.token("bob", ["lobby"], name="Bob Smith")))
    expect_live(alice)
    expect_live(bob)
    box = message_box(alice)
    box.fill("")
    box.type("lunch @")
    options = alice.get_by_role("listbox", name="People to mention").get_by_role("option")
    # Online first (Bob), then recent authors (Carol); never oneself.
    expect(options).to_have_text(
        [re.compile(r"^Bob Smith @bob"), re.compile(r"^Carol Jones @carol")])
    expect(box).to_have_attribute("aria-activedescendant", "mention-list-0")
    box.type("jo")  # narrows by any word of the name
    expect(options).to_have_text([re.compile(r"^Carol Jones")])
    box.press("Enter")
    expect(box).to_have_value("lunch @Carol Jones ")
    box.type("and @b")
    shoot(alice, "mention-autocomplete")
    alice.get_by_role("option", name=re.compile("^Bob Smith")).click()
    expect(box).to_have_value("lunch @Carol Jones and @Bob Smith ")
    box.type("?")
    with ChatPeer(server, "lobby", "dave", name="Dave") as dave:
        box.press("Enter")
        sent = dave.next_of("message")
        while sent.get("text") != "lunch @Carol Jones and @Bob Smith ?":
            sent = dave.next_of("message")
        assert sorted(sent["mentions"]) == ["bob", "carol"]

        # A name picked, then deleted from the text, is not mentioned.
        box.type("hi @bo")
        box.press("Tab")
        expect(box).to_have_value("hi @Bob Smith ")
        box.fill("hi everyone")
        box.press("Enter")
        sent = dave.next_of("message")
        while sent.get("text") != "hi everyone":
            sent = dave.next_of("message")
        assert "mentions" not in sent

    # Rendered: both names highlighted; Bob's page marks the message mentioning him.
    first = "lunch @Carol Jones and @Bob Smith ?"
    for page in (alice, bob):
        expect(message_item(page, first).locator(".mention")).to_have_text(
            ["@Carol Jones", "@Bob Smith"])
    expect(message_item(bob, first)).to_have_class(re.compile(r"\bmentions-me\b"))
    expect(message_item(bob, first).locator(".mention-me")).to_have_text("@Bob Smith")
    expect(message_item(alice, first)).not_to_have_class(re.compile(r"\bmentions-me\b"))
    expect(message_item(bob, "hi everyone")).not_to_have_class(re.compile(r"\bmentions-me\b"))
    # Escape closes the list without touching the text.
    box.type("@")
    expect(options.first).to_be_visible()
    box.press("Escape")
    expect(alice.get_by_role("listbox", name="People to mention")).to_be_hidden()
    expect(box).to_have_value("@")


def open_alice(open_page: PageOpener, server: RoomchatServer, hidden: bool = False) -> Page:
    page = open_page(init_script=HIDDEN_TAB + (
        "window.__hidden = true;" if hidden else ""))
    page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    return page


def test_the_unread_line_after_a_reload_and_the_count_in_the_title(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        for n in range(1, 4):
            bob.send(f"old {n}", f"b-{n}")
        alice = open_alice(open_page, server)
        expect(texts(alice)).to_have_count(3)
        # Seen (at the bottom, tab shown and focused): the marker reaches the server.
        wait_for_marker(server, "alice", 3)
        expect(alice).to_have_title(TITLE)
        # Hidden: new messages are not read; the title counts them.
        set_hidden(alice, True)
        bob.send("new 1", "b-4")
        bob.send("new 2", "b-5")
        expect(alice).to_have_title(f"(2) {TITLE}")
        expect(alice.locator("#log li.unread-line")).to_have_count(0)  # no line while here
        alice.close()
        assert unread_of(server, "alice")["read"] == 3
        assert unread_of(server, "alice")["unread"] == 2

        # Back later (a reload, the tab in the background): the line sits above "new 1".
        alice = open_alice(open_page, server, hidden=True)
        line = alice.locator("#log li.unread-line")
        expect(line).to_have_text("New since you left")
        after_line = alice.locator("#log li.unread-line + li.msg .text")
        expect(after_line).to_have_text("new 1")
        expect(alice).to_have_title(f"(2) {TITLE}")
        # The line is on screen: no need for the jump button.
        expect(alice.locator("#unread-jump")).to_be_hidden()
        shoot(alice, "unread-line")
        # Shown: read; the title clears, the line stays for this visit.
        set_hidden(alice, False)
        expect(alice).to_have_title(TITLE)
        wait_for_marker(server, "alice", 5)
        bob.send("new 3", "b-6")
        expect(texts(alice)).to_have_count(6)
        expect(line).to_have_count(1)
        expect(alice).to_have_title(TITLE)  # seen as it came

    # Nothing unread at the next visit: no line.
    wait_for_marker(server, "alice", 6)
    alice.reload()
    expect_live(alice)
    expect(texts(alice)).to_have_count(6)
    expect(alice.locator("#log li.unread-line")).to_have_count(0)


def test_jump_to_first_unread_loads_older_pages(
    busy_server: RoomchatServer, open_page: PageOpener
) -> None:
    server = busy_server
    fill(server, "lobby", 10)
    alice = open_alice(open_page, server)
    wait_for_marker(server, "alice", 10)
    alice.close()
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        for n in range(11, 131):
            bob.send(f"n{n:03d}", f"b-{n}")  # seq n
    alice = open_alice(open_page, server, hidden=True)
    expect(texts(alice)).to_have_count(50)
    expect(alice).to_have_title(f"(120) {TITLE}")
    jump = alice.get_by_role("button", name="Jump to first unread")
    expect(jump).to_be_visible()
    expect(alice.locator("#log li.unread-line")).to_have_count(0)  # not loaded yet
    jump.click()
    line = alice.locator("#log li.unread-line")
    expect(line).to_be_visible()
    expect(item_of(alice, 11)).to_be_focused()
    expect(alice.locator("#log li.unread-line + li.msg")).to_have_attribute("data-seq", "11")
    assert in_view(alice, 11)
    expect(jump).to_be_hidden()
    # Hidden, nothing was marked read by the jump; shown, what is on screen is.
    assert unread_of(server, "alice")["read"] == 10
    set_hidden(alice, False)
    deadline = time.monotonic() + 20
    while unread_of(server, "alice")["read"] <= 10:
        assert time.monotonic() < deadline, "the marker did not move to what was on screen"
        time.sleep(0.2)
    assert unread_of(server, "alice")["read"] < 130  # only what was seen, not the bottom


def test_the_read_marker_reaches_the_users_other_tab(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    background = open_alice(open_page, server, hidden=True)
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("for both tabs", "b-1")
        expect(background).to_have_title(f"(1) {TITLE}")
        # The same user reads it in another tab: the background one learns it from the server.
        front = open_alice(open_page, server)
        expect(texts(front)).to_have_text(["for both tabs"])
        expect(background).to_have_title(TITLE)
        assert front.title() == TITLE

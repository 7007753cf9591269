"""People and links in the conversation (issue 20, item 15): two members with one display name are
told apart by their user id, `www.` addresses are links, and a server restart does not make
anyone seem to leave or join again."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from .conftest import PageOpener, Shooter
from .harness import ChatPeer, RoomchatServer
from .pages import expect_live, send, status, texts, wait_until
from .scripted import BOB, ME, open_scripted, welcome

CAROL = {"user": "carol", "name": "Carol"}
# How long the page holds a "left" line in case the member comes straight back (static/ui.js,
# LEAVE_HOLD_MS), plus a margin.
PAST_LEAVE_HOLD_MS = 6500


def presence_lines(page: Page) -> list[str]:
    return page.locator("#log li.presence .system-text").all_inner_texts()


def test_two_members_with_one_name_are_told_apart_by_their_id(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    with ChatPeer(server, "lobby", "bob-smith", name="Bob") as first:
        first.send("from the first Bob", "b-1")
        page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
        expect_live(page)
        expect(texts(page)).to_have_text(["from the first Bob"])
        # Only one Bob so far: no ids shown.
        expect(page.locator("#log .handle:visible")).to_have_count(0)
        with ChatPeer(server, "lobby", "bob-jones", name="Bob") as second, \
                ChatPeer(server, "lobby", "carol", name="Carol") as carol:
            second.send("from the second Bob", "b-2")
            carol.send("from Carol", "c-1")
            expect(texts(page)).to_have_count(3)
            # Every place that names them shows whose it is (an earlier message too).
            authors = page.locator("#log li.msg .meta")
            expect(authors).to_have_text([re.compile(r"^Bob\s*@bob-smith"),
                                          re.compile(r"^Bob\s*@bob-jones"),
                                          re.compile(r"^Carol\s*\d")])
            members = page.locator("#member-list li")
            expect(members).to_have_text([re.compile(r"Alice\s*\(you\)"),
                                          re.compile(r"Bob\s*@bob-jones"),
                                          re.compile(r"Bob\s*@bob-smith"),
                                          re.compile(r"Carol$")])
            expect(members.filter(has_text="Carol").locator(".handle")).to_have_count(0)
            expect(page.locator("#log li.presence .system-text").last).to_have_text(
                re.compile(r"Carol joined"))
            expect(page.locator("#log li.presence .system-text").first).to_have_text(
                re.compile(r"Bob\s*@bob-jones\s*joined"))
            second.ws.send('{"type":"typing"}')
            expect(page.locator("#typing")).to_have_text("Bob (@bob-jones) is typing…")
            shoot(page, "same-name-told-apart")


def test_www_addresses_are_links(server: RoomchatServer, open_page: PageOpener) -> None:
    page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    send(page, "see www.example.org. and (www.example.com/a?b=1) but not mail@www.example.net")
    text = texts(page).first
    expect(text).to_contain_text("see www.example.org.")
    links = text.locator("a")
    expect(links).to_have_count(2)
    expect(links.nth(0)).to_have_text("www.example.org")
    expect(links.nth(0)).to_have_attribute("href", "https://www.example.org/")
    expect(links.nth(1)).to_have_text("www.example.com/a?b=1")
    expect(links.nth(1)).to_have_attribute("href", "https://www.example.com/a?b=1")
    expect(links.nth(0)).to_have_attribute("rel", "noopener noreferrer nofollow")


def test_a_server_restart_shows_nobody_leaving_or_joining_again(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(alice)
    bob = open_page(server.link("lobby", server.token("bob", ["lobby"], name="Bob")))
    expect_live(bob)
    expect(alice.locator("#log li.presence")).to_have_text([re.compile("Bob joined")])
    before = {"alice": presence_lines(alice), "bob": presence_lines(bob)}

    server.restart()
    for page in (alice, bob):
        expect_live(page)
        expect(page.locator("#member-list li")).to_have_count(2)
    alice.wait_for_timeout(PAST_LEAVE_HOLD_MS)
    assert {"alice": presence_lines(alice), "bob": presence_lines(bob)} == before
    # Real comings and goings still show.
    bob.close()
    expect(alice.locator("#log li.presence .system-text").last).to_have_text(
        "Bob left", timeout=30_000)


def test_a_leave_and_join_of_one_member_within_a_reconnect_is_not_news(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    room.send(welcome(0, [ME, BOB]))
    expect_live(page)

    def presence(event: str, who: dict[str, str]) -> dict[str, object]:
        return {"type": "presence", "event": event, **who, "ts": 1764100000000}

    # Bob's connection drops and he is back a moment later: neither is shown.
    room.send(presence("leave", BOB))
    room.send(presence("join", BOB))
    # A second join of someone already here (another of their connections, another process).
    room.send(presence("join", BOB))
    # A leave of someone not here.
    room.send(presence("leave", CAROL))
    page.wait_for_timeout(PAST_LEAVE_HOLD_MS)
    assert presence_lines(page) == []
    expect(page.locator("#member-list .member-name")).to_have_text(["Alice", "Bob"])

    # Someone new joins: shown at once, once.
    room.send(presence("join", CAROL), presence("join", CAROL))
    expect(page.locator("#log li.presence .system-text")).to_have_text(["Carol joined"])
    # Bob leaves for good: the list drops him at once, the line follows once he stays away.
    room.send(presence("leave", BOB))
    expect(page.locator("#member-list .member-name")).to_have_text(["Alice", "Carol"])
    expect(page.locator("#log li.presence .system-text")).to_have_text(
        ["Carol joined", "Bob left"], timeout=PAST_LEAVE_HOLD_MS + 5000)

    # Our own reconnect: whoever was here and comes back after us is not news either.
    room.sockets[0].close(code=1012, reason="server restart")
    wait_until(page, lambda: len(room.sockets) == 2, "a reconnect after 1012", timeout_s=10)
    room.send(welcome(0, [ME], recovered=True))
    expect_live(page)
    room.send(presence("join", CAROL))
    expect(page.locator("#member-list .member-name")).to_have_text(["Alice", "Carol"])
    page.wait_for_timeout(1000)
    expect(page.locator("#log li.presence .system-text")).to_have_text(
        ["Carol joined", "Bob left"])
    expect(status(page)).to_have_attribute("data-state", "live")

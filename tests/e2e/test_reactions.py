"""Reactions in the page (issue 21), against the real server: the picker (frequently used, the
whole set searchable by name, from static/emoji.json: no CDN), chips with counts under the
message, a click toggles ours, who reacted on hover and on focus, the keyboard all the way, and
the server's `too_many_reactions` in words."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Route, expect

from .conftest import PageOpener, ServerFactory, Shooter
from .harness import REPO_ROOT, ChatPeer, RoomchatServer
from .pages import (
    chip,
    chips,
    expect_live,
    menu_button,
    message_item,
    moderation_dialog,
    note,
    picker,
    texts,
    wait_until,
)


def test_react_with_the_picker_toggle_and_see_who_reacted(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        seq = bob.send("lunch?", "b-1")["seq"]
        alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
        expect_live(alice)
        expect(texts(alice)).to_have_text(["lunch?"])
        # The mouse's way in: the smiley beside the bubble.
        message_item(alice, "lunch?").hover()
        message_item(alice, "lunch?").get_by_role("button", name="Add reaction").click()
        dialog = picker(alice)
        expect(dialog).to_be_visible()
        expect(dialog.get_by_role("heading", level=2)).to_have_text("React to Bob\u2019s message")
        expect(dialog.get_by_label("Search emoji")).to_be_focused()
        # The whole set comes from this server (no CDN), ~1900 emoji.
        expect(dialog.locator("#emoji-all button")).to_have_count(1923)
        alice.keyboard.type("rocket")
        expect(dialog.get_by_role("status")).to_have_text("1 emoji matches")
        expect(dialog.get_by_text("Frequently used")).to_be_hidden()
        alice.keyboard.press("Enter")
        expect(dialog).to_be_hidden()

        rocket = chip(alice, "lunch?", "🚀")
        expect(rocket).to_have_attribute("aria-pressed", "true")
        expect(rocket).to_have_attribute("aria-label", "🚀 1: you reacted with rocket")
        change = bob.next_of("change")
        assert {k: change[k] for k in ("action", "target", "emoji", "on", "user")} == {
            "action": "react", "target": seq, "emoji": "🚀", "on": True, "user": "alice"}

        # Bob's reaction: a chip Alice has not pressed, saying who.
        bob.change({"type": "react", "seq": seq, "emoji": "👍", "on": True, "id": "r-1"})
        thumbs = chip(alice, "lunch?", "👍")
        expect(thumbs).to_have_attribute("aria-pressed", "false")
        expect(thumbs).to_have_text(re.compile(r"^👍1"))
        who = thumbs.locator(".chip-who")
        expect(who).to_be_hidden()
        thumbs.hover()
        expect(who).to_be_visible()
        expect(who).to_have_text("Bob reacted with thumbs up")
        shoot(alice, "reactions-who")
        # A click adds ours: 2, pressed, both named.
        thumbs.click()
        expect(thumbs).to_have_attribute("aria-pressed", "true")
        expect(thumbs).to_have_attribute("aria-label", "👍 2: Bob and you reacted with thumbs up")
        # Another click on the rocket takes ours back: that chip goes.
        rocket.click()
        expect(chips(alice, "lunch?")).to_have_count(1)
        off = bob.next_of("change")
        while not (off.get("emoji") == "🚀" and off.get("on") is False):
            off = bob.next_of("change")

    # A reload draws the same chips (history in its current state); "frequently used" now
    # starts with what this browser picked.
    alice.reload()
    expect_live(alice)
    expect(chip(alice, "lunch?", "👍")).to_have_attribute("aria-pressed", "true")
    expect(chips(alice, "lunch?")).to_have_count(1)
    chip(alice, "lunch?", "👍").locator("xpath=..").get_by_role(
        "button", name="Add reaction").click()
    expect(picker(alice).locator("#emoji-frequent button").first).to_have_text("🚀")


def test_reactions_from_the_keyboard(server: RoomchatServer, open_page: PageOpener) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("hi all", "b-1")
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(alice)
    menu = menu_button(alice, "hi all")
    menu.focus()
    alice.keyboard.press("Enter")
    dialog = moderation_dialog(alice)
    expect(dialog.get_by_role("button", name="Reply")).to_be_focused()
    # The menu's first row: a few reactions, then the whole set.
    quick = dialog.get_by_role("group", name="React")
    expect(quick.get_by_role("button", name="React with thumbs up")).to_be_visible()
    alice.keyboard.press("ArrowUp")
    more = quick.get_by_role("button", name="More reactions…")
    expect(more).to_be_focused()
    alice.keyboard.press("Enter")
    dialog = picker(alice)
    expect(dialog.get_by_label("Search emoji")).to_be_focused()
    # Down into the frequently used, Right to the second (red heart by default), Enter.
    alice.keyboard.press("ArrowDown")
    expect(dialog.locator("#emoji-frequent button").first).to_be_focused()
    alice.keyboard.press("ArrowRight")
    expect(dialog.locator("#emoji-frequent button").nth(1)).to_be_focused()
    alice.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    # Focus went back to the message's menu button.
    expect(menu).to_be_focused()
    heart = chip(alice, "hi all", "❤️")
    expect(heart).to_have_attribute("aria-pressed", "true")
    # Shift+Tab reaches the chips; focus shows who reacted; Space takes ours back.
    alice.keyboard.press("Shift+Tab")
    expect(message_item(alice, "hi all").locator(".chip-add")).to_be_focused()
    alice.keyboard.press("Shift+Tab")
    expect(heart).to_be_focused()
    expect(heart.locator(".chip-who")).to_be_visible()
    expect(heart.locator(".chip-who")).to_have_text("you reacted with red heart")
    alice.keyboard.press("Space")
    expect(chips(alice, "hi all")).to_have_count(0)
    # The chips went with the last reaction; the focus stayed in the message, on its menu.
    expect(menu).to_be_focused()

    # Escape closes the picker with nothing picked, and the focus is back on the menu button.
    alice.keyboard.press("Enter")
    alice.keyboard.press("ArrowUp")
    alice.keyboard.press("Enter")
    expect(picker(alice)).to_be_visible()
    alice.keyboard.press("Escape")
    expect(picker(alice)).to_be_hidden()
    expect(menu).to_be_focused()
    expect(chips(alice, "hi all")).to_have_count(0)


def test_the_focus_stays_on_a_frequent_emoji_when_the_whole_set_arrives(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    """Someone who arrows into the frequently used emoji before static/emoji.json has loaded
    keeps their place when it arrives: the set names the buttons shown, it does not replace
    them (replacing them once dropped the focus to the page)."""
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("hi all", "b-1")
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    held: list[Route] = []

    def hold(route: Route) -> None:  # let through below, once the focus is in the grid
        held.append(route)

    alice.route(re.compile(r"/static/emoji\.json$"), hold)
    expect_live(alice)
    menu_button(alice, "hi all").focus()
    alice.keyboard.press("Enter")
    alice.keyboard.press("ArrowUp")
    alice.keyboard.press("Enter")
    dialog = picker(alice)
    expect(dialog.get_by_label("Search emoji")).to_be_focused()
    wait_until(alice, lambda: len(held) == 1, "the emoji set requested")
    alice.keyboard.press("ArrowDown")
    alice.keyboard.press("ArrowRight")
    second = dialog.locator("#emoji-frequent button").nth(1)
    expect(second).to_be_focused()
    held[0].continue_()
    expect(dialog.locator("#emoji-all button")).not_to_have_count(0)
    expect(second).to_be_focused()
    expect(second).to_have_attribute("aria-label", "red heart")
    alice.keyboard.press("Enter")
    expect(chip(alice, "hi all", "❤️")).to_have_attribute("aria-pressed", "true")


def test_a_reaction_over_the_rooms_limit_is_refused_in_words(
    make_server: ServerFactory, open_page: PageOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOMCHAT_MAX_REACTIONS", "2")
    server = make_server()
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        seq = bob.send("vote", "b-1")["seq"]
        bob.change({"type": "react", "seq": seq, "emoji": "👍", "on": True, "id": "r-1"})
        bob.change({"type": "react", "seq": seq, "emoji": "👎", "on": True, "id": "r-2"})
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(alice)
    expect(chips(alice, "vote")).to_have_count(2)
    message_item(alice, "vote").locator(".chip-add").click()
    # Typed only once the search has the focus and the set has loaded (a loaded machine is slow
    # to get there), and Enter only once the search found it.
    dialog = picker(alice)
    expect(dialog.get_by_label("Search emoji")).to_be_focused()
    expect(dialog.locator("#emoji-all button")).to_have_count(1923)
    alice.keyboard.type("rocket")
    expect(dialog.get_by_role("status")).to_have_text("1 emoji matches")
    alice.keyboard.press("Enter")
    expect(note(alice)).to_have_text(
        "This message has as many different reactions as it can take: add yours to one already "
        "there.")
    expect(chips(alice, "vote")).to_have_count(2)
    # One already there still takes ours.
    chip(alice, "vote", "👍").click()
    expect(chip(alice, "vote", "👍")).to_have_attribute("aria-pressed", "true")


def test_the_emoji_data_is_whole_single_graphemes_with_names(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    """static/emoji.json (scripts/build-emoji-data.py's output): every entry one grapheme (as
    the browser segments text) with a name, no duplicates, the usual reactions there."""
    page = open_page(f"{server.base_url}/static/emoji.json")
    not_one: list[str] = page.evaluate(
        """async () => {
          const doc = await (await fetch('/static/emoji.json')).json();
          const graphemes = new Intl.Segmenter('en', { granularity: 'grapheme' });
          return doc.emoji.map((e) => e[0]).filter((e) => [...graphemes.segment(e)].length !== 1);
        }""")
    assert not_one == []
    doc = json.loads((REPO_ROOT / "static" / "emoji.json").read_text())
    entries = doc["emoji"]
    assert len(entries) > 1800
    emoji = [e[0] for e in entries]
    assert len(set(emoji)) == len(emoji)
    for entry in entries:
        assert 2 <= len(entry) <= 3 and all(isinstance(x, str) and x for x in entry), entry
        assert entry[1] == entry[1].lower() and ":" not in entry[1], entry
    names = {e[0]: e[1] for e in entries}
    assert names["👍"] == "thumbs up" and names["❤️"] == "red heart" and names["🚀"] == "rocket"
    # No skin-tone variants (the picker offers the default of each).
    assert not any(chr(c) in e for e in emoji for c in range(0x1F3FB, 0x1F400))

"""Accessibility: axe-core finds nothing serious or critical in light and dark mode; the status
countdown does not tick inside a live region; grouped messages keep their author for screen
readers and show their time on hover or focus; the message box has the focus on load; messages
lay out right to left when written so.

axe-core comes from npm into tests/e2e/axe/ (package.json + package-lock.json are committed): the
first test run does `npm ci` there; Node's npm must be on PATH."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Page, expect

from tests.support import make_token

from .accessibility import axe_problems
from .conftest import PageOpener
from .harness import ChatPeer, RoomchatServer, wait_for_marker
from .pages import (
    HIDDEN_TAB,
    chip,
    expect_live,
    menu_buttons,
    message_box,
    moderation_dialog,
    open_menu,
    send,
    status,
    texts,
)


def busy_room(server: RoomchatServer, page: Page) -> None:
    """A conversation with everything a page draws: other people's and own messages, a group, a
    presence line, right-to-left text, a link, the typing line."""
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("Hi Alice! Notes at https://example.org/notes", "b-1")
        bob.send("A second line from Bob (grouped)", "b-2")
        bob.send("مرحبا بالجميع", "b-3")
        expect_live(page)
        expect(texts(page)).to_have_count(3)
        send(page, "Hello Bob")
        send(page, "And again (grouped)")
        bob.ws.send('{"type":"typing"}')
        expect(page.locator("#typing")).to_have_text("Bob is typing…")
        expect(texts(page)).to_have_count(5)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious_in_a_conversation(
    server: RoomchatServer, open_page: PageOpener, axe_source: str, scheme: str
) -> None:
    page = open_page(color_scheme=scheme, init_script=axe_source)
    page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    busy_room(server, page)
    problems = axe_problems(page)
    assert not problems, "\n".join(problems)
    # A grouped message's time, shown on hover, is readable too.
    page.locator("#log li.msg.continued").first.hover()
    problems = axe_problems(page)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious_in_a_moderators_view(
    server: RoomchatServer, open_page: PageOpener, axe_source: str, scheme: str
) -> None:
    page = open_page(color_scheme=scheme, init_script=axe_source)
    token = make_token("alice", ["lobby"], name="Alice", secret=server.secret, moderator=True)
    page.goto(server.link("lobby", token))
    busy_room(server, page)
    expect(menu_buttons(page)).to_have_count(5)
    page.locator("#log li.msg.other").first.hover()
    problems = axe_problems(page)
    assert not problems, "\n".join(problems)
    dialog = open_menu(page, "A second line from Bob (grouped)")
    problems = axe_problems(page)
    assert not problems, "\n".join(problems)
    dialog.get_by_role("button", name="Ban Bob from this room").click()
    problems = axe_problems(page)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious_on_the_refusal_panel(
    server: RoomchatServer, open_page: PageOpener, axe_source: str, scheme: str
) -> None:
    page = open_page(color_scheme=scheme, init_script=axe_source)
    page.goto(server.link("lobby", server.token("al", ["lobby"], ttl=-120)))
    expect(page.locator("#auth-title")).to_have_text("This link has expired")
    problems = axe_problems(page)
    assert not problems, "\n".join(problems)


def test_screen_readers_hear_state_changes_not_countdown_ticks(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page = open_page(server.link("lobby", server.token("alice", ["lobby"])))
    expect_live(page)
    # The pill that counts down is not a live region; a hidden one says what changed.
    live_regions = page.locator("[role=status], [role=alert], [aria-live]")
    assert status(page).get_attribute("role") is None
    assert status(page).get_attribute("aria-live") is None
    assert page.locator("#status [role=status], #status [aria-live]").count() == 0
    announcer = page.locator("#status-live")
    expect(announcer).to_have_text("Connected")
    assert live_regions.count() >= 1

    server.stop()  # the page waits and counts down to its next try
    expect(status(page)).to_have_attribute("data-state", "reconnecting")
    said: set[str] = set()
    ticks: set[str] = set()
    # Sample for at least 3 s, and on until the text has changed (at most 10 s): a loaded CI
    # machine once showed one text for the whole of a fixed 2.8 s window. State, announcement
    # and text are read in one go: read one by one, a retry starting in between (state
    # "connecting", announced "Reconnecting…") could be taken for a waiting state's words.
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < 10 and (elapsed < 3 or len(ticks) < 2):
        state, announced, text = page.evaluate(
            "() => [document.querySelector('#status').dataset.state,"
            " document.querySelector('#status-live').textContent,"
            " document.querySelector('#status-text').textContent]")
        if state == "reconnecting":
            said.add(announced)
            ticks.add(text)
        page.wait_for_timeout(250)
    assert len(ticks) > 1, "the visible countdown should still tick"
    # What is announced is the state ("Offline; will reconnect", then, once a retry has failed
    # (full jitter can retry at once), "Can't connect; will retry"), never a countdown tick.
    assert said <= {"Offline; will reconnect", "Can\u2019t connect; will retry"}, said
    assert not said & ticks, (said, ticks)
    server.start()
    expect_live(page)
    expect(announcer).to_have_text("Connected")


def test_grouped_messages_keep_their_author_and_show_their_time_on_hover(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("first", "b-1")
        bob.send("second", "b-2")
        bob.send("שלום לכולם", "b-3")
    page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    # The message box has the focus: type right away.
    expect(message_box(page)).to_be_focused()
    grouped = page.locator("#log li.msg.continued")
    expect(grouped).to_have_count(2)
    second = grouped.first
    # Screen readers still get the author (in the accessibility tree, not display: none).
    author = second.locator(".author")
    expect(author).to_have_text("Bob")
    assert author.evaluate("e => getComputedStyle(e).display") != "none"
    assert "Bob" in second.evaluate("li => li.innerText") or author.is_visible() is False
    # The time appears on hover (and on focus within), hidden otherwise.
    time_ = second.locator("time")
    assert float(time_.evaluate("e => getComputedStyle(e).opacity")) == 0
    second.hover()
    expect(time_).to_have_css("opacity", "1")
    # Right-to-left text lays out right to left.
    rtl = texts(page).last
    expect(rtl).to_have_attribute("dir", "auto")
    assert rtl.evaluate("e => getComputedStyle(e).direction") == "rtl"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious_in_a_queue_with_shared_names_and_after_the_session_ended(
    server: RoomchatServer, open_page: PageOpener, axe_source: str, scheme: str
) -> None:
    page = open_page(color_scheme=scheme, init_script=axe_source)
    page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    with ChatPeer(server, "lobby", "bob-smith", name="Bob") as first, \
            ChatPeer(server, "lobby", "bob-jones", name="Bob") as second:
        first.send("one Bob", "b-1")
        second.send("another Bob", "b-2")
        expect_live(page)
        expect(page.locator("#log li.msg .handle")).to_have_count(2)
        # More than the page sends at once (a burst of 10, then 2 a second): a queue and its
        # line. Submitted in one turn of the page's loop: typed one by one through Playwright
        # at load 11, the tokens refilled between them and no queue formed (runs 35 and 36).
        message_box(page).evaluate("""(box, count) => {
            for (let n = 0; n < count; n++) {
                box.value = `quick ${n}`;
                box.dispatchEvent(new Event('input', {bubbles: true}));
                document.getElementById('composer').requestSubmit();
            }
        }""", 15)
        expect(page.locator("#queue-status")).to_be_visible()
        problems = axe_problems(page)
        assert not problems, "\n".join(problems)
        expect(texts(page)).to_have_count(17, timeout=60_000)
        server.revoke("alice")
        expect(page.locator("#auth-title")).to_have_text("Your access was revoked")
        expect(message_box(page)).to_be_disabled()
        problems = axe_problems(page)
        assert not problems, "\n".join(problems)


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [390, 1280])
def test_axe_finds_nothing_serious_with_rich_messages(
    busy_server: RoomchatServer, open_page: PageOpener, axe_source: str, scheme: str, width: int
) -> None:
    """Reactions, a reply's quote, "(edited)", a mention of you, formatting, the unread line and
    its jump button, and each dialog and popup of issue 21, at a phone's width and a desktop's."""
    server = busy_server
    link = server.link("lobby", server.token("alice", ["lobby"], name="Alice"))
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("before you came", "b-0")
        visit = open_page(link)  # Alice reads it, and leaves
        expect(texts(visit)).to_have_count(1)
        wait_for_marker(server, "alice", 1)
        visit.close()
        for n in range(1, 56):
            bob.send(f"while you were away {n}", f"b-{n}")
        rich = "Formatting: *bold* _it_ ~st~ `code` www.example.org\n> quoted\n```\nblock\n```"
        original = bob.send(rich, "b-f")["seq"]
        bob.send("@Alice see this", "b-m", mentions=["alice"])
        bob.send("answering the formatting", "b-r", reply_to=original)
        bob.change({"type": "react", "seq": original, "emoji": "👍", "on": True, "id": "r-1"})
        bob.change({"type": "react", "seq": original, "emoji": "🎉", "on": True, "id": "r-2"})
        typo = bob.send("a typo hree", "b-t")["seq"]
        bob.change({"type": "edit", "seq": typo, "text": "a typo here", "id": "e-1"})

        page = open_page(width=width, height=844 if width < 500 else 800, color_scheme=scheme,
                         init_script=axe_source + HIDDEN_TAB + "window.__hidden = true;")
        page.goto(link)
        expect_live(page)
        send(page, "mine, with a reaction")
        page.locator("#log li.msg.own").last.locator(".msg-menu").click()
        moderation_dialog(page).get_by_role("button", name="React with thumbs up").click()
        expect(chip(page, "mine, with a reaction", "👍")).to_have_attribute("aria-pressed", "true")
        expect(page.get_by_role("button", name="Jump to first unread")).to_be_visible()
        problems = axe_problems(page)
        assert not problems, "\n".join(problems)

        # Hovered: the tools beside a bubble, a chip's "who reacted".
        item = page.locator("#log li.msg", has_text="answering the formatting")
        item.hover()
        page.locator("#log li.msg .chip[data-emoji]").first.hover()
        problems = axe_problems(page)
        assert not problems, "\n".join(problems)

        # The picker, searched.
        page.locator("#log li.msg .chip-add").first.click()
        page.keyboard.type("party")
        problems = axe_problems(page)
        assert not problems, "\n".join(problems)
        page.keyboard.press("Escape")

        # Replying, with the mention list open.
        page.locator("#log li.msg .msg-menu").last.click()
        moderation_dialog(page).get_by_role("button", name="Reply").click()
        message_box(page).type("@b")
        expect(page.get_by_role("listbox", name="People to mention")).to_be_visible()
        problems = axe_problems(page)
        assert not problems, "\n".join(problems)
        message_box(page).press("Escape")
        message_box(page).fill("")

        # Editing in place.
        message_box(page).press("ArrowUp")
        expect(page.get_by_label("Edit message", exact=True)).to_be_focused()
        problems = axe_problems(page)
        assert not problems, "\n".join(problems)
        page.keyboard.press("Escape")

        # The notifications dialog.
        page.get_by_role("button", name="Notifications: off").click()
        problems = axe_problems(page)
        assert not problems, "\n".join(problems)
        page.keyboard.press("Escape")

        # The unread line, jumped to; scrolled up there, a new message brings the "1 new message"
        # pill (white on the dark theme's light accent was 3:1 before --accent-fill).
        page.get_by_role("button", name="Jump to first unread").click()
        expect(page.locator("#log li.unread-line")).to_be_visible()
        bob.send("one more", "b-last")
        expect(page.get_by_role("button", name="1 new message")).to_be_visible()
        problems = axe_problems(page)
        assert not problems, "\n".join(problems)
        assert page.evaluate("document.documentElement.scrollWidth") <= width

"""The page where a session ends or never starts (issue 20, item 15): the composer is disabled with
the reason, the online list does not go on claiming who is online, the conversation stays
readable and scrollable, a ban says until when in local time, an invalid room name gets the
page's own refusal card (not a raw JSON page), and a moderator's success is not dressed as an
error."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.apicall import call_sync
from tests.support import make_token

from .conftest import PageOpener, ServerFactory, Shooter
from .harness import ChatPeer, RoomchatServer
from .pages import expect_live, message_box, open_menu, status, texts


def api_token(server: RoomchatServer) -> str:
    return make_token("backend", ["*"], secret=server.secret, scope="api")


def ban(server: RoomchatServer, user: str, **fields: object) -> None:
    code, body, _ = call_sync(server.port, "POST", "/rooms/lobby/bans", {"user": user, **fields},
                              token=api_token(server))
    assert code == 200, body


def expect_composer_disabled(page: Page, reason: str | re.Pattern[str]) -> None:
    """Nothing can be typed or sent, and the box says why."""
    box = message_box(page)
    expect(box).to_be_disabled()
    expect(page.get_by_role("button", name="Send message")).to_be_disabled()
    expect(box).to_have_attribute("placeholder", reason)


# Each way into a dead end: (how to get the page there, the words the composer shows).
def _expired(server: RoomchatServer, open_page: PageOpener) -> Page:
    return open_page(server.link("lobby", server.token("al", ["lobby"], ttl=-120)))


def _forbidden(server: RoomchatServer, open_page: PageOpener) -> Page:
    return open_page(server.link("lobby", server.token("al", ["kitchen"])))


def _invalid(server: RoomchatServer, open_page: PageOpener) -> Page:
    return open_page(server.link("lobby", "garbage"))


def _banned(server: RoomchatServer, open_page: PageOpener) -> Page:
    ban(server, "al", reason="spam")
    return open_page(server.link("lobby", server.token("al", ["lobby"])))


def _revoked(server: RoomchatServer, open_page: PageOpener) -> Page:
    page = open_page(server.link("lobby", server.token("al", ["lobby"])))
    expect_live(page)
    server.revoke("al")
    return page


DEAD_ENDS: dict[str, tuple[Callable[[RoomchatServer, PageOpener], Page], str]] = {
    "expired": (_expired, "Can\u2019t send messages: your link expired"),
    "forbidden": (_forbidden, "Can\u2019t send messages: you are not allowed in this room"),
    "invalid": (_invalid, "Can\u2019t send messages: this link is not valid"),
    "banned": (_banned, "Can\u2019t send messages: you are banned from this room"),
    "revoked": (_revoked, "Can\u2019t send messages: your access was revoked"),
}


@pytest.mark.parametrize("kind", DEAD_ENDS)
def test_a_dead_end_disables_the_composer_and_says_why(
    server: RoomchatServer, open_page: PageOpener, kind: str
) -> None:
    reach, words = DEAD_ENDS[kind]
    page = reach(server, open_page)
    expect(page.locator("#auth")).to_be_visible()
    expect_composer_disabled(page, words)


def test_joining_by_name_after_an_expired_link_enables_the_composer_again(
    make_server: ServerFactory, open_page: PageOpener
) -> None:
    server = make_server("--dev-login")
    page = open_page(server.link("lobby", server.token("al", ["lobby"], ttl=-120)))
    expect_composer_disabled(page, "Can\u2019t send messages: your link expired")
    name = page.get_by_label("Your name")
    name.fill("Carol")
    name.press("Enter")
    expect_live(page)
    box = message_box(page)
    expect(box).to_be_enabled()
    expect(box).to_have_attribute("placeholder", "Message #lobby")
    box.fill("back in")
    box.press("Enter")
    expect(texts(page)).to_have_text(["back in"])


def test_when_the_session_ends_the_online_list_is_cleared_and_history_stays_readable(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        lines = [f"line {n:02d} of the conversation" for n in range(1, 21)]
        for n, text in enumerate(lines):
            bob.send(text, f"b-{n}")
        page = open_page(server.link("lobby", server.token("mallory", ["lobby"], name="Mallory")),
                         width=390, height=640)
        expect_live(page)
        expect(texts(page)).to_have_text(lines)
        page.get_by_role("button", name="Show online members").click()
        expect(page.locator("#member-list .member-name")).to_have_text(["Bob", "Mallory"])
        server.revoke("mallory")
        expect(page.locator("#auth-title")).to_have_text("Your access was revoked")

        # Nobody is claimed to be online any more.
        expect(page.locator("#member-list li")).to_have_count(0)
        expect(page.locator("#members-note")).to_have_text("Not connected")
        expect(page.locator("#member-count")).to_have_text("0")
        expect(page.locator("#room-sub")).not_to_contain_text("online")
        page.get_by_role("button", name="Hide online members").click()

        # The history is neither blurred nor covered, and scrolls.
        assert page.evaluate("""() => [...document.querySelectorAll('*')].filter((e) => {
            const s = getComputedStyle(e);
            return s.backdropFilter !== 'none' || s.filter !== 'none';
          }).map((e) => e.id || e.className)""") == []
        scroller = page.locator("#scroller")
        before = scroller.evaluate("s => s.scrollTop")
        assert scroller.evaluate("s => s.scrollHeight > s.clientHeight")
        scroller.hover()
        page.mouse.wheel(0, -2000)
        deadline = time.monotonic() + 10
        while scroller.evaluate("s => s.scrollTop") >= before:
            assert time.monotonic() < deadline, "the conversation does not scroll"
            page.wait_for_timeout(100)
        first = texts(page).first
        first.scroll_into_view_if_needed()
        box = first.bounding_box()
        assert box is not None
        hit = page.evaluate(
            "([x, y]) => document.elementFromPoint(x, y)?.closest('li.msg')?.dataset.seq",
            [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2])
        assert hit == "1", "the first message is covered"
        # The card that explains it is still there, beside the conversation, not over it.
        expect(page.locator("#auth-text")).to_be_visible()
        shoot(page, "session-ended-history-readable-390")


def test_a_ban_card_shows_when_it_ends_in_local_time(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    until = int(time.time()) + 3 * 86400 + 1234
    ban(server, "eve", until=until, reason="spam")
    page = open_page(server.link("lobby", server.token("eve", ["lobby"], name="Eve")))
    expect(status(page)).to_have_attribute("data-reason", "banned")
    local = page.evaluate(
        "(s) => new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'short'})"
        ".format(new Date(s * 1000))", until)
    text = page.locator("#auth-text")
    expect(text).to_contain_text(f"The ban ends on {local}.")
    expect(text).to_contain_text("Reason given: spam")
    expect(text).not_to_contain_text("Unix")
    expect(text).not_to_contain_text(str(until))
    shoot(page, "banned-until-local-time")


def test_a_ban_until_lifted_says_so(server: RoomchatServer, open_page: PageOpener) -> None:
    ban(server, "eve")
    page = open_page(server.link("lobby", server.token("eve", ["lobby"], name="Eve")))
    expect(page.locator("#auth-text")).to_contain_text("The ban lasts until a moderator lifts it.")


@pytest.mark.parametrize("name", ["bad!name", "x" * 65, "sp%20ace"])
def test_an_invalid_room_name_gets_the_pages_refusal_card_not_json(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter, name: str
) -> None:
    page = open_page()
    response = page.goto(f"{server.base_url}/rooms/{name}")
    assert response is not None
    assert response.status == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("#auth-title")).to_have_text("This is not a room")
    expect(page.locator("#auth-text")).to_contain_text("Room names are 1 to 64 letters")
    expect(status(page)).to_contain_text("Offline")
    if name == "bad!name":
        shoot(page, "invalid-room-name")
    # Programs asking for JSON still get JSON (fetch's default Accept is */*).
    answer = page.evaluate("""async (url) => {
        const res = await fetch(url);
        return [res.status, res.headers.get('content-type'), await res.text()];
      }""", f"/rooms/{name}")
    assert answer[0] == 404 and answer[1].startswith("application/json"), answer
    assert json.loads(answer[2])["error"] == "bad_room"


def test_a_client_that_asks_for_nothing_in_particular_gets_json_for_a_bad_room(
    server: RoomchatServer,
) -> None:
    for accept in (None, "application/json", "*/*"):
        request = urllib.request.Request(f"{server.base_url}/rooms/bad!name")
        if accept:
            request.add_header("Accept", accept)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 404
        assert caught.value.headers["content-type"].startswith("application/json"), accept
        assert json.loads(caught.value.read())["error"] == "bad_room"


def test_a_moderators_success_note_is_not_styled_as_an_error(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("remove me", "b-1")
    page = open_page(server.link("lobby", make_token("alice", ["lobby"], name="Alice",
                                                     secret=server.secret, moderator=True)))
    expect_live(page)
    dialog = open_menu(page, "remove me")
    dialog.get_by_role("button", name="Delete message").click()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    note = page.locator("#composer-note")
    expect(note).to_have_text("Message deleted")
    expect(note).to_have_attribute("data-kind", "success")
    colours = page.evaluate("""() => {
        const probe = document.createElement('span');
        probe.style.color = 'var(--danger)';
        document.body.append(probe);
        const danger = getComputedStyle(probe).color;
        probe.style.color = 'var(--ok)';
        const ok = getComputedStyle(probe).color;
        probe.remove();
        return [getComputedStyle(document.querySelector('#composer-note')).color, danger, ok];
      }""")
    assert colours[0] != colours[1], "the success note is in the error colour"
    assert colours[0] == colours[2], colours
    # An error afterwards is still an error.
    page.evaluate("window.roomchat.note('The server refused a message.')")
    expect(note).not_to_have_attribute("data-kind", "success")

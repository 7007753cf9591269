"""The page's protocol handling against a scripted server (Playwright's WebSocket routing).

The real server serves the page; its WebSocket is answered by the test, so we can send exactly
what the protocol allows but a real server rarely produces on cue: coalesced frames, duplicates,
unknown types, rate-limit errors, and each close code.
"""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from .conftest import PageOpener, Shooter
from .harness import RoomchatServer
from .pages import (
    expect_live,
    menu_buttons,
    open_menu,
    pending,
    send,
    status,
    texts,
    wait_until,
)
from .scripted import BOB, ME, message, open_scripted, welcome


def test_coalesced_frames_duplicates_and_unknown_types(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    page, room = open_scripted(server, open_page)
    room.send(
        welcome(2, [ME, BOB]),
        message(1, BOB, "one"),
        message(2, ME, "two", "c-earlier"),
    )
    expect_live(page)
    expect(texts(page)).to_have_text(["one", "two"])
    expect(page.locator("#log li.msg.own .text")).to_have_text(["two"])

    # A replayed seq is dropped; unknown types and fields are ignored; order is kept.
    room.send(
        message(2, ME, "two (again)", "c-earlier"),
        {"type": "typing", "user": "bob"},
        {**message(3, BOB, "three"), "reactions": {"+1": 2}},
        message(1, BOB, "one (again)"),
    )
    room.send(message(4, BOB, "four"))
    expect(texts(page)).to_have_text(["one", "two", "three", "four"])

    room.send({"type": "ping", "ts": 1764100009000})
    wait_until(page, lambda: {"type": "pong"} in room.received[0], "a pong")

    room.send(
        {
            "type": "presence",
            "event": "join",
            "user": "carol",
            "name": "Carol",
            "ts": 1764100010000,
        },
        {"type": "presence", "event": "leave", "user": "bob", "name": "Bob", "ts": 1764100011000},
    )
    expect(page.locator("#member-list .member-name")).to_have_text(["Alice", "Carol"])
    expect(page.locator("#log li.presence .system-text")).to_have_text(["Carol joined", "Bob left"])
    shoot(page, "scripted-conversation")


def test_rate_limited_messages_are_resent_with_the_same_id_and_refusals_shown(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    page, room = open_scripted(server, open_page)
    room.send(welcome(0, [ME]))
    expect_live(page)

    send(page, "hello")
    wait_until(page, lambda: len(room.sent_messages()) == 1, "the message")
    first = room.sent_messages()[0]
    assert first["text"] == "hello"
    assert isinstance(first["id"], str) and 1 <= len(first["id"]) <= 64
    room.send(
        {
            "type": "error",
            "code": "rate_limited",
            "message": "slow down",
            "retry_after": 0.3,
            "id": first["id"],
        }
    )
    wait_until(page, lambda: len(room.sent_messages()) == 2, "the resend")
    assert room.sent_messages()[1] == first
    room.send({"type": "ack", "id": first["id"], "seq": 1}, message(1, ME, "hello", first["id"]))
    expect(pending(page)).to_have_count(0)
    expect(texts(page)).to_have_text(["hello"])

    send(page, "x" * 50)
    wait_until(page, lambda: len(room.sent_messages()) == 3, "the second message")
    refused = room.sent_messages()[2]
    room.send(
        {
            "type": "error",
            "code": "text_too_long",
            "message": "the text is too long",
            "id": refused["id"],
        }
    )
    failed = pending(page)
    expect(failed).to_have_attribute("data-state", "failed")
    expect(failed).to_contain_text("the text is too long")
    shoot(page, "refused-message")
    failed.get_by_role("button", name="Edit").click()
    expect(pending(page)).to_have_count(0)
    expect(page.get_by_label("Message", exact=True)).to_have_value("x" * 50)

    room.send({"type": "error", "code": "invalid_json", "message": "not one JSON object"})
    expect(page.locator("#composer-note")).to_have_text("not one JSON object")


def test_policy_close_stops_and_shows_the_reason(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    room.send(welcome(1, [ME]), message(1, BOB, "hi"))
    expect(texts(page)).to_have_text(["hi"])
    room.sockets[0].close(code=1008, reason="too many invalid frames")
    expect(status(page)).to_have_attribute("data-state", "offline")
    expect(status(page)).to_have_attribute("data-code", "1008")
    expect(status(page)).to_contain_text("too many invalid frames")
    again = page.locator("#reconnect-now")
    expect(again).to_be_visible()
    assert len(room.sockets) == 1  # offline means no timer is pending: it will not come back alone

    again.click()
    wait_until(page, lambda: len(room.sockets) == 2, "a reconnect on request")
    assert "after=1" in room.sockets[1].url


def test_restart_close_reconnects_soon_and_a_lost_history_is_replaced(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    room.send(welcome(2, [ME, BOB]), message(1, BOB, "old one"), message(2, BOB, "old two"))
    expect(texts(page)).to_have_text(["old one", "old two"])

    room.sockets[0].close(code=1012, reason="server restart")
    expect(status(page)).to_have_attribute("data-state", re.compile("reconnecting|connecting"))
    wait_until(page, lambda: len(room.sockets) == 2, "a reconnect after 1012", timeout_s=10)
    assert "after=2" in room.sockets[1].url
    # The server's data was reset: it cannot replay from seq 2 and says so; the page starts over.
    room.send(welcome(1, [ME], recovered=False), message(1, BOB, "new world"))
    expect_live(page)
    expect(texts(page)).to_have_text(["new world"])


def test_slow_consumer_close_reconnects_with_backoff_and_resumes(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    room.send(welcome(1, [ME]), message(1, BOB, "first"))
    expect(texts(page)).to_have_text(["first"])

    # Full jitter draws the wait from [0, ceiling]: a draw near 0 left no countdown to see
    # (about 1 run in 20). The top of the window is the case under test.
    page.evaluate("() => { Math.random = () => 0.99; }")
    room.sockets[0].close(code=4009, reason="")
    expect(status(page)).to_have_attribute("data-state", "reconnecting")
    expect(status(page)).to_contain_text(re.compile(r"reconnecting in \d+s"))
    wait_until(page, lambda: len(room.sockets) == 2, "a reconnect after 4009")
    assert "after=1" in room.sockets[1].url
    room.send(welcome(2, [ME], recovered=True), message(1, BOB, "first"), message(2, BOB, "second"))
    expect_live(page)
    expect(texts(page)).to_have_text(["first", "second"])


def test_moderation_frames_their_answers_and_a_lost_moderator_flag(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    room.send({**welcome(2, [ME, BOB]), "moderator": True}, message(1, BOB, "one"),
              message(2, BOB, "two"))
    expect(texts(page)).to_have_text(["one", "two"])
    expect(menu_buttons(page)).to_have_count(2)

    def moderation_frames() -> list[dict[str, Any]]:
        return [f for f in room.received[-1] if f.get("type") in ("delete", "ban")]

    dialog = open_menu(page, "one")
    dialog.get_by_role("button", name="Delete message").click()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    wait_until(page, lambda: len(moderation_frames()) == 1, "the delete frame")
    frame = moderation_frames()[0]
    assert frame["seq"] == 1 and isinstance(frame["id"], str)
    # The refusal shows in the dialog (not as a composer note), which stays open.
    room.send({"type": "error", "code": "not_found", "message": "no message 1 is stored",
               "id": frame["id"]})
    expect(dialog.get_by_role("alert")).to_have_text(
        "That message no longer exists (deleted from the history, or never stored).")
    expect(page.locator("#composer-note")).to_have_text("")

    dialog.get_by_role("button", name="Back").click()
    dialog.get_by_role("button", name="Ban Bob from this room").click()
    dialog.get_by_label("For").select_option(label="Until lifted")
    dialog.get_by_role("button", name="Ban", exact=True).click()
    wait_until(page, lambda: len(moderation_frames()) == 2, "the ban frame")
    ban = moderation_frames()[1]
    assert {k: v for k, v in ban.items() if k != "id"} == {"type": "ban", "user": "bob"}
    room.send({"type": "moderated", "action": "ban", "user": "bob", "until": None,
               "reason": "", "id": ban["id"]})
    expect(dialog).to_be_hidden()
    expect(page.locator("#composer-note")).to_have_text("Bob was banned from #lobby")

    # The next connection's welcome does not say moderator (a new token): the menus no longer
    # offer to delete someone else's message, or to ban.
    room.sockets[0].close(code=1012, reason="server restart")
    wait_until(page, lambda: len(room.sockets) == 2, "a reconnect after 1012", timeout_s=10)
    room.send(welcome(2, [ME, BOB], recovered=True))
    expect_live(page)
    expect(menu_buttons(page)).to_have_count(2)
    dialog = open_menu(page, "two")
    expect(dialog.get_by_role("button", name="Delete message")).to_be_hidden()
    expect(dialog.get_by_role("button", name=re.compile("^Ban "))).to_be_hidden()


def test_a_ban_close_stops_the_page_and_says_why(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    room.send(welcome(1, [ME]), message(1, BOB, "hi"))
    expect(texts(page)).to_have_text(["hi"])
    room.sockets[0].close(code=4004, reason="banned")
    expect(status(page)).to_have_attribute("data-reason", "banned")
    expect(page.locator("#auth-title")).to_have_text("You were banned from this room")
    expect(page.locator("#reconnect-now")).to_be_hidden()
    page.wait_for_timeout(2000)  # the first backoff would be over by now
    assert len(room.sockets) == 1

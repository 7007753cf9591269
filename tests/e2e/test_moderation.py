"""Moderation seen in the page: a moderator's delete through the server API (live and after a
reload), and a moderator's own menu on each message: delete, ban (with a confirm step, from the
keyboard too), the server's refusal shown, and what the banned member's page does."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from tests.apicall import call_sync
from tests.support import make_token

from .conftest import PageOpener, Shooter
from .harness import ChatPeer, RoomchatServer
from .pages import (
    expect_live,
    menu_button,
    menu_buttons,
    message_box,
    message_item,
    moderation_dialog,
    open_menu,
    send,
    status,
    texts,
)
from .test_refusals import QUIET_MS, open_watched


def test_a_deleted_message_shows_as_deleted_live_and_after_reload(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    api = make_token("backend", ["*"], secret=server.secret, scope="api")
    for text in ("keep me", "remove me"):
        status_, _, _ = call_sync(server.port, "POST", "/rooms/lobby/messages", {"text": text},
                                  token=api)
        assert status_ == 200
    page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    expect(texts(page)).to_have_text(["keep me", "remove me"])
    status_, _, _ = call_sync(server.port, "DELETE", "/rooms/lobby/messages/2", token=api)
    assert status_ == 200
    expect(texts(page)).to_have_text(["keep me", "message deleted"])
    page.reload()
    expect_live(page)
    expect(texts(page)).to_have_text(["keep me", "message deleted"])


def mod_token(server: RoomchatServer, user: str, **claims: Any) -> str:
    """A token for ``user`` in lobby with moderator claims (``moderator=True`` or ``mod=[...]``)."""
    return make_token(user, ["lobby"], name=user.capitalize(), secret=server.secret, **claims)


def test_a_moderator_deletes_from_the_menu_and_another_members_page_shows_it(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("remove me", "b-1")
        bob.send("keep me", "b-2")
    mod = open_page(server.link("lobby", mod_token(server, "alice", moderator=True)))
    member = open_page(server.link("lobby", server.token("carol", ["lobby"], name="Carol")))
    for page in (mod, member):
        expect_live(page)
        expect(texts(page)).to_have_text(["remove me", "keep me"])
    # Every message has a menu; only the moderator's offers to delete someone else's message.
    expect(menu_buttons(mod)).to_have_count(2)
    expect(menu_buttons(member)).to_have_count(2)
    theirs = open_menu(member, "remove me")
    expect(theirs.get_by_role("button", name="Copy link to message")).to_be_visible()
    expect(theirs.get_by_role("button", name="Delete message")).to_be_hidden()
    expect(theirs.get_by_role("button", name=re.compile("^Ban "))).to_be_hidden()
    member.keyboard.press("Escape")
    expect(theirs).to_be_hidden()

    dialog = open_menu(mod, "remove me")
    expect(dialog.get_by_role("heading")).to_have_text("Message from Bob")
    expect(dialog.get_by_role("button", name="Ban Bob from this room")).to_be_visible()
    dialog.get_by_role("button", name="Delete message").click()
    # A confirm step before anything happens.
    expect(dialog.get_by_text("Delete this message for everyone?")).to_be_visible()
    expect(texts(member)).to_have_text(["remove me", "keep me"])
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(dialog).to_be_hidden()
    for page in (mod, member):
        expect(texts(page)).to_have_text(["message deleted", "keep me"])
    # A tombstone has nothing left to moderate; the menu's button went with it, so the focus
    # goes back to the message box.
    expect(message_item(mod, "message deleted").locator("button.msg-menu")).to_have_count(0)
    expect(message_box(mod)).to_be_focused()
    mod.reload()
    expect_live(mod)
    expect(texts(mod)).to_have_text(["message deleted", "keep me"])
    expect(menu_buttons(mod)).to_have_count(1)


def test_the_menu_works_from_the_keyboard_and_escape_closes_it(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("hello", "b-1")
    page = open_page(server.link("lobby", mod_token(server, "alice", mod=["lobby"])))
    expect_live(page)
    button = menu_button(page, "hello")
    expect(button).to_have_attribute("aria-label", re.compile("^Actions for message from Bob at "))
    button.focus()
    page.keyboard.press("Enter")
    dialog = moderation_dialog(page)
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("button", name="Reply")).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(dialog.get_by_role("button", name="Copy link to message")).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(dialog.get_by_role("button", name="Delete message")).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(dialog.get_by_role("button", name="Ban Bob from this room")).to_be_focused()
    page.keyboard.press("Enter")
    expect(dialog.get_by_label("Reason (optional)")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(button).to_be_focused()
    expect(texts(page)).to_have_text(["hello"])  # nothing was done


def test_a_moderator_bans_from_the_menu_and_the_banned_page_says_so_and_stops(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    mod = open_page(server.link("lobby", mod_token(server, "alice", moderator=True)))
    expect_live(mod)
    eve, traffic = open_watched(open_page, server.link("lobby", server.token("eve", ["lobby"],
                                                                             name="Eve")))
    expect_live(eve)
    send(eve, "buy my stuff")
    send(mod, "my own words")
    expect(texts(mod)).to_have_text(["buy my stuff", "my own words"])
    # No "Ban" on the moderator's own message.
    own = open_menu(mod, "my own words")
    expect(own.get_by_role("heading")).to_have_text("Your message")
    expect(own.get_by_role("button", name=re.compile("^Ban "))).to_be_hidden()
    mod.keyboard.press("Escape")

    dialog = open_menu(mod, "buy my stuff")
    dialog.get_by_role("button", name="Ban Eve from this room").click()
    expect(dialog.get_by_text("Ban Eve from #lobby?")).to_be_visible()
    dialog.get_by_label("Reason (optional)").fill("spam")
    dialog.get_by_role("button", name="Ban", exact=True).click()
    expect(dialog).to_be_hidden()
    expect(mod.locator("#composer-note")).to_have_text("Eve was banned from #lobby")

    expect(status(eve)).to_have_attribute("data-reason", "banned")
    expect(eve.locator("#auth-title")).to_have_text("You were banned from this room")
    expect(eve.locator("#reconnect-now")).to_be_hidden()
    tickets, sockets = len(traffic.tickets), len(traffic.sockets)
    eve.wait_for_timeout(QUIET_MS)
    assert (len(traffic.tickets), len(traffic.sockets)) == (tickets, sockets), "it retried"
    # Reloaded, the page asks once, is refused (403 banned) and says so with the reason.
    eve.reload()
    expect(status(eve)).to_have_attribute("data-reason", "banned")
    expect(eve.locator("#auth-text")).to_contain_text("spam")
    status_, ban, _ = call_sync(server.port, "GET", "/rooms/lobby/bans/eve",
                                token=make_token("svc", ["*"], secret=server.secret,
                                                 scope="api"))
    assert (status_, ban["reason"]) == (200, "spam")


def test_the_servers_refusal_shows_in_the_dialog(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("contested", "b-1")
    page = open_page(server.link("lobby", mod_token(server, "alice", moderator=True)))
    expect_live(page)
    dialog = open_menu(page, "contested")
    dialog.get_by_role("button", name="Delete message").click()
    # Someone else (the server API) deletes it first.
    api = make_token("backend", ["*"], secret=server.secret, scope="api")
    status_, _, _ = call_sync(server.port, "DELETE", "/rooms/lobby/messages/1", token=api)
    assert status_ == 200
    expect(texts(page)).to_have_text(["message deleted"])
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(dialog.get_by_role("alert")).to_have_text("That message was already deleted.")
    expect(dialog).to_be_visible()


def test_the_dialog_fits_a_phone_in_dark_mode(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("A rather long message that wraps on a narrow screen, to moderate", "b-1")
    page = open_page(server.link("lobby", mod_token(server, "alice", moderator=True)),
                     width=390, height=760, color_scheme="dark")
    expect_live(page)
    dialog = open_menu(page, "A rather long message that wraps on a narrow screen, to moderate")
    dialog.get_by_role("button", name="Ban Bob from this room").click()
    box = dialog.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(page, "moderation-dialog-390-dark")

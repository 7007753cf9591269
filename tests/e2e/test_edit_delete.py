"""Editing and deleting one's own messages in the page (issue 21), against the real server: Up
arrow in an empty box and the menu's "Edit message", Escape cancels, "(edited)" with its time on
hover, focus and for screen readers, a delete with a confirm step, everyone's page and a reload
showing the same; a page offline while others edit, delete and react ends with exactly the
server's state once it resumes; refusals in words."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.apicall import call_sync
from tests.support import make_token

from .conftest import PageOpener, ServerFactory
from .harness import ChatPeer, RoomchatServer
from .pages import (
    expect_live,
    item_of,
    menu_button,
    message_box,
    message_item,
    moderation_dialog,
    note,
    open_menu,
    send,
    status,
    texts,
)


def editor(page: Page) -> Locator:
    """The editor of the message being edited in place."""
    return page.get_by_label("Edit message", exact=True)


def test_edit_with_up_arrow_and_the_menu_seen_by_everyone_and_after_a_reload(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    bob = open_page(server.link("lobby", server.token("bob", ["lobby"], name="Bob")))
    expect_live(alice)
    expect_live(bob)
    send(alice, "helo wrld")
    send(alice, "second")
    expect(texts(bob)).to_have_text(["helo wrld", "second"])

    # Up in the empty box edits the last message of one's own; Escape cancels and gives the box
    # back, nothing sent.
    box = message_box(alice)
    box.press("ArrowUp")
    expect(editor(alice)).to_be_focused()
    expect(editor(alice)).to_have_value("second")
    editor(alice).press("Escape")
    expect(editor(alice)).to_have_count(0)
    expect(box).to_be_focused()
    expect(texts(alice)).to_have_text(["helo wrld", "second"])

    # The menu's "Edit message" on the first one; Enter saves.
    open_menu(alice, "helo wrld").get_by_role("button", name="Edit message").click()
    expect(editor(alice)).to_be_focused()
    expect(editor(alice)).to_have_value("helo wrld")
    editor(alice).fill("hello *world*")
    editor(alice).press("Enter")
    expect(editor(alice)).to_have_count(0)
    expect(box).to_be_focused()
    for page in (alice, bob):
        expect(texts(page)).to_have_text(["hello world", "second"])
        edited = message_item(page, "hello world").locator(".edited")
        expect(edited).to_contain_text("(edited)")
        expect(edited).to_have_attribute("title", re.compile(r"^Edited .*\d"))
        # Screen readers hear when.
        spoken = edited.locator(".visually-hidden")
        expect(spoken).to_have_text(re.compile(r"^\(edited at .*\d.*\)$"))
        expect(message_item(page, "hello world").locator(".text strong")).to_have_text("world")
        expect(message_item(page, "second").locator(".edited")).to_have_count(0)
    # The time of the edit shows on hover (and on focus within the message).
    when = message_item(bob, "hello world").locator(".edited-when")
    expect(when).to_be_hidden()
    message_item(bob, "hello world").hover()
    expect(when).to_be_visible()
    bob.mouse.move(0, 0)
    menu_button(bob, "hello world").focus()
    expect(when).to_be_visible()
    # Bob may not edit Alice's message: his menu does not offer it.
    dialog = open_menu(bob, "hello world")
    expect(dialog.get_by_role("button", name="Edit message")).to_be_hidden()
    expect(dialog.get_by_role("button", name="Delete message")).to_be_hidden()
    bob.keyboard.press("Escape")

    alice.reload()
    expect_live(alice)
    expect(texts(alice)).to_have_text(["hello world", "second"])
    expect(message_item(alice, "hello world").locator(".edited")).to_contain_text("(edited)")


def test_an_edit_keeps_the_focus_and_a_save_button_works_too(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(alice)
    send(alice, "line one")
    # Up edits one's last delivered message: pressed only once the echo is in.
    expect(texts(alice)).to_have_text(["line one"])
    message_box(alice).press("ArrowUp")
    expect(editor(alice)).to_be_focused()
    # Shift+Enter adds a line; the Save button saves.
    editor(alice).press("End")
    editor(alice).press("Shift+Enter")
    editor(alice).type("line two")
    alice.locator("li.msg.editing").get_by_role("button", name="Save").click()
    expect(texts(alice)).to_have_text(["line one\nline two"])
    # The pencil beside one's own bubble (for the mouse); saving unchanged text sends nothing
    # and closes the editor.
    mine = alice.locator("#log li.msg.own").first
    mine.hover()
    mine.get_by_role("button", name="Edit", exact=True).click()
    expect(editor(alice)).to_be_focused()
    editor(alice).press("Enter")
    expect(editor(alice)).to_have_count(0)
    expect(alice.locator("#log li.msg .edited")).to_have_count(1)


def test_delete_own_message_after_a_confirm_step(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    bob = open_page(server.link("lobby", server.token("bob", ["lobby"], name="Bob")))
    expect_live(alice)
    expect_live(bob)
    send(alice, "oops")
    send(alice, "keep")
    expect(texts(bob)).to_have_text(["oops", "keep"])

    dialog = open_menu(alice, "oops")
    expect(dialog.get_by_role("heading")).to_have_text("Your message")
    expect(dialog.get_by_role("button", name=re.compile("^Ban "))).to_be_hidden()
    dialog.get_by_role("button", name="Delete message").click()
    expect(dialog.get_by_text("Delete your message for everyone?")).to_be_visible()
    # Back changes nothing; the confirm step again, then Delete.
    dialog.get_by_role("button", name="Back").click()
    expect(dialog.get_by_role("button", name="Delete message")).to_be_visible()
    expect(texts(bob)).to_have_text(["oops", "keep"])
    dialog.get_by_role("button", name="Delete message").click()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(dialog).to_be_hidden()
    expect(note(alice)).to_have_text("Message deleted")
    for page in (alice, bob):
        expect(texts(page)).to_have_text(["message deleted", "keep"])
        # A tombstone has no menu, no tools.
        expect(message_item(page, "message deleted").locator("button")).to_have_count(0)
    bob.reload()
    expect_live(bob)
    expect(texts(bob)).to_have_text(["message deleted", "keep"])
    # Up arrow skips a deleted message: it edits the last one still there.
    message_box(alice).press("ArrowUp")
    expect(editor(alice)).to_have_value("keep")


def test_a_delete_another_tab_did_first_is_refused_in_words(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    link = server.link("lobby", server.token("alice", ["lobby"], name="Alice"))
    first = open_page(link)
    second = open_page(link)
    expect_live(first)
    expect_live(second)
    send(first, "twice")
    dialog = open_menu(first, "twice")
    dialog.get_by_role("button", name="Delete message").click()
    other = open_menu(second, "twice")
    other.get_by_role("button", name="Delete message").click()
    other.get_by_role("button", name="Delete", exact=True).click()
    expect(texts(first)).to_have_text(["message deleted"])
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(dialog.get_by_role("alert")).to_have_text("That message was already deleted.")
    expect(dialog).to_be_visible()


def test_an_edit_after_the_edit_window_is_refused_in_words(
    make_server: ServerFactory, open_page: PageOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOMCHAT_EDIT_WINDOW", "1")
    server = make_server()
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(alice)
    send(alice, "too late")
    expect(texts(alice)).to_have_text(["too late"])
    alice.wait_for_timeout(1500)  # the server's edit window (1 s) passes: the case under test
    message_box(alice).press("ArrowUp")
    editor(alice).fill("too late to fix")
    editor(alice).press("Enter")
    refusal = alice.locator("li.msg.editing").get_by_role("alert")
    expect(refusal).to_have_text("This message is too old to edit now.")
    # The editor stays, with the text typed, until the person gives up.
    expect(editor(alice)).to_have_value("too late to fix")
    editor(alice).press("Escape")
    expect(texts(alice)).to_have_text(["too late"])


def held_state(page: Page) -> list[dict[str, Any]]:
    """The page's copy of every message it holds, in the server API's current-state shape."""
    keep = ["seq", "text", "edited", "deleted", "reactions", "reply_to", "mentions"]
    state: list[dict[str, Any]] = page.evaluate(
        """(keep) => [...window.roomchat.client.messages.values()]
             .sort((a, b) => a.seq - b.seq)
             .map((m) => Object.fromEntries(keep.filter((k) => k in m).map((k) => [k, m[k]])))""",
        keep)
    return state


def server_state(server: RoomchatServer) -> list[dict[str, Any]]:
    api = make_token("backend", ["*"], secret=server.secret, scope="api")
    status_, body, _ = call_sync(server.port, "GET", "/rooms/lobby/messages?after=0&limit=100",
                                 token=api)
    assert status_ == 200, body
    keep = ["seq", "text", "edited", "deleted", "reactions", "reply_to", "mentions"]
    return [{k: m[k] for k in keep if k in m} for m in body["messages"]]


def test_changes_made_while_the_page_was_offline_are_folded_in_on_resume(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        seqs = [bob.send(text, f"b-{n}")["seq"] for n, text in enumerate(["one", "two", "three"])]
        alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
        expect_live(alice)
        expect(texts(alice)).to_have_text(["one", "two", "three"])
        bob.change({"type": "react", "seq": seqs[2], "emoji": "👍", "on": True, "id": "r-0"})
        expect(item_of(alice, seqs[2]).locator(".chip")).to_have_count(2)  # 👍 and "add"
        # Offline (the page stops its connection, as when the network goes), then the others act.
        alice.evaluate("window.roomchat.client.stop()")
        expect(status(alice)).to_have_attribute("data-state", "offline")
        bob.change({"type": "edit", "seq": seqs[0], "text": "one, edited", "id": "e-1"})
        bob.change({"type": "delete", "seq": seqs[1], "id": "d-1"})
        bob.change({"type": "react", "seq": seqs[2], "emoji": "👍", "on": False, "id": "r-1"})
        bob.change({"type": "react", "seq": seqs[2], "emoji": "🎉", "on": True, "id": "r-2"})
        bob.change({"type": "edit", "seq": seqs[2], "text": "three, edited", "id": "e-2"})
        # Back: a resume with after=<last seq>; the replay's changes are folded in.
        alice.evaluate("window.roomchat.client.reconnectNow()")
        expect_live(alice)
        expect(texts(alice)).to_have_text(["one, edited", "message deleted", "three, edited"])
        expect(item_of(alice, seqs[2]).locator(".chip[data-emoji]")).to_have_count(1)
        expect(item_of(alice, seqs[2]).locator('.chip[data-emoji="🎉"]')).to_have_attribute(
            "aria-label", re.compile(r"^🎉 1: Bob reacted with "))
        assert held_state(alice) == server_state(server)
        # And a page loaded afresh gets the same state from the history.
        alice.reload()
        expect_live(alice)
        expect(texts(alice)).to_have_text(["one, edited", "message deleted", "three, edited"])
        assert held_state(alice) == server_state(server)


def test_a_moderator_deletes_anyones_message_and_the_menu_says_what_they_may(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("spam", "b-1")
    token = make_token("alice", ["lobby"], name="Alice", secret=server.secret, moderator=True)
    mod = open_page(server.link("lobby", token))
    expect_live(mod)
    dialog = open_menu(mod, "spam")
    expect(dialog.get_by_role("button", name="Edit message")).to_be_hidden()
    dialog.get_by_role("button", name="Delete message").click()
    expect(dialog.get_by_text("Delete this message for everyone?")).to_be_visible()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(moderation_dialog(mod)).to_be_hidden()
    expect(texts(mod)).to_have_text(["message deleted"])

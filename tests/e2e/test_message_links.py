"""Message links in the page (issue 21), against the real server: "Copy link" gives
/rooms/<room>#msg=<seq>; opening one scrolls to that message and highlights it, loading older
pages as needed, next to the `#token=` of an invitation link (the fragment is key=value pairs);
a link to a message the room no longer holds says so."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.apicall import call_sync
from tests.support import make_token

from .conftest import PageOpener, Shooter
from .harness import ChatPeer, RoomchatServer, fill
from .pages import expect_live, in_view, item_of, note, open_menu, seqs, texts


def test_copy_link_gives_the_messages_address(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        seq = bob.send("link me", "b-1")["seq"]
    page = open_page()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
    page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    open_menu(page, "link me").get_by_role("button", name="Copy link to message").click()
    expect(note(page)).to_have_text("Link copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == f"{server.base_url}/rooms/lobby#msg={seq}"


def test_a_link_into_old_history_loads_pages_and_highlights_the_message(
    busy_server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    server = busy_server
    fill(server, "lobby", 180)  # message n has seq n
    token = server.token("alice", ["lobby"], name="Alice")
    # An invitation link that also points at a message: both keys in the fragment.
    page = open_page(f"{server.base_url}/rooms/lobby#token={token}&msg=7")
    expect_live(page)
    target = item_of(page, 7)
    expect(target).to_be_focused()
    expect(target).to_have_class(re.compile(r"\bhighlight\b"))
    expect(target.locator(".text")).to_have_text("m007")
    assert in_view(page, 7)
    # The token left the address bar; the message link stays (a reload goes there again).
    assert token not in page.url
    assert page.url.endswith("/rooms/lobby#msg=7")
    shown = seqs(page)
    assert shown == list(range(shown[0], 181)) and shown[0] <= 7
    shoot(page, "message-link-old")

    # A link followed from within the page (another message's text, the address bar).
    page.evaluate("location.hash = 'msg=150'")
    expect(item_of(page, 150)).to_be_focused()
    assert in_view(page, 150)

    # A message the room no longer holds: said in words, nothing else moves.
    api = make_token("backend", ["*"], secret=server.secret, scope="api")
    status_, _, _ = call_sync(server.port, "DELETE", "/rooms/lobby/messages/150", token=api)
    assert status_ == 200
    expect(item_of(page, 150).locator(".text")).to_have_text("message deleted")
    page.evaluate("location.hash = 'msg=999'")
    expect(note(page)).to_have_text(
        "That message is not in this room\u2019s history (deleted from it, or never stored).")


def test_a_link_to_a_recent_message_in_a_fresh_page(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        first = bob.send("the one", "b-1")["seq"]
        for n in range(2, 30):
            bob.send(f"filler {n} " + "text " * 20, f"b-{n}")
    token = server.token("alice", ["lobby"], name="Alice")
    page = open_page(f"{server.base_url}/rooms/lobby#msg={first}&token={token}", height=500)
    expect_live(page)
    expect(texts(page)).to_have_count(29)
    expect(item_of(page, first)).to_be_focused()
    assert in_view(page, first)
    # Not left at the bottom, where a fresh page would be.
    assert page.evaluate(
        "(() => { const s = document.getElementById('scroller');"
        " return s.scrollHeight - s.scrollTop - s.clientHeight; })()") > 200

"""The page's side of issue 21's protocol against a scripted server (as test_protocol_mock.py):
what a real server produces only in races or not on cue. A change already folded into a message
received in its current state, a replay that ends below the welcome's seq (`replay_upto`), a
change made while a history page was on its way, an edit refused for the rate (sent again, same
id) or in flight when the connection drops, refusals no page control can provoke (`forbidden`,
`not_found`) shown in words, and the pace of `read` frames."""

from __future__ import annotations

import json
import re
import time

from playwright.sync_api import Page, Route, expect

from .conftest import PageOpener
from .harness import RoomchatServer
from .pages import (
    HIDDEN_TAB,
    chip,
    expect_live,
    message_box,
    message_item,
    note,
    picker,
    texts,
    wait_until,
)
from .scripted import BOB, ME, TS, ScriptedRoom, change, frames, message, open_scripted, welcome


def busy_when_shown(page: Page, count: int) -> str:
    """The log's aria-busy at the moment the page first shows ``count`` messages (rendering
    them and ending the history happen in one task: the first look after it sees both)."""
    handle = page.wait_for_function(
        """(n) => document.querySelectorAll('#log li.msg').length === n
             && document.getElementById('log-region').getAttribute('aria-busy')""", arg=count)
    return str(handle.json_value())


def test_a_fresh_replay_ends_at_replay_upto_and_folds_changes_already_folded(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    # The log: 1 message, 2 message, 3 edit of 1, 4 react on 2. A fresh join replays the two
    # messages in their current state; the last entry (4) is a change: replay_upto says 2.
    room.send(
        {**welcome(4, [ME, BOB]), "replay_upto": 2},
        {**message(1, BOB, "one, edited"), "edited": TS + 3000},
        {**message(2, BOB, "two"), "reactions": [{"emoji": "👍", "users": ["bob"]}]},
    )
    assert busy_when_shown(page, 2) == "false"
    expect(texts(page)).to_have_text(["one, edited", "two"])
    # The same changes again (a replay may carry changes already folded): nothing moves.
    room.send(change(3, "edit", 1, text="one, edited"),
              change(4, "react", 2, emoji="👍", on=True))
    room.send(message(5, BOB, "three"))
    expect(texts(page)).to_have_text(["one, edited", "two", "three"])
    expect(chip(page, "two", "👍")).to_have_attribute("aria-label", re.compile(r"^👍 1: Bob "))
    expect(page.locator("#log li.msg .edited")).to_have_count(1)
    # A change replayed twice (a resume overlapping what was shown) is dropped by its seq, and
    # one to a message the page does not hold is ignored.
    room.send(change(4, "react", 2, emoji="👍", on=False),
              change(6, "react", 99, emoji="🎉", on=True),
              change(7, "delete", 1, by="author"))
    expect(texts(page)).to_have_text(["message deleted", "two", "three"])
    expect(chip(page, "two", "👍")).to_have_count(1)
    held = page.evaluate("window.roomchat.client.lastSeq")
    assert held == 7


def test_a_change_made_while_a_history_page_was_on_its_way_is_folded_into_it(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    asked: list[Route] = []

    def hold(route: Route) -> None:  # answered below, once the changes are in
        asked.append(route)

    page.route(re.compile(r"/rooms/lobby/history\?"), hold)
    # The room holds 1..60; the join shows the last 50 (11..60).
    room.send(welcome(60, [ME, BOB]), *[message(n, BOB, f"m{n:02d}") for n in range(11, 61)])
    expect(texts(page)).to_have_count(50)
    page.evaluate("document.getElementById('scroller').scrollTop = 0")
    wait_until(page, lambda: len(asked) == 1, "the older page to be asked for")
    # The page is read on the server; then, before it arrives, message 5 is edited and reacted to.
    older = [{**message(n, BOB, f"m{n:02d}")} for n in range(1, 11)]
    room.send(change(61, "edit", 5, text="m05, edited"),
              change(62, "react", 5, emoji="🎉", on=True))
    page.wait_for_function("() => window.roomchat.client.lastSeq === 62")
    asked[0].fulfill(status=200, content_type="application/json",
                     body=json.dumps({"messages": older, "oldest": 1}))
    expect(texts(page)).to_have_count(60)
    expect(message_item(page, "m05, edited").locator(".edited")).to_have_count(1)
    expect(chip(page, "m05, edited", "🎉")).to_have_count(1)


def test_an_edit_refused_for_the_rate_or_cut_off_goes_again_with_the_same_id(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    room.send(welcome(1, [ME, BOB]), message(1, ME, "my typo", "c-mine"))
    expect(texts(page)).to_have_text(["my typo"])
    message_box(page).press("ArrowUp")
    editor = page.get_by_label("Edit message", exact=True)
    editor.fill("my text")
    editor.press("Enter")
    wait_until(page, lambda: len(frames(room, "edit")) == 1, "the edit")
    edit = frames(room, "edit")[0]
    assert {k: edit[k] for k in ("seq", "text")} == {"seq": 1, "text": "my text"}
    room.send({"type": "error", "code": "rate_limited", "message": "slow down",
               "retry_after": 0.3, "id": edit["id"]})
    wait_until(page, lambda: len(frames(room, "edit")) == 2, "the edit sent again")
    assert frames(room, "edit")[1] == edit
    # The connection drops before the answer: the next connection sends it again, same id.
    room.sockets[0].close(code=1012, reason="restart")
    wait_until(page, lambda: len(room.sockets) == 2, "a reconnect", timeout_s=10)
    room.send(welcome(1, [ME, BOB], recovered=True))
    wait_until(page, lambda: len(frames(room, "edit")) == 1, "the edit on the new connection")
    assert frames(room, "edit")[0] == edit
    expect(editor).to_be_visible()  # still waiting for its answer
    room.send(change(2, "edit", 1, ME, text="my text"),
              {"type": "ack", "id": edit["id"], "seq": 2, "duplicate": True})
    expect(editor).to_have_count(0)
    expect(texts(page)).to_have_text(["my text"])


def test_refusals_no_control_can_provoke_are_shown_in_words(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    room.send(welcome(2, [ME, BOB]), message(1, ME, "mine", "c-1"), message(2, BOB, "theirs"))
    expect(texts(page)).to_have_count(2)
    # An edit the server says is not ours (another account's message on a shared device...).
    message_box(page).press("ArrowUp")
    expect(page.get_by_label("Edit message", exact=True)).to_be_focused()
    page.get_by_label("Edit message", exact=True).press("End")
    page.get_by_label("Edit message", exact=True).type("!")
    page.get_by_label("Edit message", exact=True).press("Enter")
    wait_until(page, lambda: len(frames(room, "edit")) == 1, "the edit")
    room.send({"type": "error", "code": "forbidden", "message": "not yours",
               "id": frames(room, "edit")[0]["id"]})
    expect(page.locator("li.msg.editing").get_by_role("alert")).to_have_text(
        "You can only edit your own messages.")
    page.keyboard.press("Escape")
    # A reaction to a message pruned from the history meanwhile.
    message_item(page, "theirs").hover()
    message_item(page, "theirs").get_by_role("button", name="Add reaction").click()
    # Typed once the search has the focus and the set has loaded, Enter once it found it.
    dialog = picker(page)
    expect(dialog.get_by_label("Search emoji")).to_be_focused()
    expect(dialog.locator("#emoji-all button")).to_have_count(1923)
    page.keyboard.type("rocket")
    expect(dialog.get_by_role("status")).to_have_text("1 emoji matches")
    page.keyboard.press("Enter")
    wait_until(page, lambda: len(frames(room, "react")) == 1, "the reaction")
    room.send({"type": "error", "code": "not_found", "message": "no message 2",
               "id": frames(room, "react")[0]["id"]})
    expect(note(page)).to_have_text(
        "That message no longer exists (deleted from the history, or never stored).")
    # A reply to a message deleted just before it arrived: the pending message says why.
    message_item(page, "theirs").get_by_role("button", name="Reply").click()
    message_box(page).fill("answer")
    message_box(page).press("Enter")
    wait_until(page, lambda: len(frames(room, "message")) == 1, "the reply")
    reply = frames(room, "message")[0]
    assert reply["reply_to"] == 2
    room.send({"type": "error", "code": "already_deleted", "message": "message 2 is deleted",
               "id": reply["id"]})
    expect(page.locator("#pending li")).to_contain_text(
        "Not sent: The message you replied to was deleted.")


def test_read_frames_are_paced_and_a_marker_from_another_tab_clears_the_count(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    room.send({**welcome(1, [ME, BOB]), "read": 1, "unread": 0}, message(1, BOB, "seen"))
    expect_live(page)
    started = time.monotonic()
    for n in range(2, 8):
        room.send(message(n, BOB, f"live {n}"))
        expect(texts(page)).to_have_count(n)
    wait_until(page, lambda: frames(room, "read")[-1:] == [{"type": "read", "seq": 7}],
               "the marker at the last message")
    reads = [f["seq"] for f in frames(room, "read")]
    elapsed = time.monotonic() - started
    # Never backwards, never twice the same, and no more than one per 2 s (+ the first).
    assert reads == sorted(set(reads)), reads
    assert len(reads) <= 2 + int(elapsed / 2), (reads, elapsed)
    # Hidden: the count grows; the user's other tab reads: it clears.
    page.evaluate("""() => {
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
    }""")
    room.send(message(8, BOB, "unseen"), message(9, BOB, "unseen too"))
    expect(page).to_have_title("(2) #lobby · roomchat")
    room.send({"type": "read", "seq": 9})
    expect(page).to_have_title("#lobby · roomchat")


def test_no_read_frames_to_a_server_that_keeps_no_read_markers(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    """A welcome without `read` (a process of an older version during a rolling upgrade) gets
    no `read` frames: it would count each as an invalid frame and close the socket at five."""
    page, room = open_scripted(server, open_page)
    room.send(welcome(1, [ME, BOB]), message(1, BOB, "seen"))
    for n in range(2, 5):
        room.send(message(n, BOB, f"live {n}"))
        expect(texts(page)).to_have_count(n)
    page.evaluate("window.roomchat.client.flushRead()")
    page.wait_for_timeout(2500)  # longer than the read pace: a frame would have gone by now
    assert frames(room, "read") == []
    assert page.evaluate("window.roomchat.client.readSeq") == 4  # kept, for a server that keeps it


def test_without_replay_upto_a_fresh_replay_ends_when_its_messages_stop(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    """A server that does not send `replay_upto`: a fresh replay (messages only) whose last
    message is below the welcome's seq is complete once its messages stop coming (0.4 s), well
    before the page's 3 s give-up; one that sends it needs no guess (the first test)."""
    page, room = open_scripted(server, open_page)
    page.evaluate("""() => {
      const client = window.roomchat.client;
      client.addEventListener('welcome', () => { window.__welcomeAt = performance.now(); });
      client.addEventListener('history-end', () => { window.__endAt = performance.now(); });
    }""")
    room.send(welcome(4, [ME, BOB]), message(1, BOB, "one"), message(2, BOB, "two"))
    expect(page.locator("#log-region")).to_have_attribute("aria-busy", "false")
    took = page.evaluate("window.__endAt - window.__welcomeAt")
    assert 350 <= took < 2500, took
    expect(texts(page)).to_have_text(["one", "two"])


def test_a_first_visit_counts_only_what_comes_after_it(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    """No read marker yet (0): the server counts nothing unread, and so does the title, until
    something new comes while the tab is hidden; no "New since you left" line either."""
    page = open_page(init_script=HIDDEN_TAB + "window.__hidden = true;")
    room = ScriptedRoom()
    page.route_web_socket(re.compile(r"/rooms/lobby/ws"), room.accept)
    page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    wait_until(page, lambda: len(room.sockets) == 1, "the page to connect")
    room.send({**welcome(3, [ME, BOB]), "read": 0, "unread": 0, "mentions": 0},
              *[message(n, BOB, f"before {n}") for n in range(1, 4)])
    expect(texts(page)).to_have_count(3)
    expect(page.locator("#log-region")).to_have_attribute("aria-busy", "false")
    expect(page).to_have_title("#lobby · roomchat")
    room.send(message(4, BOB, "after"))
    expect(page).to_have_title("(1) #lobby · roomchat")
    expect(page.locator("#log li.unread-line")).to_have_count(0)

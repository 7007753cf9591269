"""Older history: scrolling to the top loads the page before, the view kept still, down to a
"beginning of the room" marker; and the endpoint it uses (GET /rooms/<room>/history)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from .conftest import PageOpener, Shooter
from .harness import ChatPeer, RoomchatServer, fill
from .pages import expect_live, seqs, texts

ROOM_SIZE = 300


def get_history(server: RoomchatServer, room: str, query: str, token: str | None) -> Any:
    request = urllib.request.Request(f"{server.base_url}/rooms/{room}/history?{query}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as res:
        return json.loads(res.read())


def refusal(server: RoomchatServer, room: str, query: str, token: str | None) -> tuple[int, str]:
    with pytest.raises(urllib.error.HTTPError) as info:
        get_history(server, room, query, token)
    return info.value.code, json.loads(info.value.read())["error"]


def test_history_endpoint_pages_and_refusals(busy_server: RoomchatServer) -> None:
    server = busy_server
    fill(server, "lobby", 12)
    token = server.token("alice", ["lobby"])
    page = get_history(server, "lobby", "before=11&limit=4", token)
    assert [m["seq"] for m in page["messages"]] == [7, 8, 9, 10]
    assert page["oldest"] == 1
    first = page["messages"][0]
    assert first["type"] == "message" and first["room"] == "lobby" and first["text"] == "m007"
    start = get_history(server, "lobby", "before=3", token)
    assert [m["seq"] for m in start["messages"]] == [1, 2]
    assert get_history(server, "lobby", "before=1", token) == {"messages": [], "oldest": 1}
    assert get_history(server, "empty", "before=1", server.token("a", ["empty"]))["messages"] == []

    assert refusal(server, "lobby", "before=5", None) == (401, "missing_token")
    assert refusal(server, "lobby", "before=5", "garbage") == (401, "invalid_token")
    assert refusal(server, "lobby", "before=5", server.token("a", ["other"])) == (
        403, "room_forbidden")
    assert refusal(server, "lobby", "before=x", token) == (400, "bad_request")
    assert refusal(server, "lobby", "limit=5", token) == (400, "bad_request")
    assert refusal(server, "lobby", "before=5&limit=0", token) == (400, "bad_request")


def scroll_to_top(page: Page) -> tuple[int, float]:
    """Scroll the conversation to its top; the first message's seq and its place on screen."""
    first: list[Any] = page.evaluate(
        """() => {
          const s = document.getElementById('scroller');
          s.scrollTop = 0;
          const li = document.querySelector('#log li.msg');
          return [Number(li.dataset.seq), li.getBoundingClientRect().top];
        }"""
    )
    return int(first[0]), float(first[1])


def test_scrolling_up_loads_the_whole_room_without_gap_or_duplicate(
    busy_server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    server = busy_server
    fill(server, "lobby", ROOM_SIZE)
    page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    expect(texts(page)).to_have_count(50)
    assert seqs(page) == list(range(ROOM_SIZE - 49, ROOM_SIZE + 1))
    marker = page.locator("#log li.beginning")
    expect(marker).to_have_count(0)

    loads = 0
    while marker.count() == 0:
        shown = len(seqs(page))
        first_seq, top = scroll_to_top(page)
        if first_seq == 1:
            expect(marker).to_be_visible()
            break
        expect(page.locator("#log li.msg")).not_to_have_count(shown)
        loads += 1
        # The message that was on top has not moved: what the person was reading stays put.
        moved = page.locator(f'#log li.msg[data-seq="{first_seq}"]').evaluate(
            "li => li.getBoundingClientRect().top")
        jump = float(moved) - top
        assert abs(jump) <= 2, f"load {loads}: the view jumped by {jump:.0f} px"
        assert loads <= 10, "scrolling up never reached the beginning"

    expect(marker).to_have_text("This is the beginning of #lobby")
    assert seqs(page) == list(range(1, ROOM_SIZE + 1)), "a gap or a duplicate"
    expect(texts(page).first).to_have_text("m001")
    # The marker is the first line of the log, above the first message.
    assert page.locator("#log > li").first.get_attribute("class") == "beginning"
    shoot(page, "history-beginning")


def test_a_short_room_shows_its_beginning_at_once(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(server, "lobby", "bob") as bob:
        bob.send("only one", "b-1")
    page = open_page(server.link("lobby", server.token("alice", ["lobby"])))
    expect_live(page)
    expect(texts(page)).to_have_text(["only one"])
    expect(page.locator("#log li.beginning")).to_be_visible()


# Timestamps the first frame each socket receives (the welcome) and the moment the log stops
# being busy (the history's end), for a page opened with it.
HISTORY_CLOCK = """
(() => {
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', () => {
        if (window.__welcomeAt === undefined) window.__welcomeAt = performance.now();
      });
    }
  };
  document.addEventListener('DOMContentLoaded', () => {
    const region = document.getElementById('log-region');
    new MutationObserver(() => {
      if (region.getAttribute('aria-busy') === 'false' && window.__endAt === undefined
          && window.__welcomeAt !== undefined) window.__endAt = performance.now();
    }).observe(region, { attributes: true, attributeFilter: ['aria-busy'] });
  });
})();
"""


def test_a_fresh_history_ending_below_the_welcomes_seq_ends_without_a_wait(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    """The room's last entry is a change, so a fresh history (messages only) ends below the
    welcome's seq. The server says where (`replay_upto`): the page ends the history at that
    message at once, not after the 0.4 s of quiet it waits for from a server that does not."""
    with ChatPeer(server, "quick", "bob", name="Bob") as bob:
        bob.send("one", "b-1")
        last = bob.send("two", "b-2")["seq"]
        bob.change({"type": "react", "seq": last, "emoji": "\U0001f44d", "on": True,
                    "id": "r-1"})
        page = open_page(server.link("quick", server.token("alice", ["quick"], name="Alice")),
                         init_script=HISTORY_CLOCK)
        expect_live(page)
        expect(texts(page)).to_have_text(["one", "two"])
        expect(page.locator("#log-region")).to_have_attribute("aria-busy", "false")
        client = page.evaluate("""() => { const c = window.roomchat.client;
            return {upto: c.replayUpto, welcome: c.welcomeSeq, guess: c.guessHistoryEnd}; }""")
        assert client == {"upto": last, "welcome": last + 1, "guess": False}
        took = page.evaluate("window.__endAt - window.__welcomeAt")
        assert 0 <= took < 300, took  # HISTORY_QUIET_MS is 400

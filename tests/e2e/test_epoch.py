"""The page and a room whose stored history was reset (docs/protocol.md, "Epochs"), in
Chromium: the page sends back the epoch of the welcome its seqs come from, and drops what it
shows when a welcome names another one."""

from __future__ import annotations

from pathlib import Path

import redis
from playwright.sync_api import expect

from tests.redis_server import redis_server

from .conftest import PageOpener, ServerFactory
from .harness import RoomchatServer
from .pages import expect_live, pending, send, texts, wait_until
from .scripted import BOB, ME, message, open_scripted, welcome


def test_a_welcome_of_another_epoch_replaces_what_the_page_shows(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    """Even when it says ``recovered``: seqs of another epoch may name other messages."""
    page, room = open_scripted(server, open_page)
    room.send({**welcome(2, [ME, BOB]), "epoch": "e1"}, message(1, BOB, "old one"),
              message(2, BOB, "old two"))
    expect(texts(page)).to_have_text(["old one", "old two"])
    room.sockets[0].close(code=1012, reason="room history reset")
    wait_until(page, lambda: len(room.sockets) == 2, "a reconnect after 1012", timeout_s=10)
    assert "after=2" in room.sockets[1].url and "epoch=e1" in room.sockets[1].url
    room.send({**welcome(3, [ME, BOB], recovered=True), "epoch": "e2"},
              message(3, BOB, "after the reset"))
    expect_live(page)
    expect(texts(page)).to_have_text(["after the reset"])
    room.sockets[1].close(code=4009, reason="")
    wait_until(page, lambda: len(room.sockets) == 3, "a reconnect after 4009", timeout_s=30)
    assert "after=3" in room.sockets[2].url and "epoch=e2" in room.sockets[2].url


def test_redis_losing_its_data_under_the_page(
    make_server: ServerFactory, open_page: PageOpener, tmp_path: Path
) -> None:
    """A real server on Redis, flushed while the page is live: the message sent across the
    reset is shown (it used to be acked as seq 1, which the page had shown already, and
    vanished), and the history before it, which Redis lost, is no longer shown as current."""
    with redis_server(tmp_path / "redis") as url:
        server = make_server("--store-url", url)
        page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
        expect_live(page)
        send(page, "before one")
        send(page, "before two")
        expect(texts(page)).to_have_text(["before one", "before two"])
        expect(pending(page)).to_have_count(0)
        client = redis.Redis.from_url(url)
        try:
            client.flushall()
        finally:
            client.close()
        send(page, "across the reset")
        expect(texts(page)).to_have_text(["across the reset"])
        expect(pending(page)).to_have_count(0)
        expect_live(page)
        expect(page.locator("#log li.msg")).to_have_attribute("data-seq", "3")  # not 1 again

"""The page across failures: server restarts, typing while offline, reloads, expired tokens."""

from __future__ import annotations

import json
import re

from playwright.sync_api import WebSocketRoute, expect

from .conftest import PageOpener, Shooter
from .harness import ChatPeer, RoomchatServer
from .pages import expect_live, pending, send, seqs, status, texts

NOT_LIVE = re.compile(r"^(reconnecting|connecting)$")


def test_server_restart_mid_conversation_shows_every_message_once(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    ws_urls: list[str] = []
    alice.on("websocket", lambda ws: ws_urls.append(ws.url))
    expect_live(alice)
    bob = open_page(server.link("lobby", server.token("bob", ["lobby"], name="Bob")))
    expect_live(bob)

    before = ["before 1", "before 2", "before 3"]
    send(alice, before[0])
    expect(texts(bob)).to_have_text(before[:1])
    send(bob, before[1])
    expect(texts(alice)).to_have_text(before[:2])
    send(alice, before[2])
    expect(texts(bob)).to_have_text(before)

    server.stop()
    for page in (alice, bob):
        expect(status(page)).to_have_attribute("data-state", NOT_LIVE)
    server.start()
    expect_live(alice)
    expect_live(bob)

    after = ["after 1", "after 2"]
    send(bob, after[0])
    expect(texts(alice)).to_have_text([*before, after[0]])
    send(alice, after[1])
    for page in (alice, bob):
        expect(texts(page)).to_have_text([*before, *after])
        assert seqs(page) == [1, 2, 3, 4, 5]
    # The reconnect resumed where the page was instead of reloading history.
    assert len(ws_urls) >= 2
    assert "after=" not in ws_urls[0]
    assert "after=3" in ws_urls[-1]
    shoot(alice, "restart-alice")


def test_message_typed_while_the_server_is_down_is_delivered_once(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(alice)
    bob = open_page(server.link("lobby", server.token("bob", ["lobby"], name="Bob")))
    expect_live(bob)
    send(alice, "still online")
    expect(texts(bob)).to_have_text(["still online"])

    server.stop()
    expect(status(alice)).to_have_attribute("data-state", NOT_LIVE)
    send(alice, "typed while offline")
    waiting = pending(alice)
    expect(waiting).to_have_count(1)
    expect(waiting).to_have_attribute("data-state", "waiting")
    expect(waiting).to_contain_text("Waiting for connection")
    msg_id = waiting.get_attribute("data-id")
    assert msg_id
    shoot(alice, "offline-pending")

    server.start()
    expect_live(alice)
    expect(pending(alice)).to_have_count(0)
    for page in (alice, bob):
        expect(texts(page)).to_have_text(["still online", "typed while offline"])
    own = alice.locator("#log li.msg.own .text")
    expect(own).to_have_text(["still online", "typed while offline"])

    with ChatPeer(server, "lobby", "carol") as carol:
        history = carol.read_history()
    assert [m["text"] for m in history] == ["still online", "typed while offline"]
    assert history[1]["id"] == msg_id
    assert history[1]["user"] == "alice"
    shoot(bob, "offline-delivered-bob")


def test_outbox_survives_a_reload_and_is_sent_once(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    # The page is served by the server, so "offline" here means: its WebSocket gets nowhere.
    blocked = True

    def route(ws: WebSocketRoute) -> None:
        if not blocked:
            ws.connect_to_server()
        # blocked: a mocked socket that never says welcome, i.e. never goes live

    page = open_page()
    page.route_web_socket(re.compile(r"/rooms/lobby/ws"), route)
    page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect(status(page)).to_have_attribute("data-state", "connecting")
    send(page, "written before the reload")
    expect(pending(page)).to_have_attribute("data-state", "waiting")
    saved = json.loads(page.evaluate("sessionStorage.getItem('roomchat:outbox:lobby')"))
    assert [e["text"] for e in saved] == ["written before the reload"]

    blocked = False
    page.reload()
    expect_live(page)
    expect(pending(page)).to_have_count(0)
    expect(texts(page)).to_have_text(["written before the reload"])
    assert page.evaluate("sessionStorage.getItem('roomchat:outbox:lobby')") is None
    with ChatPeer(server, "lobby", "bob") as bob:
        history = bob.read_history()
    assert [(m["text"], m["id"]) for m in history] == [
        ("written before the reload", saved[0]["id"])
    ]


def test_an_expired_token_is_explained_without_connecting(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    sockets: list[str] = []
    page = open_page()
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(server.link("lobby", server.token("alice", ["lobby"], ttl=-120)))
    expect(status(page)).to_have_attribute("data-state", "expired")
    expect(status(page)).to_contain_text("expired")
    expect(page.locator("#auth")).to_be_visible()
    expect(page.locator("#auth")).to_contain_text("expired")
    assert sockets == []
    assert page.evaluate("sessionStorage.getItem('roomchat:token:lobby')") is None
    shoot(page, "token-expired")


def test_a_token_expiring_while_connected_stops_with_a_clear_message(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    sockets: list[str] = []
    page = open_page()
    page.on("websocket", lambda ws: sockets.append(ws.url))
    # Long enough to load the page and go live on a slow machine, short enough to wait for.
    page.goto(server.link("lobby", server.token("alice", ["lobby"], ttl=15)))
    expect_live(page)
    expect(status(page)).to_have_attribute("data-state", "expired", timeout=60_000)
    # The server closed it (4001), rather than the page noticing the expiry by itself.
    expect(status(page)).to_have_attribute("data-code", "4001")
    expect(status(page)).to_contain_text("expired")
    expect(page.locator("#auth")).to_contain_text("expired")
    expect(page.locator("#reconnect-now")).to_be_hidden()
    assert len(sockets) == 1  # and no reconnect with the dead token
    shoot(page, "token-expired-while-connected")

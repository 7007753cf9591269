"""Tickets and refusals in the page: it trades its token for a ticket before every connect, says in
plain words why the server will not take it (and stops), and keeps retrying what is only for now."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import jwt
from playwright.sync_api import Page, Route, expect

from .conftest import PageOpener, ServerFactory, Shooter
from .harness import RoomchatServer, mint_token
from .pages import expect_live, pending, send, status, texts, wait_until
from .scripted import (
    ME,
    QUIET_MS,
    ScriptedRoom,
    Traffic,
    message,
    open_scripted,
    open_watched,
    welcome,
)

OTHER_SECRET = "another-servers-secret-0123456789abcdef"
def sent_count_is(room: ScriptedRoom, count: int) -> Callable[[], bool]:
    return lambda: len(room.sent_messages()) == count


def auth_panel(page: Page) -> tuple[str, str]:
    return (page.locator("#auth-title").inner_text(), page.locator("#auth-text").inner_text())


def expect_stopped(page: Page, traffic: Traffic, *, reason: str, sockets: int) -> None:
    """The page is offline for `reason`, offers no retry, and stays quiet: no ticket, no socket."""
    expect(status(page)).to_have_attribute("data-reason", reason)
    expect(page.locator("#reconnect-now")).to_be_hidden()
    tickets = len(traffic.tickets)
    page.wait_for_timeout(QUIET_MS)
    assert len(traffic.tickets) == tickets, "another ticket request after a final refusal"
    assert len(traffic.sockets) == sockets, traffic.sockets
    expect(status(page)).to_have_attribute("data-reason", reason)
    # The dead token is forgotten: a reload does not try it again.
    assert page.evaluate("sessionStorage.getItem('roomchat:token:lobby')") is None


def test_every_connect_uses_a_fresh_ticket_and_the_token_never_enters_a_url(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    token = server.token("alice", ["lobby"], name="Alice")
    page, traffic = open_watched(open_page, server.link("lobby", token))
    expect_live(page)
    send(page, "before the restart")
    expect(texts(page)).to_have_text(["before the restart"])
    assert len(traffic.tickets) == 1
    assert traffic.tickets[0].headers.get("authorization") == f"Bearer {token}"

    server.restart()
    wait_until(page, lambda: len(traffic.sockets) >= 2, "a reconnect after the restart")
    expect_live(page)
    send(page, "after the restart")
    expect(texts(page)).to_have_text(["before the restart", "after the restart"])

    tickets = []
    for url in traffic.sockets:
        query = parse_qs(urlsplit(url).query)
        assert "token" not in query and token not in url, url
        assert len(query["ticket"]) == 1, url
        tickets.append(query["ticket"][0])
    assert len(set(tickets)) == len(tickets), "a ticket was used twice"
    assert "after" not in parse_qs(urlsplit(traffic.sockets[0]).query)
    assert parse_qs(urlsplit(traffic.sockets[-1]).query)["after"] == ["1"]
    # One ticket request per socket, plus any made while the server was down.
    assert len(traffic.tickets) >= len(traffic.sockets)


def test_a_garbage_or_foreign_link_says_it_is_not_valid_and_stops(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    foreign = mint_token("alice", ["lobby"], secret=OTHER_SECRET)
    pages = [open_watched(open_page, server.link("lobby", t)) for t in ("garbage", foreign)]
    for page, _ in pages:
        expect(page.locator("#auth")).to_be_visible()
        expect(page.locator("#auth-title")).to_have_text("This link is not valid")
        expect(page.locator("#auth-text")).to_contain_text(
            "Ask whoever sent it to you for a new link"
        )
        expect(status(page)).to_contain_text("link not valid")
        # Operator commands are for the operator's page, not for someone holding a bad link.
        expect(page.locator("#howto")).to_be_hidden()
        expect(page.locator("#login-form")).to_be_hidden()
    for page, traffic in pages:
        expect_stopped(page, traffic, reason="invalid_token", sockets=0)
        assert len(traffic.tickets) == 1
    shoot(pages[0][0], "refused-invalid-link")


def test_an_expired_link_says_so_and_stops(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    page, traffic = open_watched(
        open_page, server.link("lobby", server.token("al", ["lobby"], ttl=-120))
    )
    expect(page.locator("#auth-title")).to_have_text("This link has expired")
    expect(page.locator("#auth-text")).to_contain_text("Ask whoever sent it to you for a new link")
    expect(status(page)).to_have_attribute("data-state", "expired")
    expect(status(page)).to_contain_text("link expired")
    expect_stopped(page, traffic, reason="token_expired", sockets=0)
    # The server said so (the page does not judge a token by the browser's clock).
    assert len(traffic.tickets) == 1
    shoot(page, "refused-expired-link")


def test_an_expired_link_offers_joining_by_name_when_the_server_allows_it(
    make_server: ServerFactory, open_page: PageOpener
) -> None:
    server = make_server("--dev-login")
    token = server.token("al", ["lobby"], ttl=-120)
    page, traffic = open_watched(open_page, server.link("lobby", token))
    expect(page.locator("#auth-title")).to_have_text("This link has expired")
    expect(page.locator("#auth-text")).to_contain_text("Or join by name below")
    name = page.get_by_label("Your name")
    expect(name).to_be_visible()
    name.fill("Carol")
    name.press("Enter")
    expect_live(page)
    assert len(traffic.sockets) == 1 and "ticket=" in traffic.sockets[0]


def test_a_link_for_another_room_says_not_allowed_and_stops(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    page, traffic = open_watched(open_page, server.link("lobby", server.token("al", ["kitchen"])))
    expect(page.locator("#auth-title")).to_have_text("Not allowed in this room")
    expect(page.locator("#auth-text")).to_contain_text("not allowed in this room")
    expect(status(page)).to_contain_text("not allowed in this room")
    expect_stopped(page, traffic, reason="room_forbidden", sockets=0)
    assert len(traffic.tickets) == 1
    shoot(page, "refused-other-room")


def test_a_revoked_user_is_told_and_the_page_stops(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    page, traffic = open_watched(
        open_page, server.link("lobby", server.token("mallory", ["lobby"], name="Mallory"))
    )
    expect_live(page)
    assert "revoked 'mallory'" in server.revoke("mallory")
    expect(status(page)).to_have_attribute("data-code", "4003")
    expect(page.locator("#auth-title")).to_have_text("Your access was revoked")
    expect(status(page)).to_contain_text("access revoked")
    # Member-facing words only: no operator commands.
    assert "roomchat" not in " ".join(auth_panel(page))
    expect_stopped(page, traffic, reason="token_revoked", sockets=1)
    assert len(traffic.tickets) == 1
    shoot(page, "refused-revoked")


def test_a_busy_server_is_retried_with_backoff_and_says_so(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    answers = [
        (503, {"error": "server_full", "detail": "too many connections; try again later"}, {}),
        (429, {"error": "too_many_connections", "detail": "slow down"}, {"Retry-After": "2"}),
        (503, {"error": "server_full", "detail": "too many connections; try again later"}, {}),
    ]

    def busy_then_real(route: Route) -> None:
        if answers:
            code, body, headers = answers.pop(0)
            route.fulfill(status=code, json=body, headers=headers)
        else:
            route.continue_()

    page = open_page()
    traffic = Traffic()
    traffic.watch(page)
    page.route(re.compile(r"/rooms/lobby/ticket$"), busy_then_real)
    page.goto(server.link("lobby", server.token("alice", ["lobby"])))
    expect(status(page)).to_contain_text(re.compile(r"Server busy; retrying in \d+s"))
    expect(status(page)).to_have_attribute("data-wait", "busy")
    expect_live(page)
    assert answers == []
    assert len(traffic.tickets) == 4
    assert len(traffic.sockets) == 1 and "ticket=" in traffic.sockets[0]


def test_send_and_connection_wording_for_rate_limits_busy_rooms_and_outages(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    page, room = open_scripted(server, open_page)
    assert "ticket=" in room.sockets[0].url and "token=" not in room.sockets[0].url
    room.send(welcome(0, [ME]))
    expect_live(page)

    send(page, "hello")
    wait_until(page, lambda: len(room.sent_messages()) == 1, "the message")
    msg_id = room.sent_messages()[0]["id"]
    waiting = pending(page)
    for n, (code, words) in enumerate(
        [
            ("rate_limited", re.compile(r"You're sending too fast; sending in [1-3]s")),
            ("busy", re.compile("Server busy")),
            ("unavailable", re.compile("Service temporarily unavailable; will resend")),
        ]
    ):
        error = {"type": "error", "code": code, "message": "m", "retry_after": 3, "id": msg_id}
        room.send(error)
        expect(waiting).to_have_attribute("data-code", code)
        expect(waiting).to_contain_text(words)
        if code == "rate_limited":
            shoot(page, "sending-too-fast")
        wait_until(page, sent_count_is(room, n + 2), f"resend {n + 1}")
    room.send({"type": "ack", "id": msg_id, "seq": 1}, message(1, ME, "hello", msg_id))
    expect(waiting).to_have_count(0)

    # Storage down for everyone (no id): a note; then the close that follows a long outage.
    room.send({"type": "error", "code": "unavailable", "message": "storage unavailable"})
    expect(page.locator("#composer-note")).to_have_text(
        "Service temporarily unavailable; will resend"
    )

    outage = {"error": "unavailable", "detail": "storage unavailable"}
    page.route(re.compile(r"/rooms/lobby/ticket$"), lambda r: r.fulfill(status=503, json=outage))
    room.sockets[0].close(code=1013, reason="")
    expect(status(page)).to_contain_text(
        re.compile(r"Service temporarily unavailable; retrying in \d+s")
    )
    expect(status(page)).to_have_attribute("data-wait", "unavailable")
    page.unroute(re.compile(r"/rooms/lobby/ticket$"))
    wait_until(page, lambda: len(room.sockets) == 2, "a reconnect once storage is back", 60)
    assert "after=1" in room.sockets[1].url and "ticket=" in room.sockets[1].url
    room.send(welcome(1, [ME], recovered=True))
    expect_live(page)


def test_the_admin_page_stops_and_says_why_for_a_non_admin_token(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, traffic = open_watched(
        open_page, f"{server.base_url}/admin#token={server.token('alice', ['*'])}"
    )
    expect(page.locator("#status")).to_contain_text("Not an admin token")
    page.wait_for_timeout(QUIET_MS)
    assert traffic.sockets == []
    expect(page.locator("#status")).to_have_attribute("data-state", "offline")

    # An admin-looking token the server refuses (signed with another secret): a browser sees only
    # 1006, so the page says what is most likely wrong and gives up after a few attempts.
    claims = {
        **jwt.decode(server.token("eve", ["*"]), options={"verify_signature": False}),
        "admin": True,
    }
    forged = jwt.encode(claims, OTHER_SECRET, algorithm="HS256")
    page2, traffic2 = open_watched(open_page, f"{server.base_url}/admin#token={forged}")
    expect(page2.locator("#status")).to_contain_text("Not an admin token, or it expired")
    expect(page2.locator("#status")).to_contain_text("stopped retrying", timeout=60_000)
    assert len(traffic2.sockets) == 3
    page2.wait_for_timeout(QUIET_MS)
    assert len(traffic2.sockets) == 3

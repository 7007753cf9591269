"""Token refresh: an embedding app gives the page a refresh URL (`#token=...&refresh=/path`) or a
`window.roomchatRefresh` hook; the page renews its token before `exp` and carries on without a gap.
Without one, at expiry the page says the session ended and how to get back in."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest
from playwright.sync_api import Route, expect

from .conftest import PageOpener
from .harness import ChatPeer, RoomchatServer
from .pages import expect_live, seqs, status, texts, wait_until
from .scripted import Traffic

SHORT_TTL = 9.0  # the page renews a third of the lifetime before exp: after about 6 s
REFRESH_PATH = "/app/refresh"


@pytest.mark.parametrize("how", ["url", "hook"])
def test_the_page_renews_its_token_before_exp_and_carries_on_without_a_gap(
    server: RoomchatServer, open_page: PageOpener, how: str
) -> None:
    fresh = server.token("alice", ["lobby"], name="Alice")
    calls: list[str] = []

    def renew(route: Route) -> None:
        calls.append(route.request.method)
        route.fulfill(status=200, content_type="application/json",
                      body=json.dumps({"token": fresh}))

    hook = None
    if how == "hook":  # the embedding app's own script sets the hook before the page runs
        hook = ("window.roomchatRefresh = async () => {"
                " window.__renewed = (window.__renewed || 0) + 1;"
                f" return {json.dumps(fresh)}; }};")
    page = open_page(init_script=hook)
    page.route(f"**{REFRESH_PATH}", renew)
    traffic = Traffic()
    traffic.watch(page)
    short = server.token("alice", ["lobby"], name="Alice", ttl=SHORT_TTL)
    expires = time.time() + SHORT_TTL
    link = server.link("lobby", short)
    if how == "url":
        link += f"&refresh={quote(REFRESH_PATH, safe='')}"
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        page.goto(link)
        expect_live(page)
        # The refresh path left the address bar with the token.
        assert "refresh" not in page.url and "token" not in page.url
        n = 0
        # Bob keeps talking across the old token's expiry and the page's reconnect with the new one.
        while time.time() < expires + 3 or len(traffic.sockets) < 2:
            n += 1
            bob.send(f"m{n}", f"b-{n}")
            page.wait_for_timeout(400)
            assert time.time() < expires + 30, "the page never reconnected with the new token"
        expect(texts(page)).to_have_count(n)
        assert seqs(page) == list(range(1, n + 1)), "a gap or a duplicate across the renewal"
    expect_live(page)
    expect(page.locator("#auth")).to_be_hidden()
    if how == "url":
        assert calls == ["POST"], calls
    else:
        assert calls == [] and page.evaluate("window.__renewed") == 1
    # The reconnect after the old token's 4001 asked its ticket with the new token.
    assert traffic.tickets[0].headers["authorization"] == f"Bearer {short}"
    assert traffic.tickets[-1].headers["authorization"] == f"Bearer {fresh}"
    assert page.evaluate("sessionStorage.getItem('roomchat:token:lobby')") == fresh


def test_without_a_refresh_the_page_says_the_session_ended_and_how_to_get_back_in(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page = open_page(server.link("lobby", server.token("al", ["lobby"], ttl=4)))
    expect_live(page)
    expect(page.locator("#auth-title")).to_have_text("Your session ended", timeout=20_000)
    expect(page.locator("#auth-text")).to_contain_text("ask whoever sent it to you for a new link")
    expect(status(page)).to_have_attribute("data-reason", "token_expired")


def test_a_failed_refresh_says_the_session_ended_and_to_reload_the_app(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    calls: list[str] = []

    def refuse(route: Route) -> None:
        calls.append(route.request.url)
        route.fulfill(status=401, content_type="application/json", body='{"error":"signed out"}')

    page = open_page()
    page.route(f"**{REFRESH_PATH}", refuse)
    link = server.link("lobby", server.token("al", ["lobby"], ttl=4))
    page.goto(link + f"&refresh={quote(REFRESH_PATH, safe='')}")
    expect_live(page)
    expect(page.locator("#auth-title")).to_have_text("Your session ended", timeout=20_000)
    expect(page.locator("#auth-text")).to_contain_text("reload the page you opened this chat from")
    wait_until(page, lambda: len(calls) >= 1, "a refresh attempt")

"""Nothing widens the page: long URLs and unbroken text wrap in the message box and in messages,
on a phone (390x844) and on a desktop (1280 wide)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.support import make_token

from .conftest import PageOpener, Shooter
from .harness import ChatPeer, RoomchatServer
from .pages import expect_live, message_box, send, texts

LONG_URL = "https://example.org/" + "/".join(f"seg{i:03d}" for i in range(40)) + "?q=" + "x" * 60
UNBROKEN = "W" * 2000  # the longest message the server takes, with nowhere to break
SIZES = {"phone": (390, 844), "desktop": (1280, 800)}


def overflow(page: Page) -> dict[str, int]:
    sizes: dict[str, int] = page.evaluate(
        "() => ({scroll: document.documentElement.scrollWidth,"
        " client: document.documentElement.clientWidth,"
        " body: document.body.scrollWidth})"
    )
    return sizes


def assert_no_overflow(page: Page, when: str) -> None:
    sizes = overflow(page)
    assert sizes["scroll"] <= sizes["client"], f"{when}: page is wider than the screen {sizes}"
    assert sizes["body"] <= sizes["client"], f"{when}: body is wider than the screen {sizes}"


def assert_inside(page: Page, selector: str, when: str) -> None:
    """Every element matching `selector` ends within the viewport."""
    width = page.evaluate("document.documentElement.clientWidth")
    rights = page.locator(selector).evaluate_all(
        "els => els.map(e => Math.round(e.getBoundingClientRect().right))"
    )
    assert rights, f"{when}: nothing matches {selector}"
    assert max(rights) <= width, f"{when}: {selector} reaches {max(rights)} px of {width}"


@pytest.mark.parametrize("size", SIZES)
def test_long_urls_and_unbroken_text_never_widen_the_page(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter, size: str
) -> None:
    width, height = SIZES[size]
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send(LONG_URL, "b-1")
        bob.send(UNBROKEN, "b-2")
        page = open_page(
            server.link("lobby", server.token("alice", ["lobby"], name="Alice")),
            width=width,
            height=height,
        )
        expect_live(page)
        expect(texts(page)).to_have_count(2)
        assert_no_overflow(page, "history with a long URL and 2,000 unbroken characters")

        # Typing them in the box: the box wraps, Send stays on screen.
        box = message_box(page)
        for text in (LONG_URL, UNBROKEN, "a" * 300 + " " + LONG_URL):
            box.fill(text)
            assert_no_overflow(page, f"message box holding {text[:20]}…")
            assert_inside(page, "#send", "the Send button")
            assert_inside(page, "#message-input", "the message box")

        # Sending them: own bubbles (pending, then delivered) wrap too.
        box.fill("")
        send(page, LONG_URL)
        send(page, UNBROKEN)
        expect(texts(page)).to_have_count(4)
        assert_no_overflow(page, "own long messages")
        assert_inside(page, "#log li.msg .bubble", "message bubbles")
        link = page.locator("#log a").last
        expect(link).to_have_attribute("href", LONG_URL)
        shoot(page, f"layout-long-text-{size}")


def assert_not_cut(page: Page, selector: str, when: str) -> None:
    """The element shows all of its text: nothing hidden behind an ellipsis or the screen's edge."""
    box = page.locator(selector)
    sizes = box.evaluate("e => [e.scrollWidth, e.clientWidth, e.getBoundingClientRect().right]")
    width = page.evaluate("document.documentElement.clientWidth")
    assert sizes[0] <= sizes[1], f"{when}: {selector} is cut ({sizes[0]} px of text in {sizes[1]})"
    assert sizes[2] <= width, f"{when}: {selector} reaches {sizes[2]} px of {width}"


def test_on_a_phone_the_status_and_the_name_are_not_cut(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    page = open_page(
        server.link("lobby", server.token("alexandra", ["lobby"], name="Alexandra Wonderland")),
        width=390, height=844,
    )
    expect_live(page)
    expect(page.locator("#room-sub")).to_have_text("You are Alexandra Wonderland · 1 online")
    assert_not_cut(page, "#room-sub", "live")
    assert_not_cut(page, "#status-text", "live")

    server.stop()
    expect(page.locator("#status-text")).to_contain_text("reconnecting in")
    assert_not_cut(page, "#status-text", "reconnecting")
    assert_not_cut(page, "#room-sub", "reconnecting")
    assert_no_overflow(page, "reconnecting")
    shoot(page, "phone-topbar-reconnecting")

    server.start()
    expired = open_page(server.link("lobby", server.token("al", ["lobby"], ttl=-120)),
                        width=390, height=844)
    expect(expired.locator("#status-text")).to_have_text("Offline · link expired")
    assert_not_cut(expired, "#status-text", "expired")
    assert_no_overflow(expired, "expired")
    shoot(expired, "phone-topbar-expired")


def test_the_admin_page_fits_a_phone_and_its_sparklines_are_drawn(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    admin = make_token("root", ["*"], secret=server.secret, admin=True)
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("hello", "b-1")
        page = open_page(f"{server.base_url}/admin#token={admin}", width=390, height=844)
        expect(page.locator("#status")).to_have_text("Live")
        expect(page.locator("#room-rows tr")).to_have_count(1)
        widths = page.locator("svg.spark").evaluate_all(
            "els => els.map(e => Math.round(e.getBoundingClientRect().width))")
        assert len(widths) == 4 and min(widths) >= 100, widths
        # Each line spans its box from the first sample on (not a few pixels at its right edge).
        lines = page.locator("#room-rows svg.spark polyline, .tile svg.spark polyline")
        expect(lines).to_have_count(4)
        drawn = lines.evaluate_all(
            "els => els.map(e => Math.round(e.getBoundingClientRect().width))")
        assert min(drawn) >= 100, drawn
        assert_no_overflow(page, "admin page with one room")
        # The table keeps its columns readable: it scrolls inside its own box if it must.
        last = page.locator("#room-rows td").last
        last.scroll_into_view_if_needed()
        assert_no_overflow(page, "after scrolling the table")
        shoot(page, "admin-390")

"""The chat page in a real Chromium against a real server: talking, rendering, sign-in, layout."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from .conftest import PageOpener, ServerFactory, Shooter
from .harness import ChatPeer, RoomchatServer
from .pages import HIDDEN_TAB, expect_live, message_box, pending, send, seqs, status, texts


def test_two_people_see_the_same_messages_in_the_same_order(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(alice)
    bob = open_page(server.link("lobby", server.token("bob", ["lobby"], name="Bob")))
    expect_live(bob)

    expect(alice.locator("#log li.presence")).to_have_text([re.compile(r"^Bob joined")])
    for page in (alice, bob):
        expect(page.locator("#member-list li .member-name")).to_have_text(["Alice", "Bob"])

    lines = [
        ("alice", "Hi Bob!"),
        ("bob", "Hello Alice, how are you?"),
        ("alice", "Great. Did you see https://example.org/docs?"),
        ("bob", "Yes \N{THUMBS UP SIGN} multi\nline works too"),
    ]
    for who, text in lines:
        page = alice if who == "alice" else bob
        send(page, text)
        # Wait for each line at the other side, so the order is the one we typed.
        other = bob if page is alice else alice
        expect(texts(other).last).to_have_text(text)

    expected = [text for _, text in lines]
    for page in (alice, bob):
        expect(texts(page)).to_have_text(expected)
        expect(pending(page)).to_have_count(0)
        assert seqs(page) == [1, 2, 3, 4]

    # Own messages and other people's are drawn differently.
    expect(alice.locator("#log li.msg.own .text")).to_have_text([expected[0], expected[2]])
    expect(alice.locator("#log li.msg.other .text")).to_have_text([expected[1], expected[3]])
    expect(bob.locator("#log li.msg.own .text")).to_have_text([expected[1], expected[3]])
    expect(alice.locator("#log li.msg.other .author").first).to_have_text("Bob")
    first_time = alice.locator("#log li.msg time").first
    expect(first_time).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
    # The link became a real link, and nothing else did.
    link = alice.locator("#log a")
    expect(link).to_have_attribute("href", "https://example.org/docs")
    expect(link).to_have_attribute("rel", re.compile("noopener"))

    shoot(alice, "conversation-alice")
    shoot(bob, "conversation-bob")


def test_markup_in_messages_and_names_shows_as_text_and_runs_nothing(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    payloads = [
        "<img src=x onerror=window.__xss=1>",
        "<script>window.__xss=1</script>",
        '"><svg onload=window.__xss=1><b>bold?</b>',
    ]
    evil_name = "<img src=y onerror=window.__xss=2>"
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(alice)

    send(alice, payloads[0])
    with ChatPeer(server, "lobby", "mallory", name=evil_name) as mallory:
        mallory.send(payloads[1], "x-1")
        mallory.send(payloads[2], "x-2")
        expect(texts(alice)).to_have_text(payloads)
        expect(alice.locator("#member-list .member-name")).to_contain_text([evil_name])

    expect(alice.locator("#log li.msg.other .author").first).to_have_text(evil_name)
    expect(alice.locator("#log li.presence").last).to_have_text(re.compile(re.escape(evil_name)))
    assert alice.evaluate("typeof window.__xss") == "undefined"
    # (The only SVGs in the log are the page's own icons, beside the bubbles.)
    shown = "#log img, #log script, #log .bubble svg, #log b, #member-list img"
    assert alice.locator(shown).count() == 0
    assert alice.locator("#log .text *").count() == 0
    shoot(alice, "xss-shown-as-text")


def test_token_leaves_the_address_bar_and_survives_a_reload(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    token = server.token("alice", ["lobby"])
    page = open_page(server.link("lobby", token))
    expect(page).to_have_url(f"{server.base_url}/rooms/lobby")
    expect_live(page)
    assert token not in page.url
    assert page.evaluate("sessionStorage.getItem('roomchat:token:lobby')") == token

    page.reload()
    expect_live(page)
    expect(page).to_have_url(f"{server.base_url}/rooms/lobby")


def test_without_a_token_the_page_explains_how_to_get_one(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    page = open_page(f"{server.base_url}/rooms/lobby")
    expect(page.locator("#auth")).to_be_visible()
    expect(page.locator("#howto-command")).to_have_text(
        f"roomchat token --user ID --room lobby --link {server.base_url}"
    )
    expect(page.locator("#login-form")).to_be_hidden()
    expect(message_box(page)).to_be_hidden()
    shoot(page, "no-token")


def test_dev_login_asks_for_a_name_and_joins(
    make_server: ServerFactory, open_page: PageOpener, shoot: Shooter
) -> None:
    server = make_server("--dev-login")
    page = open_page(f"{server.base_url}/rooms/lobby")
    name = page.get_by_label("Your name")
    expect(name).to_be_visible()
    expect(name).to_be_focused()
    name.fill("Carol")
    name.press("Enter")
    expect_live(page)
    expect(page.locator("#auth")).to_be_hidden()
    expect(page.locator("#room-sub")).to_contain_text("Carol")
    send(page, "hello from dev login")
    expect(page.locator("#log li.msg.own .text")).to_have_text(["hello from dev login"])
    shoot(page, "dev-login")


def test_phone_sized_dark_layout_is_usable_by_keyboard(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    page = open_page(
        server.link("lobby", server.token("alice", ["lobby"], name="Alice")),
        width=360,
        height=740,
        color_scheme="dark",
    )
    expect_live(page)
    # Keyboard only: the message box has the focus on load; from the top of the page, the skip
    # link comes first and leads to the message box, Enter sends.
    expect(message_box(page)).to_be_focused()
    page.evaluate(  # back to the top of the page, as after a click on its background
        "() => { const b = document.body; b.tabIndex = -1; b.focus();"
        " b.removeAttribute('tabindex'); }"
    )
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(message_box(page)).to_be_focused()
    page.keyboard.type("typed with the keyboard")
    page.keyboard.press("Enter")
    expect(page.locator("#log li.msg.own .text")).to_have_text(["typed with the keyboard"])
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("A long line: " + "word " * 60, "b-1")
        bob.send("https://example.org/a/very/long/path/" + "x" * 120, "b-2")
        expect(texts(page)).to_have_count(3)

        # Nothing sticks out sideways at 360 px.
        assert page.evaluate("document.documentElement.scrollWidth") <= 360

        # The members panel is a drawer here: closed, opened by its button, closed with Escape.
        toggle = page.locator("#members-toggle")
        expect(toggle).to_have_attribute("aria-expanded", "false")
        expect(page.locator("#members")).to_be_hidden()
        toggle.click()
        expect(page.locator("#members")).to_be_visible()
        expect(page.locator("#member-list .member-name")).to_have_text(["Alice", "Bob"])
        page.keyboard.press("Escape")
        expect(page.locator("#members")).to_be_hidden()
        expect(toggle).to_be_focused()

    dark_bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="light")
    light_bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert dark_bg != light_bg
    page.emulate_media(color_scheme="dark")
    expect(page.locator("#log-region")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#send")).to_have_accessible_name("Send message")
    shoot(page, "phone-dark")


def _scroll_state(page: Page) -> dict[str, int]:
    result: dict[str, int] = page.locator("#scroller").evaluate(
        "s => ({top: Math.round(s.scrollTop),"
        " gap: Math.round(s.scrollHeight - s.scrollTop - s.clientHeight)})"
    )
    return result


def test_new_messages_do_not_yank_a_reader_who_scrolled_up(
    server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    page = open_page(
        server.link("lobby", server.token("alice", ["lobby"], name="Alice")), width=420, height=560
    )
    expect_live(page)
    tall = "\n".join(f"line {i}" for i in range(14))
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        for i in range(4):
            bob.send(f"{tall}\n(message {i})", f"t-{i}")
        expect(texts(page)).to_have_count(4)
        # Following the conversation: it stayed at the bottom.
        page.wait_for_function(
            "() => { const s = document.getElementById('scroller');"
            " return s.scrollHeight - s.scrollTop - s.clientHeight < 80 }"
        )

        page.locator("#scroller").evaluate("s => { s.scrollTop = 0 }")
        bob.send("while you were reading", "t-new")
        expect(texts(page).last).to_have_text("while you were reading")
        jump = page.locator("#jump")
        expect(jump).to_be_visible()
        expect(jump).to_contain_text("1 new message")
        assert _scroll_state(page)["top"] == 0
        shoot(page, "jump-to-new-messages")

        jump.click()
        expect(jump).to_be_hidden()
        page.wait_for_function(
            "() => { const s = document.getElementById('scroller');"
            " return s.scrollHeight - s.scrollTop - s.clientHeight < 80 }"
        )


def test_unread_count_shows_in_the_title_while_the_tab_is_hidden(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page = open_page(
        server.link("lobby", server.token("alice", ["lobby"], name="Alice")), init_script=HIDDEN_TAB
    )
    expect_live(page)
    expect(page).to_have_title("#lobby · roomchat")
    page.evaluate("window.__hidden = true; document.dispatchEvent(new Event('visibilitychange'))")
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("one", "u-1")
        bob.send("two", "u-2")
        expect(page).to_have_title("(2) #lobby · roomchat")
    page.evaluate("window.__hidden = false; document.dispatchEvent(new Event('visibilitychange'))")
    expect(page).to_have_title("#lobby · roomchat")
    expect(status(page)).to_have_attribute("data-state", "live")

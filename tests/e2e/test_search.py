"""Search in the page (issue 24), against the real server in Chromium: Ctrl+K or `/` opens the
dialog, results come with their hits as <mark> elements, arrows and Enter (or a click) jump to
the message in the room, loading older pages as needed, Esc gives the focus back; a status line
says how many results; axe finds nothing serious at 390 and 1280 px, light and dark."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from .accessibility import axe_problems, axe_script
from .conftest import PageOpener, Shooter
from .harness import ChatPeer, RoomchatServer
from .pages import expect_live, in_view, item_of, message_box, seqs


def dialog(page: Page):  # type: ignore[no-untyped-def]
    return page.get_by_role("dialog", name=re.compile("Search #lobby"))


def field(page: Page):  # type: ignore[no-untyped-def]
    return page.get_by_role("combobox", name=re.compile("Search messages in #lobby"))


def results(page: Page):  # type: ignore[no-untyped-def]
    return page.get_by_role("listbox").get_by_role("option")


def test_ctrl_k_finds_an_old_message_and_enter_jumps_to_it(
    busy_server: RoomchatServer, open_page: PageOpener, shoot: Shooter
) -> None:
    server = busy_server
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        old = bob.send("The quokka sighting was at the old pier", "q-1")["seq"]
        for n in range(150):
            bob.send(f"filler {n}", f"f-{n}")
        bob.send("Another quokka, much later", "q-2")
    page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    assert old not in seqs(page)  # far back: not loaded yet

    page.keyboard.press("Control+k")
    expect(dialog(page)).to_be_visible()
    expect(field(page)).to_be_focused()
    field(page).fill("QUOKKA")  # case folded
    expect(page.locator("#search-status")).to_have_text("2 results")
    expect(results(page)).to_have_count(2)
    first, second = results(page).nth(0), results(page).nth(1)
    expect(first).to_contain_text("Another quokka, much later")  # newest first
    expect(second.locator("mark")).to_have_text("quokka")
    expect(second.locator(".search-text")).to_have_text("The quokka sighting was at the old pier")
    expect(second.locator(".search-name")).to_have_text("Bob")
    shoot(page, "search-results")

    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    expect(second).to_have_attribute("aria-selected", "true")
    expect(field(page)).to_have_attribute("aria-activedescendant", second.get_attribute("id") or "")
    page.keyboard.press("Enter")
    expect(dialog(page)).to_be_hidden()
    target = item_of(page, old)
    expect(target).to_be_focused()  # older pages loaded until it was there
    expect(target).to_have_class(re.compile(r"\bhighlight\b"))
    assert in_view(page, old)

    # A click works too, and the same result twice (no hash change needed).
    for _ in range(2):
        page.keyboard.press("Control+k")
        expect(field(page)).to_have_value("QUOKKA")
        results(page).nth(0).click()
        expect(item_of(page, old + 151)).to_be_focused()


def test_slash_opens_it_outside_the_composer_and_esc_gives_the_focus_back(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("<img src=x onerror=alert(1)> deploy <b>now</b>", "b-1")
    page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    # In the message box, / is a character.
    expect(message_box(page)).to_be_focused()
    page.keyboard.press("/")
    expect(message_box(page)).to_have_value("/")
    expect(dialog(page)).to_be_hidden()
    message_box(page).fill("")
    # Elsewhere it opens the search; Esc closes it and the focus goes back where it was.
    page.locator("#scroller").focus()
    page.keyboard.press("/")
    expect(field(page)).to_be_focused()
    field(page).fill("deploy")
    expect(results(page)).to_have_count(1)
    # Text from the message is text: the hit is the only element made of it.
    text = results(page).first.locator(".search-text")
    expect(text).to_have_text("<img src=x onerror=alert(1)> deploy <b>now</b>")
    assert text.evaluate("e => [...e.children].map(c => c.tagName).join()") == "MARK"
    page.keyboard.press("Escape")
    expect(dialog(page)).to_be_hidden()
    expect(page.locator("#scroller")).to_be_focused()
    # The toolbar button opens it too; with nothing found the status says so.
    page.get_by_role("button", name="Search messages").click()
    field(page).fill("absent")
    expect(page.locator("#search-status")).to_have_text("No messages match")
    expect(results(page)).to_have_count(0)
    page.keyboard.press("Escape")
    expect(page.get_by_role("button", name="Search messages")).to_be_focused()


def test_older_results_load_on_demand(
    busy_server: RoomchatServer, open_page: PageOpener
) -> None:
    with ChatPeer(busy_server, "lobby", "bob", name="Bob") as bob:
        for n in range(25):
            bob.send(f"match {n}", f"m-{n}")
    page = open_page(busy_server.link("lobby", busy_server.token("alice", ["lobby"])))
    expect_live(page)
    page.keyboard.press("Control+k")
    field(page).fill("match")
    expect(results(page)).to_have_count(20)
    expect(page.locator("#search-status")).to_have_text(re.compile(r"^20 results"))
    page.get_by_role("button", name="Load older results").click()
    expect(results(page)).to_have_count(25)
    expect(page.locator("#search-status")).to_have_text("25 results")
    expect(page.get_by_role("button", name="Load older results")).to_be_hidden()
    expect(results(page).nth(20)).to_have_attribute("aria-selected", "true")


@pytest.mark.parametrize("width", [390, 1280])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious_in_the_search_dialog(
    server: RoomchatServer, open_page: PageOpener, scheme: str, width: int, shoot: Shooter,
) -> None:
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        bob.send("Release notes for the deploy are up", "b-1")
        bob.send("Who broke the deploy?", "b-2")
    page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")),
                     width=width, height=800, color_scheme=scheme, init_script=axe_script())
    expect_live(page)
    page.keyboard.press("Control+k")
    field(page).fill("deploy")
    expect(results(page)).to_have_count(2)
    page.keyboard.press("ArrowDown")
    problems = axe_problems(page)
    assert not problems, "\n".join(problems)
    box = page.locator("#search-dialog").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
    shoot(page, f"search-{scheme}-{width}")

"""The README's pictures of the chat page (docs/screenshots/room-light.png and room-dark.png),
taken by this test so they never go stale.

A real server, a short conversation between three people (Bob and Carol as protocol clients,
Alice in Chromium typing into the page), and Alice's page photographed at 1280x800 with the
light and the dark colour scheme (``prefers-color-scheme`` emulated).

So that the same page gives the same pixels on every run, the page runs in a fixed locale and
time zone, and the message times the server stamps (now) are replaced on their way to the page
by a fixed morning (``STAGED``): everything else in the picture is what the server sent.
A file is rewritten only when its pixels changed, so running the suite leaves git quiet until
the page's look changes; then the new pictures are in the working tree, to commit with the
change that made them. (The pixels also depend on the fonts installed: Debian's DejaVu here.)
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, WebSocketRoute, expect

from .conftest import CSP_WATCH
from .harness import (
    REPO_ROOT,
    ChatPeer,
    RoomchatServer,
    check_screenshot,
    png_pixels,
    wait_for_marker,
)
from .pages import expect_live, message_box, send, seqs, texts

SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
WIDTH, HEIGHT = 1280, 800
MAX_PNG_BYTES = 200_000
ROOM = "release"

# seq -> (author, text, minute past 9 o'clock it is shown at): the conversation, in order.
CONVERSATION = {
    1: ("carol", "Morning! The 1.4 release build is green.", 41),
    2: ("bob", "Nice. Did the migration run on staging?", 42),
    3: ("alice", "Yes: 12 minutes, no errors. Notes in https://example.org/runbook", 44),
    4: ("bob", "Great, I'll tag v1.4 after lunch then.", 45),
    5: ("carol", "I'll write the announcement.", 47),
    6: ("carol", "Anything you want in it besides the migration?", 47),
    7: ("alice", "The dark mode, please. People asked for it.", 48),
}
DAY = datetime(2026, 11, 12, 9, tzinfo=UTC)  # a Thursday morning, long past: never "Today"
STAGED = {seq: int(DAY.replace(minute=minute).timestamp() * 1000)
          for seq, (_, _, minute) in CONVERSATION.items()}
"""The ``ts`` the page gets for each message of the conversation."""


def stage_times(frame: str | bytes) -> str | bytes:
    """``frame`` (newline-separated JSON objects) with each conversation message's ``ts``
    replaced by its staged one; anything else passes unchanged."""
    if isinstance(frame, bytes):
        return frame
    lines = frame.split("\n")
    for i, line in enumerate(lines):
        if '"message"' not in line:
            continue
        obj = json.loads(line)
        if obj.get("type") == "message" and obj.get("seq") in STAGED:
            obj["ts"] = STAGED[obj["seq"]]
            lines[i] = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return "\n".join(lines)


def route_through_staging(ws: WebSocketRoute) -> None:
    server = ws.connect_to_server()
    server.on_message(lambda frame: ws.send(stage_times(frame)))


def mean_brightness(pixels: bytes, channels: int) -> float:
    """Mean of (R+G+B)/3 over every 97th pixel, 0-255 (a sample is plenty for "light or dark")."""
    step = channels * 97
    samples = [sum(pixels[i : i + 3]) / 3 for i in range(0, len(pixels) - 2, step)]
    return sum(samples) / len(samples)


def write_if_changed(png: bytes, target: Path) -> bool:
    """Write ``png`` to ``target`` unless the file there already shows the same pixels."""
    if target.exists():
        old = target.read_bytes()
        if old == png or png_pixels(old) == png_pixels(png):
            return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(png)
    partial.replace(target)
    return True


Photographer = Callable[[str, str], Page]


@pytest.fixture
def photograph(browser: Browser) -> Iterator[Photographer]:
    """``photograph(url, scheme)``: Alice's page in a fresh context of that colour scheme, with
    staged times; fails the test on an uncaught page error or a CSP violation."""
    opened: list[tuple[Page, list[str]]] = []

    def open_(url: str, scheme: str) -> Page:
        context = browser.new_context(
            viewport={"width": WIDTH, "height": HEIGHT},
            color_scheme="dark" if scheme == "dark" else "light",
            locale="en-US",
            timezone_id="UTC",
            reduced_motion="reduce",
        )
        context.route_web_socket(f"**/rooms/{ROOM}/ws*", route_through_staging)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        page.add_init_script(CSP_WATCH)
        opened.append((page, errors))
        page.goto(url)
        return page

    yield open_
    problems: list[str] = []
    for page, errors in opened:
        if not page.is_closed():
            problems += [f"CSP violation: {v}" for v in page.evaluate("window.__cspViolations")]
        problems += errors
        page.context.close()
    assert not problems, "\n".join(problems)


def expect_conversation(page: Page) -> None:
    """The page shows the whole conversation, in order, with authors, staged times and layout."""
    expect(texts(page)).to_have_text([text for _, text, _ in CONVERSATION.values()])
    assert seqs(page) == list(CONVERSATION)
    expect(page.locator("#log li.msg time")).to_have_text(
        [f"9:{minute:02d} AM" for _, _, minute in CONVERSATION.values()])
    expect(page.locator("#log li.day")).to_have_text(["Thursday, November 12"])
    lines = list(CONVERSATION.values())
    expect(page.locator("#log li.msg.own .text")).to_have_text(
        [text for author, text, _ in lines if author == "alice"])
    # One author's messages in a row are grouped: the name heads only the first of them.
    follows = [i > 0 and lines[i - 1][0] == author for i, (author, _, _) in enumerate(lines)]
    expect(page.locator("#log li.msg.continued .text")).to_have_text(
        [text for (_, text, _), grouped in zip(lines, follows, strict=True) if grouped])
    expect(page.locator("#log li.msg.other:not(.continued) .author")).to_have_text(
        [author.capitalize() for (author, _, _), grouped in zip(lines, follows, strict=True)
         if author != "alice" and not grouped])
    expect(page.locator("#log a")).to_have_attribute("href", "https://example.org/runbook")
    expect(page.locator("#member-list li .member-name")).to_have_text(["Alice", "Bob", "Carol"])
    expect_live(page)
    expect(page.locator("#log li.unread-line")).to_have_count(0)


def shoot(page: Page, scheme: str) -> tuple[Path, bool]:
    """Photograph ``page`` into docs/screenshots/room-<scheme>.png; (path, whether written)."""
    message_box(page).focus()  # the same focus ring in every picture
    png = page.screenshot(animations="disabled", caret="hide")
    pixels = png_pixels(png)
    assert (pixels.width, pixels.height) == (WIDTH, HEIGHT)
    assert len(png) < MAX_PNG_BYTES, f"{scheme} screenshot is {len(png)} bytes"
    brightness = mean_brightness(pixels.rows, pixels.channels)
    if scheme == "light":
        assert brightness > 180, f"the light page is dark ({brightness:.0f}/255)"
    else:
        assert brightness < 80, f"the dark page is light ({brightness:.0f}/255)"
    target = SCREENSHOTS / f"room-{scheme}.png"
    written = write_if_changed(png, target)
    check_screenshot(target)
    assert png_pixels(target.read_bytes()) == pixels
    return target, written


def test_readme_screenshots_show_a_live_conversation(
    server: RoomchatServer, photograph: Photographer
) -> None:
    alice = server.link(ROOM, server.token("alice", [ROOM], name="Alice"))
    with ChatPeer(server, ROOM, "carol", name="Carol") as carol, \
            ChatPeer(server, ROOM, "bob", name="Bob") as bob:
        peers = {"carol": carol, "bob": bob}
        light: Page | None = None
        for seq, (author, text, _) in CONVERSATION.items():
            if author != "alice":
                assert peers[author].send(text, f"m{seq}")["seq"] == seq
                continue
            if light is None:  # Alice arrives: the messages so far come as history
                light = photograph(alice, "light")
            expect_live(light)
            send(light, text)
            expect(texts(light)).to_have_count(seq)  # stored and back before the next one
        assert light is not None
        expect_conversation(light)
        written = [shoot(light, "light")]
        # She has read it all (the page says so at most every 2 s): no "New since you left"
        # when she comes back.
        # (Its socket goes through a Playwright route: Playwright must run while we wait.)
        wait_for_marker(server, "alice", len(CONVERSATION), room=ROOM,
                        pause=lambda seconds: light.wait_for_timeout(seconds * 1000))
        light.context.close()

        # Alice comes back with the dark scheme: the same conversation, all from history.
        dark = photograph(alice, "dark")
        expect_conversation(dark)
        written.append(shoot(dark, "dark"))
    for path, was_written in written:
        print(f"{path.relative_to(REPO_ROOT)}: {'written' if was_written else 'unchanged'}")


def tiny_png(rgb_rows: list[bytes], level: int) -> bytes:
    """An 8-bit RGB PNG of these rows (no filters), compressed at zlib ``level``."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", len(rgb_rows[0]) // 3, len(rgb_rows), 8, 2, 0, 0, 0)
    data = zlib.compress(b"".join(b"\0" + row for row in rgb_rows), level)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def test_a_picture_is_rewritten_only_when_its_pixels_change(tmp_path: Path) -> None:
    target = tmp_path / "shots" / "room.png"
    first = tiny_png([b"\xff\x00\x00" * 8] * 4, level=9)
    assert write_if_changed(first, target)
    assert target.read_bytes() == first

    same_pixels = tiny_png([b"\xff\x00\x00" * 8] * 4, level=0)
    assert same_pixels != first
    assert not write_if_changed(same_pixels, target)
    assert target.read_bytes() == first  # untouched: no churn

    one_pixel_more = tiny_png([b"\xff\x00\x00" * 8] * 3 + [b"\x00\x00\xff" + b"\xff\x00\x00" * 7],
                              level=9)
    assert write_if_changed(one_pixel_more, target)
    assert target.read_bytes() == one_pixel_more
    assert list(target.parent.iterdir()) == [target]  # no partial file left behind

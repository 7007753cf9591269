"""Files in the page (issue 23, "What a user sees"), in Chromium against a real server: a real
paste and a real drag-and-drop attach files, each upload shows its progress and can be cancelled,
then a preview; the send carries the files' ids; a message's images are thumbnails sized before
they load and open a lightbox driven from the keyboard; other files are cards with a download link;
every refusal is said in words.

Against the real server: uploads, messages with files (sent by the page, or by a protocol client
as another member), history pages, resumes, signed URLs (`POST /rooms/<room>/files/urls`), the
images and downloads, refusals, a moderator's delete, and a room that takes no files.

Scripted (Playwright routes answer in the server's place) only what a real server cannot be made
to do on cue: a 503, a dropped connection, and a 415 for an upload (the server refuses no type:
HTML, SVG and the rest are stored as downloads); a `file_not_found` answer to a message whose
upload the page holds; a URL refused once and good when asked again (the server signs every URL
correctly, and an expired one cannot be timed to the page's retry); a URL expiring inside the
page's one-minute margin beside a fresh one (the server gives every URL one lifetime); and a
message left waiting for its ack (the pending bubble), where the room's socket is scripted.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image
from playwright.sync_api import FilePayload, Page, Request, Route, expect

from tests.redis_server import redis_server
from tests.support import make_token

from .accessibility import axe_problems
from .conftest import PageOpener, ServerFactory, Shooter
from .harness import ChatPeer, RoomchatServer
from .pages import (
    expect_live,
    message_box,
    message_item,
    note,
    open_menu,
    pending,
    send,
    texts,
    wait_until,
)
from .scripted import BOB, ME, change, message, open_scripted, welcome


def png(width: int, height: int, color: tuple[int, int, int] = (200, 60, 60)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def upload(server: RoomchatServer, name: str, body: bytes, user: str = "bob") -> dict[str, Any]:
    """Upload ``body`` as ``user`` the way the page does (raw body, bearer token); the answer."""
    token = server.token(user, ["lobby"], name=user.title())
    request = urllib.request.Request(
        f"{server.base_url}/rooms/lobby/files?name={quote(name)}", data=body,
        method="POST", headers={"Authorization": f"Bearer {token}",
                                "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def public(answer: dict[str, Any]) -> dict[str, Any]:
    """A file as a message carries it: the upload's answer without its URLs."""
    return {k: v for k, v in answer.items() if k not in ("url", "thumb_url", "expires")}


class UrlEndpoint:
    """Answers the page's ``POST /rooms/lobby/files/urls`` with the URLs the server signed at
    upload (``known``), and records each request's ids."""

    def __init__(self, page: Page, known: dict[str, dict[str, Any]],
                 later: dict[str, dict[str, Any]] | None = None) -> None:
        self.known = known
        self.later = later  # what the requests after the first are answered from, if given
        self.asked: list[list[str]] = []
        page.route(re.compile(r"/rooms/lobby/files/urls$"), self.answer)

    def answer(self, route: Route) -> None:
        ids = json.loads(route.request.post_data or "{}")["ids"]
        if self.asked and self.later is not None:
            self.known = self.later
        self.asked.append(ids)
        files = {i: {k: v for k, v in self.known[i].items() if k in ("url", "thumb_url", "expires")}
                 for i in ids if i in self.known}
        route.fulfill(status=200, content_type="application/json",
                      body=json.dumps({"files": files}))


def open_real(server: RoomchatServer, open_page: PageOpener) -> Page:
    """alice's page in the lobby of the real server, live."""
    page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    return page


def bob_says(server: RoomchatServer, text: str, *uploads: dict[str, Any]) -> int:
    """bob sends ``text`` with his ``uploads`` (``upload``'s answers) to the real server; the
    message's seq."""
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        ack = bob.send(text, f"b-{time.monotonic_ns()}", files=[u["id"] for u in uploads])
    return int(ack["seq"])


def chips(page: Page) -> Any:
    return page.locator("#attachments li.attachment")


PASTE = """async ([b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type }));
  const box = document.getElementById('message-input');
  box.focus();
  box.dispatchEvent(new ClipboardEvent('paste',
    { clipboardData: data, bubbles: true, cancelable: true }));
}"""

DATA_TRANSFER = """(files) => {
  const data = new DataTransfer();
  for (const [b64, name, type] of files) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    data.items.add(new File([bytes], name, { type }));
  }
  return data;
}"""


def payload(name: str, data: bytes, mime: str = "application/octet-stream") -> FilePayload:
    return {"name": name, "mimeType": mime, "buffer": data}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_pasted_image_uploads_then_previews_and_the_send_carries_its_id(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    room.send(welcome(0, [ME, BOB]))
    expect_live(page)
    page.evaluate(PASTE, [b64(png(800, 600)), "screenshot.png", "image/png"])
    chip = chips(page)
    expect(chip).to_have_count(1)
    expect(chip).to_have_attribute("data-state", "done")
    # The preview is the server's thumbnail (same origin), drawn inside 64x64 at 4:3.
    thumb = chip.locator("img.attachment-thumb")
    expect(thumb).to_have_attribute("width", "64")
    expect(thumb).to_have_attribute("height", "48")
    expect(thumb).to_have_attribute("src", re.compile(r"^/rooms/lobby/files/[\w-]{22}/thumb\?"))
    page.wait_for_function("() => document.querySelector('img.attachment-thumb').naturalWidth > 0")
    expect(chip).to_contain_text("screenshot.png")
    expect(chip).to_contain_text("PNG image")
    file_id = chip.get_attribute("data-file-id")
    assert file_id and re.fullmatch(r"[\w-]{22}", file_id)
    # Enter sends the file alone (no text needed); the tray empties.
    message_box(page).press("Enter")
    wait_until(page, lambda: len(room.sent_messages()) == 1, "the message frame")
    sent = room.sent_messages()[0]
    assert sent["files"] == [file_id]
    assert sent["text"] == ""
    expect(chips(page)).to_have_count(0)
    # While it waits, the pending bubble shows the image already.
    pending_img = page.locator("#pending li img.file-thumb-img")
    expect(pending_img).to_have_attribute("data-file-id", file_id)


def test_files_dropped_on_the_room_show_a_drop_zone_then_attach(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page = open_real(server, open_page)
    data = page.evaluate_handle(DATA_TRANSFER, [
        [b64(png(300, 500)), "tall.png", "image/png"],
        [b64(b"col1,col2\n1,2\n"), "numbers.csv", "text/csv"],
    ])
    zone = page.locator("#drop-zone")
    expect(zone).to_be_hidden()
    target = page.locator("#scroller")
    target.dispatch_event("dragenter", {"dataTransfer": data})
    target.dispatch_event("dragover", {"dataTransfer": data})
    expect(zone).to_be_visible()
    expect(zone).to_have_text("Drop files to attach them")
    target.dispatch_event("drop", {"dataTransfer": data})
    expect(zone).to_be_hidden()
    expect(chips(page)).to_have_count(2)
    expect(chips(page).nth(0)).to_have_attribute("data-state", "done")
    expect(chips(page).nth(1)).to_have_attribute("data-state", "done")
    expect(chips(page).nth(1)).to_contain_text("numbers.csv")
    expect(chips(page).nth(1)).to_contain_text(re.compile(r"\d+ B · "))
    # Remove takes one off; focus moves to what is left, never lost.
    chips(page).nth(0).get_by_role("button", name="Remove tall.png").click()
    expect(chips(page)).to_have_count(1)
    focused = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert focused == "Remove numbers.csv"
    box = message_box(page)
    box.fill("the numbers")
    box.press("Enter")
    # Stored with the one file left, and back from the server.
    sent = message_item(page, "the numbers")
    expect(sent.locator(".file-card .file-name")).to_have_text(["numbers.csv"])
    expect(sent.locator(".file-thumb")).to_have_count(0)


def test_an_upload_shows_its_progress_and_cancel_stops_it(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page = open_real(server, open_page)
    # The upload crawls (DevTools' network throttling, ~64 KB/s up): its bar moves, slowly.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 64 * 1024})
    page.set_input_files("#file-input", files=[payload("big.bin", b"\x01" * 2_000_000)])
    chip = chips(page)
    expect(chip).to_have_attribute("data-state", "uploading")
    bar = chip.locator("progress")
    expect(bar).to_have_attribute("aria-label", "Uploading big.bin")
    page.wait_for_function(
        "() => { const v = document.querySelector('#attachments progress')?.value;"
        " return v > 0 && v < 1; }")
    cancel = chip.get_by_role("button", name="Cancel upload of big.bin")
    cancel.focus()
    page.keyboard.press("Enter")
    expect(chips(page)).to_have_count(0)
    expect(page.locator("#attachments")).to_be_hidden()
    # Focus went back to the message box; nothing was sent, and Enter now sends nothing.
    expect(message_box(page)).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    expect(page.locator("#log li.msg")).to_have_count(0)
    expect(pending(page)).to_have_count(0)


def test_a_messages_images_are_sized_before_they_load_and_open_a_keyboard_lightbox(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    wide = upload(server, "wide.png", png(1200, 600))
    tall = upload(server, "tall.png", png(300, 900, (40, 120, 200)))
    page = open_real(server, open_page)
    urls = UrlRequests(page)
    held: list[Route] = []

    def hold(route: Route) -> None:  # let through below, once the boxes were measured
        held.append(route)

    page.route(re.compile(r"/rooms/lobby/files/[\w-]{22}/thumb\?"), hold)
    bob_says(server, "two pictures", wide, tall)
    thumbs = page.locator("#log li.msg .file-thumb img")
    expect(thumbs).to_have_count(2)
    # Width and height come from the message: the boxes have their final size while the
    # images are still on their way (no layout jump when they arrive).
    wait_until(page, lambda: len(held) == 2, "both thumbnails requested")
    assert urls.asked == [[wide["id"], tall["id"]]]  # one request for both
    expect(thumbs.nth(0)).to_have_attribute("width", "320")
    expect(thumbs.nth(0)).to_have_attribute("height", "160")
    expect(thumbs.nth(1)).to_have_attribute("width", "80")
    expect(thumbs.nth(1)).to_have_attribute("height", "240")
    boxes = thumbs.evaluate_all(
        "imgs => imgs.map(i => [i.complete && i.naturalWidth > 0, i.getBoundingClientRect().width,"
        " i.getBoundingClientRect().height])")
    assert boxes == [[False, 320, 160], [False, 80, 240]]
    for route in held:
        route.continue_()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#log .file-thumb img')]"
        ".every(i => i.naturalWidth > 0)")
    assert thumbs.evaluate_all(
        "imgs => imgs.map(i => [i.getBoundingClientRect().width, i.getBoundingClientRect().height])"
    ) == [[320, 160], [80, 240]]
    # The keyboard opens the lightbox on the first image...
    first = page.get_by_role("button", name="View image wide.png (1 of 2)")
    first.focus()
    page.keyboard.press("Enter")
    box = page.get_by_role("dialog", name="wide.png")
    expect(box).to_be_visible()
    expect(page.locator("#lightbox-close")).to_be_focused()
    expect(page.locator("#lightbox-count")).to_have_text("Image 1 of 2")
    big = page.locator("#lightbox-img")
    expect(big).to_have_attribute("src", re.compile(rf"^/rooms/lobby/files/{wide['id']}\?"))
    expect(big).to_have_attribute("alt", "wide.png")
    page.wait_for_function("() => document.getElementById('lightbox-img').naturalWidth === 1200")
    # ...the arrows move between the message's images...
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("dialog", name="tall.png")).to_be_visible()
    expect(page.locator("#lightbox-count")).to_have_text("Image 2 of 2")
    expect(big).to_have_attribute("src", re.compile(rf"^/rooms/lobby/files/{tall['id']}\?"))
    page.keyboard.press("ArrowRight")  # the last: stays
    expect(page.locator("#lightbox-count")).to_have_text("Image 2 of 2")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#lightbox-count")).to_have_text("Image 1 of 2")
    # ...Tab stays inside the dialog...
    for _ in range(8):
        page.keyboard.press("Tab")
        assert page.evaluate("document.getElementById('lightbox').contains(document.activeElement)")
    for _ in range(3):
        page.keyboard.press("Shift+Tab")
        assert page.evaluate("document.getElementById('lightbox').contains(document.activeElement)")
    # ...and Escape closes it, the focus back on the thumbnail that opened it.
    page.keyboard.press("Escape")
    expect(page.locator("#lightbox")).to_be_hidden()
    expect(first).to_be_focused()


def test_other_files_are_cards_with_size_type_and_a_download_link(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    notes = upload(server, "notes.txt", b"hello from bob\n" * 100)
    page_html = upload(server, "page.html", b"<!doctype html><script>alert(1)</script><p>hi</p>")
    page = open_real(server, open_page)
    bob_says(server, "", notes, page_html)
    cards = page.locator("#log li.msg .file-card")
    expect(cards).to_have_count(2)
    expect(cards.nth(0).locator(".file-name")).to_have_text("notes.txt")
    expect(cards.nth(0).locator(".file-info")).to_have_text("1.5 KB · TXT file")
    # An HTML file is a download like any other, never shown inline.
    expect(cards.nth(1).locator(".file-info")).to_have_text(re.compile(r"^\d+ B · HTML file$"))
    expect(page.locator("#log li.msg .text")).to_have_count(0)  # no empty text line
    link = cards.nth(0).get_by_role("link", name="Download notes.txt")
    expect(link).to_have_attribute("href", re.compile(rf"^/rooms/lobby/files/{notes['id']}\?exp="))
    with page.expect_download() as got:
        link.focus()
        page.keyboard.press("Enter")
    download = got.value
    assert download.suggested_filename == "notes.txt"
    path = download.path()
    assert path is not None and path.read_bytes() == b"hello from bob\n" * 100


def refusal(page: Page, name: str) -> Any:
    """The words on the chip of the file ``name`` that was refused."""
    chip = chips(page).filter(has=page.locator(".attachment-name", has_text=name))
    expect(chip).to_have_attribute("data-state", "failed")
    return chip.locator(".attachment-error")


def test_each_refusal_of_the_real_server_is_said_in_words(
    make_server: ServerFactory, open_page: PageOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOMCHAT_MAX_FILE_BYTES", str(1024 * 1024))
    monkeypatch.setenv("ROOMCHAT_MAX_USER_STORAGE_BYTES", str(1024 * 1024))
    monkeypatch.setenv("ROOMCHAT_UPLOAD_BURST", "4")
    monkeypatch.setenv("ROOMCHAT_UPLOAD_RATE", "0.01")
    server = make_server()
    page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)

    def pick(name: str, data: bytes) -> None:
        before = chips(page).count()
        page.set_input_files("#file-input", files=[payload(name, data)])
        expect(chips(page)).to_have_count(before + 1)
        expect(chips(page).nth(before)).not_to_have_attribute("data-state", "uploading")

    # Twice the 1 MiB limit: refused (before it costs an upload), with the limit. (26 MiB took
    # ~40 s at load 13: Playwright hands a file to the page base64-encoded in one message.)
    pick("huge.bin", b"\0" * (2 * 1024 * 1024))
    expect(refusal(page, "huge.bin")).to_have_text(
        "“huge.bin” is too large: files can be at most 1 MB.")
    expect(note(page)).to_have_text("“huge.bin” is too large: files can be at most 1 MB.")
    pick("first.bin", b"\1" * 700_000)
    expect(chips(page).nth(1)).to_have_attribute("data-state", "done")
    pick("second.bin", b"\2" * 700_000)
    expect(refusal(page, "second.bin")).to_have_text(re.compile(
        r"^“second\.bin” was not uploaded: your storage quota of 1 MB is full\."))
    pick("empty.txt", b"")
    expect(refusal(page, "empty.txt")).to_have_text(
        "“empty.txt” is empty: there is nothing to share.")
    pick("broken.png", png(400, 300)[:200])
    expect(refusal(page, "broken.png")).to_have_text(re.compile(
        r"^“broken\.png” is not allowed: it looks like an image but cannot be read"))
    # The fifth upload in a moment passes the burst: rate limited, with a wait and a Retry.
    pick("later.txt", b"later")
    expect(refusal(page, "later.txt")).to_have_text(re.compile(
        r"^Too many uploads in a short time: “later\.txt” can be tried again in \d+ s\.$"))
    later = chips(page).filter(has=page.locator(".attachment-name", has_text="later.txt"))
    expect(later.get_by_role("button", name="Retry later.txt")).to_be_visible()
    # Refusals that no retry can fix offer none.
    expect(page.get_by_role("button", name=re.compile(r"^Retry (huge|second|empty|broken)"))
           ).to_have_count(0)
    # A send with a refused file on the tray says what to do instead of sending without it.
    message_box(page).fill("with files")
    message_box(page).press("Enter")
    expect(note(page)).to_have_text(
        "A file could not be uploaded: retry it or remove it, then send.")
    expect(message_box(page)).to_have_value("with files")


def test_a_failed_upload_retries_and_other_refusals_are_in_words(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page, room = open_scripted(server, open_page)
    room.send({**welcome(0, [ME, BOB]), "max_files_per_message": 3})
    expect_live(page)
    answers = ["unavailable", "pass"]

    def flaky(route: Route) -> None:
        name = route.request.url.rsplit("name=", 1)[1]
        if name == "kind.exe":
            route.fulfill(status=415, content_type="application/json",
                          body='{"error":"unsupported_type","detail":"not allowed"}')
        elif name == "cut.txt":
            route.abort("connectionreset")
        elif answers.pop(0) == "unavailable":
            route.fulfill(status=503, content_type="application/json",
                          body='{"error":"unavailable","detail":"file storage is unavailable"}')
        else:
            route.fallback()  # to the real server

    page.route(re.compile(r"/rooms/lobby/files\?name="), flaky)
    page.set_input_files("#file-input", files=[payload("report.txt", b"report"),
                                               payload("kind.exe", b"MZ"),
                                               payload("cut.txt", b"cut"),
                                               payload("fourth.txt", b"4")])
    # The welcome said 3 files a message: the fourth is not attached, and that is said.
    expect(chips(page)).to_have_count(3)
    expect(note(page)).to_contain_text(
        "A message can carry at most 3 files: “fourth.txt” was not attached.")
    expect(refusal(page, "report.txt")).to_have_text(
        "Upload of “report.txt” failed (file storage is unavailable).")
    expect(refusal(page, "kind.exe")).to_have_text(
        "“kind.exe” is not allowed: files of this type cannot be shared here.")
    expect(refusal(page, "cut.txt")).to_have_text(
        "Upload of “cut.txt” failed: the server could not be reached.")
    retry = page.get_by_role("button", name="Retry report.txt")
    retry.focus()
    page.keyboard.press("Enter")
    report = chips(page).filter(has=page.locator(".attachment-name", has_text="report.txt"))
    expect(report).to_have_attribute("data-state", "done")
    expect(report).to_contain_text("6 B · TXT file")
    # Focus stayed on the chip (its Remove button now), not lost to the page.
    expect(report.get_by_role("button", name="Remove report.txt")).to_be_focused()
    for name in ("kind.exe", "cut.txt"):
        page.get_by_role("button", name=f"Remove {name}").click()
    message_box(page).press("Enter")
    wait_until(page, lambda: len(room.sent_messages()) == 1, "the message frame")
    assert len(room.sent_messages()[0]["files"]) == 1
    # A message refused for its files says why in words.
    sent = room.sent_messages()[0]
    room.send({"type": "error", "code": "file_not_found", "id": sent["id"],
               "message": "no such file"})
    expect(page.locator("#pending li.failed")).to_contain_text(
        "Not sent: A file attached to it is gone")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [390, 1280])
def test_axe_finds_nothing_serious_with_files_at_390_and_1280(
    server: RoomchatServer, open_page: PageOpener, axe_source: str,
    scheme: str, width: int, shoot: Shooter,
) -> None:
    photo = upload(server, "photo.png", png(1600, 1200))
    other = upload(server, "diagram.png", png(500, 800, (30, 160, 90)))
    doc = upload(server, "minutes-of-the-meeting-with-a-long-name.txt", b"minutes\n" * 300,
                 user="alice")
    bob_says(server, "pictures from today", photo, other)
    with ChatPeer(server, "lobby", "alice", name="Alice") as alice:
        alice.send("and the minutes", "a-1", files=[doc["id"]])
    page = open_page(width=width, height=800, color_scheme=scheme, init_script=axe_source)
    page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    expect(page.locator("#log .file-thumb img")).to_have_count(2)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#log .file-thumb img')]"
        ".every(i => i.naturalWidth > 0)")

    # The tray: a preview, a refusal, and an upload in progress (held).
    def held_or_refused(route: Route) -> None:
        if "refused.exe" in route.request.url:
            route.fulfill(status=415, content_type="application/json",
                          body='{"error":"unsupported_type","detail":"no"}')
        elif "slow.bin" not in route.request.url:
            route.fallback()
        # slow.bin: never answered while the test looks

    page.route(re.compile(r"/rooms/lobby/files\?name="), held_or_refused)
    page.set_input_files("#file-input", files=[payload("shot.png", png(640, 480), "image/png"),
                                               payload("refused.exe", b"MZ"),
                                               payload("slow.bin", b"x" * 1000)])
    expect(chips(page).nth(0)).to_have_attribute("data-state", "done")
    expect(chips(page).nth(1)).to_have_attribute("data-state", "failed")
    expect(chips(page).nth(2)).to_have_attribute("data-state", "uploading")
    page.wait_for_function(
        "() => document.querySelector('img.attachment-thumb')?.naturalWidth > 0")
    # Nothing sticks out sideways on a phone; the thumbnails keep their ratio inside the bubble.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    for img in page.locator("#log .file-thumb img").all():
        box = img.bounding_box()
        assert box is not None
        ratio = int(img.get_attribute("width") or 0) / int(img.get_attribute("height") or 1)
        assert abs(box["width"] / box["height"] - ratio) < 0.02
    problems = axe_problems(page)
    assert not problems, "\n".join(problems)
    shoot(page, f"files-{width}-{scheme}")
    # The drop zone while dragging.
    data = page.evaluate_handle(DATA_TRANSFER, [[b64(b"x"), "x.txt", "text/plain"]])
    page.locator("#scroller").dispatch_event("dragenter", {"dataTransfer": data})
    expect(page.locator("#drop-zone")).to_be_visible()
    problems = axe_problems(page)
    assert not problems, "\n".join(problems)
    page.locator("#scroller").dispatch_event("dragleave", {"dataTransfer": data})
    expect(page.locator("#drop-zone")).to_be_hidden()
    # The lightbox, over two images.
    page.get_by_role("button", name="View image photo.png (1 of 2)").click()
    expect(page.locator("#lightbox")).to_be_visible()
    page.wait_for_function("() => document.getElementById('lightbox-img').naturalWidth > 0")
    img_box = page.locator("#lightbox-img").bounding_box()
    assert img_box is not None and img_box["width"] <= width
    problems = axe_problems(page)
    assert not problems, "\n".join(problems)
    shoot(page, f"files-lightbox-{width}-{scheme}")


def test_an_image_whose_url_is_refused_gets_fresh_urls_once(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    good = upload(server, "pic.png", png(200, 100))
    broken = upload(server, "gone.png", png(100, 100))
    page, room = open_scripted(server, open_page)
    # The first answer's signatures are wrong (as an expired URL would be: the server says 403).
    spoilt = {f["id"]: {**f, "thumb_url": f["thumb_url"].replace("sig=", "sig=x")}
              for f in (good, broken)}
    # Asked again, the server signs one properly; the other stays refused.
    urls = UrlEndpoint(page, spoilt, later={good["id"]: good, broken["id"]: spoilt[broken["id"]]})
    room.send(welcome(1, [ME, BOB]),
              {**message(1, BOB, "look"), "files": [public(good), public(broken)]})
    page.wait_for_function(
        "() => document.querySelector('#log .file-thumb img').naturalWidth === 200")
    # Asked again for both, once: the one still refused is shown as unavailable, not retried
    # in a loop.
    expect(page.locator("#log .file-thumb.broken")).to_have_count(1)
    page.wait_for_timeout(500)
    asked = [i for ids in urls.asked for i in ids]
    assert sorted(asked) == sorted([good["id"], broken["id"]] * 2)


def test_the_attach_button_opens_a_file_picker_from_the_keyboard(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    page = open_real(server, open_page)
    # Playwright subscribes to file choosers when the first listener comes, fire and forget
    # (channel_owner._update_subscription): listen from the start, or under load a key press
    # just after `expect_file_chooser` opens the real, headless chooser and no event comes.
    page.on("filechooser", lambda _: None)
    attach = page.get_by_role("button", name="Attach files")
    expect(attach).to_have_accessible_description(re.compile(
        r"^Attach up to 10 files of up to 25 MB each: pick them, paste an image, or drop files "
        r"on the room\.$"))  # both limits from the server (welcome, /api/info)
    # From the message box, Shift+Tab reaches the button (it sits just before the box).
    expect(message_box(page)).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(attach).to_be_focused()
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    assert chooser.value.is_multiple()
    chooser.value.set_files([payload("a.txt", b"aaa"), payload("b.txt", b"bbbb")])
    expect(chips(page)).to_have_count(2)
    for n in range(2):  # (a send waits for uploads under way, and says so)
        expect(chips(page).nth(n)).to_have_attribute("data-state", "done")
    expect(message_box(page)).to_be_focused()  # back to writing
    page.keyboard.press("Enter")
    # Sent, stored and back: one message of two cards.
    expect(page.locator("#log li.msg")).to_have_count(1)
    expect(page.locator("#log li.msg .file-card .file-name")).to_have_text(["a.txt", "b.txt"])


def test_sizes_kinds_and_boxes_in_words(server: RoomchatServer, open_page: PageOpener) -> None:
    """The pure helpers of static/files.js, at their edges (run in the page: it is a module of
    the page, importing chat.js by its URL)."""
    page = open_page(f"{server.base_url}/static/index.html")
    got = page.evaluate("""async () => {
      const f = await import('/static/files.js');
      return {
        sizes: [0, 1023, 1024, 1536, 10 * 1024 - 1, 25 * 1024 * 1024, 1024 ** 3 * 1.25, -1, NaN]
          .map(f.humanSize),
        limits: [26214400, 1048576, 200000, 1073741824].map(f.limitText),
        kinds: [['image/png', 'x.png'], ['application/octet-stream', 'notes.TXT'],
                ['application/octet-stream', 'noext'], ['text/x-weird', 'a.b'], ['', '']]
          .map(([t, n]) => f.fileKind(t, n)),
        boxes: [[1200, 600], [300, 900], [100, 50], [5000, 1]]
          .map(([w, h]) => f.fitBox(w, h, 320, 240)),
        files: f.fileList([{ id: 'a'.repeat(22), name: 'x', size: 3, type: 'text/plain',
                             width: 5, url: '/evil' },
                           { id: 'a'.repeat(22), name: 'dup' }, { id: '../x' }, null,
                           { id: 'b'.repeat(22), size: -4, width: 2, height: 3, thumb: true }]),
      };
    }""")
    assert got["sizes"] == ["0 B", "1023 B", "1 KB", "1.5 KB", "10 KB", "25 MB", "1.3 GB", "", ""]
    assert got["limits"] == ["25 MB", "1 MB", "0.2 MB", "1 GB"]
    assert got["kinds"] == ["PNG image", "TXT file", "File", "text/x-weird", "File"]
    assert got["boxes"] == [{"width": 320, "height": 160}, {"width": 80, "height": 240},
                            {"width": 100, "height": 50}, {"width": 320, "height": 1}]
    # Only the public fields, width and height together or not at all, no id twice, no path.
    assert got["files"] == [
        {"id": "a" * 22, "name": "x", "size": 3, "type": "text/plain"},
        {"id": "b" * 22, "name": "file", "size": 0, "type": "", "width": 2, "height": 3,
         "thumb": True},
    ]


def test_a_room_that_takes_no_files_offers_no_button_and_says_so_on_a_drop(
    make_server: ServerFactory, open_page: PageOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOMCHAT_MAX_FILES_PER_MESSAGE", "0")
    page = open_real(make_server(), open_page)  # its welcome says max_files_per_message 0
    expect(page.get_by_role("button", name="Attach files")).to_be_hidden()
    page.evaluate(PASTE, [b64(b"hello"), "hello.txt", "text/plain"])
    expect(note(page)).to_have_text("This room does not take files.")
    expect(chips(page)).to_have_count(0)
    # Nor does a drag show a drop zone.
    data = page.evaluate_handle(DATA_TRANSFER, [[b64(b"x"), "x.txt", "text/plain"]])
    page.locator("#scroller").dispatch_event("dragenter", {"dataTransfer": data})
    page.wait_for_timeout(200)
    expect(page.locator("#drop-zone")).to_be_hidden()


def test_files_of_an_older_page_are_drawn_with_one_url_request_for_the_page(
    make_server: ServerFactory, open_page: PageOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOMCHAT_HISTORY_ON_JOIN", "1")
    server = make_server()
    pics = [upload(server, f"p{n}.png", png(100 + n, 100)) for n in range(3)]
    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        for n in range(3):
            bob.send(f"picture {n}", f"p-{n}", files=[pics[n]["id"]])
        bob.send("latest", "p-latest")
    page = open_page()
    urls = UrlRequests(page)
    # The room holds 1..4; the join shows 4 only (a short log: the page asks for the older
    # ones, and the server's page carries their files).
    page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    thumbs = page.locator("#log .file-thumb img")
    expect(thumbs).to_have_count(3)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#log .file-thumb img')]"
        ".every(i => i.naturalWidth > 0)")
    assert [sorted(ids) for ids in urls.asked] == [sorted(p["id"] for p in pics)]
    assert thumbs.evaluate_all("imgs => imgs.map(i => i.naturalWidth)") == [100, 101, 102]


def test_urls_are_kept_until_shortly_before_they_expire(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    fresh = upload(server, "fresh.png", png(120, 80))
    lapsing = upload(server, "lapsing.png", png(80, 120))
    page, room = open_scripted(server, open_page)
    soon = int(time.time()) + 30  # inside the page's one-minute margin
    urls = UrlEndpoint(page, {fresh["id"]: fresh, lapsing["id"]: {**lapsing, "expires": soon}})
    room.send(welcome(2, [ME, BOB]),
              {**message(1, BOB, "fresh"), "files": [public(fresh)]},
              {**message(2, BOB, "lapsing"), "files": [public(lapsing)]})
    expect(page.locator("#log .file-thumb img")).to_have_count(2)
    # (Loaded: the first answer is in. A redraw while it is on its way joins it instead.)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#log .file-thumb img')]"
        ".every(i => i.naturalWidth > 0)")
    assert len(urls.asked) == 1
    # Each message is drawn again (a reaction): the fresh URL is reused, the lapsing one renewed.
    room.send(change(3, "react", 1, emoji="👍", on=True),
              change(4, "react", 2, emoji="👍", on=True))
    wait_until(page, lambda: len(urls.asked) == 2, "the lapsing URL asked for again")
    page.wait_for_timeout(300)
    assert urls.asked[1:] == [[lapsing["id"]]]


# -- against the real server only: nothing scripted ---------------------------------------------

NOTES = b"minutes of the meeting\n" * 200


def http_status(url: str) -> int:
    """The status of a plain GET of ``url`` (a signed URL needs no credential)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class UrlRequests:
    """The ids of each ``POST /rooms/lobby/files/urls`` a page made (answered by the server)."""

    def __init__(self, page: Page) -> None:
        self.asked: list[list[str]] = []
        page.on("request", self.seen)

    def seen(self, request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/rooms/lobby/files/urls"):
            self.asked.append(json.loads(request.post_data or "{}")["ids"])

    def ids(self) -> set[str]:
        return {i for ids in self.asked for i in ids}


def loaded(page: Page) -> None:
    """Until every thumbnail in the conversation has its pixels."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('#log .file-thumb img')]"
        ".every(i => i.complete && i.naturalWidth > 0)")


def test_files_go_from_one_page_to_another_through_the_real_server(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    """alice pastes an image and picks a file, sends them with text; bob (a moderator) sees the
    thumbnail at its size before it loads, opens the lightbox, downloads the file from its card;
    a reload (history) and a resume show them again, their URLs asked of the server; bob's
    delete takes the files off both pages and their URLs then answer 404. Nothing is scripted:
    the test only holds requests back (thumbnails, bob's reconnect) to look at the page
    meanwhile."""
    alice = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    bob = open_page(server.link("lobby", make_token("bob", ["lobby"], name="Bob",
                                                    secret=server.secret, moderator=True)))
    expect_live(alice)
    expect_live(bob)
    urls = UrlRequests(bob)
    held: list[Route] = []
    thumb_route = re.compile(r"/rooms/lobby/files/[\w-]{22}/thumb\?")

    def hold(route: Route) -> None:  # let through below, once the box was measured
        held.append(route)

    bob.route(thumb_route, hold)

    alice.evaluate(PASTE, [b64(png(1200, 600)), "screenshot.png", "image/png"])
    expect(chips(alice)).to_have_count(1)
    alice.set_input_files("#file-input", files=[payload("notes.txt", NOTES, "text/plain")])
    expect(chips(alice)).to_have_count(2)
    for n in range(2):
        expect(chips(alice).nth(n)).to_have_attribute("data-state", "done")
    image_id, notes_id = (chips(alice).nth(n).get_attribute("data-file-id") for n in range(2))
    assert image_id and notes_id
    send(alice, "the screenshot and the notes")
    expect(chips(alice)).to_have_count(0)

    # bob: the thumbnail's box has its final size while its bytes are held back.
    ours = message_item(bob, "the screenshot and the notes")
    thumb = ours.locator(".file-thumb img")
    expect(thumb).to_have_count(1)
    wait_until(bob, lambda: len(held) == 1, "the thumbnail requested")
    expect(thumb).to_have_attribute("width", "320")
    expect(thumb).to_have_attribute("height", "160")
    assert thumb.evaluate("i => [i.complete && i.naturalWidth > 0, i.getBoundingClientRect()"
                          ".width, i.getBoundingClientRect().height]") == [False, 320, 160]
    for route in held:
        route.continue_()
    bob.unroute(thumb_route)
    loaded(bob)
    assert thumb.evaluate("i => [i.getBoundingClientRect().width, "
                          "i.getBoundingClientRect().height]") == [320, 160]
    assert urls.ids() == {image_id, notes_id}  # signed by the server, asked for by bob
    # The lightbox shows the full image (the server's re-encoded copy, full size).
    bob.get_by_role("button", name="View image screenshot.png").click()
    expect(bob.get_by_role("dialog", name="screenshot.png")).to_be_visible()
    bob.wait_for_function("() => document.getElementById('lightbox-img').naturalWidth === 1200")
    image_url = bob.locator("#lightbox-img").get_attribute("src")
    bob.keyboard.press("Escape")
    expect(bob.locator("#lightbox")).to_be_hidden()
    # The card's download link gives the file's bytes, under its name.
    link = ours.get_by_role("link", name="Download notes.txt")
    notes_url = link.get_attribute("href")
    assert image_url and notes_url
    with bob.expect_download() as got:
        link.click()
    assert got.value.suggested_filename == "notes.txt"
    path = got.value.path()
    assert path is not None and path.read_bytes() == NOTES

    # A reload: the history carries the files; their URLs are asked for again.
    asked = len(urls.asked)
    bob.reload()
    expect_live(bob)
    expect(message_item(bob, "the screenshot and the notes").locator(".file-card")).to_have_count(1)
    loaded(bob)
    assert {i for ids in urls.asked[asked:] for i in ids} == {image_id, notes_id}

    # A resume: bob's page is away (its reconnect held) while alice sends another image.
    tickets: list[Route] = []
    ticket_route = re.compile(r"/rooms/lobby/ticket$")

    def hold_ticket(route: Route) -> None:  # let through once alice has sent
        tickets.append(route)

    bob.route(ticket_route, hold_ticket)
    sockets: list[str] = []
    bob.on("websocket", lambda ws: sockets.append(ws.url))
    server.stop()
    server.start()
    wait_until(bob, lambda: len(tickets) >= 1, "bob's reconnect")
    expect_live(alice)
    alice.evaluate(PASTE, [b64(png(300, 900, (40, 120, 200))), "tall.png", "image/png"])
    expect(chips(alice)).to_have_attribute("data-state", "done")
    later_id = chips(alice).get_attribute("data-file-id")
    send(alice, "one more")
    expect(message_item(alice, "one more").locator(".file-thumb img")).to_have_count(1)
    for route in tickets:
        route.fallback()
    bob.unroute(ticket_route)
    expect_live(bob)
    assert "after=" in sockets[-1]  # a resume, not a fresh history
    later = message_item(bob, "one more").locator(".file-thumb img")
    expect(later).to_have_attribute("width", "80")
    expect(later).to_have_attribute("height", "240")
    loaded(bob)
    assert later_id in urls.ids()

    # bob, a moderator, deletes alice's first message: its files leave both pages...
    dialog = open_menu(bob, "the screenshot and the notes")
    dialog.get_by_role("button", name="Delete message").click()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    for page in (alice, bob):
        expect(texts(page)).to_have_text(["message deleted", "one more"])
        expect(page.locator("#log .file-card")).to_have_count(0)
        expect(page.locator("#log .file-thumb img")).to_have_count(1)  # "one more"'s
    # ...and their bytes leave the server (after the delete is stored: a job of its own).
    deadline = time.monotonic() + 30
    while http_status(server.base_url + notes_url) != 404:
        assert time.monotonic() < deadline, "the deleted message's file is still served"
        bob.wait_for_timeout(100)
    assert http_status(server.base_url + image_url) == 404


def test_a_file_sent_through_one_process_shows_on_a_page_of_another(
    make_server: ServerFactory, open_page: PageOpener, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two server processes on one Redis and one shared files directory (as the compose file
    runs them): alice's page on the first pastes an image and picks a file and sends them;
    bob's page on the second shows the thumbnail, its URLs signed by the second process, and
    downloads the file's bytes from it."""
    monkeypatch.setenv("ROOMCHAT_FILES_URL", (tmp_path / "shared-files").as_uri())
    with redis_server(tmp_path / "redis") as redis_url:
        one, two = (make_server("--store-url", redis_url) for _ in range(2))
        alice = open_page(one.link("lobby", one.token("alice", ["lobby"], name="Alice")))
        bob = open_page(two.link("lobby", two.token("bob", ["lobby"], name="Bob")))
        expect_live(alice)
        expect_live(bob)
        urls = UrlRequests(bob)
        alice.evaluate(PASTE, [b64(png(640, 480)), "across.png", "image/png"])
        alice.set_input_files("#file-input", files=[payload("notes.txt", NOTES, "text/plain")])
        expect(chips(alice)).to_have_count(2)
        for n in range(2):
            expect(chips(alice).nth(n)).to_have_attribute("data-state", "done")
        send(alice, "from the other process")
        ours = message_item(bob, "from the other process")
        expect(ours.locator(".file-thumb img")).to_have_attribute("width", "320")
        loaded(bob)
        assert len(urls.ids()) == 2  # asked of bob's process, which signed them
        with bob.expect_download() as got:
            ours.get_by_role("link", name="Download notes.txt").click()
        path = got.value.path()
        assert path is not None and path.read_bytes() == NOTES
        for server in (one, two):  # before their Redis goes
            server.stop()

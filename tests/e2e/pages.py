"""What the tests do with the chat page, in one place (so a markup change is one edit)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from playwright.sync_api import Locator, Page, expect


def status(page: Page) -> Locator:
    return page.locator("#status")


def expect_live(page: Page) -> None:
    expect(status(page)).to_have_attribute("data-state", "live")


def message_box(page: Page) -> Locator:
    """The composer, found the way a person using a screen reader finds it: by its label."""
    return page.get_by_label("Message", exact=True)


def send(page: Page, text: str) -> None:
    box = message_box(page)
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")


def texts(page: Page) -> Locator:
    """The text of every delivered message, in page order."""
    return page.locator("#log li.msg .text")


def seqs(page: Page) -> list[int]:
    return [
        int(s or 0)
        for s in page.locator("#log li.msg").evaluate_all(
            "items => items.map(li => li.dataset.seq)"
        )
    ]


def pending(page: Page) -> Locator:
    return page.locator("#pending li")


def wait_until(page: Page, predicate: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Poll a Python-side condition (e.g. what a mocked socket received) while Playwright runs."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        page.wait_for_timeout(50)  # lets Playwright deliver events to our handlers


# -- each message's menu (react, reply, edit, copy link, delete; a moderator's delete, ban) -----

def message_item(page: Page, text: str) -> Locator:
    """The message line whose text is ``text``."""
    return page.locator("#log li.msg").filter(
        has=page.locator(".text", has_text=re.compile(f"^{re.escape(text)}$")))


def menu_buttons(page: Page) -> Locator:
    """Every message's menu button (every message but a deleted one has one)."""
    return page.locator("#log li.msg button.msg-menu")


def menu_button(page: Page, text: str) -> Locator:
    """The menu button of the message ``text``."""
    return message_item(page, text).get_by_role("button", name=re.compile("^Actions for "))


def open_menu(page: Page, text: str) -> Locator:
    """Open the menu of the message ``text``; the dialog it opened."""
    menu_button(page, text).click()
    dialog = moderation_dialog(page)
    expect(dialog).to_be_visible()
    return dialog


def moderation_dialog(page: Page) -> Locator:
    return page.get_by_role("dialog")


# -- rich messages (docs/design/rich-messages.md) -----------------------------------------------

# Makes the page believe its tab is hidden while `window.__hidden` is true (headless Chromium's
# tabs are always visible): for unread counts and notifications.
HIDDEN_TAB = """
Object.defineProperty(Document.prototype, 'hidden', {
  configurable: true, get: () => window.__hidden === true });
Object.defineProperty(Document.prototype, 'visibilityState', {
  configurable: true, get: () => (window.__hidden === true ? 'hidden' : 'visible') });
"""


def set_hidden(page: Page, hidden: bool) -> None:
    """Hide or show the tab (with HIDDEN_TAB installed), as switching tabs does."""
    flag = "true" if hidden else "false"
    page.evaluate(
        f"window.__hidden = {flag}; document.dispatchEvent(new Event('visibilitychange'))")


def chip(page: Page, text: str, emoji: str) -> Locator:
    """The reaction chip ``emoji`` under the message ``text``."""
    return message_item(page, text).locator(f'.reactions .chip[data-emoji="{emoji}"]')


def chips(page: Page, text: str) -> Locator:
    """Every reaction chip (not the "Add reaction" one) under the message ``text``."""
    return message_item(page, text).locator(".reactions .chip[data-emoji]")


def picker(page: Page) -> Locator:
    """The reaction picker (a dialog named "React to ...")."""
    return page.get_by_role("dialog", name=re.compile("^React to "))


def note(page: Page) -> Locator:
    """The line under the message box: refusals in words, and news ("Link copied")."""
    return page.locator("#composer-note")


def item_of(page: Page, seq: int) -> Locator:
    """The message line with ``seq``."""
    return page.locator(f'#log li.msg[data-seq="{seq}"]')


def in_view(page: Page, seq: int) -> bool:
    """Whether message ``seq`` is (at least partly) inside the conversation's scrolled view."""
    return bool(page.evaluate(
        """(seq) => {
          const li = document.querySelector(`#log li.msg[data-seq="${seq}"]`);
          if (!li) return false;
          const r = li.getBoundingClientRect();
          const s = document.getElementById('scroller').getBoundingClientRect();
          return r.bottom > s.top && r.top < s.bottom;
        }""", seq))

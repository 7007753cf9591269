"""Browser notifications in the page (issue 21), against the real server, with the permission
granted in the test's browser context: asked for only after "Enable notifications" is clicked;
then a notification for a mention while the tab is hidden (none while it is shown), for every
message once "All messages" is chosen; the choice remembered per room; a click on one goes to
the message. The `Notification` constructor is wrapped to record what the page shows (the
operating system's display is the edge)."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page, expect

from .conftest import PageOpener
from .harness import ChatPeer, RoomchatServer
from .pages import HIDDEN_TAB, expect_live, item_of, set_hidden, texts

# Records every notification the page makes and every permission request, keeping the real ones.
SPY = """
window.__notes = [];
window.__asked = 0;
const RealNotification = window.Notification;
class SpyNotification extends RealNotification {
  constructor(title, options) {
    super(title, options);
    window.__notes.push({ title, body: options && options.body, tag: options && options.tag });
    window.__lastNote = this;
  }
  static requestPermission(...args) {
    window.__asked += 1;
    return RealNotification.requestPermission(...args);
  }
  static get permission() { return RealNotification.permission; }
}
window.Notification = SpyNotification;
"""


def notes(page: Page) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = page.evaluate("window.__notes")
    return shown


def open_alice(open_page: PageOpener, server: RoomchatServer) -> Page:
    page = open_page(init_script=HIDDEN_TAB + SPY)
    page.goto(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    return page


def test_notifications_for_mentions_then_all_messages_while_hidden(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    alice = open_alice(open_page, server)
    assert alice.evaluate("Notification.permission") == "default"
    toggle = alice.get_by_role("button", name="Notifications: off")
    toggle.click()
    dialog = alice.get_by_role("dialog", name="Notifications for #lobby")
    enable = dialog.get_by_role("button", name="Enable notifications")
    expect(enable).to_be_focused()
    expect(dialog.get_by_role("radio", name="Messages that mention me")).to_be_disabled()
    # Nothing was asked for yet: only the click asks (the test's context grants it).
    assert alice.evaluate("window.__asked") == 0
    alice.context.grant_permissions(["notifications"], origin=server.base_url)
    enable.click()
    expect(enable).to_be_hidden()
    mentions = dialog.get_by_role("radio", name="Messages that mention me")
    expect(mentions).to_be_checked()
    expect(mentions).to_be_focused()
    assert alice.evaluate("window.__asked") == 1
    assert alice.evaluate("localStorage.getItem('roomchat:notify:lobby')") == "mentions"
    dialog.get_by_role("button", name="Done").click()
    expect(dialog).to_be_hidden()
    expect(alice.get_by_role("button", name="Notifications: mentions of you")).to_be_focused()

    with ChatPeer(server, "lobby", "bob", name="Bob") as bob:
        # Shown: no notification, even for a mention.
        bob.send("@Alice while you look", "b-1", mentions=["alice"])
        expect(texts(alice)).to_have_count(1)
        # Hidden: a mention notifies; a plain message does not.
        set_hidden(alice, True)
        bob.send("just chatting", "b-2")
        mention = bob.send("@Alice are you there?", "b-3", mentions=["alice"])["seq"]
        expect(texts(alice)).to_have_count(3)
        alice.wait_for_function("() => window.__notes.length >= 1")
        assert notes(alice) == [{"title": "Bob mentioned you in #lobby",
                                 "body": "@Alice are you there?",
                                 "tag": f"roomchat:lobby:{mention}"}]

        # "All messages": every message notifies while hidden.
        set_hidden(alice, False)
        alice.get_by_role("button", name="Notifications: mentions of you").click()
        dialog.get_by_role("radio", name="All messages").check()
        dialog.get_by_role("button", name="Done").click()
        assert alice.evaluate("localStorage.getItem('roomchat:notify:lobby')") == "all"
        set_hidden(alice, True)
        plain = bob.send("anyone for tea?", "b-4")["seq"]
        alice.wait_for_function("() => window.__notes.length >= 2")
        assert notes(alice)[1] == {"title": "Bob in #lobby", "body": "anyone for tea?",
                                   "tag": f"roomchat:lobby:{plain}"}
        # A click on the notification shows the message.
        alice.evaluate("window.__lastNote.dispatchEvent(new Event('click'))")
        expect(item_of(alice, plain)).to_be_focused()

        # "Nothing": no more notifications.
        set_hidden(alice, False)
        alice.get_by_role("button", name="Notifications: all messages").click()
        dialog.get_by_role("radio", name="Nothing").check()
        dialog.get_by_role("button", name="Done").click()
        set_hidden(alice, True)
        bob.send("@Alice last one", "b-5", mentions=["alice"])
        expect(texts(alice)).to_have_count(5)
        alice.wait_for_timeout(500)  # a notification would have been made with the message
        assert len(notes(alice)) == 2


def test_the_choice_is_remembered_per_room_and_a_blocked_permission_is_explained(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    alice = open_alice(open_page, server)
    alice.context.grant_permissions(["notifications"], origin=server.base_url)
    alice.get_by_role("button", name="Notifications: off").click()
    dialog = alice.get_by_role("dialog", name="Notifications for #lobby")
    # Granted already: no button to enable, the choice at once; nothing was asked.
    expect(dialog.get_by_role("button", name="Enable notifications")).to_be_hidden()
    dialog.get_by_role("radio", name="All messages").check()
    alice.keyboard.press("Escape")
    alice.reload()
    expect_live(alice)
    expect(alice.get_by_role("button", name="Notifications: all messages")).to_be_visible()
    assert alice.evaluate("window.__asked") == 0
    # Another room on this browser has its own choice (off until chosen).
    other = alice.context.new_page()
    other.add_init_script(HIDDEN_TAB + SPY)
    other.goto(server.link("other", server.token("alice", ["other"], name="Alice")))
    expect_live(other)
    expect(other.get_by_role("button", name="Notifications: off")).to_be_visible()
    other.close()

    # Blocked in the browser: the dialog says where to change it, nothing to enable.
    blocked = open_alice(open_page, server)
    blocked.context.clear_permissions()
    blocked.evaluate("""() => {
      Object.defineProperty(window.Notification, 'permission', { get: () => 'denied' });
    }""")
    blocked.get_by_role("button", name="Notifications: off").click()
    dialog = blocked.get_by_role("dialog", name="Notifications for #lobby")
    expect(dialog.locator("#notify-text")).to_contain_text("blocked for this site")
    expect(dialog.get_by_role("button", name="Enable notifications")).to_be_hidden()
    expect(dialog.get_by_role("radio", name="All messages")).to_be_disabled()

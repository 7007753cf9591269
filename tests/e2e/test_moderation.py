"""A moderator's delete through the server API, seen by a page: live ("message deleted" in
place of the text) and after a reload (the tombstone comes back in the history)."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.apicall import call_sync
from tests.support import make_token

from .conftest import PageOpener
from .harness import RoomchatServer
from .pages import expect_live, texts


def test_a_deleted_message_shows_as_deleted_live_and_after_reload(
    server: RoomchatServer, open_page: PageOpener
) -> None:
    api = make_token("backend", ["*"], secret=server.secret, scope="api")
    for text in ("keep me", "remove me"):
        status, _, _ = call_sync(server.port, "POST", "/rooms/lobby/messages", {"text": text},
                                 token=api)
        assert status == 200
    page = open_page(server.link("lobby", server.token("alice", ["lobby"], name="Alice")))
    expect_live(page)
    expect(texts(page)).to_have_text(["keep me", "remove me"])
    status, _, _ = call_sync(server.port, "DELETE", "/rooms/lobby/messages/2", token=api)
    assert status == 200
    expect(texts(page)).to_have_text(["keep me", "message deleted"])
    page.reload()
    expect_live(page)
    expect(texts(page)).to_have_text(["keep me", "message deleted"])

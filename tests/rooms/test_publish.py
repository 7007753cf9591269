"""RoomState.publish: a server-API message takes the socket messages' path (pure)."""

from __future__ import annotations

from rooms.config import RoomConfig
from rooms.messages import Appended, Draft
from rooms.state import Broadcast, RoomState


def _state() -> RoomState:
    state = RoomState("lobby", RoomConfig())
    state.join(1, "alice", "Alice", after=None, expires_at=1e9, now=0.0, wall_ms=0)
    return state


def test_publish_is_stored_then_delivered_then_answered() -> None:
    state = _state()
    assert state.publish(7, Draft("bot", "Bot", "b1", "hello", 5)) is None
    batch = state.take_pending()
    assert [d.text for d in batch] == ["hello"]
    assert state.published == []
    effects = state.committed(batch, [Appended(1)])
    assert isinstance(effects[0], Broadcast) and '"text":"hello"' in effects[0].payload
    assert state.published == [(7, Appended(1))]
    assert not any(getattr(e, "session", None) == -7 for e in effects)  # no Send to a ticket


def test_publish_dedups_with_socket_messages_and_itself() -> None:
    state = _state()
    assert state.publish(1, Draft("bot", "Bot", "x", "a", 5)) is None
    assert state.publish(2, Draft("bot", "Bot", "x", "a", 5)) is None  # original pending
    batch = state.take_pending()
    assert len(batch) == 1  # the retry waits for the original's seq
    state.committed(batch, [Appended(1)])
    assert sorted(state.published) == [(1, Appended(1)), (2, Appended(1, True))]
    state.published.clear()
    # Once stored, a retry is answered at once with the original seq.
    assert state.publish(3, Draft("bot", "Bot", "x", "a", 6)) == Appended(1, True)
    # In flight: the retry waits for the original's seq.
    assert state.publish(4, Draft("bot", "Bot", "y", "b", 6)) is None
    batch = state.take_pending()
    assert state.publish(5, Draft("bot", "Bot", "y", "b", 6)) is None
    assert state.pending == []
    state.committed(batch, [Appended(2)])
    assert sorted(state.published) == [(4, Appended(2)), (5, Appended(2, True))]

"""Typing indicators in RoomState: relayed to the others, at most once per TYPING_INTERVAL per
user, never stored; time is stepped by hand."""

from __future__ import annotations

from rooms.config import RoomConfig
from rooms.protocol import TYPING_INTERVAL, Typing, parse_client_frame
from rooms.state import RoomState

from .test_state import joined, objs

CFG = RoomConfig(rate_burst=2, rate_per_sec=1.0, rate_abuse_strikes=3)


def test_typing_is_parsed_from_its_frame() -> None:
    assert parse_client_frame('{"type":"typing"}', max_text_chars=10, max_id_chars=10) == Typing()


def test_typing_reaches_the_others_at_most_once_per_interval_and_is_never_stored() -> None:
    state = RoomState("lobby", CFG)
    joined(state, 1, "alice")
    joined(state, 2, "alice")  # a second tab of the same person
    joined(state, 3, "bob")
    effects = state.receive(1, Typing(), 10.0, 1000)
    assert objs(effects) == [("all", 1, {"type": "typing", "user": "alice", "name": "Alice"})]
    # Again from either of her sockets within the interval: nothing.
    assert state.receive(1, Typing(), 10.0 + TYPING_INTERVAL / 2, 1000) == []
    assert state.receive(2, Typing(), 10.0 + TYPING_INTERVAL - 0.01, 1000) == []
    # Bob has his own allowance.
    assert objs(state.receive(3, Typing(), 11.0, 1000))[0][2]["user"] == "bob"
    # After the interval, relayed again.
    assert len(state.receive(2, Typing(), 10.0 + TYPING_INTERVAL, 1000)) == 1
    assert state.pending == [] and state.delivered_seq == 0


def test_typing_over_the_rate_is_dropped_silently() -> None:
    state = RoomState("lobby", RoomConfig(rate_burst=2, rate_per_sec=1.0, rate_abuse_strikes=50))
    joined(state, 1, "alice")
    joined(state, 2, "bob")
    answers = []
    # At pong cost, 2 tokens last about 20 frames; then refusals, short of rate abuse.
    for _ in range(40):
        answers += state.receive(1, Typing(), 0.0, 1000)
    # One relay, and never an error for a typing frame (the client asked for no answer).
    assert [kind for kind, _, _ in objs(answers)] == ["all"]
    assert state.has_session(1)


def test_a_member_who_left_starts_fresh() -> None:
    state = RoomState("lobby", CFG)
    joined(state, 1, "alice")
    joined(state, 2, "bob")
    assert state.receive(1, Typing(), 5.0, 1000)
    state.leave(1, 1000)
    joined(state, 3, "alice", now=5.5)
    assert state.receive(3, Typing(), 5.5, 1000)

"""RoomState is pure: these tests step time by hand, no sockets, no sleeps."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from rooms.attachments import FileRef
from rooms.config import RoomConfig
from rooms.errors import RoomFull, Unstorable
from rooms.messages import (
    Action,
    Appended,
    ChangeDraft,
    Draft,
    Refusal,
    RoomSnapshot,
    StoredMessage,
    Unread,
    WireMessage,
)
from rooms.protocol import (
    BanUser,
    ClientFrame,
    CloseCode,
    DeleteMessage,
    EditMessage,
    ErrorCode,
    FrameError,
    MarkRead,
    Pong,
    React,
    SendMessage,
)
from rooms.state import Broadcast, Close, Effect, ModerationOutcome, RoomState, Send

CFG = RoomConfig(rate_burst=2, rate_per_sec=1.0, rate_abuse_strikes=3, max_invalid_frames=2,
                 history_on_join=3, ping_interval=10, ping_timeout=5, dedup_window=4,
                 max_room_connections=3)


def objs(effects: list[Effect]) -> list[tuple[str, Any, dict[str, Any]]]:
    out: list[tuple[str, Any, dict[str, Any]]] = []
    for e in effects:
        if isinstance(e, Send):
            out.append(("send", e.session, orjson.loads(e.payload)))
        elif isinstance(e, Broadcast):
            parts = e.payload.split("\n")
            assert len(parts) == e.count
            out += [("all", e.exclude, orjson.loads(part)) for part in parts]
        else:
            out.append(("close", e.session, {"code": e.code, "flush": e.flush}))
    return out


def joined(state: RoomState, session: int, user: str, now: float = 0.0,
           after: int | None = None) -> Any:
    plan, effects = state.join(session, user, user.title(), after=after, expires_at=1e9,
                               now=now, wall_ms=1)
    return plan, effects


def send(state: RoomState, session: int, text: str, id: str | None = None,
         now: float = 0.0) -> list[Effect]:
    return state.receive(session, SendMessage(text, id), now, 1000)


def commit(state: RoomState, first: int | None = None) -> list[Effect]:
    """Store the pending drafts as the embedded engine does: consecutive seqs after the last."""
    batch = state.take_pending()
    first = state.delivered_seq + 1 if first is None else first
    return state.committed(batch, [Appended(first + i) for i in range(len(batch))])


def test_join_welcomes_and_announces_only_first_connection() -> None:
    state = RoomState("r", CFG)
    plan, effects = joined(state, 1, "alice")
    assert orjson.loads(plan.welcome)["members"] == [{"user": "alice", "name": "Alice"}]
    assert objs(effects)[0][:2] == ("all", 1)
    _, effects = joined(state, 2, "alice")
    assert effects == []
    assert state.leave(1, 5) == []
    (leave,) = objs(state.leave(2, 5))
    assert leave[2] == {"type": "presence", "event": "leave", "user": "alice", "name": "Alice",
                        "ts": 5}


def test_messages_are_broadcast_only_after_commit_with_consecutive_seqs() -> None:
    state = RoomState("r", CFG)
    joined(state, 1, "alice")
    assert send(state, 1, "a", "x") == []
    assert send(state, 1, "b") == []
    assert state.delivered_seq == 0
    effects = objs(commit(state))
    assert [(k, o["type"], o.get("seq")) for k, _, o in effects] == [
        ("all", "message", 1), ("all", "message", 2), ("send", "ack", 1), ("send", "ack", 2)]
    assert state.delivered_seq == 2


def test_rate_limit_then_abuse_eviction() -> None:
    state = RoomState("r", CFG)
    joined(state, 1, "alice")
    send(state, 1, "1")
    send(state, 1, "2")
    (refusal,) = objs(send(state, 1, "3", "c"))
    assert refusal[2]["code"] == "rate_limited" and refusal[2]["retry_after"] == 1.0
    send(state, 1, "4")
    kinds = objs(send(state, 1, "5"))
    assert [k for k, _, _ in kinds] == ["send", "close", "all"]
    assert kinds[1][2]["code"] == CloseCode.RATE_ABUSE
    assert not state.has_session(1)


def test_accepted_message_resets_strikes() -> None:
    state = RoomState("r", CFG)
    joined(state, 1, "alice")
    for t in (0, 0, 0, 0):
        send(state, 1, "x", now=t)
    assert send(state, 1, "ok", now=1.0) == []  # refilled: accepted, strikes back to 0
    send(state, 1, "x", now=1.0)
    send(state, 1, "x", now=1.0)
    assert state.has_session(1)


def test_invalid_frames_close_with_1008_at_the_limit() -> None:
    state = RoomState("r", CFG)
    joined(state, 1, "alice")
    bad = FrameError(ErrorCode.INVALID_JSON, "bad")
    assert [k for k, _, _ in objs(state.receive(1, bad, 0, 0))] == ["send"]
    effects = objs(state.receive(1, bad, 0, 0))
    assert effects[1] == ("close", 1, {"code": CloseCode.POLICY_VIOLATION, "flush": True})


def test_dedup_acks_original_seq_pending_and_committed() -> None:
    state = RoomState("r", replace(CFG, rate_burst=100))
    joined(state, 1, "alice")
    send(state, 1, "a", "same")
    assert send(state, 1, "a", "same") == []  # original not stored yet: ack after commit
    effects = objs(commit(state))
    acks = [o for k, _, o in effects if o["type"] == "ack"]
    assert acks == [{"type": "ack", "id": "same", "seq": 1},
                    {"type": "ack", "id": "same", "seq": 1, "duplicate": True}]
    assert len([o for _, _, o in effects if o["type"] == "message"]) == 1
    (dup,) = objs(send(state, 1, "a", "same"))
    assert dup[2] == {"type": "ack", "id": "same", "seq": 1, "duplicate": True}


def test_dedup_is_per_user_and_windowed() -> None:
    state = RoomState("r", replace(CFG, rate_burst=100))
    joined(state, 1, "alice")
    joined(state, 2, "bob")
    send(state, 1, "a", "id")
    assert send(state, 2, "b", "id") == []  # bob's "id" is not alice's
    commit(state)
    for i in range(4):
        send(state, 1, "n", f"n{i}")
    commit(state)
    send(state, 1, "a again", "id")  # pushed out of the 4-entry window: accepted again
    assert len(state.pending) == 1


def test_dedup_window_is_loaded_from_snapshot() -> None:
    snapshot = RoomSnapshot(last_seq=9, oldest_seq=1, recent_ids=(("alice", "old", 7),))
    state = RoomState("r", CFG, snapshot)
    joined(state, 1, "alice")
    (ack,) = objs(send(state, 1, "x", "old"))
    assert ack[2]["seq"] == 7
    send(state, 1, "new")
    (message, _) = objs(commit(state))
    assert message[2]["seq"] == 10


@pytest.mark.parametrize(
    ("after", "replay_after", "recovered"),
    [(None, 10, False), (8, 8, True), (10, 10, True), (4, 4, True), (3, 3, True),
     (2, 10, False), (11, 10, False)],
)
def test_join_plan(after: int | None, replay_after: int, recovered: bool) -> None:
    """A recovered resume replays the log after ``after``; anything else gets a fresh history:
    the newest ``history_on_join`` (3) messages in their current state."""
    state = RoomState("r", CFG, RoomSnapshot(last_seq=10, oldest_seq=4))
    plan, _ = joined(state, 1, "alice", after=after)
    assert (plan.replay_after, plan.replay_upto, plan.recovered, plan.fresh) == (
        replay_after, 10, recovered, 0 if recovered else 3)
    assert orjson.loads(plan.welcome)["recovered"] is recovered


def test_a_fresh_join_with_no_history_on_join_replays_nothing() -> None:
    """history_on_join 0 (the bench's): a fresh join gets no history at all, never the whole
    raw log (a fresh plan once said "after 0")."""
    state = RoomState("r", replace(CFG, history_on_join=0), RoomSnapshot(last_seq=10))
    plan, _ = joined(state, 1, "alice")
    assert (plan.replay_after, plan.replay_upto, plan.fresh) == (10, 10, 0)


@pytest.mark.parametrize(
    ("after", "epoch", "replay_after", "recovered"),
    [(8, "e1", 8, True), (8, None, 8, True), (8, "e0", 10, False), (10, "e0", 10, False),
     (5, "e1", 5, True), (4, "e1", 10, False), (4, None, 10, False)],
)
def test_a_resume_is_recovered_only_in_the_same_epoch_and_after_a_reset_floor(
        after: int, epoch: str | None, replay_after: int, recovered: bool) -> None:
    """The client sends back the epoch of the welcome it saw: another one means its seqs may
    name other messages (the log went backwards): a fresh history. Seqs up to the room's
    ``resume_floor`` may be missing: a resume from before it is not recovered either."""
    state = RoomState("r", CFG, RoomSnapshot(last_seq=10, oldest_seq=1, epoch="e1",
                                             resume_floor=5))
    plan, _ = state.join(1, "alice", "Alice", after=after, epoch=epoch, expires_at=1e9,
                         now=0, wall_ms=1)
    assert (plan.replay_after, plan.recovered) == (replay_after, recovered)
    welcome = orjson.loads(plan.welcome)
    assert (welcome["epoch"], welcome["recovered"]) == ("e1", recovered)


def test_a_reset_closes_every_session_for_a_fresh_history_and_forgets_ids() -> None:
    state = RoomState("r", replace(CFG, rate_burst=100), RoomSnapshot(epoch="e1"))
    joined(state, 1, "alice")
    joined(state, 2, "bob")
    send(state, 1, "x", "a1")
    commit(state)  # seq 1
    send(state, 1, "y", "a2")
    batch = state.take_pending()  # in flight when the log turns out to have gone backwards
    effects = objs(state.reset("e2", 4, 1))
    assert [(k, s, o["code"]) for k, s, o in effects if k == "close"] == [
        ("close", 1, CloseCode.SERVICE_RESTART), ("close", 2, CloseCode.SERVICE_RESTART)]
    assert (state.epoch, state.delivered_seq, state.resume_floor) == ("e2", 4, 4)
    assert state.session_count == 0
    # The batch goes on, stored after the log's top; a resent id is not a duplicate any more.
    state.committed(batch, [Appended(5)])
    plan, _ = joined(state, 3, "alice", after=1)
    assert (plan.recovered, orjson.loads(plan.welcome)["epoch"]) == (False, "e2")
    send(state, 3, "x", "a1")
    assert [d.id for d in state.pending] == ["a1"]


def test_retention_moves_oldest_seq() -> None:
    state = RoomState("r", replace(CFG, history_retention=2, rate_burst=100))
    joined(state, 1, "alice")
    for i in range(5):
        send(state, 1, str(i))
    commit(state)
    assert state.oldest_seq == 4
    plan, _ = joined(state, 2, "bob", after=1)
    assert (plan.recovered, plan.fresh) == (False, CFG.history_on_join)


def test_room_full() -> None:
    state = RoomState("r", CFG)
    for i in range(3):
        joined(state, i, f"u{i}")
    with pytest.raises(RoomFull):
        joined(state, 9, "late")


def test_heartbeat_pings_and_evicts_silent_sessions() -> None:
    state = RoomState("r", CFG)
    joined(state, 1, "alice", now=0)
    joined(state, 2, "bob", now=0)
    assert state.tick(5, 0) == []
    (ping,) = objs(state.tick(10, 0))
    assert ping[2]["type"] == "ping"
    state.receive(2, Pong(), 12, 0)
    effects = objs(state.tick(15.5, 0))
    assert effects[0] == ("close", 1, {"code": CloseCode.HEARTBEAT_TIMEOUT, "flush": True})
    assert effects[1][2]["event"] == "leave"
    assert state.has_session(2)


def test_token_expiry_closes_4001() -> None:
    state = RoomState("r", CFG)
    state.join(1, "alice", "Alice", after=None, expires_at=3.0, now=0, wall_ms=0)
    assert state.tick(2.9, 0) == []
    effects = state.tick(3.0, 0)
    assert isinstance(effects[0], Close) and effects[0].code == CloseCode.TOKEN_EXPIRED


def test_frames_from_evicted_sessions_are_ignored() -> None:
    state = RoomState("r", CFG)
    joined(state, 1, "alice")
    state.evict(1, CloseCode.SLOW_CONSUMER, "slow", 0, flush=False)
    assert send(state, 1, "late") == []
    assert state.pending == []


def stored(seq: int, user: str = "bob", id: str | None = None) -> StoredMessage:
    return StoredMessage("r", seq, user, user.title(), id, f"t{seq}", seq)


def test_messages_from_other_processes_are_delivered_in_order_and_gaps_reported() -> None:
    state = RoomState("r", CFG)
    joined(state, 1, "alice")
    assert objs(state.feed([stored(3)])) == []  # 1 and 2 are missing: hold 3 back
    assert state.gap() == (0, 2)
    assert state.behind(3) is False  # something is already waiting: the gap read covers it
    delivered = objs(state.feed([stored(2), stored(1), stored(1)]))
    assert [o["seq"] for _, _, o in delivered] == [1, 2, 3]  # one broadcast, in order, once
    assert state.gap() is None and state.delivered_seq == 3
    assert objs(state.feed([stored(2)])) == []  # a late pub/sub copy: dropped
    assert state.behind(4) is True


def test_own_batch_waits_for_a_lower_seq_stored_by_another_process() -> None:
    state = RoomState("r", replace(CFG, rate_burst=100))
    joined(state, 1, "alice")
    send(state, 1, "mine", "m1")
    effects = objs(commit(state, first=2))  # another process took seq 1 meanwhile
    assert effects == []  # not delivered, not acked: seq 1 comes first
    effects = objs(state.feed([stored(1)]))
    assert [(k, o["type"], o["seq"]) for k, _, o in effects] == [
        ("all", "message", 1), ("all", "message", 2), ("send", "ack", 2)]


def test_held_messages_go_out_with_the_own_batch_in_one_broadcast() -> None:
    # A process serving half a room gets the other half's messages by pub/sub while its own
    # batch is being stored: one broadcast for both is one frame per member instead of two.
    state = RoomState("r", replace(CFG, rate_burst=100))
    joined(state, 1, "alice")
    send(state, 1, "mine", "m1")
    batch = state.take_pending()
    state.hold([stored(2), stored(1)])  # another process's two, out of order
    assert state.delivered_seq == 0  # nothing broadcast yet
    effects = state.committed(batch, [Appended(3)])
    broadcasts = [e for e in effects if isinstance(e, Broadcast)]
    assert len(broadcasts) == 1
    assert [(k, o["type"], o["seq"]) for k, _, o in objs(effects)] == [
        ("all", "message", 1), ("all", "message", 2), ("all", "message", 3),
        ("send", "ack", 3)]


def test_held_messages_without_an_own_batch_go_out_on_the_next_feed() -> None:
    state = RoomState("r", CFG)
    joined(state, 1, "alice")
    state.hold([stored(1)])
    state.hold([stored(3)])
    assert state.delivered_seq == 0
    assert [o["seq"] for _, _, o in objs(state.feed(()))] == [1]
    assert state.gap() == (1, 2)  # 2 is missing before the held 3
    assert [o["seq"] for _, _, o in objs(state.feed([stored(2)]))] == [2, 3]
    # A held message's id deduplicates a resend at once, before it is broadcast: the resend
    # is not stored again, and is acked as a duplicate once the original is delivered.
    state.hold([stored(4, "alice", "dup")])
    assert send(state, 1, "again", "dup") == []
    assert state.pending == []
    assert [(k, o["type"], o["seq"], o.get("duplicate")) for k, _, o in objs(state.feed(()))
            ] == [("all", "message", 4, None), ("send", "ack", 4, True)]


def test_a_retry_stored_by_another_process_is_acked_as_duplicate() -> None:
    state = RoomState("r", replace(CFG, rate_burst=100))
    joined(state, 1, "alice")
    send(state, 1, "again", "x")
    batch = state.take_pending()
    effects = objs(state.committed(batch, [Appended(7, duplicate=True)]))
    assert effects == []  # seq 7 not delivered here yet
    effects = objs(state.feed([stored(i, "alice", "x" if i == 7 else None)
                               for i in range(1, 8)]))
    assert effects[-1] == ("send", 1, {"type": "ack", "id": "x", "seq": 7, "duplicate": True})
    assert [o["seq"] for k, _, o in effects if k == "all"] == list(range(1, 8))


def test_resend_while_the_original_is_in_flight_gets_the_same_seq() -> None:
    state = RoomState("r", replace(CFG, rate_burst=100))
    joined(state, 1, "alice")
    joined(state, 2, "alice")
    send(state, 1, "a", "same")
    batch = state.take_pending()
    assert send(state, 2, "a", "same") == []  # in flight: wait for its seq
    effects = objs(state.committed(batch, [Appended(1)]))
    acks = [(k, s, o) for k, s, o in effects if o["type"] == "ack"]
    assert acks == [("send", 1, {"type": "ack", "id": "same", "seq": 1}),
                    ("send", 2, {"type": "ack", "id": "same", "seq": 1, "duplicate": True})]


def test_abandoned_batch_is_not_acked_and_its_ids_are_accepted_again() -> None:
    state = RoomState("r", replace(CFG, rate_burst=100))
    joined(state, 1, "alice")
    send(state, 1, "a", "id1")
    state.take_pending()
    state.abandon()
    send(state, 1, "a", "id1")
    assert len(state.pending) == 1


def test_rejected_drafts_are_refused_to_their_senders_and_the_rest_stays_in_flight() -> None:
    """An ``Unstorable`` from the engine: each sender of a refused draft (and a resend of the
    same id meanwhile, and a server-API caller) is told; the others are stored next."""
    state = RoomState("r", replace(CFG, rate_burst=100))
    joined(state, 1, "alice")
    joined(state, 2, "alice")
    joined(state, 3, "bob")
    send(state, 1, "ok", "a1")
    send(state, 1, "bad", "a2")
    send(state, 3, "fine", "b1")
    assert state.publish(7, Draft("api", "API", "p", "bad too", 1)) is None
    batch = state.take_pending()
    assert send(state, 2, "bad", "a2") == []  # the same id, resent while in flight
    with pytest.raises(ValueError):
        state.reject(batch, Unstorable([9], "no such draft"))
    error = Unstorable([1, 3], "cannot be stored")
    rest, effects = state.reject(batch, error)
    assert rest == [batch[0], batch[2]]
    assert [(k, s, o["type"], o["code"], o["id"]) for k, s, o in objs(effects)] == [
        ("send", 1, "error", "invalid_message", "a2"),
        ("send", 2, "error", "invalid_message", "a2")]
    assert state.published == [(7, error)]
    state.published.clear()
    acks = [(s, o["id"], o["seq"]) for k, s, o in objs(state.committed(rest, [Appended(1),
                                                                              Appended(2)]))
            if o["type"] == "ack"]
    assert acks == [(1, "a1", 1), (3, "b1", 2)]
    send(state, 1, "now fine", "a2")  # the refused id is not remembered: it may come again
    assert [d.id for d in state.pending] == ["a2"]


def test_unavailable_storage_refuses_messages_without_accepting_them() -> None:
    state = RoomState("r", CFG)
    joined(state, 1, "alice")
    (reply,) = objs(state.receive(1, SendMessage("x", "i"), 0, 0, refuse="down"))
    assert reply[2]["code"] == "unavailable" and reply[2]["id"] == "i"
    assert state.pending == []


def test_presence_is_the_union_over_processes() -> None:
    state = RoomState("r", CFG)
    _, effects = joined(state, 1, "alice")
    assert state.presence_changed and state.local_members() == {"alice": "Alice"}
    effects = objs(state.synced({"bob": "Bob", "alice": "Alice"}, 5))
    assert effects == [("all", None, {"type": "presence", "event": "join", "user": "bob",
                                      "name": "Bob", "ts": 5})]  # alice is already here
    plan, effects = joined(state, 2, "bob")
    assert effects == []  # bob is already a member (elsewhere)
    assert [m["user"] for m in orjson.loads(plan.welcome)["members"]] == ["alice", "bob"]
    assert state.leave(2, 6) == []  # still connected elsewhere
    assert state.leave(1, 6) == []  # alice is connected to the other process too
    gone = objs(state.synced({}, 7))
    assert [(o["event"], o["user"]) for _, _, o in gone] == [("leave", "bob"), ("leave", "alice")]


def test_a_join_that_cannot_be_serialised_leaves_nothing_behind() -> None:
    state = RoomState("r", CFG)
    joined(state, 1, "alice")
    with pytest.raises(orjson.JSONEncodeError):
        state.join(2, "\ud800", "ghost", after=None, expires_at=1e9, now=0, wall_ms=0)
    assert not state.has_session(2)
    assert state.members() == [{"user": "alice", "name": "Alice"}]
    assert state.tick(100, 0)  # the heartbeat tick still works (and evicts alice)


def test_touch_keeps_a_replaying_session_alive() -> None:
    state = RoomState("r", CFG)
    joined(state, 1, "alice", now=0)
    state.touch(1, 14)
    assert [e for e in state.tick(16, 0) if isinstance(e, Close)] == []
    assert [e for e in state.tick(30, 0) if isinstance(e, Close)] != []


def test_every_frame_costs_tokens_duplicates_and_pongs_included() -> None:
    state = RoomState("r", replace(CFG, rate_burst=2, rate_abuse_strikes=3, pong_cost=0.5))
    joined(state, 1, "alice")
    send(state, 1, "a", "same")
    send(state, 1, "b")
    commit(state)
    (limited,) = objs(send(state, 1, "a", "same"))  # a resend costs a token like any frame
    assert limited[2]["code"] == "rate_limited"
    assert [k for k, _, _ in objs(state.receive(1, Pong(), 0, 0))] == []  # limited, no reply
    effects = objs(state.receive(1, Pong(), 0, 0))  # third strike in a row: 4008
    assert effects[0] == ("close", 1, {"code": CloseCode.RATE_ABUSE, "flush": True})
    state2 = RoomState("r", replace(CFG, rate_burst=2, pong_cost=0.5))
    joined(state2, 1, "bob")
    for _ in range(4):  # four pongs at 0.5 = the whole burst; a message then waits
        assert state2.receive(1, Pong(), 0, 0) == []
    (wait,) = objs(send(state2, 1, "x"))
    assert wait[2]["code"] == "rate_limited"


# -- moderation from the page (delete and ban frames) ------------------------------------------

def moderated_room() -> RoomState:
    """alice (session 1) moderates; bob (2, 3: two sockets) and eve (4) do not; seqs 1-3 stored."""
    state = RoomState("r", replace(CFG, rate_burst=100, max_room_connections=10))
    state.join(1, "alice", "Alice", after=None, expires_at=1e9, now=0, wall_ms=1,
               moderator=True)
    for session, user in ((2, "bob"), (3, "bob"), (4, "eve")):
        joined(state, session, user)
    for text in ("a", "b", "c"):
        send(state, 2, text)
    commit(state)
    return state


def test_the_welcome_tells_a_moderator_it_is_one() -> None:
    state = RoomState("r", CFG)
    plan, _ = state.join(1, "alice", "Alice", after=None, expires_at=1e9, now=0, wall_ms=1,
                         moderator=True)
    assert orjson.loads(plan.welcome)["moderator"] is True
    plan, _ = joined(state, 2, "bob")
    assert "moderator" not in orjson.loads(plan.welcome)


def test_a_non_moderator_ban_is_refused_and_nothing_is_queued() -> None:
    state = moderated_room()
    (refusal,) = objs(state.receive(2, BanUser("eve", id="d"), 0, 1000))
    assert refusal[:2] == ("send", 2)
    assert (refusal[2]["code"], refusal[2]["id"]) == ("forbidden", "d")
    assert state.moderation == [] and state.has_session(4)


@pytest.mark.parametrize("seq", [4, 99])
def test_a_change_to_a_seq_the_room_never_delivered_is_not_found_at_once(seq: int) -> None:
    state = moderated_room()
    for frame in (DeleteMessage(seq, "d"), EditMessage(seq, "x", "e"),
                  React(seq, "\U0001f44d", True, "r"), SendMessage("re", "m", reply_to=seq)):
        (refusal,) = objs(state.receive(1, frame, 0, 1000))
        assert refusal[2]["code"] == "not_found" and str(seq) in refusal[2]["message"]
        assert refusal[2]["id"] == frame.id
    assert state.pending == [] and state.moderation == []


def test_a_ban_closes_every_socket_of_the_user_with_4004_and_answers_the_moderator() -> None:
    state = moderated_room()
    assert state.receive(1, BanUser("bob", "spam", minutes=2, id="b1"), 0, 1_000_000) == []
    (request,) = state.take_moderation()
    assert request.until == 1000 + 120
    effects = objs(state.moderated(request, ModerationOutcome.DONE, 1_000_000))
    closes = [(s, o["code"]) for k, s, o in effects if k == "close"]
    assert closes == [(2, CloseCode.BANNED), (3, CloseCode.BANNED)]
    assert effects[-2][:2] == ("all", None) and effects[-2][2]["event"] == "leave"
    assert effects[-1] == ("send", 1, {"type": "moderated", "action": "ban", "user": "bob",
                                       "until": 1120.0, "reason": "spam", "id": "b1"})
    assert not state.has_session(2) and not state.has_session(3) and state.has_session(4)


def test_a_ban_until_lifted_and_one_until_a_time() -> None:
    state = moderated_room()
    state.receive(1, BanUser("eve"), 0, 1_000_000)
    state.receive(1, BanUser("bob", until=5000.0), 0, 1_000_000)
    assert [r.until for r in state.take_moderation()] == [None, 5000.0]
    (past,) = objs(state.receive(1, BanUser("bob", until=999.0, id="p"), 0, 1_000_000))
    assert (past[2]["code"], past[2]["id"]) == ("invalid_message", "p")


def test_a_moderator_cannot_ban_themself() -> None:
    state = moderated_room()
    (refusal,) = objs(state.receive(1, BanUser("alice", id="me"), 0, 1000))
    assert (refusal[2]["code"], refusal[2]["id"]) == ("self_ban", "me")
    assert state.moderation == [] and state.has_session(1)


def test_a_ban_of_someone_not_here_still_answers_the_moderator() -> None:
    state = moderated_room()
    state.receive(1, BanUser("mallory"), 0, 1000)
    (request,) = state.take_moderation()
    effects = objs(state.moderated(request, ModerationOutcome.DONE, 1000))
    assert [(k, s, o["type"]) for k, s, o in effects] == [("send", 1, "moderated")]


def test_changes_and_bans_pay_rate_limit_tokens_and_are_refused_during_an_outage() -> None:
    state = RoomState("r", CFG)  # burst 2
    state.join(1, "alice", "Alice", after=None, expires_at=1e9, now=0, wall_ms=1,
               moderator=True)
    joined(state, 2, "bob")
    send(state, 2, "x")
    commit(state)
    state.receive(1, DeleteMessage(1), 0, 1000)
    state.receive(1, BanUser("bob"), 0, 1000)
    (limited,) = objs(state.receive(1, React(1, "\U0001f44d", True, "third"), 0, 1000))
    assert (limited[2]["code"], limited[2]["id"]) == ("rate_limited", "third")
    assert len(state.take_moderation()) == 1 and len(state.take_pending()) == 1
    frames: list[ClientFrame] = [DeleteMessage(1, "o"), EditMessage(1, "y", "o"),
                                 BanUser("bob", id="o")]
    for when, frame in enumerate(frames):
        (refused,) = objs(state.receive(1, frame, 5.0 * (when + 1), 1000,
                                        refuse="storage down"))
        assert (refused[2]["code"], refused[2]["message"]) == ("unavailable", "storage down")
    assert state.moderation == [] and state.pending == []


def test_next_due_is_the_earliest_expiry_heartbeat_deadline_or_ping() -> None:
    state = RoomState("r", CFG)  # ping_interval 10, ping_timeout 5
    assert state.next_due() == float("inf")
    state.join(1, "alice", "Alice", after=None, expires_at=1e9, now=0.0, wall_ms=1)
    assert state.next_due() == 10.0  # the first ping
    state.tick(10.0, 1)  # pings; next at 20
    state.receive(1, Pong(), 10.5, 1)  # alice answered: her deadline moves to 25.5
    assert state.next_due() == 20.0
    state.join(2, "bob", "Bob", after=None, expires_at=12.0, now=11.0, wall_ms=1)
    assert state.next_due() == 12.0  # bob's token expires first
    state.leave(2, 1)
    state.tick(20.0, 1)  # pings; next at 30; alice silent since 10.5
    assert state.next_due() == 25.5  # her heartbeat deadline comes before the ping
    assert [e.code for e in state.tick(25.6, 1) if isinstance(e, Close)] == \
        [CloseCode.HEARTBEAT_TIMEOUT]


# -- changes, replies and read markers (issue 21) --------------------------------------------

THUMB = "\U0001f44d"


def chat_room() -> RoomState:
    """alice (session 1, moderator), bob (2); alice's messages 1 and 2 are stored."""
    state = RoomState("r", replace(CFG, rate_burst=100, max_room_connections=10,
                                   dedup_window=100))
    state.join(1, "alice", "Alice", after=None, expires_at=1e9, now=0, wall_ms=1,
               moderator=True)
    joined(state, 2, "bob")
    send(state, 1, "one")
    send(state, 1, "two")
    commit(state)
    return state


def test_changes_are_drafts_of_the_batch_and_acked_once_delivered() -> None:
    state = chat_room()
    assert state.receive(2, React(1, THUMB, True, "r1"), 0, 5000) == []
    assert state.receive(1, EditMessage(2, "two!", "e1"), 0, 5001) == []
    assert state.receive(2, DeleteMessage(1, "d1"), 0, 5002) == []
    assert state.receive(1, DeleteMessage(1, "d2"), 0, 5003) == []
    assert state.receive(1, SendMessage("re", "m3", reply_to=2, mentions=("bob",)), 0,
                         5004) == []
    batch = state.take_pending()
    assert batch == [
        ChangeDraft("bob", "Bob", "r1", 5000, Action.REACT, 1, emoji=THUMB, on=True),
        ChangeDraft("alice", "Alice", "e1", 5001, Action.EDIT, 2, text="two!"),
        ChangeDraft("bob", "Bob", "d1", 5002, Action.DELETE, 1),
        ChangeDraft("alice", "Alice", "d2", 5003, Action.DELETE, 1, moderator=True),
        Draft("alice", "Alice", "m3", "re", 5004, 2, ("bob",))]
    # As the log decides: bob may not delete alice's message; the rest is stored.
    react = batch[0].stored("r", 3)
    results = [Appended(3, entry=react), Appended(4),
               Appended(0, refused=Refusal.FORBIDDEN),
               Appended(5, entry=WireMessage(5, '{"type":"change","seq":5}')), Appended(6)]
    effects = objs(state.committed(batch, results))
    assert [(k, s, o["type"], o.get("seq"), o.get("code"), o.get("id")) for k, s, o in effects
            ] == [
        ("send", 2, "error", None, "forbidden", "d1"),  # refusals first: in the frames' order
        ("all", None, "change", 3, None, "r1"), ("all", None, "change", 4, None, "e1"),
        ("all", None, "change", 5, None, None), ("all", None, "message", 6, None, "m3"),
        ("send", 2, "ack", 3, None, "r1"), ("send", 1, "ack", 4, None, "e1"),
        ("send", 1, "ack", 5, None, "d2"), ("send", 1, "ack", 6, None, "m3")]
    assert effects[1][2] == orjson.loads(react.to_wire())
    assert "author or a moderator" in effects[0][2]["message"]
    # Retried ids: the stored ones are duplicates; the refused one is tried again.
    assert objs(state.receive(1, EditMessage(2, "two!", "e1"), 0, 6000)) == [
        ("send", 1, {"type": "ack", "id": "e1", "seq": 4, "duplicate": True})]
    assert state.receive(2, DeleteMessage(1, "d1"), 0, 6000) == []
    assert [d.id for d in state.pending] == ["d1"]


def test_a_noop_reaction_is_acked_once_the_change_it_found_is_delivered() -> None:
    state = chat_room()
    state.receive(2, React(1, THUMB, False, "r"), 0, 5000)
    batch = state.take_pending()
    # Another process's change (seq 3) made it a no-op; it is not delivered here yet.
    assert state.committed(batch, [Appended(3, noop=True)]) == []
    effects = objs(state.feed([WireMessage(3, '{"type":"change","seq":3}')]))
    assert effects[-1] == ("send", 2, {"type": "ack", "id": "r", "seq": 3, "noop": True})


@pytest.mark.parametrize(("refusal", "frame", "words"), [
    (Refusal.ALREADY_DELETED, EditMessage(1, "x", "i"), "deleted"),
    (Refusal.EDIT_WINDOW_PASSED, EditMessage(1, "x", "i"), "no longer be edited"),
    (Refusal.TOO_MANY_REACTIONS, React(1, THUMB, True, "i"), "reactions already"),
    (Refusal.NOT_FOUND, SendMessage("x", "i", reply_to=1), "cannot be answered"),
    (Refusal.FORBIDDEN, EditMessage(1, "x", "i"), "only its author"),
])
def test_each_refusal_is_an_error_with_its_code_and_words(
        refusal: Refusal, frame: ClientFrame, words: str) -> None:
    state = chat_room()
    state.receive(1, frame, 0, 5000)
    (error,) = objs(state.committed(state.take_pending(), [Appended(0, refused=refusal)]))
    assert error[:2] == ("send", 1)
    assert (error[2]["code"], error[2]["id"]) == (refusal.value, "i")
    assert words in error[2]["message"]


def test_the_server_api_learns_of_refusals_and_noops() -> None:
    state = chat_room()
    assert state.publish(7, ChangeDraft("api", "API", None, 1, Action.DELETE, 1,
                                        moderator=True)) is None
    assert state.publish(8, ChangeDraft("api", "API", None, 1, Action.REACT, 1,
                                        emoji=THUMB)) is None
    state.committed(state.take_pending(), [Appended(0, refused=Refusal.ALREADY_DELETED),
                                           Appended(2, noop=True)])
    assert state.published == [(7, Appended(0, refused=Refusal.ALREADY_DELETED)),
                               (8, Appended(2, noop=True))]


def test_the_welcome_carries_the_read_marker_and_counts() -> None:
    state = chat_room()
    plan, _ = state.join(3, "carol", "Carol", after=None, expires_at=1e9, now=0, wall_ms=1,
                         unread=Unread(1, 4, 2, capped=True))
    welcome = orjson.loads(plan.welcome)
    assert (welcome["read"], welcome["unread"], welcome["mentions"],
            welcome["unread_capped"]) == (1, 4, 2, True)
    plain = orjson.loads(joined(state, 4, "dave")[0].welcome)
    assert (plain["read"], plain["unread"], plain["mentions"]) == (0, 0, 0)
    assert "unread_capped" not in plain


def test_a_read_marker_moves_forward_and_reaches_the_users_other_sessions_only() -> None:
    state = chat_room()  # seqs 1-2 delivered
    state.join(3, "bob", "Bob", after=None, expires_at=1e9, now=0, wall_ms=1,
               unread=Unread(read=1))
    assert objs(state.receive(2, MarkRead(2), 0, 1)) == [("send", 3, {"type": "read",
                                                                      "seq": 2})]
    assert state.take_reads() == {"bob": 2} and state.take_reads() == {}
    assert state.receive(3, MarkRead(1), 0, 1) == []  # never back
    send(state, 1, "three")
    commit(state)
    # Beyond what was delivered here: as far as that.
    assert objs(state.receive(3, MarkRead(99), 0, 1)) == [("send", 2, {"type": "read",
                                                                       "seq": 3})]
    assert state.reads == {"bob": 3}
    # Another process moved it: both of bob's sessions here are told, nobody else.
    assert [(k, s) for k, s, _ in objs(state.remote_read("bob", 9))] == [("send", 2),
                                                                         ("send", 3)]
    assert state.remote_read("bob", 9) == [] and state.remote_read("carol", 5) == []


def test_read_frames_cost_what_a_pong_costs_and_are_dropped_silently_over_the_rate() -> None:
    state = RoomState("r", replace(CFG, rate_burst=1, rate_per_sec=0.001, pong_cost=0.5,
                                   rate_abuse_strikes=100))
    joined(state, 1, "alice")
    joined(state, 2, "alice")
    assert len(state.receive(1, MarkRead(1), 0, 1)) == 0  # nothing delivered: stays at 0
    assert state.receive(1, MarkRead(1), 0, 1) == []
    assert state.receive(1, MarkRead(1), 0, 1) == []  # over the rate: no error either


def test_a_message_carries_the_files_the_gateway_resolved() -> None:
    """The gateway hands the room a message with its files' metadata (``files``) beside the
    ids the client named; the room stores them with the message and delivers them. Ids the
    gateway did not resolve are never stored unchecked."""
    photo = FileRef("A" * 22, "p.png", 10, "image/png", 4, 3, True)
    state = RoomState("r", CFG)
    joined(state, 1, "alice")
    frame = SendMessage("", "x", file_ids=(photo.id,), files=(photo,))
    assert state.receive(1, frame, 0.0, 1000) == []
    (draft,) = state.pending
    assert isinstance(draft, Draft) and draft.files == (photo,)
    (message, _ack) = objs(commit(state))
    assert message[2]["files"] == [{"id": "A" * 22, "name": "p.png", "size": 10,
                                    "type": "image/png", "width": 4, "height": 3,
                                    "thumb": True}]
    assert message[2]["text"] == "" and "deleted" not in message[2]
    unresolved = SendMessage("hi", "y", file_ids=(photo.id,))
    ((kind, _, error),) = objs(state.receive(1, unresolved, 1.0, 1000))
    assert (kind, error["code"], error["id"]) == ("send", "file_not_found", "y")
    assert state.pending == []

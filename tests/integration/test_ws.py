"""The WebSocket service end to end: a real Hypercorn on a free port, real clients."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from rooms.state import RoomState
from tests.conftest import ServerFactory
from tests.support import SLOW, Server, make_token


async def _status(server: Server, url: str, headers: dict[str, str] | None = None) -> tuple[
        int, bytes]:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, additional_headers=headers, open_timeout=5 * SLOW):
            pass
    return info.value.response.status_code, bytes(info.value.response.body or b"")


@pytest.mark.parametrize(
    ("room", "token", "headers", "status", "error"),
    [
        ("lobby", "", None, 401, b"missing_token"),
        ("lobby", "not.a.jwt", None, 401, b"invalid_token"),
        ("lobby", make_token(ttl=-60), None, 401, b"token_expired"),
        ("lobby", make_token(secret="another-secret-that-is-also-long-enough-000"), None, 401,
         b"invalid_token"),
        ("lobby", make_token(rooms=["other"]), None, 403, b"room_forbidden"),
        ("lobby", make_token(), {"Origin": "https://evil.example"}, 403, b"origin_forbidden"),
        ("bad.name", make_token(), None, 404, b"bad_room"),
        ("x" * 65, make_token(), None, 404, b"bad_room"),
    ],
)
async def test_upgrade_is_refused_with_http_status(
    server: Server, room: str, token: str, headers: dict[str, str] | None, status: int,
    error: bytes,
) -> None:
    got, body = await _status(server, server.url(room, token), headers)
    assert got == status
    assert b'"error":"' + error + b'"' in body


async def test_bad_after_is_400(server: Server) -> None:
    for bad in ("-1", "x", "%C2%B2", str(2**63), "9" * 5000):
        got, body = await _status(server, server.url("lobby", make_token(), after=bad))
        assert (got, b"bad_request" in body) == (400, True), bad
    # The largest `after` (gateway.inputs.MAX_INT) is ahead of the room: a fresh history.
    client = await server.connect(after=str(2**63 - 1))
    assert (await client.recv())["recovered"] is False


async def test_same_origin_and_allowlisted_origins_are_accepted(
        server_with: ServerFactory) -> None:
    async with server_with({"allowed_origins": ("https://chat.example",)}) as srv:
        same = await srv.connect(headers={"Origin": f"http://127.0.0.1:{srv.port}"})
        assert (await same.recv())["type"] == "welcome"
        listed = await srv.connect(user="bob", headers={"Origin": "https://chat.example"})
        assert (await listed.recv())["type"] == "welcome"


async def test_two_clients_see_the_same_seq_order(server: Server) -> None:
    alice = await server.connect(user="alice", name="Alice")
    bob = await server.connect(user="bob")
    welcome = await alice.recv()
    assert len(welcome.pop("epoch")) == 16  # the room's log's epoch: docs/protocol.md
    assert welcome == {"type": "welcome", "room": "lobby", "user": "alice", "name": "Alice",
                       "seq": 0, "members": [{"user": "alice", "name": "Alice"}],
                       "recovered": False, "read": 0, "unread": 0, "mentions": 0,
                       "max_files_per_message": 10, "replay_upto": 0}
    assert (await bob.recv())["type"] == "welcome"
    for i in range(5):
        await alice.say(f"a{i}", id=f"a{i}")
        await bob.say(f"b{i}", id=f"b{i}")
    seen: dict[str, list[tuple[int, str]]] = {"alice": [], "bob": []}
    for name, client in (("alice", alice), ("bob", bob)):
        while len(seen[name]) < 10:
            obj = await client.recv_type("message")
            seen[name].append((obj["seq"], obj["text"]))
    assert seen["alice"] == seen["bob"]
    assert [seq for seq, _ in seen["alice"]] == list(range(1, 11))


async def test_ack_follows_storage_and_carries_seq(server: Server) -> None:
    alice = await server.connect()
    await alice.recv()
    await alice.say("  hello  ", id="m1")
    message = await alice.recv_type("message")
    ack = await alice.recv_type("ack")
    assert message["text"] == "hello" and message["id"] == "m1" and message["user"] == "alice"
    assert abs(message["ts"] - time.time() * 1000) < 60_000
    assert ack == {"type": "ack", "id": "m1", "seq": message["seq"]}
    stored = await server.gateway.store.read("lobby", 0, 10, 10)
    assert [(m.seq, m.text) for m in stored] == [(1, "hello")]


async def test_presence_join_and_leave_count_users_not_connections(server: Server) -> None:
    alice = await server.connect(user="alice")
    await alice.recv()
    bob1 = await server.connect(user="bob", name="Bob")
    welcome = await bob1.recv()
    assert {m["user"] for m in welcome["members"]} == {"alice", "bob"}
    join = await alice.recv_type("presence")
    assert (join["event"], join["user"], join["name"]) == ("join", "bob", "Bob")
    bob2 = await server.connect(user="bob", name="Bob")
    await bob2.recv()
    await bob1.ws.close()
    await alice.say("marker", id="x")
    assert (await alice.recv())["type"] == "message"  # no leave: bob is still here via bob2
    await bob2.ws.close()
    leave = await alice.recv_type("presence")
    assert (leave["event"], leave["user"]) == ("leave", "bob")


async def test_history_on_join_is_the_last_n_oldest_first(server_with: ServerFactory) -> None:
    async with server_with(history_on_join=3, rate_burst=100) as srv:
        alice = await srv.connect()
        await alice.recv()
        for i in range(5):
            await alice.say(f"m{i}", id=f"m{i}")
            await alice.recv_type("ack")
        bob = await srv.connect(user="bob")
        welcome = await bob.recv()
        assert welcome["seq"] == 5
        history = [await bob.recv() for _ in range(3)]
        assert [(m["type"], m["seq"], m["text"]) for m in history] == [
            ("message", 3, "m2"), ("message", 4, "m3"), ("message", 5, "m4")]


async def test_resume_with_after_has_no_gap_and_no_duplicate(
        server_with: ServerFactory) -> None:
    async with server_with(rate_burst=1000, rate_per_sec=1000) as srv:
        writer = await srv.connect(user="writer")
        await writer.recv()
        reader = await srv.connect(user="reader")
        await reader.recv()
        sent = 0

        async def talk(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                sent += 1
                await writer.say(f"n{sent}", id=f"n{sent}")
                await asyncio.sleep(0)

        await talk(20)
        seen: list[int] = []
        while len(seen) < 7:
            seen.append((await reader.recv_type("message"))["seq"])
        await reader.ws.close()
        # Messages keep flowing while the reader is away and while it reconnects.
        talking = asyncio.create_task(talk(60))
        again = await srv.connect(user="reader", after=str(seen[-1]))
        welcome = await again.recv()
        assert welcome["recovered"] is True
        await talking
        while not seen or seen[-1] < sent:
            obj = await again.recv()
            if obj["type"] == "message":
                seen.append(obj["seq"])
        assert seen == list(range(1, sent + 1))


async def test_resume_beyond_retention_is_not_recovered(server_with: ServerFactory) -> None:
    async with server_with(history_retention=5, rate_burst=100) as srv:
        alice = await srv.connect()
        await alice.recv()
        for i in range(12):
            await alice.say(f"m{i}", id=f"m{i}")
            await alice.recv_type("ack")
        bob = await srv.connect(user="bob", after="2")
        welcome = await bob.recv()
        assert welcome["recovered"] is False
        replay = [(await bob.recv())["seq"] for _ in range(5)]
        assert replay == [8, 9, 10, 11, 12]


async def test_dedup_by_client_id_acks_the_original(server: Server) -> None:
    alice = await server.connect()
    await alice.recv()
    await alice.say("once", id="same")
    first = await alice.recv_type("ack")
    await alice.say("once", id="same")
    again = await alice.recv_type("ack")
    assert again == {"type": "ack", "id": "same", "seq": first["seq"], "duplicate": True}
    await alice.say("other", id="next")
    message = await alice.recv_type("message")
    assert (message["seq"], message["text"]) == (first["seq"] + 1, "other")


async def test_rate_limit_errors_then_abuse_closes_4008(server_with: ServerFactory) -> None:
    async with server_with(rate_burst=3, rate_per_sec=0.5, rate_abuse_strikes=4) as srv:
        alice = await srv.connect()
        await alice.recv()
        for i in range(3):
            await alice.say(f"ok{i}", id=f"ok{i}")
        await alice.say("too much", id="over")
        acks = 0
        error: dict[str, Any] | None = None
        while error is None or acks < 3:  # the refusal may come before the acks (storage)
            obj = await alice.recv()
            acks += obj["type"] == "ack"
            if obj["type"] == "error":
                assert error is None
                error = obj
        assert acks == 3
        assert error["code"] == "rate_limited" and error["id"] == "over"
        assert 0 < error["retry_after"] <= 2.0
        for i in range(3):
            await alice.say("more", id=f"more{i}")
        assert await alice.closed() == 4008


async def test_invalid_frames_get_errors_then_1008(server_with: ServerFactory) -> None:
    async with server_with(max_invalid_frames=4, max_text_chars=10) as srv:
        alice = await srv.connect()
        await alice.recv()
        await alice.send("{not json")
        assert (await alice.recv())["code"] == "invalid_json"
        await alice.send({"type": "dance"})
        assert (await alice.recv())["code"] == "invalid_message"
        await alice.say("   ", id="e")
        assert (await alice.recv()) ["code"] == "empty_text"
        await alice.say("x" * 10, id="edge")  # exactly the limit: accepted
        assert (await alice.recv_type("ack"))["id"] == "edge"
        await alice.say("x" * 11, id="long")
        assert (await alice.recv_type("error"))["code"] == "text_too_long"
        assert await alice.closed() == 1008


async def test_binary_frame_closes_1003(server: Server) -> None:
    alice = await server.connect()
    await alice.recv()
    await alice.send(b"\x00\x01")
    assert await alice.closed() == 1003


async def test_empty_binary_frame_closes_1003(server: Server) -> None:
    alice = await server.connect()
    await alice.recv()
    await alice.send(b"")
    assert await alice.closed() == 1003


async def test_message_size_limit_closes_1009_at_the_edge(server_with: ServerFactory) -> None:
    async with server_with({"max_message_bytes": 1000}, max_text_chars=5000) as srv:
        alice = await srv.connect()
        await alice.recv()
        frame = '{"type":"message","id":"fits","text":"' + "y" * 1000 + '"}'
        at_limit = frame[: 1000 - 2] + '"}'
        await alice.send(at_limit.replace("y" * (len(at_limit) - len(frame) + 1000), "y", 1))
        await alice.send(at_limit)
        assert (await alice.recv_type("ack"))["id"] == "fits"
        await alice.send(frame)
        assert await alice.closed() == 1009


async def test_silent_client_is_evicted_by_heartbeat(server_with: ServerFactory) -> None:
    async with server_with(ping_interval=0.3, ping_timeout=0.3, tick_interval=0.1) as srv:
        watcher = await srv.connect(user="watcher")
        await watcher.recv()
        silent = await srv.connect(user="silent")
        await silent.recv()
        await watcher.recv_type("presence")  # silent joined
        # The watcher answers pings; the silent client never sends anything.
        leave: dict[str, Any] | None = None
        while leave is None:
            obj = await watcher.recv(timeout=5)
            if obj["type"] == "ping":
                await watcher.send({"type": "pong"})
            elif obj["type"] == "presence" and obj["event"] == "leave":
                leave = obj
        assert leave["user"] == "silent"
        assert await silent.closed() == 4010
        await watcher.say("still here", id="s")
        assert (await watcher.recv_type("ack"))["id"] == "s"


async def test_token_expiry_closes_4001(server: Server) -> None:
    alice = await server.connect(token=make_token(ttl=1))
    await alice.recv()
    # exp has one-second resolution and the server allows jwt_leeway (10 s) only at the
    # handshake; the live check is exact.
    assert await alice.closed(timeout=5) == 4001


async def test_slow_consumer_is_closed_alone(server_with: ServerFactory) -> None:
    async with server_with(outbox_limit=200, max_batch=50, rate_burst=100_000,
                           rate_per_sec=100_000, send_timeout=2.0) as srv:
        slow = await srv.connect(user="slow")
        await slow.recv()
        fast = await srv.connect(user="fast")
        await fast.recv()
        sender = await srv.connect(user="sender")
        await sender.recv()
        # The slow client stops reading: its TCP window fills, its writer stalls, its outbox
        # overflows (or its send times out) and it alone is closed with 4009.
        slow.ws.transport.pause_reading()
        text = "z" * 1900
        total = 3000
        received = 0

        async def read_fast() -> None:
            nonlocal received
            while received < total:
                if (await fast.recv(timeout=30))["type"] == "message":
                    received += 1

        reader = asyncio.create_task(read_fast())
        for i in range(total):
            await sender.say(text, id=f"z{i}")
            if i % 50 == 49:  # closed loop: a healthy reader keeps up with this pace
                while (await sender.recv_type("ack", timeout=30))["id"] != f"z{i}":
                    pass
        await asyncio.wait_for(reader, 60 * SLOW)
        assert received == total
        slow.ws.transport.resume_reading()
        assert await slow.closed(timeout=30) == 4009


async def test_crash_in_one_room_leaves_others_working(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    original = RoomState.receive

    def receive(self: RoomState, session: int, frame: Any, now: float, wall_ms: int,
                **kw: Any) -> Any:
        if self.room == "doomed" and getattr(frame, "text", "") == "crash":
            raise RuntimeError("injected fault")
        return original(self, session, frame, now, wall_ms, **kw)

    monkeypatch.setattr(RoomState, "receive", receive)
    doomed = await server.connect("doomed")
    await doomed.recv()
    healthy = await server.connect("healthy")
    await healthy.recv()
    await doomed.say("before", id="b")
    await doomed.recv_type("ack")
    await doomed.say("crash", id="c")
    assert await doomed.closed() == 1011
    await healthy.say("fine", id="f")
    assert (await healthy.recv_type("ack"))["id"] == "f"
    # The crashed room restarts on the next join, with its history.
    again = await server.connect("doomed", after="0")
    welcome = await again.recv()
    assert welcome["seq"] == 1
    assert (await again.recv())["text"] == "before"
    await again.say("after", id="a")
    assert (await again.recv_type("ack"))["seq"] == 2


async def test_flooded_room_does_not_slow_another(server_with: ServerFactory) -> None:
    async with server_with(rate_burst=1_000_000, rate_per_sec=1_000_000) as srv:
        flooder = await srv.connect("flood", user="flooder")
        await flooder.recv()
        quiet = await srv.connect("quiet", user="quiet")
        await quiet.recv()

        async def flood() -> None:
            for i in range(3000):
                await flooder.say("spam " * 50, id=f"f{i}")

        task = asyncio.create_task(flood())
        # Behaviour, not timing: while the other room floods, the quiet room's messages are
        # all delivered, in order, each well within the timeout.
        for i in range(10):
            await quiet.say(f"q{i}", id=f"q{i}")
            assert (await quiet.recv_type("ack", timeout=5))["id"] == f"q{i}"
        await task


async def test_full_inbox_answers_busy(server_with: ServerFactory) -> None:
    async with server_with(inbox_limit=1, max_batch=1, rate_burst=1_000_000,
                           rate_per_sec=1_000_000) as srv:
        alice = await srv.connect()
        await alice.recv()
        # Frames pile up faster than a one-frame-per-wake room drains them: some get "busy"
        # and none is lost silently: every id is either acked or refused with busy.
        ids = [f"i{i}" for i in range(200)]
        for i in ids:
            await alice.ws.send(f'{{"type":"message","text":"x","id":"{i}"}}')
        outcome: dict[str, str] = {}
        while len(outcome) < len(ids):
            obj = await alice.recv()
            if obj["type"] == "ack":
                outcome[obj["id"]] = "ack"
            elif obj["type"] == "error":
                assert obj["code"] == "busy" and obj["retry_after"] > 0
                outcome[obj["id"]] = "busy"
        assert "busy" in outcome.values() and "ack" in outcome.values()


async def test_room_connection_limit_is_503(server_with: ServerFactory) -> None:
    async with server_with(max_room_connections=2) as srv:
        for user in ("a", "b"):
            client = await srv.connect(user=user)
            assert (await client.recv())["type"] == "welcome"
        got, body = await _status(srv, srv.url("lobby", make_token("c")))
        assert (got, b"room_full" in body) == (503, True)
        other = await srv.connect("elsewhere", user="c")
        assert (await other.recv())["type"] == "welcome"


async def test_server_connection_limit_is_503(server_with: ServerFactory) -> None:
    async with server_with({"max_connections": 1}) as srv:
        first = await srv.connect(user="a")
        await first.recv()
        got, body = await _status(srv, srv.url("other", make_token("b")))
        assert (got, b"server_full" in body) == (503, True)


@pytest.mark.fast_paths
async def test_compression_is_declined_by_default(server: Server) -> None:
    async with websockets.connect(server.url(), open_timeout=5 * SLOW) as ws:  # offers deflate
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert '"welcome"' in str(await ws.recv())


async def test_compression_can_be_turned_on(server_with: ServerFactory) -> None:
    async with (server_with({"compression": True}) as srv,
                websockets.connect(srv.url(), open_timeout=5 * SLOW) as ws):
        assert ws.response is not None
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        assert '"welcome"' in str(await ws.recv())


async def test_idle_room_stops_and_revives_with_history(server_with: ServerFactory) -> None:
    async with server_with(room_idle_ttl=0.2, tick_interval=0.05) as srv:
        alice = await srv.connect("sleepy")
        await alice.recv()
        await alice.say("remember me", id="r")
        await alice.recv_type("ack")
        await alice.ws.close()
        async with asyncio.timeout(5 * SLOW):
            while len(srv.gateway.registry):  # noqa: ASYNC110 (polling the server from outside)
                await asyncio.sleep(0.02)
        bob = await srv.connect("sleepy", user="bob")
        welcome = await bob.recv()
        assert welcome["seq"] == 1
        assert (await bob.recv())["text"] == "remember me"
        await bob.say("again", id="a")
        assert (await bob.recv_type("ack"))["seq"] == 2


async def test_stalled_send_is_aborted_with_4009(server_with: ServerFactory) -> None:
    # The outbox is big enough never to overflow here: only the send watchdog can act.
    async with server_with(outbox_limit=100_000, rate_burst=100_000, rate_per_sec=100_000,
                           send_timeout=0.5, tick_interval=0.1) as srv:
        stuck = await srv.connect(user="stuck")
        await stuck.recv()
        sender = await srv.connect(user="sender")
        await sender.recv()
        stuck.ws.transport.pause_reading()
        sent = 0
        while srv.gateway.registry.get("lobby").statistics().get("sessions") == 2:
            for _ in range(50):
                sent += 1
                await sender.say("w" * 1900, id=f"w{sent}")
            while (await sender.recv_type("ack", timeout=30))["id"] != f"w{sent}":
                pass
            assert sent < 20_000, "the stalled session was never aborted"
        stuck.ws.transport.resume_reading()
        assert await stuck.closed(timeout=30) == 4009
        await sender.say("after", id="after")
        assert (await sender.recv_type("ack"))["id"] == "after"


@pytest.mark.fast_paths
async def test_a_quiet_room_ticks_only_when_something_is_due(
        server_with: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A room whose sockets are all idle sleeps until its next deadline (ping, token expiry,
    heartbeat) instead of ticking every tick_interval, also between messages written straight to
    idle sockets; activity that leaves a socket to watch (a join) brings the usual cadence back."""
    ticks = 0
    original = RoomState.tick

    def counted(self: RoomState, now: float, wall_ms: int) -> Any:
        nonlocal ticks
        ticks += 1
        return original(self, now, wall_ms)

    monkeypatch.setattr(RoomState, "tick", counted)
    async with server_with(tick_interval=0.05, ping_interval=30.0) as srv:
        alice, bob = await srv.connect(), await srv.connect(user="bob")
        for client in (alice, bob):
            await client.recv_type("welcome")
        await asyncio.sleep(0.3)  # the joins' activity settles
        ticks = 0
        await asyncio.sleep(1.0)
        assert ticks <= 2  # 20 at one per tick_interval
        ticks = 0
        for n in range(10):  # a message every 0.1 s: every socket idle between them
            await alice.say(f"hello {n}", id=f"m{n}")
            assert (await bob.recv_type("message"))["text"] == f"hello {n}"
            await asyncio.sleep(0.1)
        assert ticks <= 2  # 20 at one per tick_interval
        ticks = 0
        carol = await srv.connect(user="carol")
        await carol.recv_type("welcome")
        await asyncio.sleep(0.3)
        assert ticks >= 1  # the join: the usual cadence, until quiet again

"""Direct frame writes: the bytes are valid frames, and the fast path is used exactly when it
may be."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from gateway.hypercorn_ext import fastsend
from gateway.hypercorn_ext.fastsend import text_frame
from tests.conftest import ServerFactory
from tests.support import frame_writers, make_token, wait_connections


# Payload sizes (bytes) around the 7-bit, 16-bit and 64-bit length encodings.
@pytest.mark.parametrize("text", ["", "x", "x" * 125, "x" * 126, "x" * 65_535, "x" * 65_536,
                                  "é🙂" * 40_000])
def test_text_frames_parse_as_one_whole_message(text: str) -> None:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(text_frame(text.encode()))
    events = list(client.events())
    assert len(events) == 1 and isinstance(events[0], TextMessage)
    assert events[0].data == text and events[0].message_finished


@pytest.mark.fast_paths
async def test_http11_sockets_take_the_direct_path(server_with: ServerFactory) -> None:
    async with server_with(rate_burst=1000, max_text_chars=1900, history_on_join=100) as srv:
        alice = await srv.connect()
        await alice.recv()
        for i in range(60):
            await alice.say(f"{i:02d}" + "y" * 1890, id=f"m{i}")
        for _ in range(60):
            await alice.recv_type("ack")
        assert all(w.direct for w in frame_writers(srv))
        # A late joiner's replay is one frame of 60 x ~2 KB: a 64-bit length header.
        bob = await srv.connect(user="bob")
        assert (await bob.recv())["type"] == "welcome"
        replay = [await bob.recv() for _ in range(60)]
        assert [m["text"][:2] for m in replay] == [f"{i:02d}" for i in range(60)]
        assert bob.frames == 2


@pytest.mark.fast_paths
async def test_compression_takes_the_asgi_path(server_with: ServerFactory) -> None:
    import websockets

    async with (server_with({"compression": True}) as srv,
                websockets.connect(srv.url()) as ws):  # offers deflate, which is accepted
        assert '"welcome"' in str(await ws.recv())
        await ws.send('{"type":"message","text":"squeeze me","id":"z"}')
        assert "squeeze me" in str(await ws.recv())
        (writer,) = frame_writers(srv)
        assert writer._target is not None and not writer.direct


@pytest.mark.fast_paths
async def test_http11_frames_reach_the_room_without_a_reader_task(
        server_with: ServerFactory) -> None:
    # Hypercorn hands each inbound frame to the connection's handler itself (take_inbound):
    # frames keep their order, refusals still come back, and a client's close ends it all.
    async with server_with(rate_burst=1000) as srv:
        alice = await srv.connect()
        await alice.recv()
        (writer,) = frame_writers(srv)
        assert writer._target is not None
        assert getattr(writer._target[0].app_put, "__qualname__", "") == "_Inbound.put"
        for i in range(20):
            await alice.say(f"m{i}", id=f"m{i}")
        acks = [await alice.recv_type("ack") for _ in range(20)]
        assert [a["id"] for a in acks] == [f"m{i}" for i in range(20)]
        await alice.send("not json")
        assert (await alice.recv_type("error"))["code"] == "invalid_json"
        await alice.ws.close()
        await wait_connections(srv, 0, seconds=2.0)


@pytest.mark.fast_paths
async def test_live_frames_to_an_idle_reader_are_written_without_the_writer_task(
        server_with: ServerFactory) -> None:
    """A session whose writer is idle and whose socket has nothing buffered gets live frames
    written by the room itself (``send_now``): the writer task is not woken for them. A closed
    socket refuses the immediate path."""
    async with server_with(rate_burst=1000) as srv:
        alice = await srv.connect()
        bob = await srv.connect(user="bob")
        for client in (alice, bob):
            await client.recv_type("welcome")
        # Bob's join, held up to presence_delay for other joins: out before the count starts.
        await alice.recv_type("presence")
        (actor,) = srv.gateway.registry.rooms()
        sessions = list(actor._sessions.values())
        wakes = 0
        for session in sessions:
            original = session._wake

            def counted(original: Any = original) -> None:
                nonlocal wakes
                wakes += 1
                original()

            session._wake = counted
        for i in range(20):
            await alice.say(f"m{i}", id=f"m{i}")
            assert (await bob.recv_type("message"))["text"] == f"m{i}"
            await alice.recv_type("ack")
        assert wakes == 0
        (writer, *_) = frame_writers(srv)
        writer.abort()
        assert writer.send_now("x") is False


async def test_a_senders_ack_rides_in_the_frame_of_its_message(
        server_with: ServerFactory) -> None:
    """The room sends a message and its ack to the sender as one frame (one socket write),
    message first; the other members get the message alone."""
    async with server_with(rate_burst=1000) as srv:
        alice, bob = await srv.connect(), await srv.connect(user="bob")
        for client in (alice, bob):
            await client.recv_type("welcome")
        await alice.recv_type("presence")  # bob's join
        for i in range(5):
            frames_before = alice.frames
            await alice.say(f"m{i}", id=f"m{i}")
            message = await alice.recv()
            ack = await alice.recv()
            assert (message["type"], message["text"]) == ("message", f"m{i}")
            assert (ack["type"], ack["id"], ack["seq"]) == ("ack", f"m{i}", message["seq"])
            assert alice.frames == frames_before + 1
            assert (await bob.recv_type("message"))["text"] == f"m{i}"


@pytest.mark.fast_paths
async def test_a_broadcast_is_framed_once_for_all_its_members(
        server_with: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22, item 3: a broadcast's payload is encoded and framed once, and each member
    costs one write of those bytes; only the sender, whose ack rides with the message, gets a
    frame of its own. It used to be framed once per member (6 frames per message here)."""
    async with server_with(rate_burst=1000) as srv:
        clients = [await srv.connect(user=f"u{i}") for i in range(6)]
        for client in clients:
            await client.recv_type("welcome")
        for i, client in enumerate(clients):  # each one's presence of the joins after it
            for _ in range(5 - i):
                await client.recv_type("presence")
        built: list[bytes] = []

        def counted(payload: bytes) -> bytes:
            frame = text_frame(payload)
            built.append(frame)
            return frame

        monkeypatch.setattr(fastsend, "text_frame", counted)
        sender, *others = clients
        for i in range(5):
            frames = [c.frames for c in others]
            await sender.say(f"m{i}", id=f"m{i}")
            await sender.recv_type("ack")
            for client, before in zip(others, frames, strict=True):
                assert (await client.recv_type("message"))["text"] == f"m{i}"
                assert client.frames == before + 1
        assert len(built) == 5 * 2, len(built)  # per message: the shared frame, the sender's


@pytest.mark.fast_paths
async def test_open_is_cached_only_while_the_socket_is_read_directly(
        server_with: ServerFactory) -> None:
    """The writer skips re-checking the stream's state per write only while nobody but us can
    change it: once Hypercorn reads the socket again (a ping here) or a close is sent, it looks
    again per write, so no frame can follow a close frame."""
    import websockets

    async with (server_with(rate_burst=1000) as srv,
                websockets.connect(srv.url(), compression=None) as ws,
                websockets.connect(srv.url(token=make_token("bob")), compression=None) as bob):
        for client in (ws, bob):
            assert '"welcome"' in str(await client.recv())
        first, second = frame_writers(srv)
        assert first._live is not None and second._live is not None
        await asyncio.wait_for(await ws.ping(b"x"), 5)  # Hypercorn reads ws's socket now
        assert sorted([first._live is None, second._live is None]) == [False, True]
        for client, text in ((ws, "after the ping"), (bob, "from bob")):
            await client.send(f'{{"type":"message","text":"{text}","id":"{text[:4]}"}}')
        for client in (ws, bob):
            seen = ""
            while "from bob" not in seen:
                seen += str(await asyncio.wait_for(client.recv(), 5))
        live = first if first._live is not None else second
        await live.close(1000, "bye")
        assert live._live is None
        assert live.send_now("x") is False  # the stream is closing: nothing after the close

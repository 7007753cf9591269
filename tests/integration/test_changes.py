"""Messages people change and answer (issue 21), against real servers: every change is an entry
of the room's log, so a member who was away during an edit, a delete and a reaction resumes with
``after`` and ends with exactly the server's state, on one process and across two on Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import websockets

from tests.apicall import API_KEY, call
from tests.redis_server import redis_server
from tests.support import REPO, SLOW, Client, Server, make_token, server_process

THUMB, PARTY = "\U0001f44d", "\U0001f389"


class Replica:
    """What a client shows: the messages it was sent, each object applied as docs/protocol.md
    ("Changes") says a client applies it. Idempotent by construction: a message replaces the
    copy of its seq; a change to a message it does not hold, or to a tombstone, is ignored."""

    def __init__(self) -> None:
        self.messages: dict[int, dict[str, Any]] = {}
        self.seq = 0
        self.epoch = ""

    def take(self, obj: dict[str, Any]) -> None:
        kind = obj["type"]
        if kind == "welcome":
            self.epoch = obj["epoch"]
            if not obj["recovered"]:
                self.messages.clear()
            return
        if kind not in ("message", "change"):
            return
        self.seq = max(self.seq, obj["seq"])
        if kind == "message":
            self.messages[obj["seq"]] = dict(obj)
            return
        target = self.messages.get(obj["target"])
        if target is None or target.get("deleted"):
            return
        if obj["action"] == "delete":
            self.messages[obj["target"]] = {
                "type": "message", "room": target["room"], "seq": target["seq"],
                "id": target["id"], "user": target["user"], "name": target["name"], "text": "",
                "ts": target["ts"], "deleted": True}
            for message in self.messages.values():
                reply = message.get("reply_to")
                if reply is not None and reply["seq"] == obj["target"]:
                    message["reply_to"] = {**reply, "excerpt": ""}
        elif obj["action"] == "edit":
            if obj["text"]:
                target["text"], target["edited"] = obj["text"], obj["ts"]
        else:
            reactions: list[dict[str, Any]] = target.setdefault("reactions", [])
            entry = next((r for r in reactions if r["emoji"] == obj["emoji"]), None)
            if obj["on"]:
                if entry is None:
                    reactions.append({"emoji": obj["emoji"], "users": [obj["user"]]})
                elif obj["user"] not in entry["users"]:
                    entry["users"].append(obj["user"])
            elif entry is not None and obj["user"] in entry["users"]:
                entry["users"].remove(obj["user"])
                if not entry["users"]:
                    reactions.remove(entry)
            if not reactions:
                del target["reactions"]

    async def follow(self, client: Client, upto: int) -> None:
        """Take what ``client`` gets until it has seen seq ``upto``."""
        while self.seq < upto:
            self.take(await client.recv(timeout=10))


async def server_state(port: int, room: str) -> dict[int, dict[str, Any]]:
    """The room's messages in their current state, as the server API reads them."""
    status, page = await call(port, "GET", f"/rooms/{room}/messages?limit=1000")
    assert status == 200, page
    return {m["seq"]: m for m in page["messages"]}


async def answered(client: Client, frame: dict[str, Any]) -> dict[str, Any]:
    """Send ``frame`` and return its ``ack`` or ``error`` (what arrives before stays queued)."""
    await client.send(frame)
    kept: list[dict[str, Any]] = []
    while True:
        obj = await client.recv(timeout=10)
        if obj["type"] in ("ack", "error") and obj.get("id") == frame["id"]:
            client.pending[:0] = kept
            return obj
        kept.append(obj)


async def welcomed(client: Client, replica: Replica | None = None) -> Client:
    welcome = await client.recv()
    assert welcome["type"] == "welcome", welcome
    if replica is not None:
        replica.take(welcome)
    return client


async def test_a_delete_while_a_member_is_away_reaches_them_on_resume(srv: Server) -> None:
    """The defect of issue 21, as reported: alice posts seq 1; bob reads it and leaves; a
    moderator deletes it through the server API; bob resumes with ``after=1``. He got
    ``recovered: true`` and nothing, and kept showing the deleted text forever. Now the delete
    is entry 2 of the log: the resume replays it."""
    alice = await welcomed(await srv.connect(user="alice"))
    bob_view = Replica()
    bob = await welcomed(await srv.connect(user="bob"), bob_view)
    assert (await answered(alice, {"type": "message", "text": "oops", "id": "a1"}))["seq"] == 1
    await bob_view.follow(bob, 1)
    assert bob_view.messages[1]["text"] == "oops"
    await bob.ws.close()

    status, _ = await call(srv.port, "DELETE", "/rooms/lobby/messages/1")
    assert status == 200

    bob = await srv.connect(user="bob", after="1", epoch=bob_view.epoch)
    welcome = await bob.recv()
    assert (welcome["recovered"], welcome["seq"]) == (True, 2)
    bob_view.take(welcome)
    await bob_view.follow(bob, 2)
    assert bob_view.messages == await server_state(srv.port, "lobby")
    assert bob_view.messages[1]["deleted"] is True


Connect = Callable[..., Awaitable[Client]]
"""``connect(user, token=None, **query)``: a socket to the room ``lobby``."""


async def away_during_changes(port: int, connect: Connect, resume: Connect) -> None:
    """alice, carol (a moderator) and dave stay; bob reads three messages and leaves. While he
    is away alice edits one and answers another, carol deletes a third and reacts, dave reacts
    and takes his reaction back, someone answers the deleted one (refused) and the API deletes
    one more. bob resumes with ``after`` and ends with exactly the server's state, as does dave,
    who saw it all live. ``connect(user, token=None, **query)`` opens a socket, ``resume`` is
    where bob comes back."""
    alice = await welcomed(await connect("alice"))
    carol = await welcomed(await connect("carol", token=make_token("carol", moderator=True)))
    dave_view, bob_view = Replica(), Replica()
    dave = await welcomed(await connect("dave"), dave_view)
    bob = await welcomed(await connect("bob"), bob_view)
    for i, text in enumerate(("first, a long enough text", "second", "third", "fourth")):
        ack = await answered(alice, {"type": "message", "text": text, "id": f"a{i}"})
        assert ack["seq"] == i + 1
    await bob_view.follow(bob, 4)
    await bob.send({"type": "read", "seq": 4})
    await bob.send({"type": "pong"})  # (the room takes frames in order: the read is taken)
    await bob.ws.close()

    edit = await answered(alice, {"type": "edit", "seq": 1, "text": "first, fixed", "id": "e"})
    reply = await answered(alice, {"type": "message", "text": "about 2", "reply_to": 2,
                                   "mentions": ["bob"], "id": "re"})
    reply_to_3 = await answered(alice, {"type": "message", "text": "about 3", "reply_to": 3,
                                        "id": "re3"})
    react = await answered(carol, {"type": "react", "seq": 1, "emoji": THUMB, "on": True,
                                   "id": "c1"})
    deleted = await answered(carol, {"type": "delete", "seq": 3, "id": "d"})
    party = await answered(dave, {"type": "react", "seq": 1, "emoji": PARTY, "on": True,
                                  "id": "p1"})
    again = await answered(dave, {"type": "react", "seq": 1, "emoji": PARTY, "on": True,
                                  "id": "p2"})
    undone = await answered(dave, {"type": "react", "seq": 1, "emoji": PARTY, "on": False,
                                   "id": "p3"})
    late = await answered(dave, {"type": "message", "text": "re 3", "reply_to": 3, "id": "x"})
    forbidden = await answered(dave, {"type": "edit", "seq": 1, "text": "mine", "id": "y"})
    assert [a["type"] for a in (edit, reply, reply_to_3, react, deleted, party, undone)] == [
        "ack"] * 7
    assert (again["seq"], again.get("noop")) == (party["seq"], True)
    assert (late["code"], forbidden["code"]) == ("already_deleted", "forbidden")
    status, _ = await call(port, "DELETE", "/rooms/lobby/messages/4")
    assert status == 200
    top = (await answered(alice, {"type": "message", "text": "last", "id": "z"}))["seq"]

    await dave_view.follow(dave, top)
    state = await server_state(port, "lobby")
    assert dave_view.messages == state
    assert state[1]["text"] == "first, fixed" and state[1]["reactions"] == [
        {"emoji": THUMB, "users": ["carol"]}]
    assert state[3]["deleted"] is True and state[reply_to_3["seq"]]["reply_to"]["excerpt"] == ""
    assert state[reply["seq"]]["reply_to"] == {"seq": 2, "user": "alice", "name": "alice",
                                               "excerpt": "second"}
    assert state[reply["seq"]]["mentions"] == ["bob"]

    bob = await resume("bob", after=str(bob_view.seq), epoch=bob_view.epoch)
    welcome = await bob.recv(timeout=10)
    assert (welcome["recovered"], welcome["seq"]) == (True, top), welcome
    bob_view.take(welcome)
    await bob_view.follow(bob, top)
    assert bob_view.messages == state
    # His marker, and what came after it: the two replies (one mentions him) and the last.
    assert (welcome["read"], welcome["unread"], welcome["mentions"]) == (4, 3, 1)


async def test_away_during_an_edit_a_delete_and_a_reaction(srv: Server) -> None:
    async def connect(user: str, token: str | None = None, **query: Any) -> Client:
        return await srv.connect(user=user, token=token, **query)

    await away_during_changes(srv.port, connect, connect)


async def test_away_during_changes_made_on_another_process(tmp_path: Path) -> None:
    """The same across two processes on Redis: bob reads and leaves on process b, the changes
    are made on a (sockets and server API), bob resumes on b; and on a, from the start."""
    with redis_server(tmp_path / "redis") as url:
        env = {"ROOMCHAT_STORE_URL": url, "ROOMCHAT_API_KEY": API_KEY, "PYTHONPATH": str(REPO)}
        with server_process(tmp_path / "a", env=env) as a, \
                server_process(tmp_path / "b", env=env) as b:
            sockets: list[Client] = []

            def on(proc: Any) -> Connect:
                async def connect(user: str, token: str | None = None, **query: Any) -> Client:
                    ws = await websockets.connect(
                        proc.url("lobby", token or make_token(user), **query),
                        compression=None, open_timeout=10 * SLOW)
                    client = Client(ws)
                    sockets.append(client)
                    return client
                return connect

            async def bob_on_b_then(user: str, token: str | None = None,
                                    **query: Any) -> Client:
                return await (on(b) if user == "bob" else on(a))(user, token, **query)

            try:
                await away_during_changes(a.port, bob_on_b_then, on(b))
                # And back on the other process, from the start of the log: recovered too.
                bob_view = Replica()
                bob = await on(a)("bob", after="0")
                welcome = await bob.recv(timeout=10)
                assert welcome["recovered"] is True
                bob_view.take(welcome)
                await bob_view.follow(bob, welcome["seq"])
                assert bob_view.messages == await server_state(a.port, "lobby")
                assert bob_view.messages == await server_state(b.port, "lobby")
            finally:
                for client in sockets:
                    await client.ws.close()


async def test_a_read_marker_reaches_the_users_other_sockets_and_nobody_else(
        srv: Server) -> None:
    ann = await welcomed(await srv.connect(user="ann"))
    ann_phone = await welcomed(await srv.connect(user="ann"))
    bob = await welcomed(await srv.connect(user="bob"))
    for i in range(3):
        await answered(bob, {"type": "message", "text": f"m{i}", "id": f"m{i}"})
    await ann.send({"type": "read", "seq": 2})
    assert await ann_phone.recv_type("read") == {"type": "read", "seq": 2}
    await ann.send({"type": "read", "seq": 1})  # never back: nobody is told
    await answered(bob, {"type": "message", "text": "after", "id": "m3"})
    phone_saw = [o["type"] for o in ann_phone.pending]
    assert "read" not in phone_saw
    assert "read" not in [o["type"] for o in bob.pending]
    # Stored (the room writes markers off its loop): the next welcome says it, with what came
    # after it.
    deadline = asyncio.get_running_loop().time() + 5 * SLOW
    while (await srv.gateway.store.unread("lobby", "ann", scan=100)).read != 2:
        assert asyncio.get_running_loop().time() < deadline, "the marker was never stored"
        await asyncio.sleep(0.01)
    welcome = await (await srv.connect(user="ann")).recv()
    assert (welcome["read"], welcome["unread"], welcome["mentions"]) == (2, 2, 0)



async def test_a_read_marker_reaches_the_users_sockets_on_another_process(
        tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        env = {"ROOMCHAT_STORE_URL": url, "PYTHONPATH": str(REPO)}
        with server_process(tmp_path / "a", env=env) as a, \
                server_process(tmp_path / "b", env=env) as b:
            sockets: list[Client] = []
            try:
                for proc, user in ((a, "ann"), (b, "ann"), (b, "bob")):
                    ws = await websockets.connect(proc.url("lobby", make_token(user)),
                                                  compression=None, open_timeout=10 * SLOW)
                    sockets.append(await welcomed(Client(ws)))
                ann_a, ann_b, bob_b = sockets
                for i in range(2):
                    await answered(bob_b, {"type": "message", "text": f"m{i}", "id": f"m{i}"})
                await ann_a.recv_type("message", timeout=10)
                await ann_a.recv_type("message", timeout=10)  # a has delivered seq 2
                await ann_a.send({"type": "read", "seq": 2})
                assert await ann_b.recv_type("read", timeout=10) == {"type": "read", "seq": 2}
                await answered(bob_b, {"type": "message", "text": "after", "id": "m2"})
                assert "read" not in [o["type"] for o in bob_b.pending]
            finally:
                for client in sockets:
                    await client.ws.close()


async def test_the_welcome_says_where_the_replay_ends(srv: Server) -> None:
    """``replay_upto`` (docs/protocol.md): the seq of the replay's last entry. A fresh join
    replays messages only, so when the log ends with a change the replay ends below the
    welcome's seq, and only ``replay_upto`` tells a client it is complete."""
    alice = await welcomed(await srv.connect(user="alice"))
    for i in range(2):
        await answered(alice, {"type": "message", "text": f"m{i}", "id": f"m{i}"})
    react = await answered(alice, {"type": "react", "seq": 1, "emoji": THUMB, "on": True,
                                   "id": "r"})
    assert react["seq"] == 3
    # Fresh: messages 1 and 2 (2 is the replay's end), then nothing until something new.
    fresh = await srv.connect(user="bob")
    welcome = await fresh.recv()
    assert (welcome["seq"], welcome["recovered"], welcome["replay_upto"]) == (3, False, 2)
    assert [(await fresh.recv())["seq"] for _ in range(2)] == [1, 2]
    # A recovered resume: the log's entries after it, up to the welcome's seq.
    resumed = await srv.connect(user="bob", after="1", epoch=welcome["epoch"])
    welcome = await resumed.recv()
    assert (welcome["recovered"], welcome["replay_upto"]) == (True, 3)
    assert [(await resumed.recv())["seq"] for _ in range(2)] == [2, 3]
    # Nothing to replay: 0.
    current = await srv.connect(user="bob", after="3", epoch=welcome["epoch"])
    welcome = await current.recv()
    assert (welcome["recovered"], welcome["replay_upto"]) == (True, 0)
    empty = await srv.connect(room="empty", user="bob")
    assert (await empty.recv())["replay_upto"] == 0
    # After each replay's end, the next entry is live (nothing else of the replay follows).
    await answered(alice, {"type": "message", "text": "live", "id": "live"})
    for client in (fresh, resumed, current):
        assert (await client.recv_type("message"))["seq"] == 4

"""One room across processes on Redis: every member sees every message live, in one order,
presence agrees everywhere, and a dead process's members leave."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.clients import joined, members_seen, messages
from tests.redis_server import redis_server
from tests.support import SCALEOUT_ENV, server_process


async def test_two_processes_one_room_live_order_and_presence(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url, \
            server_process(tmp_path / "a", env=SCALEOUT_ENV, args=["--store-url", url]) as a, \
            server_process(tmp_path / "b", env=SCALEOUT_ENV, args=["--store-url", url]) as b:
        alice = await joined(a, "alice")
        dave = await joined(a, "dave")  # only listens, on alice's process
        bob = await joined(b, "bob")
        carol = await joined(b, "carol")  # only listens, on bob's process
        everyone = {"alice", "bob", "carol", "dave"}
        for client in (alice, dave, bob, carol):
            await members_seen(client, everyone)

        for i in range(20):  # interleaved writes from both sides
            await alice.say(f"a{i}", id=f"a{i}")
            await bob.say(f"b{i}", id=f"b{i}")
        lists = [await messages(c, 40) for c in (alice, dave, bob, carol)]
        seqs = [[m["seq"] for m in got] for got in lists]
        assert seqs[0] == list(range(1, 41)), seqs[0]
        assert all(s == seqs[0] for s in seqs)
        texts = [[m["text"] for m in got] for got in lists]
        assert all(t == texts[0] for t in texts)
        assert sorted(texts[0]) == sorted([f"a{i}" for i in range(20)] +
                                          [f"b{i}" for i in range(20)])

        # A retry of alice's message through the other process: deduplicated.
        alice_on_b = await joined(b, "alice", after="40")
        await alice_on_b.say("a3", id="a3")
        dup = await alice_on_b.recv_type("ack")
        assert dup["duplicate"] is True and dup["seq"] == seqs[0][texts[0].index("a3")]

        # Presence agrees on both sides when a member leaves.
        await carol.ws.close()
        for client in (alice, dave, bob):
            await members_seen(client, everyone - {"carol"})


async def test_kill_9_one_process_others_keep_chatting_and_its_members_leave(
        tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url, \
            server_process(tmp_path / "a", env=SCALEOUT_ENV, args=["--store-url", url]) as a, \
            server_process(tmp_path / "b", env=SCALEOUT_ENV, args=["--store-url", url]) as b:
        alice = await joined(a, "alice")
        bob = await joined(b, "bob")
        await members_seen(alice, {"alice", "bob"})
        for i in range(5):
            await bob.say(f"b{i}", id=f"b{i}")
        await messages(alice, 5)
        seen_by_bob = [m["seq"] for m in await messages(bob, 5)]

        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait()
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        # bob's entry expires (presence_ttl 2 s) and a's next sync (0.5 s) announces it.
        await members_seen(alice, {"alice"}, timeout=10)
        assert loop.time() - killed_at <= 2 * 2 + 1  # within ~2 heartbeat intervals (2 s)

        # bob reconnects to the survivor with `after`: no gap, no duplicate.
        for i in range(5, 8):
            await alice.say(f"a{i}", id=f"a{i}")
        bob_again = await joined(a, "bob", after=str(seen_by_bob[-1]))
        assert bob_again.welcome["recovered"] is True  # type: ignore[attr-defined]
        resumed = [m["seq"] for m in await messages(bob_again, 3)]
        assert seen_by_bob + resumed == list(range(1, 9))

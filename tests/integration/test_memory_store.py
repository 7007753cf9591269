"""``ROOMCHAT_STORE_URL=memory://`` end to end: a real server on a free port, real clients.
The same room behaviour as the durable engines (seqs, acks, dedup, replay on join and resume,
an idle room revived with its history), and the one difference said plainly: a restart loses
every message, and clients resuming across it get a fresh history (a new epoch)."""

from __future__ import annotations

import asyncio

from tests.conftest import ServerFactory
from tests.support import SLOW

MEMORY = {"store_url": "memory://"}


async def test_a_memory_room_acks_deduplicates_replays_and_revives(
        server_with: ServerFactory) -> None:
    async with server_with(MEMORY, room_idle_ttl=0.2, tick_interval=0.05) as srv:
        alice = await srv.connect("live", user="alice")
        welcome = await alice.recv()
        epoch = welcome["epoch"]
        bob = await srv.connect("live", user="bob")
        await bob.recv()
        for n in range(3):
            await alice.say(f"m{n}", id=f"m{n}")
            assert (await alice.recv_type("ack"))["seq"] == n + 1
        assert [(await bob.recv_type("message"))["seq"] for _ in range(3)] == [1, 2, 3]
        await alice.say("m0 again", id="m0")  # a resend: the original's seq, nothing stored
        ack = await alice.recv_type("ack")
        assert (ack["seq"], ack.get("duplicate")) == (1, True)
        await bob.ws.close()
        again = await srv.connect("live", user="bob", after="1")
        resumed = await again.recv()
        assert (resumed["recovered"], resumed["epoch"]) == (True, epoch)
        assert [(await again.recv_type("message"))["seq"] for _ in range(2)] == [2, 3]
        await alice.ws.close()
        await again.ws.close()
        async with asyncio.timeout(5 * SLOW):
            while len(srv.gateway.registry):  # noqa: ASYNC110 (polling the server from outside)
                await asyncio.sleep(0.02)
        # The room's actor stopped; its log lives on in the engine while the process does.
        carol = await srv.connect("live", user="carol")
        assert (await carol.recv())["seq"] == 3
        assert [(await carol.recv_type("message"))["text"] for _ in range(3)] == [
            "m0", "m1", "m2"]


async def test_a_restart_loses_the_messages_and_says_so(server_with: ServerFactory) -> None:
    async with server_with(MEMORY) as srv:
        alice = await srv.connect("live")
        epoch = (await alice.recv())["epoch"]
        await alice.say("gone soon", id="g")
        seq = (await alice.recv_type("ack"))["seq"]
    async with server_with(MEMORY) as srv:
        back = await srv.connect("live", after=str(seq), epoch=epoch)
        welcome = await back.recv()
        assert (welcome["seq"], welcome["recovered"]) == (0, False)
        assert welcome["epoch"] != epoch
        await back.say("after the restart", id="g")  # the old id is forgotten too
        assert (await back.recv_type("ack")) == {"type": "ack", "id": "g", "seq": 1}

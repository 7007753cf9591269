"""Room counts come from one typed accessor (``RoomActor.counts``), read by the server API's
list of rooms, the admin stream and the staged drain alike."""

from __future__ import annotations

from pathlib import Path

from gateway.admin import snapshot
from rooms.actor import RoomCounts
from tests.support import make_config, running_server


async def test_counts_follow_joins_messages_and_presence(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as srv:
        alice = await srv.connect(user="alice")
        await alice.recv()
        alice_again = await srv.connect(user="alice")
        await alice_again.recv()
        bob = await srv.connect(room="other", user="bob")
        await bob.recv()
        await alice.say("hi", id="1")
        await alice.recv_type("ack")
        lobby, other = sorted(srv.gateway.registry.rooms(), key=lambda a: a.room)
        assert lobby.counts() == RoomCounts("lobby", sessions=2, members=1, seq=1)
        assert other.counts() == RoomCounts("other", sessions=1, members=1, seq=0)
        # The admin stream lists the busiest first, by the same count.
        stats = snapshot(srv.gateway)
        assert [(r["room"], r["sessions"]) for r in stats["rooms"]] == [("lobby", 2),
                                                                        ("other", 1)]
        assert stats["rooms_active"] == 2
        # A room whose actor has not loaded its state yet counts nothing.
        assert srv.gateway.registry.get("fresh").counts() == RoomCounts("fresh", 0, 0, 0)

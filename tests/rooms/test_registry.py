"""The registry driven without sockets or sleeps (tests/rooms/actors.py): rooms start on
demand, a crash stays inside its room, an idle room goes and comes back with its history,
a drain closes every room and ``aclose`` waits for every actor."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from rooms.actor import RoomActor, RoomLifecycle
from rooms.clock import SteppedClock
from rooms.config import RoomConfig
from rooms.engines.memory import MemoryEngine
from rooms.errors import RoomStopped, TooManyRooms
from rooms.protocol import ClientFrame, CloseCode, SendMessage
from rooms.registry import RoomRegistry
from rooms.state import Effect, RoomState
from tests.rooms.actors import Member, config, join, settle, step


class Brittle(RoomState):
    """A room whose handling of the message ``boom`` raises: a bug in one room's logic."""

    def receive(self, session: int, frame: ClientFrame, now: float, wall_ms: int,
                *, refuse: str | None = None) -> list[Effect]:
        if isinstance(frame, SendMessage) and frame.text == "boom":
            raise RuntimeError("a bug in this room's handling")
        return super().receive(session, frame, now, wall_ms, refuse=refuse)


class Rooms:
    def __init__(self, registry: RoomRegistry, clock: SteppedClock,
                 tasks: asyncio.TaskGroup) -> None:
        self.registry, self.clock, self.tasks = registry, clock, tasks
        self.members: list[Member] = []

    async def join(self, room: str, user: str, **options: Any) -> Member:
        member = await join(self.registry.get(room), self.tasks, self.clock, user, **options)
        self.members.append(member)
        return member


@asynccontextmanager
async def rooms(cfg: RoomConfig | None = None, **options: Any) -> AsyncIterator[Rooms]:
    clock = SteppedClock()
    registry = RoomRegistry(cfg or config(), MemoryEngine(), clock=clock, **options)
    async with asyncio.TaskGroup() as tasks:
        under_test = Rooms(registry, clock, tasks)
        try:
            yield under_test
        finally:
            registry.drain_nowait()
            await step(clock, 1.0)  # a room in a batching pause ends it on this clock
            await registry.aclose(timeout=5)
            for member in under_test.members:
                member.session.transport_lost()


def lifecycle(actor: RoomActor) -> RoomLifecycle:
    return actor.lifecycle


@pytest.mark.parametrize("direct", [True, False], ids=["frames-where-they-arrive",
                                                       "frames-through-the-task"])
async def test_a_crash_in_one_room_leaves_the_others_running(
        caplog: pytest.LogCaptureFixture, direct: bool) -> None:
    """``boom`` raises in room a's handling, on either path a frame takes: handled where it
    arrives (``RoomActor.frame_nowait``, a quiet room) or by the room's task."""
    async with rooms(config(direct_frames=direct), state_factory=Brittle) as r:
        a1, a2 = await r.join("a", "ann"), await r.join("a", "al")
        b1, b2 = await r.join("b", "bea"), await r.join("b", "bo")
        crashed, other = r.registry.get("a"), r.registry.get("b")
        with caplog.at_level(logging.ERROR, "roomchat.room"):
            a1.say("boom")
            b1.say("still here", "s1")
            await settle()
        assert "room a crashed" in caplog.text
        # Room a: its sessions closed with 1011, pending asks refused, forgotten.
        assert a1.transport.closed == (CloseCode.INTERNAL_ERROR, "room restarting")
        assert a2.transport.closed == (CloseCode.INTERNAL_ERROR, "room restarting")
        assert lifecycle(crashed) is RoomLifecycle.STOPPED
        assert [a.room for a in r.registry.rooms()] == ["b"]
        with pytest.raises(RoomStopped):
            await crashed.publish("svc", "Service", None, "too late")
        # Room b: untouched, and its message went out.
        assert lifecycle(other) is RoomLifecycle.RUNNING
        assert other.statistics()["direct_frames"] == (1 if direct else 0)
        assert crashed.statistics()["direct_frames"] == (1 if direct else 0)
        assert [m["text"] for m in b2.transport.objects("message")] == ["still here"]
        assert b1.transport.closed is None and b2.transport.closed is None
        b2.say("and on", "s2")  # right after a batch: the room's pacing pause, then out
        await step(r.clock, config().batch_delay, by=0.001)
        assert [m["text"] for m in b1.transport.objects("message")] == ["still here", "and on"]
        # The next join starts room a afresh, from storage.
        again = await r.join("a", "ann")
        assert r.registry.get("a") is not crashed
        assert again.transport.objects("welcome")[0]["seq"] == 0


async def test_an_idle_room_is_forgotten_and_revived_with_its_history() -> None:
    cfg = config(room_idle_ttl=30.0)
    async with rooms(cfg) as r:
        ann = await r.join("quiet", "ann")
        ann.say("remember me", "m1")
        await settle()
        first = r.registry.get("quiet")
        first.leave_nowait(ann.session.id)
        await step(r.clock, cfg.room_idle_ttl + 2, by=1.0)
        assert len(r.registry) == 0 and lifecycle(first) is RoomLifecycle.STOPPED
        bob = await r.join("quiet", "bob")
        assert r.registry.get("quiet") is not first
        assert [m["text"] for m in bob.transport.objects("message")] == ["remember me"]


async def test_no_room_beyond_max_rooms_and_a_drain_closes_all() -> None:
    async with rooms(max_rooms=2) as r:
        ann, bob = await r.join("one", "ann"), await r.join("two", "bob")
        with pytest.raises(TooManyRooms):
            r.registry.get("three")
        r.registry.drain_nowait()
        await settle()
        assert ann.transport.closed == (CloseCode.SERVICE_RESTART, "server restarting")
        assert bob.transport.closed == (CloseCode.SERVICE_RESTART, "server restarting")
        with pytest.raises(RoomStopped):
            r.registry.get("one")
        await r.registry.aclose(timeout=5)
        assert len(r.registry) == 0

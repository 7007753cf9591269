"""What tests/rooms/test_actor.py and test_registry.py share: rooms driven without sockets or
sleeps. A ``Member`` is a real ``rooms.session.Session`` whose transport records the frames
its writer sends (``Recorder``); time is a ``rooms.clock.SteppedClock`` that moves when the
test says; storage is the memory engine (``FlakyMemory``: one that fails on demand, the
edge a storage outage comes through)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from rooms.actor import RoomActor
from rooms.clock import SteppedClock
from rooms.config import RoomConfig
from rooms.engine import AppendDone, RoomSync
from rooms.engines.memory import MemoryEngine
from rooms.errors import StoreError
from rooms.messages import DEFAULT_RULES, AnyDraft, Appended, LogRules
from rooms.protocol import ClientFrame, Pong, SendMessage
from rooms.session import Session

_ids = itertools.count(1)


@dataclass
class Recorder:
    """A transport that takes every frame at once and remembers it (and the close)."""

    frames: list[str] = field(default_factory=list)
    closed: tuple[int, str] | None = None

    async def send(self, data: str) -> None:
        self.frames.append(data)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def objects(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every protocol object received, in order (``kind``: of that type only)."""
        found = [orjson.loads(line) for frame in self.frames for line in frame.split("\n")]
        return [o for o in found if kind is None or o["type"] == kind]


@dataclass
class Member:
    """A joined session and what it received."""

    actor: RoomActor
    session: Session
    transport: Recorder
    writer: asyncio.Task[None]

    def send(self, frame: ClientFrame) -> bool:
        return self.actor.frame_nowait(self.session.id, frame)

    def say(self, text: str, client_id: str | None = None) -> bool:
        return self.send(SendMessage(text, client_id or f"c{next(_ids)}"))

    def pong(self) -> bool:
        return self.send(Pong())


def config(**changes: Any) -> RoomConfig:
    """Room settings for stepped tests (the defaults otherwise)."""
    return RoomConfig(**changes)


async def settle(turns: int = 50) -> None:
    """Let every task that can run do so (nothing here waits on real I/O or real time)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def step(clock: SteppedClock, seconds: float, by: float = 0.25) -> None:
    """Advance ``clock`` by ``seconds`` in steps of ``by``, letting the room run after each."""
    left = seconds
    while left > 1e-9:
        delta = min(by, left)
        clock.advance(delta)
        left -= delta
        await settle()


async def join(actor: RoomActor, tasks: asyncio.TaskGroup, clock: SteppedClock, user: str,
               **options: Any) -> Member:
    """Join ``user`` as the gateway does (a session, ``join``, then its writer as a task)."""
    cfg = actor.config
    transport = Recorder()
    session = Session(next(_ids), user, user.title(), transport,
                      outbox_limit=cfg.outbox_limit, max_frame_messages=cfg.max_frame_messages,
                      send_timeout=cfg.send_timeout, close_timeout=cfg.close_timeout,
                      moderator=options.pop("moderator", False))
    plan = await actor.join(session, after=options.pop("after", None),
                            expires_at=clock.wall_ms() / 1000 + options.pop("ttl", 3600))
    writer = tasks.create_task(session.run_writer(plan, actor.room, actor._engine,
                                                  cfg.history_page))
    await settle()
    return Member(actor, session, transport, writer)


class FlakyMemory(MemoryEngine):
    """The memory engine, whose appends and syncs fail with ``StoreError`` while ``failing``;
    ``shared``: it says other processes may serve its rooms (the actor then syncs with it)."""

    def __init__(self, *, shared: bool = False) -> None:
        super().__init__()
        self.shared = shared
        self.failing = False
        self.appends = 0
        self.syncs = 0

    async def append(self, room: str, drafts: Sequence[AnyDraft], *, retention: int,
                     dedup_window: int = 0, epoch: str | None = None, floor: int = 0,
                     rules: LogRules = DEFAULT_RULES) -> list[Appended]:
        self.appends += 1
        if self.failing:
            raise StoreError("disk unplugged")
        return await super().append(room, drafts, retention=retention,
                                    dedup_window=dedup_window, epoch=epoch, floor=floor,
                                    rules=rules)

    def append_soon(self, room: str, drafts: Sequence[AnyDraft], *, done: AppendDone,
                    **options: Any) -> bool:
        self.appends += 1
        if self.failing:
            done(None, StoreError("disk unplugged"))
            return True
        return super().append_soon(room, drafts, done=done, **options)

    async def sync(self, room: str, members: dict[str, str], ttl: float, *,
                   floor: int = 0) -> RoomSync:
        self.syncs += 1
        if self.failing:
            raise StoreError("connection refused")
        return await super().sync(room, members, ttl, floor=floor)

"""RoomRegistry: starts a room's actor on first use, forgets it when it stops, drains on shutdown.

The registry owns every actor task: it keeps them and ``aclose()`` awaits them all. A crashed or
idle room is removed from the registry by the actor itself (``on_exit``) and revived, with its
history, by the next ``get()``. At most ``max_rooms`` rooms are loaded at once (running, or
stopping but not yet gone): ``get()`` refuses to start one more, so a client that may join any
room cannot fill memory with empty ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from rooms.actor import RoomActor, RoomLifecycle, Stored
from rooms.clock import Clock, LoopClock, sleep
from rooms.config import RoomConfig
from rooms.engine import Engine
from rooms.errors import RoomStopped, StoreError, TooManyRooms
from rooms.observer import NullObserver, RoomObserver
from rooms.protocol import CloseCode
from rooms.state import RoomState

log = logging.getLogger("roomchat.registry")


class RoomRegistry:
    def __init__(
        self, config: RoomConfig, engine: Engine, *, observer: RoomObserver | None = None,
        state_factory: Callable[..., RoomState] = RoomState, max_rooms: int = 5_000,
        on_stored: Stored | None = None, clock: Clock | None = None,
    ) -> None:
        """``on_stored``: given to every room (``rooms.actor.Stored``); ``clock``: the time
        every room runs on (``rooms.clock``; default the event loop's)."""
        if max_rooms < 1:
            raise ValueError("max_rooms must be at least 1")
        self.config = config
        self.max_rooms = max_rooms
        self.engine = engine
        self.observer = observer or NullObserver()
        self._state_factory = state_factory
        self._on_stored = on_stored
        self.clock: Clock = clock if clock is not None else LoopClock()
        self._rooms: dict[str, RoomActor] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    def get(self, room: str) -> RoomActor:
        """The running actor of ``room``, started if needed. Raises ``RoomStopped`` once
        draining, ``StoreError`` while the engine is known to be unreachable, ``TooManyRooms``
        when ``room`` would be started beyond ``max_rooms``."""
        if self._closing:
            raise RoomStopped("server is draining")
        if not self.engine.healthy:
            raise StoreError("storage is unavailable")
        actor = self._rooms.get(room)
        if actor is not None and actor.lifecycle is not RoomLifecycle.STOPPED:
            return actor
        # A stopped actor still listed is replaced in place: that starts no extra room.
        if actor is None and len(self._rooms) >= self.max_rooms:
            raise TooManyRooms(f"this server already runs {self.max_rooms} rooms; "
                               "try again later")
        actor = RoomActor(room, self.config, self.engine, observer=self.observer,
                          on_exit=self._forget, state_factory=self._state_factory,
                          on_stored=self._on_stored, clock=self.clock)
        self._rooms[room] = actor
        task = asyncio.create_task(actor.run(), name=f"room:{room}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return actor

    def _forget(self, actor: RoomActor) -> None:
        if self._rooms.get(actor.room) is actor:
            del self._rooms[actor.room]

    def __len__(self) -> int:
        return len(self._rooms)

    def rooms(self) -> list[RoomActor]:
        return list(self._rooms.values())

    def revoke_nowait(self, user: str) -> None:
        """Close every session of ``user`` in every room of this process (4003)."""
        for actor in list(self._rooms.values()):
            actor.revoke_nowait(user)

    async def drain_staged(self, batch: int, step: float,
                           code: CloseCode = CloseCode.SERVICE_RESTART,
                           reason: str = "server restarting") -> None:
        """Refuse new joins, then drain rooms in groups of about ``batch`` sessions, ``step``
        seconds apart (a whole room at a time): clients reconnect in waves instead of all at
        once (Phoenix's socket drainer does the same). Cancel it to drain the rest at once."""
        self._closing = True
        try:
            pending = sorted(self._rooms.values(), key=lambda a: a.room)
            while pending:
                taken = 0
                while pending and (taken == 0 or taken < batch):
                    actor = pending.pop()
                    taken += actor.counts().sessions
                    actor.drain_nowait(code, reason)
                if pending:
                    await sleep(self.clock, step)
        finally:
            self.drain_nowait(code, reason)  # whatever is left, and rooms started meanwhile

    def drain_nowait(self, code: CloseCode = CloseCode.SERVICE_RESTART,
                     reason: str = "server restarting") -> None:
        """Refuse new joins and ask every room to close its sessions with ``code`` and stop."""
        self._closing = True
        for actor in list(self._rooms.values()):
            actor.drain_nowait(code, reason)

    async def aclose(self, timeout: float) -> None:
        """Drain (if not yet), then wait up to ``timeout`` s for every actor; cancel stragglers."""
        self.drain_nowait()
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            log.warning("room task %s did not stop in %.1fs; cancelling", task.get_name(), timeout)
            task.cancel()
        if pending:
            await asyncio.wait(pending)

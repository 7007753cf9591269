"""Hooks through which rooms report what they do (the gateway turns them into metrics).

Every method is synchronous and must not block: it is called on the room's hot path.
"""

from __future__ import annotations

from typing import Protocol


class RoomObserver(Protocol):
    def room_started(self, room: str) -> None: ...
    def room_stopped(self, room: str, crashed: bool) -> None: ...
    def frames_received(self, count: int) -> None: ...
    def messages_stored(self, count: int, seconds: float) -> None: ...
    def messages_delivered(self, count: int) -> None: ...
    def broadcast_latency(self, seconds: float) -> None: ...
    def session_closed(self, code: int) -> None: ...


class NullObserver:
    """Reports nothing."""

    def room_started(self, room: str) -> None:
        pass

    def room_stopped(self, room: str, crashed: bool) -> None:
        pass

    def frames_received(self, count: int) -> None:
        pass

    def messages_stored(self, count: int, seconds: float) -> None:
        pass

    def messages_delivered(self, count: int) -> None:
        pass

    def broadcast_latency(self, seconds: float) -> None:
        pass

    def session_closed(self, code: int) -> None:
        pass

"""Prometheus metrics: the rooms' observer hooks and the gateway's own counters.

Each app gets its own ``CollectorRegistry`` so several apps (tests) can live in one process.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.hypercorn_ext.parts import PARTS, Installed

__all__ = ["CONTENT_TYPE", "Metrics"]


class Metrics:
    """Implements ``rooms.observer.RoomObserver`` plus the gateway's counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("roomchat_connections", "Open WebSocket connections.",
                                 registry=r)
        self.rooms = Gauge("roomchat_rooms_active", "Rooms with a running actor.", registry=r)
        self.received = Counter("roomchat_frames_received", "Client frames handled by rooms.",
                                registry=r)
        self.stored = Counter("roomchat_messages_stored", "Messages durably stored.",
                              registry=r)
        self.delivered = Counter("roomchat_objects_delivered",
                                 "Broadcast objects queued to client outboxes.", registry=r)
        self.rejections = Counter("roomchat_handshake_rejections",
                                  "Refused WebSocket upgrades by reason.", ["reason"],
                                  registry=r)
        self.closes = Counter("roomchat_session_closes",
                              "Server-initiated closes by close code.", ["code"], registry=r)
        self.gc_frozen = Gauge("roomchat_gc_frozen_objects",
                               "Objects the garbage collector skips (gateway.gcsteward).",
                               registry=r)
        self.room_crashes = Counter("roomchat_room_crashes", "Room actors that crashed.",
                                    registry=r)
        self.fast_path_mismatches = Counter(
            "roomchat_fast_path_mismatches",
            "Parts of gateway.hypercorn_ext left out at start-up because the library they "
            "reach into is not what they were verified against (docs/upstream.md).", ["part"],
            registry=r)
        self.fast_paths_active = Gauge(
            "roomchat_fast_paths_active",
            "1 for each part of gateway.hypercorn_ext in place, 0 where Hypercorn's plain "
            "ASGI path serves instead.", ["part"], registry=r)
        self.broadcast_latency_seconds = Histogram(
            "roomchat_broadcast_latency_seconds",
            "From a frame entering a room's inbox to its broadcast being queued (incl. storage).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r)
        self.commit_seconds = Histogram(
            "roomchat_store_commit_seconds", "Duration of one group commit.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- RoomObserver -----------------------------------------------------------------------

    def room_started(self, room: str) -> None:
        self.rooms.inc()

    def room_stopped(self, room: str, crashed: bool) -> None:
        self.rooms.dec()
        if crashed:
            self.room_crashes.inc()

    def frames_received(self, count: int) -> None:
        self.received.inc(count)

    def messages_stored(self, count: int, seconds: float) -> None:
        self.stored.inc(count)
        self.commit_seconds.observe(seconds)

    def messages_delivered(self, count: int) -> None:
        self.delivered.inc(count)

    def broadcast_latency(self, seconds: float) -> None:
        self.broadcast_latency_seconds.observe(seconds)

    def session_closed(self, code: int) -> None:
        self.closes.labels(code=str(code)).inc()

    # -- gateway ----------------------------------------------------------------------------

    def handshake_rejected(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def fast_paths(self, installed: Installed) -> None:
        """What ``gateway.hypercorn_ext.install`` put in place (once, at start-up)."""
        for part in PARTS:
            self.fast_paths_active.labels(part=part.name).set(part.name in installed.active)
        for name in installed.mismatched:
            self.fast_path_mismatches.labels(part=name).inc()

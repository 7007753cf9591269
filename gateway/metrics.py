"""Prometheus metrics: the rooms' observer hooks and the gateway's own counters.

Each app gets its own ``CollectorRegistry`` so several apps (tests) can live in one process.

The hooks rooms call on their message path (frames received, objects delivered, broadcast
latency, session closes) count in plain integers on the event loop's thread and are turned into
metric families only when ``/metrics`` is scraped (``_RoomCounts``): a ``prometheus_client``
``inc``/``observe`` takes a lock and, for a histogram, a bisect, and a room paid two or three of
them per wake (issue 22, item 4). Commits are reported from the store's thread, so they keep
``prometheus_client``'s thread-safe objects (one observation per commit, not per wake).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from gateway.hypercorn_ext.parts import PARTS, Installed

__all__ = ["CONTENT_TYPE", "Metrics"]


_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _RoomCounts:
    """The rooms' message-path counts, as plain numbers; a collector that exports them on
    scrape. Written only from the event loop's thread (the rooms' hooks); a scrape on the same
    thread reads a consistent set."""

    def __init__(self) -> None:
        self.received = 0
        self.delivered = 0
        self.closes: dict[int, int] = {}
        # Per bucket (not cumulative; the last one is +Inf), and the sum, of broadcast latency.
        self.latency = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def collect(self) -> Iterator[Metric]:
        received = CounterMetricFamily("roomchat_frames_received",
                                       "Client frames handled by rooms.")
        received.add_metric([], self.received)
        yield received
        delivered = CounterMetricFamily("roomchat_objects_delivered",
                                        "Broadcast objects queued to client outboxes.")
        delivered.add_metric([], self.delivered)
        yield delivered
        closes = CounterMetricFamily("roomchat_session_closes",
                                     "Server-initiated closes by close code.", labels=["code"])
        for code, count in sorted(self.closes.items()):
            closes.add_metric([str(code)], count)
        yield closes
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*_LATENCY_BUCKETS, float("inf")), self.latency, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else str(float(bound)), total))
        latency = HistogramMetricFamily(
            "roomchat_broadcast_latency_seconds",
            "From a frame entering a room's inbox to its broadcast being queued (incl. storage).")
        latency.add_metric([], buckets, self.latency_sum)
        yield latency


class Metrics:
    """Implements ``rooms.observer.RoomObserver`` plus the gateway's counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("roomchat_connections", "Open WebSocket connections.",
                                 registry=r)
        self.rooms = Gauge("roomchat_rooms_active", "Rooms with a running actor.", registry=r)
        self.stored = Counter("roomchat_messages_stored", "Messages durably stored.",
                              registry=r)
        self.rejections = Counter("roomchat_handshake_rejections",
                                  "Refused WebSocket upgrades by reason.", ["reason"],
                                  registry=r)
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
        self.commit_seconds = Histogram(
            "roomchat_store_commit_seconds", "Duration of one group commit.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r)
        self.counts = _RoomCounts()
        r.register(self.counts)

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
        self.counts.received += count

    def messages_stored(self, count: int, seconds: float) -> None:
        self.stored.inc(count)
        self.commit_seconds.observe(seconds)

    def messages_delivered(self, count: int) -> None:
        self.counts.delivered += count

    def broadcast_latency(self, seconds: float) -> None:
        counts = self.counts
        counts.latency[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        counts.latency_sum += seconds

    def session_closed(self, code: int) -> None:
        closes = self.counts.closes
        closes[code] = closes.get(code, 0) + 1

    # -- gateway ----------------------------------------------------------------------------

    def handshake_rejected(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def fast_paths(self, installed: Installed) -> None:
        """What ``gateway.hypercorn_ext.install`` put in place (once, at start-up)."""
        for part in PARTS:
            self.fast_paths_active.labels(part=part.name).set(part.name in installed.active)
        for name in installed.mismatched:
            self.fast_path_mismatches.labels(part=name).inc()

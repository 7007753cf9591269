"""gateway.metrics: the rooms' message-path hooks count in plain numbers and are exported on
scrape with the same names and meaning as prometheus_client's own objects had."""

from __future__ import annotations

from gateway.metrics import Metrics


def test_room_hooks_are_exported_on_scrape() -> None:
    metrics = Metrics()
    metrics.frames_received(3)
    metrics.frames_received(2)
    metrics.messages_delivered(30)
    metrics.session_closed(4009)
    metrics.session_closed(4009)
    metrics.session_closed(1012)
    for seconds in (0.0004, 0.001, 0.003, 9.0):  # 0.001 is on a bound: counted as <= 0.001
        metrics.broadcast_latency(seconds)
    sample = metrics.registry.get_sample_value
    assert sample("roomchat_frames_received_total") == 5
    assert sample("roomchat_objects_delivered_total") == 30
    assert sample("roomchat_session_closes_total", {"code": "4009"}) == 2
    assert sample("roomchat_session_closes_total", {"code": "1012"}) == 1
    bucket = "roomchat_broadcast_latency_seconds_bucket"
    assert sample(bucket, {"le": "0.0005"}) == 1
    assert sample(bucket, {"le": "0.001"}) == 2
    assert sample(bucket, {"le": "0.005"}) == 3
    assert sample(bucket, {"le": "2.5"}) == 3
    assert sample(bucket, {"le": "+Inf"}) == 4
    assert sample("roomchat_broadcast_latency_seconds_count") == 4
    assert abs((sample("roomchat_broadcast_latency_seconds_sum") or 0) - 9.0044) < 1e-9
    # Counted in plain integers (no prometheus_client lock or object per call).
    assert metrics.counts.received == 5 and metrics.counts.delivered == 30


def test_nothing_counted_exports_zeros() -> None:
    sample = Metrics().registry.get_sample_value
    assert sample("roomchat_frames_received_total") == 0
    assert sample("roomchat_broadcast_latency_seconds_count") == 0

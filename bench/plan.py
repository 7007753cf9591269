"""What a benchmark run measures: room scenarios, window lengths and sizes, full or quick."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoomScenario:
    """``rooms`` rooms of ``size`` members; ``senders_per_room`` of them send.

    In the closed-loop (saturation) phase each sender keeps ``window`` messages outstanding: a
    message is complete when the sender receives its own broadcast copy.
    """

    key: str
    title: str
    rooms: int
    size: int
    senders_per_room: int
    window: int
    change_mix: float = 0.0
    """Fraction of what senders send that is a change (edit or reaction) instead of a
    message: roomchat only (issue 21)."""

    @property
    def members(self) -> int:
        """Connections in the scenario."""
        return self.rooms * self.size


ROOM10 = RoomScenario("room10", "1 room of 10", 1, 10, 10, 32)
ROOM100 = RoomScenario("room100", "1 room of 100", 1, 100, 10, 32)
ROOM1000 = RoomScenario("room1000", "1 room of 1,000", 1, 1000, 10, 4)
ROOMS1000X10 = RoomScenario("rooms1000x10", "1,000 rooms of 10", 1000, 10, 1, 1)
ALL_SCENARIOS = (ROOM10, ROOM100, ROOM1000, ROOMS1000X10)
# Many small rooms, light enough for the quick run's `--workers` comparison (window 1 with 200
# senders still keeps far more messages in flight than a 5 ms batch round trip drains).
ROOMS200X10 = RoomScenario("rooms200x10", "200 rooms of 10", 200, 10, 1, 1)
# Issue 21: the room of 100 where 30% of what is sent are reactions or edits (bench/changes.py).
ROOM100_CHANGES = RoomScenario("room100-changes", "1 room of 100, 30% changes", 1, 100, 10, 32,
                               change_mix=0.3)


@dataclass(frozen=True)
class StormVariant:
    """Which storm protections are on (roomchat); the baselines run ``jitter`` only."""

    key: str
    title: str
    staged_drain: bool
    jitter: bool
    rate_limit: bool


PROTECTED = StormVariant("protected", "all on", True, True, True)
UNPROTECTED = StormVariant("unprotected", "all off", False, False, False)
NO_STAGING = StormVariant("no-staging", "drain at once", False, True, True)
NO_JITTER = StormVariant("no-jitter", "no jitter", True, False, True)
NO_RATE = StormVariant("no-rate-limit", "no rate limit", True, True, False)
ALL_VARIANTS = (PROTECTED, UNPROTECTED, NO_STAGING, NO_JITTER, NO_RATE)
BASELINE = StormVariant("baseline", "page's jitter, no resume", False, True, False)


@dataclass(frozen=True)
class StormPlan:
    """Sizes and durations of the storm section of a run."""

    clients: int
    room_size: int
    send_interval_ms: int  # per room: one sender sends this often while it is live
    traffic_s: float  # traffic before the SIGTERM
    after_s: float  # traffic after every client is back, before the checks
    drain_waves: int  # staged drain: the clients close in this many waves...
    drain_step_s: float  # ...this far apart
    timeout_s: float  # the most a storm may take from ready to the last client back
    variants: tuple[StormVariant, ...]
    baselines: tuple[str, ...]  # server keys stormed without resume


@dataclass(frozen=True)
class Plan:
    """Every size and duration of one run."""

    name: str
    # Servers measured unless --servers says otherwise (keys of bench.servers.KINDS).
    servers: tuple[str, ...]
    scenarios: tuple[RoomScenario, ...]
    # Open-loop offered loads as fractions of the same server's measured saturation.
    fractions: tuple[float, ...]
    # Plus one load offered to every server alike: this fraction of the lowest saturation.
    common_fraction: float
    warmup_s: float
    measure_s: float
    open_warmup_s: float
    open_measure_s: float
    idle_connections: int
    idle_room_size: int
    handshakes: int
    handshake_concurrency: int
    handshake_room_size: int
    store_seconds: float
    # Before each measurement, wait up to this long for other people's load to go away.
    quiet_wait_s: float
    # A window during which other processes used more than 10% of either core is measured again
    # (after waiting for quiet) up to this many times; the least disturbed attempt is kept.
    retries: int
    # Scale-out (bench/scaleout.py): this room split over two processes on one Redis against
    # the same room in one process on Redis...
    split_scenario: RoomScenario
    # ...and `serve --workers 1` against `--workers 2` in this many-small-rooms scenario, with
    # one fixed load offered to both: this fraction of the `--workers 1` saturation.
    workers_scenario: RoomScenario
    workers_fixed_fraction: float
    # The reconnect storm (bench/storm.py).
    storm: StormPlan


FULL = Plan(
    name="full",
    servers=("roomchat", "roomchat-redis", "roomchat-postgres", "roomchat-memory", "node-ws",
             "py-websockets"),
    scenarios=ALL_SCENARIOS,
    fractions=(0.25, 0.5, 0.75),
    common_fraction=0.5,
    warmup_s=2.0,
    measure_s=6.0,
    open_warmup_s=1.0,
    open_measure_s=5.0,
    idle_connections=10_000,
    idle_room_size=100,
    handshakes=4_000,
    handshake_concurrency=64,
    handshake_room_size=10,
    store_seconds=5.0,
    quiet_wait_s=120.0,
    retries=2,
    split_scenario=ROOM100,
    workers_scenario=ROOMS1000X10,
    workers_fixed_fraction=0.5,
    storm=StormPlan(clients=10_000, room_size=10, send_interval_ms=2000, traffic_s=2.0,
                    after_s=1.0, drain_waves=5, drain_step_s=1.0, timeout_s=120.0,
                    variants=ALL_VARIANTS, baselines=("node-ws", "py-websockets")),
)

QUICK = Plan(
    # Under two minutes: roomchat against Node ws only (the targets' baseline; one process on
    # Redis is still measured, by the split section), and shorter windows.
    name="quick",
    servers=("roomchat", "node-ws"),
    scenarios=(ROOM100,),
    fractions=(0.5,),
    common_fraction=0.5,
    warmup_s=0.5,
    measure_s=2.0,
    open_warmup_s=0.5,
    open_measure_s=2.0,
    idle_connections=1_000,
    idle_room_size=100,
    handshakes=1_000,
    handshake_concurrency=64,
    handshake_room_size=10,
    store_seconds=1.0,
    quiet_wait_s=3.0,
    retries=1,
    split_scenario=ROOM100,
    workers_scenario=ROOMS200X10,
    workers_fixed_fraction=0.5,
    storm=StormPlan(clients=1_000, room_size=10, send_interval_ms=1000, traffic_s=1.0,
                    after_s=0.5, drain_waves=4, drain_step_s=0.5, timeout_s=60.0,
                    variants=(PROTECTED, UNPROTECTED), baselines=("node-ws",)),
)

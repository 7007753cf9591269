"""The GC steward: when the policy freezes and thaws, what a thaw frees, and a real server that
freezes after connects and thaws after closes."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import websockets

from gateway.gcsteward import Counts, FreezePolicy, GcSteward
from tests.support import SECRET, make_config, make_token, metric, server_process, until

FROZEN = "roomchat_gc_frozen_objects"


def test_the_policy_freezes_after_each_burst_of_connects() -> None:
    policy = FreezePolicy(burst=100, thaw_share=0.5)
    assert policy.step(Counts(opened=99, closed=0, open=99)) is None
    assert policy.step(Counts(opened=100, closed=0, open=100)) == "freeze"
    assert policy.step(Counts(opened=150, closed=0, open=150)) is None  # 50 since the freeze
    assert policy.step(Counts(opened=200, closed=10, open=190)) == "freeze"


def test_the_policy_thaws_once_half_of_what_it_froze_has_closed() -> None:
    policy = FreezePolicy(burst=100, thaw_share=0.5)
    assert policy.step(Counts(opened=1000, closed=0, open=1000)) == "freeze"
    assert policy.step(Counts(opened=1000, closed=499, open=501)) is None
    assert policy.step(Counts(opened=1000, closed=500, open=500)) == "thaw"
    # After a thaw the survivors are frozen again: the marks start over from here.
    assert policy.step(Counts(opened=1050, closed=700, open=350)) is None
    assert policy.step(Counts(opened=1050, closed=750, open=300)) == "thaw"  # half of 500


def test_closes_alone_never_thaw_what_was_never_frozen() -> None:
    policy = FreezePolicy(burst=100, thaw_share=0.5)
    assert policy.step(Counts(opened=50, closed=50, open=0)) is None


def test_a_small_population_thaws_only_after_half_a_burst_of_closes() -> None:
    policy = FreezePolicy(burst=100, thaw_share=0.5)
    assert policy.step(Counts(opened=1000, closed=0, open=1000)) == "freeze"
    assert policy.step(Counts(opened=1000, closed=990, open=10)) == "thaw"
    # 10 left frozen: not a thaw per 5 closes, but per 50 (half a burst).
    assert policy.step(Counts(opened=1000, closed=1039, open=10)) is None
    assert policy.step(Counts(opened=1050, closed=1040, open=10)) == "thaw"


def test_burst_zero_turns_the_policy_off_and_bad_settings_are_refused(tmp_path: Path) -> None:
    policy = FreezePolicy(burst=0, thaw_share=0.5)
    assert policy.step(Counts(opened=10**6, closed=10**6, open=0)) is None
    with pytest.raises(ValueError):
        FreezePolicy(burst=-1, thaw_share=0.5)
    with pytest.raises(ValueError):
        FreezePolicy(burst=10, thaw_share=0)
    config = make_config(tmp_path)
    # The settings are refused where they are loaded (Config), before any Gateway is built.
    with pytest.raises(ValueError, match="ROOMCHAT_GC_FREEZE_AFTER"):
        replace(config, gc_freeze_after=-1)
    with pytest.raises(ValueError, match="ROOMCHAT_GC_THAW_SHARE"):
        replace(config, gc_thaw_share=0.0)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def thawed_afterwards() -> Iterator[None]:
    """This test freezes the test process's collector: leave it as found."""
    frozen = gc.get_freeze_count()
    try:
        yield
    finally:
        if gc.get_freeze_count() > frozen:
            gc.unfreeze()


@pytest.mark.usefixtures("thawed_afterwards")
def test_a_frozen_cycle_survives_collections_until_the_thaw_frees_it() -> None:
    steward = GcSteward(FreezePolicy(1, 0.5), lambda: Counts(0, 0, 0))
    assert steward.frozen() == 0, "nothing frozen by this steward yet"
    cycle = _Cycle()
    alive = weakref.ref(cycle)
    steward.apply("freeze")
    del cycle
    gc.collect()
    assert alive() is not None, "a frozen cycle is skipped by every collection"
    steward.apply("thaw")
    assert alive() is None, "the thaw's full collection frees it"
    assert gc.get_freeze_count() > 0, "and what survived is frozen again"
    assert steward.frozen() == gc.get_freeze_count()


@pytest.mark.usefixtures("thawed_afterwards")
def test_a_freeze_does_not_count_the_frozen_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting walks every frozen object (milliseconds with many connections open): a freeze,
    once per ``gc_freeze_after`` connects, must not, whatever the log level; the metric counts
    when it is read."""
    counted: list[int] = []
    count = gc.get_freeze_count

    def counting() -> int:
        counted.append(1)
        return count()

    monkeypatch.setattr(gc, "get_freeze_count", counting)
    logging.getLogger("roomchat.gc").setLevel(logging.DEBUG)
    try:
        steward = GcSteward(FreezePolicy(1, 0.5), lambda: Counts(0, 0, 0))
        steward.apply("freeze")
        assert counted == []
        assert steward.frozen() > 0 and counted == [1]
    finally:
        logging.getLogger("roomchat.gc").setLevel(logging.NOTSET)


async def test_a_server_freezes_after_a_burst_of_connects_and_thaws_after_closes(
    tmp_path: Path,
) -> None:
    env = {"ROOMCHAT_GC_FREEZE_AFTER": "3", "ROOMCHAT_JWT_SECRET": SECRET}
    with server_process(tmp_path, env=env) as proc:
        assert metric(proc.port, FROZEN) == 0
        sockets = [await websockets.connect(proc.url("lobby", make_token(f"u{i}", ["lobby"])),
                                            compression=None) for i in range(3)]
        await until(lambda: metric(proc.port, FROZEN) > 0, 10, "a freeze")
        assert "gc: thawed" not in proc.output()
        for ws in sockets[:2]:  # two of the three frozen: past the default share of 0.5
            await ws.close()
        await until(lambda: "gc: thawed after connection churn" in proc.output(), 10, "a thaw")
        assert metric(proc.port, FROZEN) > 0, "what survived the thaw is frozen again"
        await sockets[2].close()

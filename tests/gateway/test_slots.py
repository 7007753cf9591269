"""The bound on concurrent searches (``gateway.slots.SearchSlots``), at its edge."""

import pytest

from gateway.errors import Rejection
from gateway.slots import SearchSlots

pytestmark = pytest.mark.unit


def test_the_slot_past_the_bound_is_refused_with_a_retry_and_freed_slots_are_reused() -> None:
    slots = SearchSlots(2)
    with slots.take(), slots.take():
        assert slots.busy == 2
        with pytest.raises(Rejection) as refused, slots.take():
            pass
        assert (refused.value.status, refused.value.error) == (503, "search_busy")
        assert refused.value.headers() == [(b"retry-after", b"1")]
        assert slots.busy == 2  # the refused take held nothing
    assert slots.busy == 0
    with slots.take():
        assert slots.busy == 1


def test_a_failing_search_gives_its_slot_back() -> None:
    slots = SearchSlots(1)
    with pytest.raises(RuntimeError), slots.take():
        raise RuntimeError("the store failed")
    assert slots.busy == 0
    with slots.take():
        assert slots.busy == 1

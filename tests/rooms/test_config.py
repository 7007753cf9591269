"""rooms.config.RoomConfig: every setting checked where it is defined (pure)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gateway.config import load_config
from rooms.config import RoomConfig


def test_store_timeout_is_positive() -> None:
    assert RoomConfig().store_timeout == 2.0
    assert RoomConfig(store_timeout=0.001).store_timeout == 0.001
    for value in (0.0, -1.0):
        with pytest.raises(ValueError, match="store_timeout must be positive"):
            RoomConfig(store_timeout=value)


@pytest.mark.parametrize("name", ["store_timeout", "store_outage_timeout", "ping_interval",
                                  "batch_delay", "rate_per_sec", "room_idle_ttl"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_no_setting_is_a_nan_or_an_infinity(name: str, value: float) -> None:
    """NaN passed every range check (every comparison with it is false)."""
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        RoomConfig(**cast(dict[str, Any], {name: value}))


def test_the_environment_names_the_setting() -> None:
    assert load_config({"ROOMCHAT_STORE_TIMEOUT": "0.5"}).room.store_timeout == 0.5
    with pytest.raises(ValueError, match="store_timeout"):
        load_config({"ROOMCHAT_STORE_TIMEOUT": "nan"})

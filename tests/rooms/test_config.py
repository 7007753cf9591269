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
    with pytest.raises(ValueError, match=r"^ROOMCHAT_STORE_TIMEOUT must be a finite number$"):
        load_config({"ROOMCHAT_STORE_TIMEOUT": "nan"})


@pytest.mark.parametrize(("name", "lowest", "highest"), [
    ("edit_window", 0.0, None),  # 0: forever
    ("max_reactions", 1, 1000),
    ("max_mentions", 0, 1000),  # 0: no mentions
    ("reply_excerpt_chars", 1, None),
    ("unread_scan", 0, None),  # 0: no counting
])
def test_the_settings_of_changes_at_their_edges(name: str, lowest: float,
                                                highest: float | None) -> None:
    assert getattr(RoomConfig(**cast(dict[str, Any], {name: lowest})), name) == lowest
    below = lowest - (0.001 if isinstance(lowest, float) else 1)
    with pytest.raises(ValueError, match=name):
        RoomConfig(**cast(dict[str, Any], {name: below}))
    if highest is not None:
        assert getattr(RoomConfig(**cast(dict[str, Any], {name: highest})), name) == highest
        with pytest.raises(ValueError, match=f"{name} must be at most"):
            RoomConfig(**cast(dict[str, Any], {name: highest + 1}))


def test_the_log_rules_come_from_the_settings() -> None:
    rules = load_config({"ROOMCHAT_EDIT_WINDOW": "900", "ROOMCHAT_MAX_REACTIONS": "5",
                         "ROOMCHAT_REPLY_EXCERPT_CHARS": "40"}).room.rules
    assert (rules.edit_window, rules.max_reactions, rules.reply_excerpt_chars) == (900.0, 5, 40)

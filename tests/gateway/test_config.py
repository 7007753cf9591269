from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import is_loopback_bind
from gateway.config import load_config, settings_table
from tests.support import REPO


def test_env_then_flags() -> None:
    cfg = load_config({"ROOMCHAT_RATE_BURST": "7", "ROOMCHAT_RATE_PER_SEC": "0.5",
                       "ROOMCHAT_ALLOWED_ORIGINS": "https://a.example/, https://b.example",
                       "ROOMCHAT_COMPRESSION": "yes", "ROOMCHAT_BIND": "0.0.0.0:1"},
                      bind="127.0.0.1:2", rate_burst=None)
    assert cfg.room.rate_burst == 7 and cfg.room.rate_per_sec == 0.5
    assert cfg.allowed_origins == ("https://a.example", "https://b.example")
    assert cfg.compression is True
    assert cfg.bind == "127.0.0.1:2"
    assert cfg.data_dir == Path("var") and cfg.jwt_secret is None


@pytest.mark.parametrize(("env", "message"), [
    ({"ROOMCHAT_RATE_BURST": "lots"}, "ROOMCHAT_RATE_BURST"),
    ({"ROOMCHAT_RATE_BURST": "0"}, "rate_burst"),
    ({"ROOMCHAT_LOG_JSON": "maybe"}, "ROOMCHAT_LOG_JSON"),
    ({"ROOMCHAT_CLIENT_IPV6_PREFIX": "0"}, "ROOMCHAT_CLIENT_IPV6_PREFIX"),
    ({"ROOMCHAT_CLIENT_IPV6_PREFIX": "129"}, "ROOMCHAT_CLIENT_IPV6_PREFIX"),
])
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(env)


def test_the_ipv6_prefix_takes_its_whole_range() -> None:
    assert load_config({}).client_ipv6_prefix == 64
    for edge in ("1", "128"):
        assert load_config({"ROOMCHAT_CLIENT_IPV6_PREFIX": edge}).client_ipv6_prefix == int(edge)


def test_the_configuration_doc_lists_every_setting() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert settings_table() in doc, "run scripts/update-settings-doc.py"


@pytest.mark.parametrize(("bind", "loopback"), [
    ("127.0.0.1:8000", True), ("localhost:1", True), ("[::1]:8000", True),
    ("0.0.0.0:8000", False), ("example.com:80", False)])
def test_loopback_bind(bind: str, loopback: bool) -> None:
    assert is_loopback_bind(bind) is loopback

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import is_loopback_bind, load_config, settings_table
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
    ({"ROOMCHAT_RATE_BURST": "0"}, "ROOMCHAT_RATE_BURST must be at least 1"),
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


S32 = "s" * 32  # the shortest secret accepted (MIN_SECRET_CHARS)
RS = {"ROOMCHAT_JWT_ALGORITHM": "RS256"}
KEYS = {"ROOMCHAT_JWT_KEYS": f"k1={S32}"}
REDIS = {"ROOMCHAT_STORE_URL": "redis://127.0.0.1:6379/0"}
MEMORY = {"ROOMCHAT_STORE_URL": "memory://"}
POSTGRES = {"ROOMCHAT_STORE_URL": "postgresql://db/chat"}

# Each check of a setting at its edge: (environment just inside, just outside, what the one
# line says). Every check moved here from where the setting was used (the app, the server, the
# front door, the limits, auth, preflight, the CLI) or added for a setting nothing checked.
EDGES = [
    *((f"ROOMCHAT_{name}", "1", "0", "at least 1") for name in (
        "WORKERS", "MAX_CONNECTIONS", "LISTEN_BACKLOG", "MAX_CONNECTIONS_PER_USER",
        "MAX_CONNECTIONS_PER_IP", "HANDSHAKE_BURST", "CONNECTION_BURST",
        "USER_JOINS_PER_MINUTE", "MAX_LIVE_ROOMS", "MAX_MESSAGE_BYTES", "HISTORY_FETCH_LIMIT",
        "DRAIN_BATCH", "API_BURST", "GC_GEN0_THRESHOLD")),
    ("ROOMCHAT_USER_RATE_CONNECTIONS", "1", "0.999", "at least 1"),
    *((f"ROOMCHAT_{name}", "1e-9", "0", "more than 0") for name in (
        "HANDSHAKE_RATE", "CONNECTION_RATE", "TICKET_TTL", "REVOCATION_POLL", "API_RATE",
        "DEV_LOGIN_TTL", "GC_THAW_SHARE")),
    *((f"ROOMCHAT_{name}", "0", "-1e-9", "0 or more") for name in (
        "JWT_LEEWAY", "DRAIN_STEP", "DRAIN_TIMEOUT")),
    ("ROOMCHAT_GC_FREEZE_AFTER", "0", "-1", "0 or more"),
    ("ROOMCHAT_STORE_CONNECTIONS", "0", "-1", "0 or more"),  # 0: the engine's own
    ("ROOMCHAT_DRAIN_TIMEOUT", "1e308", "inf", "a finite number"),
    ("ROOMCHAT_JWT_LEEWAY", "0", "nan", "a finite number"),
    ("ROOMCHAT_UPLOAD_READ_RATE", "0", "-1", "0 (no bound) or more"),
]
PAIRS = [
    ({"ROOMCHAT_SEARCH_LANGUAGE": "english"}, {"ROOMCHAT_SEARCH_LANGUAGE": "English"},
     "ROOMCHAT_SEARCH_LANGUAGE must be a text search configuration's name"),
    ({"ROOMCHAT_SEARCH_LANGUAGE": "pg_catalog_x1"},
     {"ROOMCHAT_SEARCH_LANGUAGE": "english; DROP TABLE entries"},
     "ROOMCHAT_SEARCH_LANGUAGE must be a text search configuration's name"),
    ({"ROOMCHAT_JWT_ALGORITHM": "EdDSA"}, {"ROOMCHAT_JWT_ALGORITHM": "none"},
     "ROOMCHAT_JWT_ALGORITHM must be one of"),
    ({"ROOMCHAT_JWT_ALGORITHM": "HS512"}, {"ROOMCHAT_JWT_ALGORITHM": "hs512"},
     "ROOMCHAT_JWT_ALGORITHM must be one of"),
    ({"ROOMCHAT_JWT_SECRET": S32}, {"ROOMCHAT_JWT_SECRET": S32[1:]},
     "ROOMCHAT_JWT_SECRET must be at least 32 characters, got 31"),
    ({"ROOMCHAT_API_KEY": S32}, {"ROOMCHAT_API_KEY": S32[1:]},
     "ROOMCHAT_API_KEY must be at least 32 characters, got 31"),
    (KEYS, {"ROOMCHAT_JWT_KEYS": f"k1={S32[1:]}"}, "ROOMCHAT_JWT_KEYS: the secret of 'k1'"),
    ({**RS, "ROOMCHAT_JWT_KEYS": "k1=/k.pem"}, {"ROOMCHAT_JWT_KEYS": "k1"},
     "ROOMCHAT_JWT_KEYS entries must be kid=secret"),
    ({**KEYS, "ROOMCHAT_JWT_KID": "k1"}, {**KEYS, "ROOMCHAT_JWT_KID": "k2"},
     "ROOMCHAT_JWT_KID 'k2' is not in ROOMCHAT_JWT_KEYS"),
    ({**KEYS, "ROOMCHAT_JWT_KID": "k1"},
     {**RS, "ROOMCHAT_JWT_KEYS": "k1=/k.pem", "ROOMCHAT_JWT_KID": "k1"},
     "unset ROOMCHAT_JWT_KID"),
    ({"ROOMCHAT_TRUSTED_PROXIES": "10.0.0.0/32,::1/128"},
     {"ROOMCHAT_TRUSTED_PROXIES": "10.0.0.0/33"}, "ROOMCHAT_TRUSTED_PROXIES must be"),
    ({"ROOMCHAT_CLIENT_IP_HEADER": "Forwarded"}, {"ROOMCHAT_CLIENT_IP_HEADER": "x-real-ip"},
     "ROOMCHAT_CLIENT_IP_HEADER must be x-forwarded-for or forwarded"),
    ({"ROOMCHAT_DEV_LOGIN": "1", "ROOMCHAT_BIND": "[::1]:8000"},
     {"ROOMCHAT_DEV_LOGIN": "1", "ROOMCHAT_BIND": "0.0.0.0:8000"},
     "ROOMCHAT_DEV_LOGIN_FORCE=1"),
    ({"ROOMCHAT_DEV_LOGIN": "1", "ROOMCHAT_BIND": "0.0.0.0:8000",
      "ROOMCHAT_DEV_LOGIN_FORCE": "1"},
     {"ROOMCHAT_DEV_LOGIN": "1", "ROOMCHAT_BIND": "0.0.0.0:8000"},
     "dev login is refused on a non-loopback bind"),
    ({"ROOMCHAT_CERTFILE": "c.pem", "ROOMCHAT_KEYFILE": "k.pem"},
     {"ROOMCHAT_CERTFILE": "c.pem"}, "--certfile without --keyfile (ROOMCHAT_KEYFILE)"),
    ({"ROOMCHAT_LOG_LEVEL": "ERROR"}, {"ROOMCHAT_LOG_LEVEL": "trace"},
     "--log-level 'trace' (ROOMCHAT_LOG_LEVEL): use debug, info, warning or error"),
    ({"ROOMCHAT_STORE_SYNCHRONOUS": "normal"}, {"ROOMCHAT_STORE_SYNCHRONOUS": "OFF"},
     "ROOMCHAT_STORE_SYNCHRONOUS must be FULL or NORMAL or EXTRA"),
    (REDIS, {"ROOMCHAT_STORE_URL": "mysql://admin:pw-sekret@db/chat"},
     "unknown store URL 'mysql://db/chat' (--store-url / ROOMCHAT_STORE_URL)"),
    ({**POSTGRES, "ROOMCHAT_WORKERS": "2", "ROOMCHAT_BUS_URL": "redis://bus:6379/0"},
     {**POSTGRES, "ROOMCHAT_WORKERS": "2"},
     "--workers 2 with PostgreSQL and no bus between the processes: set "
     "ROOMCHAT_BUS_URL=redis://host:port/db or postgresql://... (--bus-url), or run one "
     "worker"),
    # The bus beside the store: docs/design/log-and-bus.md's table, one line each.
    ({**POSTGRES, "ROOMCHAT_BUS_URL": "local:"}, {"ROOMCHAT_BUS_URL": "redis://:pw-sekret@b/0"},
     "bus URL 'redis://b/0' (--bus-url / ROOMCHAT_BUS_URL) with store sqlite://: the SQLite "
     "log serves one process; a bus cannot share it: use postgresql:// or redis:// as "
     "ROOMCHAT_STORE_URL"),
    (MEMORY, {**MEMORY, "ROOMCHAT_BUS_URL": "redis://b/0", "ROOMCHAT_WORKERS": "2"},
     "the memory log serves one process; a bus cannot share it"),
    ({**REDIS, "ROOMCHAT_BUS_URL": REDIS["ROOMCHAT_STORE_URL"]},
     {**REDIS, "ROOMCHAT_BUS_URL": "redis://other:6379/0"},
     "the Redis store announces messages itself, on its own server (in the script that stores "
     "them): leave ROOMCHAT_BUS_URL unset"),
    # PostgreSQL's LISTEN/NOTIFY bus goes with the PostgreSQL log (several processes: it
    # counts as a bus between them), and with nothing else.
    ({**POSTGRES, "ROOMCHAT_WORKERS": "2", "ROOMCHAT_BUS_URL": "postgresql://db/chat"},
     {**REDIS, "ROOMCHAT_BUS_URL": "postgresql://db/chat"},
     "the PostgreSQL LISTEN/NOTIFY bus goes with the PostgreSQL log only: use postgresql:// "
     "as ROOMCHAT_STORE_URL too, or leave ROOMCHAT_BUS_URL unset"),
    ({**POSTGRES, "ROOMCHAT_BUS_URL": "postgres://other/chat"},
     {"ROOMCHAT_BUS_URL": "postgresql://db/chat"},
     "the PostgreSQL LISTEN/NOTIFY bus goes with the PostgreSQL log only"),
    ({**POSTGRES, "ROOMCHAT_BUS_URL": "unix:///run/redis.sock"},
     {**POSTGRES, "ROOMCHAT_BUS_URL": "kafka://k:9092"},
     "unknown bus URL: use redis://host:port/db or postgresql://user@host/db (a bus between "
     "processes) or local:"),
    ({**REDIS, "ROOMCHAT_WORKERS": "2"}, {"ROOMCHAT_WORKERS": "2"},
     "--workers 2 needs a shared store"),
    ({**MEMORY, "ROOMCHAT_HISTORY_RETENTION": "1"}, {**MEMORY, "ROOMCHAT_HISTORY_RETENTION": "0"},
     "ROOMCHAT_HISTORY_RETENTION=0 keeps every message, and memory:// keeps them in this "
     "process's memory"),
    (MEMORY, {"ROOMCHAT_STORE_URL": "memory://rooms"}, "memory:// takes nothing after it"),
    ({**REDIS, "ROOMCHAT_WORKERS": "2"}, {**MEMORY, "ROOMCHAT_WORKERS": "2"},
     "--workers 2 needs a shared store: each worker is its own process, and with memory"),
]


def _one_line_refusal(env: dict[str, str]) -> str:
    with pytest.raises(ValueError) as refused:
        load_config(env)
    message = str(refused.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("name", "inside", "outside", "says"), EDGES,
                         ids=[f"{edge[0]}={edge[2]}" for edge in EDGES])
def test_each_number_is_checked_at_its_edge(name: str, inside: str, outside: str,
                                            says: str) -> None:
    assert str(getattr(load_config({name: inside}),
                       name.removeprefix("ROOMCHAT_").lower())) in (inside, str(float(inside)))
    message = _one_line_refusal({name: outside})
    assert message.startswith(f"{name} must be {says}, got "), message


@pytest.mark.parametrize(("inside", "outside", "says"), PAIRS,
                         ids=[" ".join(f"{k}={v}" for k, v in pair[1].items())
                              for pair in PAIRS])
def test_each_other_setting_is_checked_at_its_edge(inside: dict[str, str],
                                                   outside: dict[str, str], says: str) -> None:
    load_config(inside)
    message = _one_line_refusal(outside)
    assert says in message, message
    assert "sekret" not in message and S32[1:] not in message  # no secret in the line


def test_settings_checked_together_may_come_from_the_environment_and_the_flags() -> None:
    """The environment and the flags make one ``Config``: a value checked against another is
    checked against the one in effect, wherever each came from."""
    redis = REDIS["ROOMCHAT_STORE_URL"]
    assert load_config({"ROOMCHAT_WORKERS": "2"}, store_url=redis).workers == 2
    assert load_config({"ROOMCHAT_CERTFILE": "c.pem"}, keyfile=Path("k.pem")).keyfile
    with pytest.raises(ValueError, match="ROOMCHAT_WORKERS"):
        load_config(REDIS, workers=2, store_url="sqlite:///x.db")


def test_a_room_setting_is_refused_naming_its_variable() -> None:
    message = _one_line_refusal({"ROOMCHAT_PRESENCE_TTL": "5", "ROOMCHAT_SYNC_INTERVAL": "5"})
    assert message == "ROOMCHAT_PRESENCE_TTL must be longer than ROOMCHAT_SYNC_INTERVAL"

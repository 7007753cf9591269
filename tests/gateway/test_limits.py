"""gateway.limits: the abuse caps' pure bookkeeping, with stepped time (no sleeps)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gateway.config import Config
from gateway.errors import rejection_for
from gateway.limits import (
    PRUNE_INTERVAL,
    RETRY_HINT_MAX,
    RETRY_SPREAD_MIN,
    ClientAddresses,
    ConnectionCounts,
    KeyedBuckets,
    Limit,
    LimitExceeded,
    Limits,
    forwarded_chain,
    parse_address,
    parse_networks,
    redeems_ticket,
)
from rooms.ratelimit import TokenBucket


def limits(**kw: Any) -> Limits:
    settings: dict[str, Any] = {
        "connections_per_user": 3, "connections_per_ip": 5, "handshake_rate": 1.0,
        "handshake_burst": 4, "user_rate": 2.0, "user_burst": 6, "joins_per_minute": 10,
        "connection_rate": 1000.0, "connection_burst": 1000, "api_rate": 5.0, "api_burst": 10,
        "random": lambda: 0.5}
    return Limits(**(settings | kw))


# --- connections per user and per IP -------------------------------------------------------

def test_connection_count_allows_cap_then_refuses_and_frees_on_close() -> None:
    counts: ConnectionCounts[str] = ConnectionCounts(2)
    for _ in range(2):
        assert counts.allows("u")
        counts.open("u")
    assert not counts.allows("u")
    assert counts.allows("other")  # per key
    counts.close("u")
    assert counts.allows("u")


def test_a_count_at_zero_is_forgotten() -> None:
    counts: ConnectionCounts[str] = ConnectionCounts(2)
    for user in ("a", "b", "c"):
        counts.open(user)
    for user in ("a", "b", "c"):
        counts.close(user)
    assert len(counts) == 0
    counts.close("never-opened")  # harmless, and leaves no negative count behind
    assert len(counts) == 0 and counts.count("never-opened") == 0


def test_admit_refuses_the_user_over_its_cap_with_429() -> None:
    caps = limits(connections_per_user=3, joins_per_minute=100)
    for i in range(3):
        caps.admit("alice", f"10.0.0.{i}", now=0.0)
        caps.opened("alice", f"10.0.0.{i}")
    with pytest.raises(LimitExceeded) as refused:
        caps.admit("alice", "10.0.0.9", now=0.0)
    assert refused.value.limit is Limit.USER_CONNECTIONS
    rejection = rejection_for(refused.value)
    assert (rejection.status, rejection.error) == (429, "too_many_user_connections")
    assert rejection.headers() == []  # a count frees up on a close, not after a known time
    caps.admit("bob", "10.0.0.9", now=0.0)  # another user is not affected
    caps.closed("alice", "10.0.0.0")
    caps.admit("alice", "10.0.0.9", now=0.0)


def test_admit_refuses_the_ip_over_its_cap() -> None:
    caps = limits(connections_per_ip=5, joins_per_minute=100)
    for i in range(5):
        caps.admit(f"user{i}", "192.0.2.1", now=0.0)
        caps.opened(f"user{i}", "192.0.2.1")
    with pytest.raises(LimitExceeded) as refused:
        caps.admit("user9", "192.0.2.1", now=0.0)
    assert refused.value.limit is Limit.IP_CONNECTIONS
    caps.admit("user9", "192.0.2.2", now=0.0)
    for i in range(5):
        caps.closed(f"user{i}", "192.0.2.1")
    assert caps.statistics()["ips_connected"] == 0
    assert caps.statistics()["users_connected"] == 0


# --- rates ---------------------------------------------------------------------------------

def test_handshakes_burst_then_refuse_with_retry_after_then_refill() -> None:
    caps = limits(handshake_rate=2.0, handshake_burst=4)
    for _ in range(4):
        caps.handshake("192.0.2.1", now=10.0)
    with pytest.raises(LimitExceeded) as refused:
        caps.handshake("192.0.2.1", now=10.0)
    assert refused.value.limit is Limit.HANDSHAKES
    assert refused.value.retry_after == pytest.approx(0.5)
    rejection = rejection_for(refused.value)
    assert (rejection.status, rejection.error) == (429, "too_many_handshakes")
    assert rejection.headers() == [(b"retry-after", b"1")]
    caps.handshake("192.0.2.2", now=10.0)  # per IP
    with pytest.raises(LimitExceeded):
        caps.handshake("192.0.2.1", now=10.49)
    caps.handshake("192.0.2.1", now=10.5)  # one token back after 1/rate s


# --- the process-wide connection rate ------------------------------------------------------

def test_connection_rate_burst_then_503_busy_with_a_jittered_retry_after_then_refill() -> None:
    caps = limits(connection_rate=2.0, connection_burst=3, handshake_burst=100,
                  random=lambda: 0.75)
    for i in range(3):  # from different addresses: the cap is the whole process's
        caps.handshake(f"192.0.2.{i}", now=10.0)
    with pytest.raises(LimitExceeded) as refused:
        caps.handshake("192.0.2.9", now=10.0)
    assert refused.value.limit is Limit.CONNECTION_RATE
    # The token is 1/rate = 0.5 s away; one client refused is spread over RETRY_SPREAD_MIN.
    assert refused.value.retry_after == pytest.approx(0.5 + 0.75 * RETRY_SPREAD_MIN)
    rejection = rejection_for(refused.value)
    assert (rejection.status, rejection.error) == (503, "busy")
    assert rejection.headers() == [(b"retry-after", b"2")]
    with pytest.raises(LimitExceeded):
        caps.handshake("192.0.2.9", now=10.49)
    caps.handshake("192.0.2.9", now=10.5)


def test_retry_hints_spread_the_refused_over_the_time_the_rate_needs_for_them() -> None:
    draws = iter([0.0, 0.999, 0.999, 0.999])
    rate = limits(connection_rate=10.0, connection_burst=1, random=lambda: next(draws))
    gate = rate.connection_rate
    assert gate.take(0.0) == 0.0
    hints = [gate.take(0.0) for _ in range(4)]
    assert hints[0] == pytest.approx(0.1)  # drawn at the start of its span: the token's wait
    assert hints[1] == pytest.approx(0.1 + 0.999 * RETRY_SPREAD_MIN)  # 2 refused: still 1 s
    assert gate.backlog(0.0) == pytest.approx(4.0)
    assert gate.backlog(0.2) == pytest.approx(2.0)  # expected back and admitted at the rate
    # Many refused at once: spread over backlog / rate seconds, capped at RETRY_HINT_MAX.
    many = limits(connection_rate=10.0, connection_burst=1, random=lambda: 0.999)
    many.connection_rate.take(0.0)
    hints = [many.connection_rate.take(0.0) for _ in range(400)]
    assert hints[99] == pytest.approx(0.1 + 0.999 * 100 / 10.0)
    assert max(hints) == RETRY_HINT_MAX
    assert many.statistics()["connection_rate_refused"] == 400


def test_a_refusal_takes_nothing_and_the_per_ip_bucket_refuses_first() -> None:
    caps = limits(connection_rate=1.0, connection_burst=2, handshake_burst=1)
    caps.handshake("192.0.2.1", now=0.0)
    for _ in range(5):  # refused by its own address: the process's budget is untouched
        with pytest.raises(LimitExceeded) as refused:
            caps.handshake("192.0.2.1", now=0.0)
        assert refused.value.limit is Limit.HANDSHAKES
    caps.handshake("192.0.2.2", now=0.0)
    with pytest.raises(LimitExceeded) as refused:
        caps.handshake("192.0.2.3", now=0.0)
    assert refused.value.limit is Limit.CONNECTION_RATE


def test_an_upgrade_redeeming_a_ticket_is_not_charged_again() -> None:
    caps = limits(connection_rate=1.0, connection_burst=1, handshake_burst=100)
    caps.handshake("192.0.2.1", now=0.0)  # the ticket request
    caps.handshake("192.0.2.1", now=0.0, query=b"ticket=abc&after=41")  # its upgrade
    with pytest.raises(LimitExceeded):
        caps.handshake("192.0.2.1", now=0.0, query=b"token=eyJ&after=41")
    assert redeems_ticket(b"after=1&ticket=x")
    # An empty ticket, or another parameter ending in "ticket", falls back to the token: charged.
    assert not redeems_ticket(b"ticket=&token=eyJ")
    assert not redeems_ticket(b"xticket=1&token=eyJ")


def test_joins_per_minute_allow_n_at_once_then_one_every_60_over_n_seconds() -> None:
    caps = limits(joins_per_minute=6, connections_per_user=100)
    for _ in range(6):
        caps.admit("alice", "192.0.2.1", now=0.0)
    with pytest.raises(LimitExceeded) as refused:
        caps.admit("alice", "192.0.2.1", now=0.0)
    assert refused.value.limit is Limit.JOINS
    assert refused.value.retry_after == pytest.approx(10.0)
    caps.admit("bob", "192.0.2.1", now=0.0)
    with pytest.raises(LimitExceeded):
        caps.admit("alice", "192.0.2.1", now=9.9)
    caps.admit("alice", "192.0.2.1", now=10.0)


def test_a_refused_connection_cap_takes_no_join_token() -> None:
    caps = limits(connections_per_user=1, joins_per_minute=2)
    caps.admit("alice", "192.0.2.1", now=0.0)
    caps.opened("alice", "192.0.2.1")
    for _ in range(5):
        with pytest.raises(LimitExceeded):
            caps.admit("alice", "192.0.2.1", now=0.0)
    caps.closed("alice", "192.0.2.1")
    caps.admit("alice", "192.0.2.1", now=0.0)  # the second of its two joins


def test_message_bucket_is_per_user() -> None:
    caps = limits(user_rate=2.0, user_burst=6)
    assert [caps.message("alice", 0.0) for _ in range(6)] == [0.0] * 6
    assert caps.message("alice", 0.0) == pytest.approx(0.5)
    assert caps.message("bob", 0.0) == 0.0
    assert caps.message("alice", 0.5) == 0.0


def test_full_buckets_are_forgotten_so_memory_follows_recent_clients() -> None:
    buckets: KeyedBuckets[str] = KeyedBuckets(rate=1.0, burst=2)
    for i in range(1000):
        assert buckets.take(f"ip{i}", now=0.0) == 0.0
    assert len(buckets) == 1000
    buckets.take("busy", now=0.5)
    buckets.take("busy", now=0.5)
    # One second later every one-shot bucket is full again; "busy" is not (it is empty at 0.5
    # and holds 1 of 2 tokens at 1.5).
    buckets.take("late", now=0.5 + PRUNE_INTERVAL)
    assert len(buckets) == 2  # "busy", and "late" created after the prune
    assert buckets.take("busy", now=1.5) == 0.0  # its state survived the prune


def test_prune_runs_at_most_once_per_interval() -> None:
    buckets: KeyedBuckets[str] = KeyedBuckets(rate=100.0, burst=1)
    buckets.take("a", now=0.0)
    buckets.take("b", now=0.5)  # "a" is full again, but the last prune was at 0.0
    assert len(buckets) == 2
    buckets.prune(0.5, force=True)
    assert len(buckets) == 1  # "b" was just emptied
    buckets.prune(0.51, force=True)
    assert len(buckets) == 0


def test_token_bucket_full_changes_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=2, now=0.0)
    assert bucket.full(0.0)
    bucket.take(0.0)
    assert not bucket.full(0.5)
    assert bucket.full(1.0)
    assert bucket.take(0.0, cost=2.0) > 0  # full() took nothing and did not move the clock
    assert bucket.take(1.0, cost=2.0) == 0.0


@pytest.mark.parametrize("kw", [
    {"connections_per_user": 0}, {"connections_per_ip": 0}, {"handshake_rate": 0.0},
    {"handshake_burst": 0}, {"user_rate": -1.0}, {"user_burst": 0}, {"joins_per_minute": 0},
    {"connection_rate": 0.0}, {"connection_burst": 0},
])
def test_caps_below_one_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        limits(**kw)


def test_from_config_reads_the_settings_and_names_them_on_error() -> None:
    caps = Limits.from_config(Config())
    assert caps.user_connections.cap == Config().max_connections_per_user
    assert caps.ip_connections.cap == Config().max_connections_per_ip
    assert caps.connection_rate.rate == Config().connection_rate
    assert caps.connection_rate.bucket.burst == Config().connection_burst
    with pytest.raises(ValueError, match="ROOMCHAT_HANDSHAKE_BURST"):  # refused by Config
        replace(Config(), handshake_burst=0)


def test_the_user_bucket_is_connections_worth_of_the_per_connection_one() -> None:
    cfg = replace(Config(), user_rate_connections=2.5,
                  room=replace(Config().room, rate_burst=10, rate_per_sec=2.0))
    caps = Limits.from_config(cfg)
    assert (caps.messages.burst, caps.messages.rate) == (25, 5.0)
    with pytest.raises(ValueError, match="ROOMCHAT_USER_RATE_CONNECTIONS"):  # refused by Config
        replace(cfg, user_rate_connections=0.5)


def test_by_default_only_a_proxy_on_this_host_is_trusted() -> None:
    cfg = Config()
    default = ClientAddresses(parse_networks(cfg.trusted_proxies), cfg.client_ip_header,
                              ipv6_prefix=cfg.client_ipv6_prefix)
    assert default.client_ip("127.0.0.1", ["203.0.113.7"]) == "203.0.113.7"
    assert default.client_ip("::1", ["203.0.113.7"]) == "203.0.113.7"
    assert default.client_ip("192.168.1.10", ["203.0.113.7"]) == "192.168.1.10"


# --- who the client is ---------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("203.0.113.7", "203.0.113.7"),
    (" 203.0.113.7 ", "203.0.113.7"),
    ("203.0.113.7:4711", "203.0.113.7"),
    ("2001:db8::17", "2001:db8::17"),
    ('"[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("::ffff:192.0.2.1", "192.0.2.1"),
    ("fe80::1%eth0", "fe80::1"),
    ('"[fe80::1%25eth0]:4711"', "fe80::1"),
    ("unknown", None),
    ("_hidden", None),
    ("", None),
    ("1.2.3.4.5", None),
])
def test_parse_address(text: str, expected: str | None) -> None:
    address = parse_address(text)
    assert (None if address is None else str(address)) == expected


def test_forwarded_chain_reads_both_headers_across_several_lines() -> None:
    assert forwarded_chain("x-forwarded-for", ["1.1.1.1, 2.2.2.2", "3.3.3.3"]) == [
        "1.1.1.1", "2.2.2.2", "3.3.3.3"]
    assert forwarded_chain("forwarded", [
        'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711"',
        "proto=https;for=10.0.0.1"]) == [
        "192.0.2.60", '"[2001:db8:cafe::17]:4711"', "10.0.0.1"]


PROXY = "10.0.0.2"
# Each IPv6 address alone (/128) here: these tests are about which hop is the client.
XFF = ClientAddresses(parse_networks(["10.0.0.0/24", "127.0.0.1"]), "X-Forwarded-For",
                      ipv6_prefix=128)


def test_an_untrusted_peer_is_the_client_whatever_it_sends() -> None:
    assert XFF.client_ip("198.51.100.1", ["203.0.113.7"]) == "198.51.100.1"
    nobody = ClientAddresses((), "x-forwarded-for", ipv6_prefix=128)
    assert nobody.client_ip("127.0.0.1", ["203.0.113.7"]) == "127.0.0.1"


def test_a_trusted_peer_s_header_is_read_from_the_right() -> None:
    assert XFF.client_ip(PROXY, ["203.0.113.7"]) == "203.0.113.7"
    # The client wrote the left part itself: only what the trusted proxy appended counts.
    assert XFF.client_ip(PROXY, ["6.6.6.6, 203.0.113.7"]) == "203.0.113.7"
    # A chain of trusted proxies is skipped.
    assert XFF.client_ip(PROXY, ["6.6.6.6, 203.0.113.7, 10.0.0.9, 127.0.0.1"]) == "203.0.113.7"
    assert XFF.client_ip("::ffff:10.0.0.2", ["203.0.113.7"]) == "203.0.113.7"


def test_a_trusted_peer_without_a_usable_header_is_the_client() -> None:
    assert XFF.client_ip(PROXY, []) == PROXY
    assert XFF.client_ip(PROXY, ["unknown"]) == PROXY
    # Garbage stops the walk at the proxy that reported it.
    assert XFF.client_ip(PROXY, ["203.0.113.7, 10.0.0.9, garbage"]) == PROXY
    assert XFF.client_ip(PROXY, ["203.0.113.7, garbage, 10.0.0.9"]) == "10.0.0.9"
    # Only trusted hops: the leftmost is as far as anyone vouches.
    assert XFF.client_ip(PROXY, ["10.0.0.7, 10.0.0.9"]) == "10.0.0.7"


def test_the_forwarded_header_is_read_only_when_configured() -> None:
    rfc = ClientAddresses(parse_networks(["10.0.0.0/24"]), "forwarded", ipv6_prefix=128)
    assert rfc.client_ip(PROXY, ['for="[2001:db8::1]:80";proto=https']) == "2001:db8::1"
    # Not configured: the X-Forwarded-For values the caller passes are read as Forwarded,
    # i.e. a proxy that sets only Forwarded cannot be fooled by a client's X-Forwarded-For.
    assert rfc.client_ip(PROXY, ["203.0.113.7"]) == PROXY


def test_ipv6_clients_count_by_their_network_and_zone_ids_are_dropped() -> None:
    """Round-3 finding: behind a trusted proxy 60 addresses of one /64 each had their own caps
    (one subscriber holds the whole /64), and a zone id made one address several keys."""
    by64 = ClientAddresses(parse_networks(["10.0.0.0/24"]), "x-forwarded-for", ipv6_prefix=64)
    keys = {by64.client_ip(PROXY, [f"2001:db8:1:2::{i:x}"]) for i in range(1, 61)}
    assert keys == {"2001:db8:1:2::/64"}
    assert by64.client_ip(PROXY, ["2001:db8:1:3::1"]) == "2001:db8:1:3::/64"  # another /64
    assert by64.client_ip("2001:db8:9:9::5", []) == "2001:db8:9:9::/64"  # a direct peer too
    assert by64.client_ip(PROXY, ["203.0.113.7"]) == "203.0.113.7"  # IPv4: the address
    assert {by64.client_ip(PROXY, [f"fe80::1%eth{i}"]) for i in range(3)} == {"fe80::/64"}
    by56 = ClientAddresses((), "x-forwarded-for", ipv6_prefix=56)
    assert by56.client_ip("2001:db8:1:2ff::1", []) == "2001:db8:1:200::/56"
    alone = ClientAddresses((), "x-forwarded-for", ipv6_prefix=128)
    assert alone.client_ip("2001:db8::1", []) == "2001:db8::1"
    assert alone.client_ip("fe80::1%eth0", []) == alone.client_ip("fe80::1%eth1", []) == "fe80::1"
    # A trusted proxy is still matched by its full address, not its network.
    picky = ClientAddresses(parse_networks(["2001:db8::1"]), "x-forwarded-for", ipv6_prefix=64)
    assert picky.client_ip("2001:db8::1", ["203.0.113.7"]) == "203.0.113.7"
    assert picky.client_ip("2001:db8::2", ["203.0.113.7"]) == "2001:db8::/64"


def test_no_peer_and_bad_settings() -> None:
    assert XFF.client_ip(None, ["203.0.113.7"]) == "unknown"
    with pytest.raises(ValueError, match="ROOMCHAT_TRUSTED_PROXIES"):
        parse_networks(["10.0.0.0/33"])
    with pytest.raises(ValueError, match="ROOMCHAT_CLIENT_IP_HEADER"):
        ClientAddresses((), "x-real-ip", ipv6_prefix=64)


def test_client_ip_remembers_peers_within_a_bound() -> None:
    from gateway.limits import PEER_CACHE

    addresses = ClientAddresses(parse_networks(["10.0.0.0/24"]), "X-Forwarded-For",
                                ipv6_prefix=64)
    for _ in range(2):  # the second time from memory: same answers
        assert addresses.client_ip("10.0.0.5", ["203.0.113.9"]) == "203.0.113.9"
        assert addresses.client_ip("10.0.0.5", []) == "10.0.0.5"
        assert addresses.client_ip("198.51.100.1", ["203.0.113.9"]) == "198.51.100.1"
        assert addresses.client_ip("::ffff:198.51.100.2", []) == "198.51.100.2"
        assert addresses.client_ip("not-an-ip", []) == "not-an-ip"
    for i in range(PEER_CACHE + 10):
        addresses.client_ip(f"192.0.2.{i % 250}:{i}", [])
    assert len(addresses._peers) == PEER_CACHE

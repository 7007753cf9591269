"""Abuse caps of one process: who the client is, connections per user and per IP, and rates.

Pure bookkeeping: nothing here awaits, reads a clock or touches a socket; callers pass ``now``
(monotonic seconds) and, where a refusal's retry hint is jittered, a ``random()`` function.
The front door (``gateway.access``) charges a request (``handshake``, ``api_call``) and checks
the connection caps (``check``, or ``admit`` for an upgrade); ``gateway.ws`` counts a connection
for its whole life (``opened`` / ``closed``) and asks ``message`` before a frame goes to its
room. ``gateway.errors`` turns ``LimitExceeded`` into HTTP 429, except the process's own limits
(the connection rate, ``ConnectionRate``: 503 ``busy``; ``max_connections``: 503
``server_full``): the server, not this client, is asking for patience.

Memory stays bounded by the clients active recently, not by every client ever seen: a
connection count is forgotten when it reaches zero, and a token bucket once it is full again
(a full bucket is indistinguishable from a new one, so forgetting it loses nothing).
"""

from __future__ import annotations

import enum
import ipaddress
import random as _random
import re
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

from gateway.config import CLIENT_IP_HEADERS
from rooms.backoff import jittered
from rooms.ratelimit import TokenBucket

if TYPE_CHECKING:
    from gateway.config import Config

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
K = TypeVar("K", bound=Hashable)

# How often (seconds of ``now``) a map of buckets looks for full ones to forget. Between two
# looks it holds at most the keys seen in that second plus those not yet refilled.
PRUNE_INTERVAL = 1.0
UNKNOWN_PEER = "unknown"  # no TCP peer address (not an IP socket)
# The longest retry hint the process-wide connection rate gives: the page's longest backoff
# (static/chat.js BACKOFF_MAX_MS), which also caps what it takes from Retry-After.
RETRY_HINT_MAX = 30.0
# Refused clients are spread over at least this many seconds, so that even a few of them do not
# come back at the same instant (Retry-After has whole seconds: hints of 1 or 2).
RETRY_SPREAD_MIN = 1.0
# A non-empty ``ticket`` parameter: the upgrade redeems a ticket (and ignores any ``token``).
_TICKET_PARAM = re.compile(rb"(?:^|&)ticket=[^&]")


class Limit(enum.StrEnum):
    """Which cap refused a connection; the value is the refusal's ``error`` on the wire."""

    HANDSHAKES = "too_many_handshakes"
    USER_CONNECTIONS = "too_many_user_connections"
    IP_CONNECTIONS = "too_many_ip_connections"
    JOINS = "too_many_joins"
    CONNECTION_RATE = "busy"
    SERVER_CONNECTIONS = "server_full"  # max_connections: this process's, not a client's
    API_CALLS = "rate_limited"  # a server API credential's requests (api_rate, api_burst)


class LimitExceeded(Exception):
    """A cap refused a connection. ``retry_after``: seconds until a retry can succeed, when
    known (rates); ``None`` for counts (they free up when a connection closes)."""

    def __init__(self, limit: Limit, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.limit = limit
        self.detail = detail
        self.retry_after = retry_after


# --- who the client is --------------------------------------------------------------------

def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``trusted_proxies`` entries (IPs or CIDRs) as networks. Raises ``ValueError``."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"ROOMCHAT_TRUSTED_PROXIES: not an IP address or CIDR: "
                             f"{entry!r}") from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An address as proxies write it (``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:5678``,
    ``"[::1]"``), IPv4-mapped IPv6 as IPv4, without an IPv6 zone id (``fe80::1%eth0`` is
    ``fe80::1``); ``None`` for anything else (``unknown``, obfuscated ``_hidden`` identifiers,
    garbage)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    # A zone names the interface a link-local address is reached by, not another client: kept,
    # ``fe80::1%a`` and ``fe80::1%b`` would be two keys (and the zone is free text).
    text = text.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_chain(header: str, values: Iterable[str]) -> list[str]:
    """The client addresses a proxy chain reported, nearest client first, as raw strings.

    ``header``: ``x-forwarded-for`` (``client, proxy1, proxy2``) or ``forwarded`` (RFC 7239:
    ``for=client;proto=https, for=proxy1``). ``values``: every occurrence of that header, in
    order (several headers are one comma-separated list).
    """
    hops: list[str] = []
    for value in values:
        for element in value.split(","):
            if header == "x-forwarded-for":
                hops.append(element.strip())
                continue
            for pair in element.split(";"):
                key, _, raw = pair.partition("=")
                if key.strip().lower() == "for":
                    hops.append(raw.strip())
    return hops


PEER_CACHE = 4096
"""TCP peers whose parsed address ``ClientAddresses`` remembers (oldest forgotten first)."""


class ClientAddresses:
    """Finds a connection's client IP: its TCP peer, or what trusted proxies say it was, as the
    key the per-IP caps count by: an IPv4 address, or an IPv6 address's network of
    ``ipv6_prefix`` bits (``client_ipv6_prefix``, validated by ``Config``).

    Why a network: one IPv6 subscriber usually holds a whole /64 (often a /56 or /48) and can
    use any address of it, so counted one by one, 60 addresses of one /64 each had a fresh cap.
    """

    def __init__(self, trusted: tuple[Network, ...], header: str, *,
                 ipv6_prefix: int) -> None:
        header = header.strip().lower()
        if header not in CLIENT_IP_HEADERS:
            raise ValueError(f"ROOMCHAT_CLIENT_IP_HEADER: expected one of "
                             f"{', '.join(CLIENT_IP_HEADERS)}, got {header!r}")
        self.trusted = trusted
        self.header = header
        self.ipv6_prefix = ipv6_prefix
        # TCP peer -> (its address, as a key, whether it is a trusted proxy): a peer's answer
        # never changes, and most connections come from few peers (a proxy) or come back.
        self._peers: dict[str, tuple[Address | None, str, bool]] = {}

    def is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted)

    def key(self, address: Address) -> str:
        """What the per-IP caps count ``address`` as: itself (IPv4, or IPv6 with a /128
        prefix), else its IPv6 network (``2001:db8::/64``)."""
        if isinstance(address, ipaddress.IPv6Address) and self.ipv6_prefix < 128:
            return str(ipaddress.IPv6Network((address, self.ipv6_prefix), strict=False))
        return str(address)

    def client_ip(self, peer: str | None, header_values: Iterable[str]) -> str:
        """The client's IP as a key (``key``). ``peer``: the TCP peer's address;
        ``header_values``: the configured header's values in the request.

        The header counts only when the peer is a trusted proxy, and then it is read from the
        right: each proxy appends the address it saw, so the rightmost hop that is not itself a
        trusted proxy is the client. Anything left of it was written by the client and could be
        anything. A hop that is not an address (``unknown``) stops the walk at the proxy that
        reported it.
        """
        if not peer:
            return UNKNOWN_PEER
        known = self._peers.get(peer)
        if known is None:  # parsing and matching networks was ~3% of a handshake's CPU
            parsed = parse_address(peer)
            known = (parsed, peer if parsed is None else self.key(parsed),
                     parsed is not None and self.is_trusted(parsed))
            if len(self._peers) >= PEER_CACHE:
                del self._peers[next(iter(self._peers))]  # the oldest entry
            self._peers[peer] = known
        address, text, trusted = known
        if address is None or not trusted:
            return text
        for hop in reversed(forwarded_chain(self.header, header_values)):
            reported = parse_address(hop)
            if reported is None:
                break
            address = reported
            if not self.is_trusted(address):
                break
        return self.key(address)


# --- counts and rates ---------------------------------------------------------------------

class ConnectionCounts(Generic[K]):
    """Open connections per key, at most ``cap`` each. A key at zero is forgotten."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("a connection cap must be at least 1")
        self.cap = cap
        self._open: dict[K, int] = {}

    def allows(self, key: K) -> bool:
        """Whether one more connection of ``key`` fits. Reserves nothing: call ``open`` before
        the next ``await`` so no other connection slips in between."""
        return self._open.get(key, 0) < self.cap

    def open(self, key: K) -> None:
        self._open[key] = self._open.get(key, 0) + 1

    def close(self, key: K) -> None:
        """One connection of ``key`` is gone (call once per ``open``)."""
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)

    def count(self, key: K) -> int:
        return self._open.get(key, 0)

    def __len__(self) -> int:
        return len(self._open)


class KeyedBuckets(Generic[K]):
    """One ``TokenBucket(rate, burst)`` per key, created full on first use and forgotten once
    full again (checked every ``PRUNE_INTERVAL`` seconds of ``now``). Every per-key rate of the
    gateway is one: handshakes per IP, messages and joins per user, server API requests per
    credential."""

    def __init__(self, rate: float, burst: int) -> None:
        TokenBucket(rate, burst, 0.0)  # validates: raises ValueError
        self.rate = rate
        self.burst = burst
        self._buckets: dict[K, TokenBucket] = {}
        self._pruned_at: float | None = None

    def take(self, key: K, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens of ``key``'s bucket: 0.0 on success, else the seconds until
        they are there (nothing is taken then)."""
        self.prune(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now, cost)

    def prune(self, now: float, *, force: bool = False) -> None:
        """Forget every full bucket, at most once per ``PRUNE_INTERVAL`` unless ``force``."""
        if not force and self._pruned_at is not None and now - self._pruned_at < PRUNE_INTERVAL:
            return
        self._pruned_at = now
        for key in [key for key, bucket in self._buckets.items() if bucket.full(now)]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class ConnectionRate:
    """New connections per second for the whole process (Centrifugo's ``connection_rate_limit``).

    A token bucket of ``burst`` refilled at ``rate`` per second, charged before any credential
    is verified: in a reconnect storm the clients over the rate cost an HTTP parse and a short
    503 instead of a signature check, a room join and a replay, and the event loop keeps serving
    the connections it already has. A refusal carries a retry hint that spreads the refused
    clients over the time the bucket needs to admit all of them (those refused recently, counted
    down at ``rate`` per second as they are expected back), each at a random point of that span:
    they return at about ``rate`` per second instead of all together a second later.
    """

    def __init__(self, rate: float, burst: int, random: Callable[[], float]) -> None:
        """``random()``: uniform in [0, 1) (``random.random``; tests pass a fixed one).
        Raises ``ValueError`` for a rate that is not positive or a burst below 1."""
        self.bucket = TokenBucket(rate, burst, 0.0)  # full: monotonic ``now`` is past 0
        self.rate = rate
        self.random = random
        self._backlog = 0.0  # refused clients not yet expected to have been admitted
        self._backlog_at = 0.0
        self.refused = 0  # since start, for statistics

    def take(self, now: float) -> float:
        """Admit one connection: 0.0, or the seconds a refused client should wait (jittered,
        at most ``RETRY_HINT_MAX``); nothing is taken then."""
        wait = self.bucket.take(now)
        if wait == 0.0:
            return 0.0
        self.refused += 1
        elapsed = max(0.0, now - self._backlog_at)
        self._backlog = max(0.0, self._backlog - elapsed * self.rate) + 1.0
        self._backlog_at = max(self._backlog_at, now)
        spread = max(RETRY_SPREAD_MIN, self._backlog / self.rate)
        return min(RETRY_HINT_MAX, jittered(wait, spread, self.random))

    def backlog(self, now: float) -> float:
        """Refused clients still expected back at ``now`` (what the next hint is spread over)."""
        return max(0.0, self._backlog - max(0.0, now - self._backlog_at) * self.rate)


def redeems_ticket(query: bytes) -> bool:
    """Whether an upgrade's query string carries a non-empty ``ticket`` (the front door then
    redeems it and never looks at a ``token``)."""
    return _TICKET_PARAM.search(query) is not None


class Limits:
    """Every per-user and per-IP cap of this process (see the settings in ``gateway.config``).

    ``user`` is a token's ``sub``; ``ip`` a ``ClientAddresses.client_ip`` key.
    """

    def __init__(self, *, connections_per_user: int, connections_per_ip: int,
                 handshake_rate: float, handshake_burst: int, user_rate: float,
                 user_burst: int, joins_per_minute: int, connection_rate: float,
                 connection_burst: int, api_rate: float, api_burst: int,
                 random: Callable[[], float]) -> None:
        self.user_connections: ConnectionCounts[str] = ConnectionCounts(connections_per_user)
        self.ip_connections: ConnectionCounts[str] = ConnectionCounts(connections_per_ip)
        self.handshakes: KeyedBuckets[str] = KeyedBuckets(handshake_rate, handshake_burst)
        self.messages: KeyedBuckets[str] = KeyedBuckets(user_rate, user_burst)
        # "N per minute" as a bucket: N at once, then one every 60/N s.
        self.joins: KeyedBuckets[str] = KeyedBuckets(joins_per_minute / 60.0, joins_per_minute)
        self.connection_rate = ConnectionRate(connection_rate, connection_burst, random)
        self.api_calls: KeyedBuckets[str] = KeyedBuckets(api_rate, api_burst)

    @classmethod
    def from_config(cls, config: Config,
                    random: Callable[[], float] = _random.random) -> Limits:
        """The caps ``config`` sets (``Config`` has checked every value)."""
        # A user's bucket is a number of connections' worth of the per-connection one, so that
        # raising the per-connection rate raises it too and it can never be the tighter of the
        # two for a user with one connection.
        worth = config.user_rate_connections
        return cls(connections_per_user=config.max_connections_per_user,
                   connections_per_ip=config.max_connections_per_ip,
                   handshake_rate=config.handshake_rate, handshake_burst=config.handshake_burst,
                   user_rate=worth * config.room.rate_per_sec,
                   user_burst=max(1, round(worth * config.room.rate_burst)),
                   joins_per_minute=config.user_joins_per_minute,
                   connection_rate=config.connection_rate,
                   connection_burst=config.connection_burst, api_rate=config.api_rate,
                   api_burst=config.api_burst, random=random)

    def handshake(self, ip: str, now: float, query: bytes = b"") -> None:
        """Charge one request that verifies a credential (an upgrade, a ticket or a history
        page) before any other check (they cost more): first to ``ip``'s bucket, so one
        address's flood never spends the process's budget, then to the process-wide connection
        rate, unless ``query`` (an upgrade's query string) redeems a ticket: its ticket request
        was charged already, and refusing it now would waste the ticket where the page cannot
        read why (a browser sees a refused upgrade as 1006).
        Raises ``LimitExceeded(HANDSHAKES)`` or ``LimitExceeded(CONNECTION_RATE)``."""
        wait = self.handshakes.take(ip, now)
        if wait > 0:
            raise LimitExceeded(Limit.HANDSHAKES, "too many connection attempts from this "
                                "address; retry after Retry-After seconds", wait)
        if redeems_ticket(query):
            return
        wait = self.connection_rate.take(now)
        if wait > 0:
            raise LimitExceeded(Limit.CONNECTION_RATE, "the server is taking too many new "
                                "connections at once; retry after Retry-After seconds", wait)

    def check(self, user: str, ip: str) -> None:
        """Whether ``user`` from ``ip`` may open one more connection now; takes nothing (a
        ticket's request asks what its upgrade would be told). Raises ``LimitExceeded``."""
        if not self.user_connections.allows(user):
            raise LimitExceeded(Limit.USER_CONNECTIONS,
                                f"this user already has {self.user_connections.cap} connections "
                                f"open; close one first")
        if not self.ip_connections.allows(ip):
            raise LimitExceeded(Limit.IP_CONNECTIONS,
                                f"this address already has {self.ip_connections.cap} connections "
                                f"open; close one first")

    def admit(self, user: str, ip: str, now: float) -> None:
        """Whether ``user`` from ``ip`` may open one more connection (a join of a room); takes
        a join token if so. The caller must call ``opened`` before its next ``await``.
        Raises ``LimitExceeded``."""
        self.check(user, ip)
        wait = self.joins.take(user, now)
        if wait > 0:
            raise LimitExceeded(Limit.JOINS, "this user joined too many rooms in the last "
                                "minute; retry after Retry-After seconds", wait)

    def opened(self, user: str, ip: str) -> None:
        """Count a connection admitted by ``admit`` until ``closed`` (its socket is gone)."""
        self.user_connections.open(user)
        self.ip_connections.open(ip)

    def closed(self, user: str, ip: str) -> None:
        self.user_connections.close(user)
        self.ip_connections.close(ip)

    def message(self, user: str, now: float, cost: float = 1.0) -> float:
        """Charge one inbound frame to ``user``'s bucket, shared by all their connections in
        this process: 0.0 if it may go to its room, else ``retry_after`` seconds."""
        return self.messages.take(user, now, cost)

    def api_call(self, key: str, now: float) -> None:
        """Charge one server API request to the bucket of credential ``key``. Raises
        ``LimitExceeded(API_CALLS)`` with the seconds to wait."""
        wait = self.api_calls.take(key, now)
        if wait > 0:
            raise LimitExceeded(Limit.API_CALLS, "too many API requests for this credential",
                                wait)

    def statistics(self) -> dict[str, int]:
        """How many keys each cap remembers (what bounds this object's memory)."""
        return {"users_connected": len(self.user_connections),
                "ips_connected": len(self.ip_connections),
                "handshake_buckets": len(self.handshakes),
                "message_buckets": len(self.messages), "join_buckets": len(self.joins),
                "api_buckets": len(self.api_calls),
                "connection_rate_refused": self.connection_rate.refused}

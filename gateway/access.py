"""The front door: every credential that comes into the gateway is read, checked and admitted here.

Each way in names its ``Purpose`` (open a room socket, get a ticket, read a history page, call the
server API, watch the admin stream), and ``POLICIES`` says in one row per purpose where its
credential is read from, what it is charged, which scope and claims it needs and what of the
room is checked. ``FrontDoor.admit`` then runs the same checks in the same order for everyone,
cheapest and least revealing first:

1. the client's charge (``Charge.CLIENT``: its IP's handshake bucket, then the process's
   connection rate; ``gateway.limits``), before anything costs a signature check, so that it
   answers even a request that is otherwise bad;
2. the room's name, when the request names one;
3. the ``Origin`` header (pages in a browser), then draining;
4. the credential, read from where the purpose takes it (``Source``), verified
   (``gateway.auth``, the pure JWT verifier), redeemed (``gateway.tickets``) or compared (the
   static API key), then the revocations (``gateway.revocation``);
5. its scope (a user's token or a service credential) and, for the admin stream, the admin
   claim; then the credential's own charge (``Charge.CREDENTIAL``: the server API's bucket);
6. the room: ``may_join``, or every room for what touches them all;
7. bans (``Bans.DOOR``; a room socket's ban is checked by the room's join itself);
8. capacity last (``Capacity``): nothing awaits after it, so the caller can count the connection
   before any other request gets in.

The door maps nothing to HTTP: it raises ``AuthError``, ``LimitExceeded``, ``AccessDenied`` or a
``RoomError`` (``Banned``, ``StoreError``, ``RoomStopped`` while draining): the typed errors of
``gateway.errors.REFUSALS``, which ``rejection_for`` turns into a status and a JSON body.

A new way in (as uploading and reading files did: ``gateway.files``) is one ``Purpose`` and one
``Policy`` row; its route reads the request into a ``Knock`` (``QuartKnock``) and calls ``admit``.
"""

from __future__ import annotations

import enum
import hmac
import math
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from quart.wrappers import BaseRequestWebsocket

from gateway import tickets
from gateway.auth import (
    ALL_ROOMS,
    API_SCOPE,
    AuthError,
    Claims,
    TokenVerifier,
    valid_room_name,
)
from gateway.limits import ClientAddresses, Limit, LimitExceeded, Limits
from gateway.revocation import Revocations
from rooms.engine import Engine
from rooms.errors import Banned, RoomStopped

API_KEY_USER = "api"
"""The user the static API key acts as (the default author of what it publishes)."""


class Purpose(enum.Enum):
    """What a request wants to do; ``POLICIES`` has each one's rules."""

    ROOM_SOCKET = "room socket"  # GET /rooms/<room>/ws (gateway.ws)
    TICKET = "ticket"  # POST /rooms/<room>/ticket (gateway.app, gateway.tickets)
    HISTORY = "history"  # GET /rooms/<room>/history (gateway.history)
    SEARCH = "search"  # GET /rooms/<room>/search (gateway.search)
    API = "api"  # /api/v1 on one room, or the list of rooms (gateway.api)
    API_USERS = "api users"  # /api/v1/users/<user>/...: every room's business (gateway.api)
    API_SEARCH_ALL = "api search all"  # GET /api/v1/search: every room's messages (gateway.search)
    ADMIN_STREAM = "admin stream"  # GET /admin/ws (gateway.admin)
    UPLOAD = "upload"  # POST /rooms/<room>/files (gateway.files)
    # GET /rooms/<room>/files/<id> with a bearer token (gateway.files); a signed URL is checked
    # by the route instead: it was handed only to someone who may read the room.
    FILE = "file"


class Source(enum.Enum):
    """Where a credential is read from."""

    TICKET = "ticket"  # ?ticket=: single-use, for the path's room (gateway.tickets)
    TOKEN = "token"  # ?token=: a JWT (a browser cannot set headers on a WebSocket)
    BEARER = "bearer"  # Authorization: Bearer <JWT>
    API_KEY = "api key"  # Authorization: Bearer <ROOMCHAT_API_KEY>, compared in constant time


class Scope(enum.Enum):
    """Which kind of credential a purpose takes; the other kind is refused (403)."""

    USER = "user"  # a user's token: a service credential (scope "api") is `api_credential`
    SERVICE = "service"  # scope "api" or the API key: a user's token is `api_scope_required`


class Charge(enum.Enum):
    """What a request costs before it is served."""

    NONE = "none"
    CLIENT = "client"  # its IP's handshake bucket and the process's connection rate
    CREDENTIAL = "credential"  # its credential's bucket (the server API's rate)


class Rooms(enum.Enum):
    """What a purpose says about rooms. A named room's name must be valid (else 404), and the
    credential must allow it (``Claims.may_join``, else 403 ``room_forbidden``)."""

    NONE = "none"  # names no room (the admin stream)
    ONE = "one"  # names exactly one room (its path's)
    ONE_OR_NONE = "one or none"  # one room, or none (the server API's list of rooms)
    ALL = "all"  # acts on every room: the credential must allow every room


class Bans(enum.Enum):
    """Who refuses a user banned from the room."""

    NONE = "none"
    DOOR = "door"  # the door reads the ban (one engine read)
    # The room, as it joins the session (``RoomActor.join``): a read here would be a second one
    # per handshake, and a ban stored between the two would still get in.
    ROOM = "room"


class Capacity(enum.Enum):
    """Whether the process's and the user's connection caps are checked (``gateway.limits``)."""

    NONE = "none"
    # What the upgrade would refuse (server full, the user's or the IP's connection cap), taking
    # nothing: a ticket's answer can say why where a page can read it.
    CHECK = "check"
    # As CHECK, and one of the user's joins per minute is taken: the caller must count the
    # connection (``Gateway.connection_opened``) before its next ``await``.
    TAKE = "take"


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """One purpose's rules. ``sources``: where its credential is read, first found wins;
    ``missing``: the detail when none is there; ``wrong_scope``: the detail when the credential
    is of the other ``Scope``."""

    sources: tuple[Source, ...]
    missing: str
    scope: Scope
    wrong_scope: str
    charge: Charge
    rooms: Rooms
    origin: bool = False  # check the Origin header (what a page in a browser sends)
    draining: bool = False  # refuse while the process drains
    admin: bool = False  # needs the admin claim
    bans: Bans = Bans.NONE
    capacity: Capacity = Capacity.NONE


_NO_SOCKET = "an API credential cannot open a socket"
_BEARER = "send Authorization: Bearer <token>"
_API = Policy(
    sources=(Source.API_KEY, Source.BEARER),
    missing="send Authorization: Bearer <API token or ROOMCHAT_API_KEY>",
    scope=Scope.SERVICE,
    wrong_scope="a user token cannot call the server API: use a token with \"scope\": \"api\" "
                "(roomchat token --api) or the API key",
    charge=Charge.CREDENTIAL, rooms=Rooms.ONE_OR_NONE)

POLICIES: Mapping[Purpose, Policy] = MappingProxyType({
    Purpose.ROOM_SOCKET: Policy(
        sources=(Source.TICKET, Source.TOKEN),
        missing="a token is required (?ticket=... or ?token=...)",
        scope=Scope.USER, wrong_scope=_NO_SOCKET, charge=Charge.CLIENT, rooms=Rooms.ONE,
        origin=True, draining=True, bans=Bans.ROOM, capacity=Capacity.TAKE),
    Purpose.TICKET: Policy(
        sources=(Source.BEARER,), missing=_BEARER,
        scope=Scope.USER, wrong_scope=_NO_SOCKET, charge=Charge.CLIENT, rooms=Rooms.ONE,
        origin=True, draining=True, bans=Bans.DOOR, capacity=Capacity.CHECK),
    Purpose.HISTORY: Policy(
        sources=(Source.BEARER,), missing=_BEARER,
        scope=Scope.USER, wrong_scope="use GET /api/v1/rooms/<room>/messages",
        charge=Charge.CLIENT, rooms=Rooms.ONE, bans=Bans.DOOR),
    # A member's search of the room: what a history page is let in by (the API's search is
    # Purpose.API).
    Purpose.SEARCH: Policy(
        sources=(Source.BEARER,), missing=_BEARER,
        scope=Scope.USER, wrong_scope="use GET /api/v1/rooms/<room>/search",
        charge=Charge.CLIENT, rooms=Rooms.ONE, bans=Bans.DOOR),
    Purpose.API: _API,
    Purpose.API_USERS: replace(_API, rooms=Rooms.ALL),
    Purpose.API_SEARCH_ALL: replace(_API, rooms=Rooms.ALL),
    # A member of the room, like a history page: an upload costs a ticket's worth of the
    # client's budget (the per-user upload rate and quota are the files route's), from a page
    # of an allowed origin, not while the process drains.
    Purpose.UPLOAD: Policy(
        sources=(Source.BEARER,), missing=_BEARER,
        scope=Scope.USER, wrong_scope="use POST /api/v1/rooms/<room>/files",
        charge=Charge.CLIENT, rooms=Rooms.ONE, origin=True, draining=True, bans=Bans.DOOR),
    Purpose.FILE: Policy(
        sources=(Source.BEARER,), missing=_BEARER + " or use the file's signed URL",
        scope=Scope.USER, wrong_scope="use GET /api/v1/rooms/<room>/files/<id>",
        charge=Charge.CLIENT, rooms=Rooms.ONE, bans=Bans.DOOR),
    Purpose.ADMIN_STREAM: Policy(
        sources=(Source.TOKEN,), missing="a token is required (?token=...)",
        scope=Scope.USER, wrong_scope=_NO_SOCKET, charge=Charge.CLIENT, rooms=Rooms.NONE,
        origin=True, draining=True, admin=True),
})


class Denial(enum.StrEnum):
    """Why the door refused, besides the credential itself (``AuthError``), a cap
    (``LimitExceeded``) or the room (``RoomError``). The value is the wire's ``error``."""

    BAD_ROOM = "bad_room"
    ORIGIN_FORBIDDEN = "origin_forbidden"
    API_CREDENTIAL = "api_credential"
    API_SCOPE_REQUIRED = "api_scope_required"
    ADMIN_REQUIRED = "admin_required"


class AccessDenied(Exception):
    """The door refused: ``reason`` says why, ``detail`` tells the client in a sentence."""

    def __init__(self, reason: Denial, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# -- what a request shows ------------------------------------------------------------------------

class Knock(Protocol):
    """What a request shows at the door, as sent (nothing judged yet). Header names are
    lower-case; ``param`` is the last non-empty value of a query parameter, or None."""

    @property
    def peer(self) -> str | None: ...

    @property
    def query_string(self) -> bytes: ...

    def header(self, name: str) -> str | None: ...

    def header_values(self, name: str) -> list[str]: ...

    def param(self, name: str) -> str | None: ...


class AsgiKnock:
    """A ``Knock`` over an ASGI scope (room sockets are served as plain ASGI: gateway.ws).

    It keeps the parsed query, token included: drop it once admitted."""

    __slots__ = ("_query", "_scope")

    def __init__(self, scope: MutableMapping[str, Any]) -> None:
        self._scope = scope
        self._query: dict[str, list[str]] | None = None

    @property
    def peer(self) -> str | None:
        client = self._scope.get("client")
        return str(client[0]) if client else None

    @property
    def query_string(self) -> bytes:
        return bytes(self._scope["query_string"])

    def header(self, name: str) -> str | None:
        key = name.encode()
        for header, value in self._scope["headers"]:
            if header == key:
                return bytes(value).decode("latin-1")
        return None

    def header_values(self, name: str) -> list[str]:
        key = name.encode()
        return [bytes(value).decode("latin-1") for header, value in self._scope["headers"]
                if header == key]

    def param(self, name: str) -> str | None:
        if self._query is None:  # parse_qs leaves out empty values
            self._query = parse_qs(self.query_string.decode("latin-1"))
        values = self._query.get(name)
        return values[-1] if values else None


class QuartKnock:
    """A ``Knock`` over Quart's ``request`` or ``websocket`` (every other route)."""

    __slots__ = ("_request",)

    def __init__(self, request: BaseRequestWebsocket) -> None:
        self._request = request

    @property
    def peer(self) -> str | None:
        return self._request.remote_addr

    @property
    def query_string(self) -> bytes:
        return self._request.query_string

    def header(self, name: str) -> str | None:
        return self._request.headers.get(name)

    def header_values(self, name: str) -> list[str]:
        return self._request.headers.getlist(name)

    def param(self, name: str) -> str | None:
        values = [value for value in self._request.args.getlist(name) if value]
        return values[-1] if values else None


def bearer(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header, else None."""
    scheme, _, credential = (authorization or "").partition(" ")
    credential = credential.strip()
    return credential if scheme.lower() == "bearer" and credential else None


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a request with this ``Origin`` header may be served by ``host``.

    No Origin: not a browser (Origin is a browser protection; tokens protect the rest). Same
    origin compares host[:port] only: behind a TLS proxy the scheme we see (ws) differs from the
    page's (https) while the host is the one the browser connected to.
    """
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in allowed:
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == str(host).lower()


# -- who got in ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Caller:
    """Whose credential it is. ``claims``: its verified claims (the static API key's are made
    up: user ``api``, every room, service scope, never expiring); ``key`` names its rate bucket
    (``jwt:<user>`` or ``api-key``)."""

    claims: Claims
    key: str

    @property
    def user(self) -> str:
        return self.claims.user

    def may_act_on(self, room: str) -> bool:
        """Whether the credential allows ``room`` (what ``admit`` checks for a named room)."""
        return self.claims.may_join(room)


API_KEY_CALLER = Caller(Claims(user=API_KEY_USER, name=API_KEY_USER,
                               rooms=frozenset({ALL_ROOMS}), expires_at=math.inf,
                               scope=API_SCOPE), "api-key")


@dataclass(frozen=True, slots=True)
class Admission:
    """A request let in: who (``caller``), from where (``ip``, the per-IP caps' key), into
    which room (``None``: none named)."""

    caller: Caller
    ip: str
    room: str | None

    @property
    def claims(self) -> Claims:
        return self.caller.claims


class Premises(Protocol):
    """What the door reads of the process it guards (``gateway.gateway.Gateway``)."""

    @property
    def draining(self) -> bool: ...

    @property
    def connections(self) -> int: ...

    @property
    def store(self) -> Engine: ...


class FrontDoor:
    """Admits requests by ``POLICIES`` (the module's docstring has the order of the checks)."""

    def __init__(self, premises: Premises, *, verifier: TokenVerifier,
                 revocations: Revocations, limits: Limits, addresses: ClientAddresses,
                 allowed_origins: tuple[str, ...], max_connections: int,
                 api_key: str | None, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        """``monotonic``: the clock of the rate buckets; ``wall``: Unix seconds (a ticket's
        token expiry). ``api_key``: ``Config.api_key``, checked there."""
        self._premises = premises
        self._verifier = verifier
        self._revocations = revocations
        self._limits = limits
        self._addresses = addresses
        self._allowed_origins = allowed_origins
        self._max_connections = max_connections
        self._api_key = api_key.encode() if api_key is not None else None
        self._monotonic = monotonic
        self._wall = wall

    async def admit(self, knock: Knock, purpose: Purpose, room: str | None = None) -> Admission:
        """Let ``knock`` in for ``purpose`` (into ``room``, when the purpose names one), or
        refuse it. Raises one of ``gateway.errors.REFUSALS`` (for the client), or
        ``ValueError`` when ``room`` does not fit the purpose (a bug of the caller).

        With ``Capacity.TAKE`` the caller must count the connection before its next ``await``:
        the caps were checked, not reserved.
        """
        policy = POLICIES[purpose]
        _check_room_given(purpose, policy.rooms, room)
        ip = self._addresses.client_ip(knock.peer, knock.header_values(self._addresses.header))
        if policy.charge is Charge.CLIENT:
            # First, so that it answers even a request that is otherwise bad. An upgrade that
            # redeems a ticket was charged with its ticket's request.
            query = knock.query_string if Source.TICKET in policy.sources else b""
            self._limits.handshake(ip, self._monotonic(), query)
        if room is not None and not valid_room_name(room):
            raise AccessDenied(Denial.BAD_ROOM, "room names are 1-64 of [A-Za-z0-9_-]")
        if policy.origin and not origin_allowed(
                knock.header("origin"), knock.header("host") or knock.header(":authority"),
                self._allowed_origins):
            raise AccessDenied(Denial.ORIGIN_FORBIDDEN, "this page's origin is not allowed")
        if policy.draining and self._premises.draining:
            # Before the credential: a reconnect storm against a draining process costs no
            # signature check, and a ticket is not spent on this refusal.
            raise RoomStopped("the server is draining")
        caller = await self._identify(knock, policy, room)
        claims = caller.claims
        service = claims.scope == API_SCOPE
        if policy.scope is Scope.USER and service:
            raise AccessDenied(Denial.API_CREDENTIAL, policy.wrong_scope)
        if policy.scope is Scope.SERVICE and not service:
            raise AccessDenied(Denial.API_SCOPE_REQUIRED, policy.wrong_scope)
        if policy.admin and not claims.admin:
            raise AccessDenied(Denial.ADMIN_REQUIRED, "this token has no admin claim")
        if policy.charge is Charge.CREDENTIAL:
            self._limits.api_call(caller.key, self._monotonic())
        noun = "token" if policy.scope is Scope.USER else "credential"
        if room is not None and not claims.may_join(room):
            raise AuthError("room_forbidden", f"the {noun} does not allow room {room}")
        if policy.rooms is Rooms.ALL and ALL_ROOMS not in claims.rooms:
            raise AuthError("room_forbidden", f"this needs an all-rooms {noun}")
        if policy.bans is Bans.DOOR:
            assert room is not None  # _check_room_given
            ban = await self._premises.store.banned(room, claims.user)
            if ban is not None:
                raise Banned(claims.user, ban.until, ban.reason)
        # Nothing below awaits (see Capacity.TAKE).
        if policy.capacity is not Capacity.NONE:
            if self._premises.connections >= self._max_connections:
                raise LimitExceeded(Limit.SERVER_CONNECTIONS,
                                    "too many connections; try again later")
            if policy.capacity is Capacity.TAKE:
                self._limits.admit(claims.user, ip, self._monotonic())
            else:
                self._limits.check(claims.user, ip)
        return Admission(caller, ip, room)

    async def _identify(self, knock: Knock, policy: Policy, room: str | None) -> Caller:
        """The caller whose credential ``knock`` shows, verified and not revoked."""
        for source in policy.sources:
            if source is Source.TICKET or source is Source.TOKEN:
                credential = knock.param(source.value)
            else:
                credential = bearer(knock.header("authorization"))
            if not credential:
                continue
            if source is Source.API_KEY:
                if self._api_key is not None and hmac.compare_digest(credential.encode(),
                                                                     self._api_key):
                    return API_KEY_CALLER  # a key, not a token: nothing to revoke
                continue  # not the key: perhaps a JWT (the next source reads it again)
            if source is Source.TICKET:
                assert room is not None  # a ticket is for the path's room
                claims = await tickets.redeem(self._premises.store, credential, room,
                                              self._wall())
            else:
                claims = self._verifier.verify(credential)
            self._revocations.check(claims)
            return Caller(claims, f"jwt:{claims.user}")
        raise AuthError("missing_token", policy.missing)


def _check_room_given(purpose: Purpose, rule: Rooms, room: str | None) -> None:
    if room is None and rule is Rooms.ONE:
        raise ValueError(f"{purpose.value}: a room is required")
    if room is not None and rule in (Rooms.NONE, Rooms.ALL):
        raise ValueError(f"{purpose.value}: names no room, got {room!r}")

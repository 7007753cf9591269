"""The front door (gateway.access) driven directly: each purpose against each refusal, on a real
Gateway over the embedded engine (SQLite in tmp_path), with a stepped clock for the rates.

Each refusal is mapped by ``gateway.errors.rejection_for`` to the status and ``error`` the
integration tests see over a real socket; "admitted" means the purpose does not check that.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from quart import Quart, request
from websockets.exceptions import InvalidStatus
from werkzeug.datastructures import Headers

from gateway.access import (
    API_KEY_USER,
    POLICIES,
    AccessDenied,
    Admission,
    AsgiKnock,
    Denial,
    FrontDoor,
    Knock,
    Purpose,
    QuartKnock,
    Source,
    bearer,
)
from gateway.app import create_app
from gateway.auth import AuthError, Claims
from gateway.errors import REFUSALS, rejection_for
from gateway.gateway import Gateway
from gateway.limits import Limit, LimitExceeded, Limits
from gateway.tickets import issue
from rooms.engine import Ban
from tests.apicall import API_KEY, api_token
from tests.support import SLOW, make_config, make_token, running_server

PEER = "192.0.2.7"
HOST = "chat.example:8000"
USER_PURPOSES = (Purpose.ROOM_SOCKET, Purpose.TICKET, Purpose.HISTORY, Purpose.ADMIN_STREAM,
                 Purpose.UPLOAD, Purpose.FILE, Purpose.SEARCH)
API_PURPOSES = (Purpose.API, Purpose.API_USERS, Purpose.API_SEARCH_ALL)
ALL_ROOMS_PURPOSES = (Purpose.API_USERS, Purpose.API_SEARCH_ALL)
ROOM_OF = {Purpose.ROOM_SOCKET: "lobby", Purpose.TICKET: "lobby", Purpose.HISTORY: "lobby",
           Purpose.API: "lobby", Purpose.API_USERS: None, Purpose.API_SEARCH_ALL: None,
           Purpose.ADMIN_STREAM: None,
           Purpose.UPLOAD: "lobby", Purpose.FILE: "lobby", Purpose.SEARCH: "lobby"}


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Door:
    """A front door over a started Gateway, with its own caps and a stepped clock."""

    gw: Gateway
    door: FrontDoor
    limits: Limits
    clock: Clock

    async def admit(self, purpose: Purpose, *, credential: str | None = None,
                    room: str | None = "", headers: dict[str, str] | None = None,
                    query: str = "") -> Admission:
        """``purpose``'s request presenting ``credential`` where that purpose reads it."""
        room = ROOM_OF[purpose] if room == "" else room
        return await self.door.admit(knock_for(purpose, credential, headers, query), purpose,
                                     room)

    async def answer(self, purpose: Purpose, **kw: Any) -> tuple[int, str] | str:
        """``(status, error)`` of the refusal, or ``"admitted"``."""
        try:
            await self.admit(purpose, **kw)
        except REFUSALS as exc:
            rejection = rejection_for(exc)
            return rejection.status, rejection.error
        return "admitted"


def asgi_knock(headers: dict[str, str] | None = None, query: str = "",
               peer: str | None = PEER) -> AsgiKnock:
    """A request as Hypercorn hands it to the ASGI app."""
    return AsgiKnock({"type": "websocket", "client": (peer, 50000) if peer else None,
                      "query_string": query.encode(),
                      "headers": [(k.lower().encode(), v.encode())
                                  for k, v in {"host": HOST, **(headers or {})}.items()]})


def knock_for(purpose: Purpose, credential: str | None, headers: dict[str, str] | None = None,
              query: str = "") -> AsgiKnock:
    """Where each purpose's client sends its credential: a socket in the query, the rest in the
    Authorization header."""
    headers = dict(headers or {})
    if credential is not None:
        if POLICIES[purpose].sources[-1] is Source.TOKEN:
            query = f"token={credential}" + (f"&{query}" if query else "")
        else:
            headers["authorization"] = f"Bearer {credential}"
    return asgi_knock(headers, query)


def valid(purpose: Purpose, **extra: Any) -> str:
    """A credential ``purpose`` admits: alice's token for ``lobby`` (an admin's for the admin
    stream), or a service credential of ``backend`` for every room."""
    if purpose in API_PURPOSES:
        return api_token("backend", **extra)
    if purpose is Purpose.ADMIN_STREAM:
        extra.setdefault("admin", True)
    return make_token("alice", extra.pop("rooms", ["lobby"]), **extra)


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[Gateway]:
    config = replace(make_config(tmp_path), api_key=API_KEY, max_connections=2,
                     max_connections_per_user=1, handshake_burst=20, handshake_rate=1.0,
                     api_burst=5, api_rate=1.0)
    gw = Gateway(config)
    await gw.start()
    try:
        yield gw
    finally:
        gw.draining = False
        await gw.stop()


@pytest.fixture
def door(started: Gateway) -> Door:
    clock = Clock()
    limits = Limits.from_config(started.config)
    config = started.config
    front = FrontDoor(started, verifier=started.verifier, revocations=started.revocations,
                      limits=limits, addresses=started.addresses,
                      allowed_origins=config.allowed_origins,
                      max_connections=config.max_connections, api_key=config.api_key,
                      monotonic=clock, wall=time.time)
    return Door(started, front, limits, clock)


# -- each purpose x each refusal -------------------------------------------------------------

Case = Callable[[Door, Purpose], Awaitable["tuple[int, str] | str"]]
CASES: dict[str, Case] = {}


def case(function: Case) -> Case:
    CASES[function.__name__] = function
    return function


@case
async def missing(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    return await d.answer(purpose)


@case
async def invalid(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    return await d.answer(purpose, credential="not.a.jwt")


@case
async def expired(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    return await d.answer(purpose, credential=valid(purpose, ttl=-60))


@case
async def revoked(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    now = int(time.time())
    credential = valid(purpose, iat=now - 5)
    d.gw.revocations.apply([("backend" if purpose in API_PURPOSES else "alice", now)])
    return await d.answer(purpose, credential=credential)


@case
async def other_scope(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    credential = (make_token("alice", admin=True) if purpose in API_PURPOSES
                  else api_token("alice", admin=True))
    return await d.answer(purpose, credential=credential)


@case
async def room_not_in_token(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    rooms = ["lobby"] if purpose in ALL_ROOMS_PURPOSES else ["other"]
    return await d.answer(purpose, credential=valid(purpose, rooms=rooms))


@case
async def bad_room_name(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    return await d.answer(purpose, credential=valid(purpose), room="bad.room")


@case
async def banned(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    user = "backend" if purpose in API_PURPOSES else "alice"
    await d.gw.store.ban("lobby", Ban(user, None, "spam"))
    return await d.answer(purpose, credential=valid(purpose))


@case
async def not_admin(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    return await d.answer(purpose, credential=valid(purpose, admin=False))


@case
async def foreign_origin(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    return await d.answer(purpose, credential=valid(purpose),
                          headers={"origin": "https://evil.example"})


@case
async def draining(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    d.gw.draining = True
    return await d.answer(purpose, credential=valid(purpose))


@case
async def server_full(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    for _ in range(d.gw.config.max_connections):
        d.gw.connection_opened()
    try:
        return await d.answer(purpose, credential=valid(purpose))
    finally:
        for _ in range(d.gw.config.max_connections):
            d.gw.connection_closed()


@case
async def user_connections(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    user = "backend" if purpose in API_PURPOSES else "alice"
    d.limits.opened(user, "198.51.100.1")  # its one connection, from elsewhere
    return await d.answer(purpose, credential=valid(purpose))


@case
async def handshakes(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    for _ in range(d.gw.config.handshake_burst):
        d.limits.handshakes.take(PEER, d.clock.now)
    return await d.answer(purpose, credential=valid(purpose))


@case
async def api_rate(d: Door, purpose: Purpose) -> tuple[int, str] | str:
    for _ in range(d.gw.config.api_burst):
        d.limits.api_calls.take("jwt:backend", d.clock.now)
    return await d.answer(purpose, credential=valid(purpose))


ADMITTED = "admitted"
USER_ROOMS = (Purpose.ROOM_SOCKET, Purpose.TICKET, Purpose.HISTORY, Purpose.UPLOAD, Purpose.FILE,
              Purpose.SEARCH)

# What each purpose answers to each case: the spec, in one table.
EXPECTED: dict[str, dict[Purpose, tuple[int, str] | str]] = {
    "missing": {p: (401, "missing_token") for p in Purpose},
    "invalid": {p: (401, "invalid_token") for p in Purpose},
    "expired": {p: (401, "token_expired") for p in Purpose},
    "revoked": {p: (401, "token_revoked") for p in Purpose},
    "other_scope": {**{p: (403, "api_credential") for p in USER_PURPOSES},
                    **{p: (403, "api_scope_required") for p in API_PURPOSES}},
    "room_not_in_token": {p: (403, "room_forbidden") for p in (*USER_ROOMS, *API_PURPOSES)},
    "bad_room_name": {p: (404, "bad_room") for p in (*USER_ROOMS, Purpose.API)},
    # A socket's ban is the room's to refuse (at its join); the server API acts on rooms for
    # the application, bans included.
    "banned": {Purpose.TICKET: (403, "banned"), Purpose.HISTORY: (403, "banned"),
               Purpose.UPLOAD: (403, "banned"), Purpose.FILE: (403, "banned"),
               Purpose.SEARCH: (403, "banned"), Purpose.ROOM_SOCKET: ADMITTED,
               Purpose.API: ADMITTED},
    "not_admin": {**{p: ADMITTED for p in Purpose},
                  Purpose.ADMIN_STREAM: (403, "admin_required")},
    "foreign_origin": {**{p: ADMITTED for p in Purpose},
                       **{p: (403, "origin_forbidden") for p in
                          (Purpose.ROOM_SOCKET, Purpose.TICKET, Purpose.ADMIN_STREAM,
                           Purpose.UPLOAD)}},
    "draining": {**{p: ADMITTED for p in Purpose},
                 **{p: (503, "draining") for p in
                    (Purpose.ROOM_SOCKET, Purpose.TICKET, Purpose.ADMIN_STREAM,
                     Purpose.UPLOAD)}},
    "server_full": {**{p: ADMITTED for p in Purpose},
                    Purpose.ROOM_SOCKET: (503, "server_full"),
                    Purpose.TICKET: (503, "server_full")},
    "user_connections": {**{p: ADMITTED for p in Purpose},
                         Purpose.ROOM_SOCKET: (429, "too_many_user_connections"),
                         Purpose.TICKET: (429, "too_many_user_connections")},
    "handshakes": {**{p: (429, "too_many_handshakes") for p in USER_PURPOSES},
                   **{p: ADMITTED for p in API_PURPOSES}},
    "api_rate": {**{p: ADMITTED for p in USER_PURPOSES},
                 **{p: (429, "rate_limited") for p in API_PURPOSES}},
}


@pytest.mark.parametrize(("name", "purpose"), [(name, purpose) for name in EXPECTED
                                                for purpose in EXPECTED[name]],
                         ids=lambda value: value if isinstance(value, str) else value.name)
async def test_each_purpose_answers_each_case(door: Door, name: str, purpose: Purpose) -> None:
    assert await CASES[name](door, purpose) == EXPECTED[name][purpose]


def test_the_table_covers_every_case_and_purpose() -> None:
    assert set(EXPECTED) == set(CASES)
    assert set(POLICIES) == set(Purpose)
    # Every credential refusal, for every purpose.
    for name in ("missing", "invalid", "expired", "revoked", "other_scope"):
        assert set(EXPECTED[name]) == set(Purpose), name


async def test_each_purpose_admits_its_valid_credential(door: Door) -> None:
    for purpose in Purpose:
        admission = await door.admit(purpose, credential=valid(purpose))
        assert (admission.ip, admission.room) == (PEER, ROOM_OF[purpose])
        assert admission.caller.user == ("backend" if purpose in API_PURPOSES else "alice")


# -- where each purpose reads its credential ---------------------------------------------------

async def test_each_purpose_reads_its_credential_only_where_it_takes_it(door: Door) -> None:
    token = valid(Purpose.TICKET)
    header = {"authorization": f"Bearer {token}"}
    # A socket reads the query, never the header; a ticket request the header, never the query.
    assert await door.answer(Purpose.ROOM_SOCKET, headers=header) == (401, "missing_token")
    assert await door.answer(Purpose.TICKET, query=f"token={token}") == (401, "missing_token")
    assert await door.answer(Purpose.TICKET, headers={"authorization": f"Basic {token}"}) == (
        401, "missing_token")
    assert await door.answer(Purpose.TICKET, headers=header) == ADMITTED
    # The last non-empty value of a parameter counts (as parse_qs reads it).
    assert await door.answer(Purpose.ROOM_SOCKET, query=f"token=junk&token={token}&token=") == (
        ADMITTED)


async def test_the_missing_credential_says_where_to_send_it(door: Door) -> None:
    details = {}
    for purpose in Purpose:
        with pytest.raises(AuthError) as refused:
            await door.admit(purpose)
        details[purpose] = refused.value.detail
    assert "?ticket=" in details[Purpose.ROOM_SOCKET]
    assert "?token=" in details[Purpose.ADMIN_STREAM]
    assert "Authorization: Bearer" in details[Purpose.TICKET]
    assert "ROOMCHAT_API_KEY" in details[Purpose.API]


async def test_a_ticket_admits_one_socket_to_its_room_before_any_token(door: Door) -> None:
    admitted = await door.admit(Purpose.TICKET, credential=valid(Purpose.TICKET))
    store = door.gw.store
    ticket = await issue(store, admitted.claims, "lobby", 30)
    # The ticket is read first: the junk token beside it is never looked at.
    socket = await door.admit(Purpose.ROOM_SOCKET, query=f"ticket={ticket}&token=junk")
    assert (socket.claims.user, socket.claims.rooms) == ("alice", frozenset({"lobby"}))
    assert await door.answer(Purpose.ROOM_SOCKET, query=f"ticket={ticket}") == (
        401, "invalid_ticket")  # spent
    other = await issue(store, admitted.claims, "lobby", 30)
    assert await door.answer(Purpose.ROOM_SOCKET, room="other", query=f"ticket={other}") == (
        403, "room_forbidden")
    assert await door.answer(Purpose.ROOM_SOCKET, query="ticket=made-up-ticket-value") == (
        401, "invalid_ticket")


async def test_a_ticket_is_revoked_with_its_user_and_not_spent_while_draining(door: Door) -> None:
    now = int(time.time())
    claims = (await door.admit(Purpose.TICKET,
                               credential=valid(Purpose.TICKET, iat=now - 5))).claims
    ticket = await issue(door.gw.store, claims, "lobby", 30)
    door.gw.draining = True
    assert await door.answer(Purpose.ROOM_SOCKET, query=f"ticket={ticket}") == (503, "draining")
    door.gw.draining = False
    door.gw.revocations.apply([("alice", now)])
    assert await door.answer(Purpose.ROOM_SOCKET, query=f"ticket={ticket}") == (
        401, "token_revoked")  # still unspent after the drain's refusal: revoked now


async def test_an_upgrade_with_a_ticket_is_not_charged_the_connection_rate_again(
        door: Door) -> None:
    claims = (await door.admit(Purpose.TICKET, credential=valid(Purpose.TICKET))).claims
    ticket = await issue(door.gw.store, claims, "lobby", 30)
    rate = door.limits.connection_rate.bucket
    while rate.take(door.clock.now) == 0.0:
        pass  # the process takes no more new connections for now
    assert await door.answer(Purpose.ROOM_SOCKET, credential=valid(Purpose.ROOM_SOCKET)) == (
        503, "busy")
    assert await door.answer(Purpose.ROOM_SOCKET, query=f"ticket={ticket}") == ADMITTED
    # A history page naming a ticket is still charged: only a socket redeems one.
    assert await door.answer(Purpose.HISTORY, credential=valid(Purpose.HISTORY),
                             query="ticket=whatever-it-is") == (503, "busy")


async def test_a_socket_takes_a_join_and_a_ticket_request_takes_nothing(door: Door) -> None:
    await door.admit(Purpose.TICKET, credential=valid(Purpose.TICKET))
    assert len(door.limits.joins) == 0
    assert door.limits.user_connections.count("alice") == 0  # counted by the caller
    await door.admit(Purpose.ROOM_SOCKET, credential=valid(Purpose.ROOM_SOCKET))
    assert len(door.limits.joins) == 1


# -- the server API's credentials --------------------------------------------------------------

async def test_the_api_key_is_a_service_credential_for_every_room(door: Door) -> None:
    for purpose in API_PURPOSES:
        admission = await door.admit(purpose, credential=API_KEY)
        assert (admission.caller.user, admission.caller.key) == (API_KEY_USER, "api-key")
    assert (await door.admit(Purpose.API, credential=API_KEY, room="any-room")).room == "any-room"
    assert await door.answer(Purpose.API, credential=API_KEY[:-1] + "x") == (401, "invalid_token")
    # Nowhere else: it is not a token.
    for purpose in USER_PURPOSES:
        assert await door.answer(purpose, credential=API_KEY) == (401, "invalid_token")


async def test_the_api_rate_is_per_credential_and_refills_with_the_clock(door: Door) -> None:
    token = api_token("backend")
    for _ in range(door.gw.config.api_burst):
        await door.admit(Purpose.API, credential=token)
    with pytest.raises(LimitExceeded) as refused:
        await door.admit(Purpose.API, credential=token)
    assert (refused.value.limit, refused.value.retry_after) == (Limit.API_CALLS, 1.0)
    assert rejection_for(refused.value).headers() == [(b"retry-after", b"1")]
    assert await door.answer(Purpose.API, credential=API_KEY) == ADMITTED  # its own bucket
    door.clock.now += 1.0
    assert await door.answer(Purpose.API, credential=token) == ADMITTED
    # A request the door refuses before the credential is known costs nothing.
    buckets = len(door.limits.api_calls)
    assert await door.answer(Purpose.API, credential="not.a.jwt") == (401, "invalid_token")
    assert len(door.limits.api_calls) == buckets


async def test_a_room_limited_api_credential_lists_only_its_rooms(door: Door) -> None:
    admission = await door.admit(Purpose.API, credential=api_token("backend", ["lobby"]),
                                 room=None)
    assert admission.room is None
    assert [r for r in ("lobby", "other") if admission.caller.may_act_on(r)] == ["lobby"]


# -- the door's own refusals, as typed errors --------------------------------------------------

async def test_the_door_raises_typed_errors_never_http(door: Door) -> None:
    with pytest.raises(AccessDenied) as denied:
        await door.admit(Purpose.ADMIN_STREAM, credential=valid(Purpose.ADMIN_STREAM,
                                                                admin=False))
    assert (denied.value.reason, rejection_for(denied.value).status) == (
        Denial.ADMIN_REQUIRED, 403)
    with pytest.raises(AccessDenied) as denied:
        await door.admit(Purpose.TICKET, credential=valid(Purpose.TICKET), room="a b")
    assert (denied.value.reason, rejection_for(denied.value).status) == (Denial.BAD_ROOM, 404)


async def test_a_room_that_does_not_fit_the_purpose_is_a_bug_of_the_caller(door: Door) -> None:
    with pytest.raises(ValueError, match="a room is required"):
        await door.door.admit(asgi_knock(), Purpose.ROOM_SOCKET, None)
    for purpose in (Purpose.ADMIN_STREAM, *ALL_ROOMS_PURPOSES):
        with pytest.raises(ValueError, match="names no room"):
            await door.door.admit(asgi_knock(), purpose, "lobby")


async def test_same_origin_and_listed_origins_pass(started: Gateway, door: Door) -> None:
    token = valid(Purpose.ROOM_SOCKET)
    assert await door.answer(Purpose.ROOM_SOCKET, credential=token,
                             headers={"origin": f"https://{HOST}/"}) == ADMITTED
    listed = FrontDoor(started, verifier=started.verifier, revocations=started.revocations,
                       limits=door.limits, addresses=started.addresses,
                       allowed_origins=("https://app.example",), max_connections=10,
                       api_key=None, monotonic=door.clock)
    knock = knock_for(Purpose.ROOM_SOCKET, token, {"origin": "https://app.example"})
    assert (await listed.admit(knock, Purpose.ROOM_SOCKET, "lobby")).claims.user == "alice"


# -- settings the door refuses at start --------------------------------------------------------

def test_a_short_api_key_or_a_bad_api_rate_is_refused_at_startup(tmp_path: Path) -> None:
    """Found building the front door: ``ROOMCHAT_API_RATE=0`` started, then answered the first
    API request with a 500 (the per-credential bucket was made on first use). It is refused at
    start."""
    for bad, setting in (({"api_key": "short"}, "ROOMCHAT_API_KEY"),
                         ({"api_rate": 0.0}, "ROOMCHAT_API_RATE"),
                         ({"api_burst": 0}, "ROOMCHAT_API_BURST")):
        with pytest.raises(ValueError, match=setting):
            create_app(replace(make_config(tmp_path), **bad))


# -- reading a request -------------------------------------------------------------------------

async def test_the_asgi_and_quart_readers_read_a_request_alike() -> None:
    headers = {"authorization": "Bearer  abc ", "x-forwarded-for": "203.0.113.9",
               "origin": "https://o.example"}
    query = "token=first&token=&ticket=t1&after=5&token=last&empty="
    app = Quart(__name__)
    raw = [*headers.items(), ("X-Forwarded-For", "198.51.100.2")]
    async with app.test_request_context(f"/rooms/lobby/ticket?{query}", method="POST",
                                        headers=Headers(raw)):
        quart_knock: Knock = QuartKnock(request)
        readings = [_reading(quart_knock)]
    asgi: Knock = AsgiKnock({"client": ("127.0.0.1", 1), "query_string": query.encode(),
                             "headers": [(k.lower().encode(), v.encode()) for k, v in raw]})
    readings.append(_reading(asgi))
    assert readings[0] == readings[1]
    assert readings[1] == (["203.0.113.9", "198.51.100.2"], "https://o.example", "last", "t1",
                           None, "abc")


def _reading(knock: Knock) -> tuple[Any, ...]:
    return (knock.header_values("x-forwarded-for"), knock.header("origin"), knock.param("token"),
            knock.param("ticket"), knock.param("empty"), bearer(knock.header("authorization")))


def test_bearer_takes_only_a_bearer_credential() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer   abc  ") == "abc"
    for refused in (None, "", "Bearer", "Bearer    ", "Basic abc", "abc"):
        assert bearer(refused) is None, refused


def test_the_api_key_caller_never_expires_and_is_not_a_user_token() -> None:
    from gateway.access import API_KEY_CALLER

    claims: Claims = API_KEY_CALLER.claims
    assert claims.scope == "api" and claims.expires_at == float("inf")
    assert claims.may_join("any-room") and not claims.admin


# -- the admin stream, on a real server --------------------------------------------------------

async def _admin_refusal(port: int, token: str) -> tuple[int, str] | str:
    url = f"ws://127.0.0.1:{port}/admin/ws?token={token}"
    try:
        async with websockets.connect(url, open_timeout=5 * SLOW) as ws:
            assert '"hello"' in str(await ws.recv())
            return ADMITTED
    except InvalidStatus as refused:
        body = orjson.loads(refused.response.body or b"{}")
        return refused.response.status_code, str(body.get("error"))


async def test_the_admin_stream_refuses_what_every_door_refuses(tmp_path: Path) -> None:
    """Found building the front door: the admin socket checked the origin, the signature and
    the admin claim only. A revoked admin token, an API credential with an admin claim and a
    server that was draining were all served, and a flood of upgrades was never charged to the
    client's handshake bucket. Its policy row now says what it checks, like every other way
    in."""
    config = replace(make_config(tmp_path), handshake_burst=6, handshake_rate=0.01)
    async with running_server(config) as srv:
        now = int(time.time())
        old = make_token("root", admin=True, iat=now - 5)
        assert await _admin_refusal(srv.port, old) == ADMITTED
        srv.gateway.revocations.apply([("root", now)])
        assert await _admin_refusal(srv.port, old) == (401, "token_revoked")
        assert await _admin_refusal(srv.port, api_token("svc", admin=True)) == (
            403, "api_credential")
        srv.gateway.draining = True
        assert await _admin_refusal(srv.port, make_token("ops", admin=True)) == (
            503, "draining")
        srv.gateway.draining = False
        assert await _admin_refusal(srv.port, "junk") == (401, "invalid_token")  # the 5th
        assert await _admin_refusal(srv.port, make_token("ops", admin=True)) == ADMITTED
        assert await _admin_refusal(srv.port, make_token("ops", admin=True)) == (
            429, "too_many_handshakes")


# -- the cache of verified tokens (gateway.auth.TokenVerifier) behind the door ----------------

async def test_a_cached_token_is_still_checked_for_revocation_room_expiry_and_bans(
        door: Door) -> None:
    """Each purpose's credential is verified once and then answered from the cache (issue 22,
    item 7); everything the door checks besides the signature and the registered claims is
    still checked on every use: a revocation recorded after the token was cached, another room
    than the token's, a ban, and the token's expiry."""
    verifier = door.gw.verifier
    assert door.gw.config.jwt_cache_size > 0  # the default: the cache is on
    now = int(time.time())
    tokens = {purpose: valid(purpose, iat=now - 5, rooms=["lobby"]) for purpose in USER_ROOMS}
    for purpose, token in tokens.items():
        assert await door.answer(purpose, credential=token) == ADMITTED
    cached = verifier.cached
    assert cached == len(set(tokens.values()))
    # Another room than the token's: refused though the token is cached.
    door.clock.now += 60  # the IP's handshake bucket (burst 20) refills between the rounds
    for purpose, token in tokens.items():
        assert await door.answer(purpose, credential=token, room="other") == (
            403, "room_forbidden")
    # A ban (the door's purposes; a socket's ban is its room's join: test_ws).
    await door.gw.store.ban("lobby", Ban("alice", None, "spam"))
    door.clock.now += 60
    for purpose in (Purpose.TICKET, Purpose.HISTORY, Purpose.UPLOAD, Purpose.FILE,
                    Purpose.SEARCH):
        assert await door.answer(purpose, credential=tokens[purpose]) == (403, "banned")
    await door.gw.store.unban("lobby", "alice")
    # A revocation recorded after the tokens were cached.
    door.gw.revocations.apply([("alice", now)])
    door.clock.now += 60
    for purpose, token in tokens.items():
        assert await door.answer(purpose, credential=token) == (401, "token_revoked")
    assert verifier.cached == cached  # every answer above came from the cache


async def test_a_cached_token_is_refused_once_it_expires(door: Door) -> None:
    """A token verified (and cached) while valid is refused as expired once its ``exp`` (plus
    the leeway) is past, without asking PyJWT again."""
    verifier = door.gw.verifier
    token = valid(Purpose.ROOM_SOCKET, ttl=60)
    assert await door.answer(Purpose.ROOM_SOCKET, credential=token) == ADMITTED
    assert verifier.cached == 1
    wall = time.time() + 60 + door.gw.config.jwt_leeway + 1
    verifier._wall = lambda: wall
    assert await door.answer(Purpose.ROOM_SOCKET, credential=token) == (401, "token_expired")
    assert verifier.cached == 0

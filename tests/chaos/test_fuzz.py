"""Scenario 5: property-based fuzzing (hypothesis) of client frames and token claims.

Pure level: ``rooms.protocol.parse_client_frame`` and ``gateway.auth.TokenVerifier`` (tokens we
sign) never raise, give every input its documented answer (docs/protocol.md), and whatever they
accept can be serialised onto the wire. Real server: hypothesis-generated frames and tokens over
real sockets to a ``roomchat serve``; each gets its documented answer (an ``error`` with the
documented code, an ``ack``, nothing for a ``pong`` or a ``read``, close 1003/1007/1008/1009,
HTTP 401), a bystander in the same room keeps chatting with a gapless seq list, and the server
logs no traceback. The frames include every kind issue 21 added (``edit``, ``delete``,
``react``, ``read``, a message's ``reply_to`` and ``mentions``); what the log answers to a
well-formed change (an ``ack``, or ``not_found``, ``forbidden``, ``already_deleted``,
``too_many_reactions``) depends on the room's state, so any of those is its documented
answer."""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Iterator
from typing import Any

import emoji
import jwt
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from gateway.auth import AuthError, TokenVerifier, valid_room_name
from rooms import protocol
from rooms.protocol import (
    DeleteMessage,
    EditMessage,
    FrameError,
    MarkRead,
    Pong,
    React,
    SendMessage,
)
from tests.chaos.harness import ENV, pick, record
from tests.support import SECRET, SLOW, Process, make_token, server_process

MAX_TEXT, MAX_ID, MAX_NAME, MAX_MENTIONS, MAX_SEQ = 2000, 64, 64, 20, 2**53
CHANGE_CODES = frozenset({"not_found", "forbidden", "already_deleted", "too_many_reactions"})
"""What the log may answer a well-formed change (or reply) instead of an ack."""
EXAMPLES = int(pick(150, 2000))
WIRE_EXAMPLES = int(pick(100, 1000))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WIRE_SETTINGS = settings(SETTINGS, max_examples=WIRE_EXAMPLES,
                         suppress_health_check=[*SETTINGS.suppress_health_check,
                                                HealthCheck.function_scoped_fixture])

# -- strategies -------------------------------------------------------------------------------

EDGE_CHARS = ["\ud800", "\udfff", "\x00", "\u202e", "\u2066", "\u200f", "\ufeff", "\u2028",
              "\U0001f600", "\U0010ffff", "\x1b", "\x7f", "\x85", " ", "\t", "\n", "é", "e\u0301"]
edge_text = st.one_of(
    st.text(),
    st.lists(st.sampled_from(EDGE_CHARS), max_size=20).map("".join),
    # 4-byte characters (and others) exactly at, just under and just over the length limits.
    st.builds(lambda c, n: c * n, st.sampled_from(["\U0001f600", "a", "\u202e", "\x00"]),
              st.sampled_from([1, MAX_ID - 1, MAX_ID, MAX_ID + 1, MAX_TEXT - 1, MAX_TEXT,
                               MAX_TEXT + 1])),
    st.builds(lambda pad, s: pad + s + pad, st.sampled_from([" ", "\u3000", "\n\t"]),
              st.text(max_size=5)),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63),
                    st.floats(), edge_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def deep(n: int) -> str:
    return "[" * n + "]" * n


seqs = st.one_of(st.integers(min_value=-2, max_value=12), st.sampled_from([MAX_SEQ, MAX_SEQ + 1]),
                 json_values)
EMOJI = ["\U0001f44d", "\U0001f44d\U0001f3fd", "\u2764\ufe0f", "\u2764", "\U0001f1eb\U0001f1f7",
         "\U0001f468\u200d\U0001f469\u200d\U0001f467", "1\ufe0f\u20e3",
         "\U0001f44d\U0001f44d", ":+1:", "\u200d", "a"]  # the last four are not one emoji
emojis = st.one_of(st.sampled_from(EMOJI), edge_text, json_values)
users = st.one_of(st.sampled_from(["bystander", "fuzzer", "nobody", "u" * 64, "u" * 65]),
                  edge_text, json_values)
message_objects = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "pong", "Message", "", "ping", "edit", "delete",
                              "react", "read"])},
    optional={"text": st.one_of(edge_text, json_values), "id": st.one_of(edge_text, json_values),
              "extra": json_values, "seq": seqs, "emoji": emojis,
              "on": st.one_of(st.booleans(), json_values),
              "reply_to": st.one_of(st.none(), seqs),
              "mentions": st.one_of(st.none(), st.lists(users, max_size=22), json_values)})


@st.composite
def frames(draw: st.DrawFn) -> str:
    """A client text frame: JSON written several ways, or not JSON at all."""
    kind = draw(st.sampled_from(["object", "object", "object", "value", "raw", "deep", "plain",
                                 "change"]))
    if kind == "change":
        return draw(change_frames())
    if kind == "plain":  # a well-formed message, maybe with odd text or id
        return json.dumps({"type": "message", "text": draw(st.one_of(st.text(), edge_text)),
                           "id": draw(st.one_of(st.none(), st.text(max_size=70)))})
    if kind == "raw":
        return draw(edge_text)
    if kind == "deep":
        return deep(draw(st.sampled_from([1, 100, 1023, 1024, 1025, 5000])))
    value: Any = draw(message_objects if kind == "object" else json_values)
    try:  # stdlib json: writes NaN/Infinity and escapes lone surrogates ("\ud800")
        return json.dumps(value, ensure_ascii=draw(st.booleans()))
    except (ValueError, TypeError, RecursionError):
        return str(value)


@st.composite
def change_frames(draw: st.DrawFn) -> str:
    """A frame of one of the kinds issue 21 added, mostly well formed: ``edit``, ``delete``,
    ``react``, ``read``, a ``message`` answering one or mentioning people; seqs mostly of
    entries the fuzzed room holds (its bystander's and the fuzzer's messages, and changes)."""
    kind = draw(st.sampled_from(["edit", "delete", "react", "react", "read", "reply"]))
    seq = draw(st.one_of(st.integers(min_value=1, max_value=30), seqs))
    obj: dict[str, Any] = {"type": "message" if kind == "reply" else kind, "seq": seq}
    if draw(st.booleans()):
        obj["id"] = draw(st.one_of(st.text(min_size=1, max_size=8), edge_text))
    if kind in ("edit", "reply"):
        obj["text"] = draw(st.one_of(st.text(min_size=1, max_size=20), edge_text))
    if kind == "react":
        obj["emoji"] = draw(st.one_of(st.sampled_from(EMOJI), emojis))
        obj["on"] = draw(st.one_of(st.booleans(), json_values))
    if kind == "reply":
        obj["reply_to"] = obj.pop("seq")
        if draw(st.booleans()):
            obj["mentions"] = draw(st.lists(users, max_size=3))
    try:
        return json.dumps(obj, ensure_ascii=draw(st.booleans()))
    except (ValueError, TypeError):
        return str(obj)


def documented(data: str) -> str:
    """What docs/protocol.md says the server answers to ``data``: ``pong`` and ``read``
    (nothing), ``message`` (stored and acked), ``change`` (an ack or one of
    ``CHANGE_CODES``: an edit, delete, reaction, or a message with ``reply_to``) or an error
    code."""
    try:
        obj = orjson.loads(data)  # the strict JSON the server speaks (no NaN, no lone surrogates)
    except orjson.JSONDecodeError:
        return "invalid_json"
    if not isinstance(obj, dict):
        return "invalid_json"
    kind = obj.get("type")
    if kind == "pong":
        return "pong"
    if kind == "read":
        return "read" if is_seq(obj.get("seq")) else "invalid_message"
    if kind not in ("message", "edit", "delete", "react"):
        return "invalid_message"
    cid = obj.get("id")
    if cid is not None and not (isinstance(cid, str) and 1 <= len(cid) <= MAX_ID):
        return "invalid_message"
    if kind != "message" and not is_seq(obj.get("seq")):
        return "invalid_message"
    if kind == "delete":
        return "change"
    if kind == "react":
        glyph = obj.get("emoji")
        if not (isinstance(glyph, str) and 1 <= len(glyph) <= 32 and emoji.is_emoji(glyph)):
            return "invalid_message"
        return "change" if isinstance(obj.get("on"), bool) else "invalid_message"
    text = obj.get("text")
    if not isinstance(text, str):
        return "invalid_message"
    if not text.strip():
        return "empty_text"
    if len(text.strip()) > MAX_TEXT:
        return "text_too_long"
    if "\0" in text:  # no engine can keep it: PostgreSQL's text refuses it
        return "invalid_message"
    if kind == "edit":
        return "change"
    reply_to, mentions = obj.get("reply_to"), obj.get("mentions")
    if reply_to is not None and not is_seq(reply_to):
        return "invalid_message"
    if mentions is not None and not (
            isinstance(mentions, list) and len(mentions) <= MAX_MENTIONS and all(
                isinstance(u, str) and 1 <= len(u) <= MAX_NAME and safe(u) for u in mentions)):
        return "invalid_message"
    return "message" if reply_to is None else "change"


def is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SEQ


# -- pure: frames -----------------------------------------------------------------------------

@SETTINGS
@given(frames())
def test_every_frame_gets_its_documented_answer(data: str) -> None:
    parsed = protocol.parse_client_frame(data, max_text_chars=MAX_TEXT, max_id_chars=MAX_ID,
                                         max_mentions=MAX_MENTIONS)
    want = documented(data)
    if isinstance(parsed, Pong):
        assert want == "pong"
    elif isinstance(parsed, MarkRead):
        assert want == "read" and 1 <= parsed.seq <= MAX_SEQ
        assert "\n" not in protocol.read(parsed.seq)
    elif isinstance(parsed, SendMessage):
        assert want == ("message" if parsed.reply_to is None else "change")
        assert 1 <= len(parsed.text) <= MAX_TEXT and parsed.text == parsed.text.strip()
        assert len(set(parsed.mentions)) == len(parsed.mentions) <= MAX_MENTIONS
        # What is accepted can be stored and broadcast: it serialises, on one line.
        line = protocol.dumps({"type": "message", "seq": 1, "id": parsed.id,
                               "text": parsed.text, "mentions": list(parsed.mentions)})
        assert "\n" not in line
        protocol.ack(parsed.id, 1)
    elif isinstance(parsed, EditMessage | DeleteMessage | React):
        assert want == "change"
        assert 1 <= parsed.seq <= MAX_SEQ
        line = protocol.dumps({"type": "change", "seq": 2, "target": parsed.seq,
                               "id": parsed.id, **({"text": parsed.text}
                                                   if isinstance(parsed, EditMessage) else {}),
                               **({"emoji": parsed.emoji, "on": parsed.on}
                                  if isinstance(parsed, React) else {})})
        assert "\n" not in line
    else:
        assert isinstance(parsed, FrameError)
        assert parsed.code.value == want, (parsed, want)
        assert "\n" not in protocol.error(parsed.code, parsed.message, client_id=parsed.id)


# -- pure: token claims -----------------------------------------------------------------------

def verifier() -> TokenVerifier:
    return TokenVerifier("HS256", SECRET, audience="roomchat", issuer="roomchat", leeway=10)


def safe(text: str) -> bool:
    return not any(unicodedata.category(c) in ("Cs", "Cc") for c in text)


def claims_documented(payload: dict[str, Any]) -> bool:
    """Whether the documented token rules (docs/integration.md, "The claims") accept these
    identity claims (exp/iat valid), as the server sees them: after the token's JSON round trip
    (an escaped surrogate pair becomes one character)."""
    payload = json.loads(json.dumps(payload))
    sub = payload["sub"]
    name = payload.get("name", sub)
    rooms = payload.get("rooms")
    return (isinstance(sub, str) and 1 <= len(sub) <= MAX_NAME and safe(sub)
            and isinstance(name, str) and 1 <= len(name.strip()) <= MAX_NAME and safe(name)
            and isinstance(rooms, list)
            and all(isinstance(r, str) and (r == "*" or valid_room_name(r)) for r in rooms)
            and isinstance(payload.get("admin", False), bool))


room_lists = st.one_of(st.just(["*"]), st.lists(st.one_of(
    st.sampled_from(["lobby", "*", "a" * 64, "a" * 65, "", "lob by", "l\u00f6bby"]), edge_text),
    max_size=3), json_values)
identity = st.fixed_dictionaries(
    {"sub": st.one_of(edge_text, json_values), "rooms": room_lists},
    optional={"name": st.one_of(edge_text, json_values), "admin": json_values})
times = st.one_of(st.integers(), st.floats(), st.integers(min_value=2**63), json_values)


def sign(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, SECRET, algorithm="HS256")


def base(now: int) -> dict[str, Any]:
    return {"aud": "roomchat", "iss": "roomchat", "iat": now, "exp": now + 3600}


@SETTINGS
@given(identity)
def test_every_claim_set_gets_its_documented_answer(claims: dict[str, Any]) -> None:
    payload = {**base(int(time.time())), **claims}
    try:
        accepted = verifier().verify(sign(payload))
    except AuthError as exc:
        assert exc.reason == "invalid_token"
        assert not claims_documented(payload), (payload, exc.detail)
        return
    assert claims_documented(payload), payload
    # Accepted claims can go on the wire (welcome, presence): bug 3 of issue 13.
    member = {"user": accepted.user, "name": accepted.name}
    protocol.welcome("lobby", accepted.user, accepted.name, 0, [member], recovered=False,
                     max_files=10)
    protocol.presence("join", accepted.user, accepted.name, 0)


@SETTINGS
@given(identity, st.dictionaries(st.sampled_from(["exp", "iat", "aud", "iss"]), times,
                                 max_size=3))
def test_any_registered_claims_are_refused_cleanly_or_accepted(
        claims: dict[str, Any], registered: dict[str, Any]) -> None:
    payload = {**base(int(time.time())), **claims, **registered}
    try:
        token = sign(payload)
    except (TypeError, ValueError, OverflowError):
        return  # PyJWT refuses to sign it: nothing to send
    try:
        accepted = verifier().verify(token)
    except AuthError as exc:
        assert exc.reason in ("invalid_token", "token_expired")
        return
    protocol.welcome("lobby", accepted.user, accepted.name, 0, [], recovered=False, max_files=10)


# -- the same over real sockets -----------------------------------------------------------------

# The chaos settings, but a heartbeat that never evicts a live client: what is fuzzed here is
# frames and claims, and on a loaded machine (load average 7 on 2 cores: a fresh-clone run
# beside four other test runs) a pong came later than the chaos harness's 2 s and closed both
# sockets with 4010 mid-example. Heartbeats are the subject of test_heartbeat_* elsewhere.
FUZZ_ENV = {**ENV, "ROOMCHAT_PING_TIMEOUT": "30"}
RECV = 15 * SLOW
"""Seconds a fuzz socket waits for an answer: a bound for a hang, not a latency check (the
bystander's chat() is that, at 1 s)."""


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    with server_process(tmp_path_factory.mktemp("fuzz"), env=FUZZ_ENV) as proc, \
            connect(proc.url("fuzz", make_token("bystander")), compression=None,
                    max_size=2**24) as ws:
        BYSTANDER[proc.port] = Bystander(ws)
        yield proc


class Bystander:
    """A member of the fuzzed room that chats after every example: its message must be acked
    quickly and its seq list stay gapless, whatever the fuzzer did."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seqs: list[int] = []
        self.count = 0
        welcome = orjson.loads(str(self.ws.recv(RECV)).split("\n")[0])
        self.last = welcome["seq"]

    def chat(self) -> float:
        self.count += 1
        cid = f"b{self.count}"
        started = time.monotonic()
        self.ws.send(orjson.dumps({"type": "message", "text": "still here", "id": cid}).decode())
        while True:
            for line in str(self.ws.recv(RECV)).split("\n"):
                obj = orjson.loads(line)
                if obj["type"] == "ping":
                    self.ws.send('{"type":"pong"}')
                elif obj["type"] in ("message", "change"):  # both are entries of the log
                    assert obj["seq"] == self.last + 1, (obj["seq"], self.last)
                    self.last = obj["seq"]
                elif obj["type"] == "ack" and obj["id"] == cid:
                    return time.monotonic() - started


def wire_frames() -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        frames(), frames(), frames(), change_frames(), change_frames(),
        st.binary(max_size=16),  # binary frames, empty included: 1003
        st.just(b"\xff\xfe"), st.just(b'{"type":"message","text":"\xed\xa0\x80"}'),
        st.just("x" * 70_000),  # over max_message_bytes: 1009
    )


def answer_of(frame: str | bytes) -> str:
    """The documented answer to a frame sent as is: a close code or ``documented``."""
    if isinstance(frame, bytes):
        return "close 1003"
    if len(frame.encode("utf-8", "surrogatepass")) > 65_536:
        return "close 1009"
    try:
        frame.encode()
    except UnicodeEncodeError:
        return "close 1007"  # sent as the (invalid) UTF-8 bytes it has
    return documented(frame)


def send(ws: ClientConnection, frame: str | bytes, as_text: bool) -> None:
    if isinstance(frame, bytes) and as_text:
        ws.send(frame, text=True)  # text frame with whatever bytes: invalid UTF-8 maybe
    elif isinstance(frame, str):
        try:
            ws.send(frame.encode(), text=True)
        except UnicodeEncodeError:
            ws.send(frame.encode("utf-8", "surrogatepass"), text=True)
    else:
        ws.send(frame)


STATS: dict[str, Any] = {"frames": 0, "answers": {}, "bystander_max_ms": 0.0,
                         "answers_cut_by_close": 0, "sentinels": 0}


def expect_replies(ws: ClientConnection, want: list[str], sentinel: str) -> None:
    """Read what the server answers until the sentinel's ack (or a close); compare with the
    documented answers ``want``, in order."""
    got: list[str] = []
    try:
        while True:
            for line in str(ws.recv(RECV)).split("\n"):
                obj = orjson.loads(line)
                if obj["type"] == "error":
                    got.append(obj["code"])
                elif obj["type"] == "ack":
                    if obj["id"] == sentinel:
                        break
                    got.append("message")
            else:
                continue
            break
    except ConnectionClosed:
        got.append(f"close {ws.close_code}")
    # An ack is sent once the message is stored (after the room's batch delay and a commit),
    # and so is the log's refusal of a change; errors of a frame's shape are immediate. So
    # acks may come after the errors to later frames: compare those errors and the close in
    # order, and the answers of the log (acks, and refusals of changes) by count.
    def split(answers: list[str]) -> tuple[list[str], int, list[str]]:
        return ([x for x in answers if x not in ("message", "change") and x not in CHANGE_CODES
                 and not x.startswith("close")],
                sum(x in ("message", "change") or x in CHANGE_CODES for x in answers),
                [x for x in answers if x.startswith("close")])

    got_errors, got_acks, got_close = split(got)
    want_errors, want_acks, want_close = split(want)
    assert got_close == want_close, (got, want)
    # A refusal by the log answers a change (or a reply) only: never more than were sent.
    assert sum(x in CHANGE_CODES for x in got) <= want.count("change"), (got, want)
    if want_close and (got_errors, got_acks) != (want_errors, want_acks):
        # The answers to the frames before a close may not have been written yet when the
        # close comes, and are dropped (finding C in docs/reliability.md; safe, since a client
        # resends unacked messages by id, but a 1008 can arrive without its errors).
        assert got_errors == want_errors[:len(got_errors)] and got_acks <= want_acks, (got, want)
        STATS["answers_cut_by_close"] += len(want) - len(got)
        return
    assert (got_errors, got_acks) == (want_errors, want_acks), (got, want)


@WIRE_SETTINGS
@given(frames=st.lists(st.tuples(wire_frames(), st.booleans()), min_size=1, max_size=6))
def test_fuzzed_frames_over_a_real_socket(fuzz_server: Process,
                                          frames: list[tuple[str | bytes, bool]]) -> None:
    bystander = BYSTANDER[fuzz_server.port]
    want: list[str] = []
    invalid = 0
    with connect(fuzz_server.url("fuzz", make_token("fuzzer")), compression=None,
                 max_size=2**24) as ws:
        ws.recv(RECV)  # welcome
        for frame, as_text in frames:
            answer = "close 1007" if isinstance(frame, bytes) and as_text and not _utf8(frame) \
                else (documented(frame.decode()) if isinstance(frame, bytes) and as_text
                      else answer_of(frame))
            send(ws, frame, as_text)
            STATS["frames"] += 1
            STATS["answers"][answer] = STATS["answers"].get(answer, 0) + 1
            if answer not in ("pong", "read"):
                want.append(answer)
            if answer.startswith("close"):
                break
            if answer not in ("message", "pong", "read", "change"):
                invalid += 1
                if invalid == 5:  # max_invalid_frames
                    want.append("close 1008")
                    break
        else:
            # A new id each time: a duplicate is acked at once, before earlier new messages.
            STATS["sentinels"] += 1
            ws.send(orjson.dumps({"type": "message", "text": "sentinel",
                                  "id": f"sentinel-{STATS['sentinels']}"}).decode())
        expect_replies(ws, want, f"sentinel-{STATS['sentinels']}")
    assert fuzz_server.proc.poll() is None, "the server died"
    elapsed = bystander.chat()
    STATS["bystander_max_ms"] = max(STATS["bystander_max_ms"], elapsed * 1000)
    assert elapsed < 1.0, f"the bystander waited {elapsed:.2f}s"


BYSTANDER: dict[int, Bystander] = {}


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@settings(WIRE_SETTINGS, max_examples=int(pick(40, 400)))
@given(identity)
def test_fuzzed_claims_over_a_real_handshake(fuzz_server: Process,
                                             claims: dict[str, Any]) -> None:
    payload = {**base(int(time.time())), **claims}
    ok = claims_documented(payload)
    token = sign(payload)
    try:
        with connect(fuzz_server.url("fuzz", token), compression=None,
                     open_timeout=5) as ws:
            welcome = orjson.loads(str(ws.recv(RECV)).split("\n")[0])
            assert welcome["type"] == "welcome"
        accepted = True
    except InvalidStatus as exc:
        if exc.response.status_code == 431:  # Hypercorn: request line + headers over 16 KiB
            assert len(token) > 15_000, len(token)
            return
        assert exc.response.status_code in (401, 403), exc.response.status_code
        body = orjson.loads(exc.response.body or b"{}")
        assert body["error"] in ("invalid_token", "room_forbidden"), body
        accepted = False
        ok = ok and body["error"] == "room_forbidden"  # a valid token, not for this room
        if body["error"] == "room_forbidden":
            accepted = ok = True
    assert accepted == ok, payload
    assert fuzz_server.proc.poll() is None, "the server died"
    bystander = BYSTANDER[fuzz_server.port]
    assert bystander.chat() < 1.0


def test_the_fuzzed_server_logged_no_traceback(fuzz_server: Process) -> None:
    """Runs after the two wire tests (same module-scoped server)."""
    log = fuzz_server.output()
    assert fuzz_server.proc.poll() is None
    assert "Traceback" not in log, log[log.find("Traceback") - 2000:][:6000]
    bystander = BYSTANDER.pop(fuzz_server.port, None)
    record("fuzz", pure_examples_each=EXAMPLES, wire_examples_each=WIRE_EXAMPLES,
           wire_frames=STATS["frames"], wire_answers=STATS["answers"],
           answers_cut_by_close=STATS["answers_cut_by_close"],
           bystander_messages=bystander.count if bystander else 0,
           bystander_max_ack_ms=round(STATS["bystander_max_ms"], 1))

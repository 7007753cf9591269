from __future__ import annotations

import orjson
import pytest

from rooms import protocol
from rooms.protocol import BanUser, DeleteMessage, ErrorCode, FrameError, Pong, SendMessage


def parse(data: str) -> object:
    return protocol.parse_client_frame(data, max_text_chars=5, max_id_chars=3)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"type":"pong"}', Pong()),
        ('{"type":"message","text":"  hi  ","id":"abc"}', SendMessage("hi", "abc")),
        ('{"type":"message","text":"12345"}', SendMessage("12345", None)),
        ('{"type":"message","text":"é🙂"}', SendMessage("é🙂", None)),
    ],
)
def test_valid_frames(data: str, expected: object) -> None:
    assert parse(data) == expected


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("{", ErrorCode.INVALID_JSON),
        ("[1]", ErrorCode.INVALID_JSON),
        ('"x"', ErrorCode.INVALID_JSON),
        ('{"type":"nope"}', ErrorCode.INVALID_MESSAGE),
        ('{"text":"no type"}', ErrorCode.INVALID_MESSAGE),
        ('{"type":"message","text":5}', ErrorCode.INVALID_MESSAGE),
        ('{"type":"message","text":"a","id":"abcd"}', ErrorCode.INVALID_MESSAGE),
        ('{"type":"message","text":"a","id":""}', ErrorCode.INVALID_MESSAGE),
        ('{"type":"message","text":"a","id":7}', ErrorCode.INVALID_MESSAGE),
        ('{"type":"message","text":" \\n "}', ErrorCode.EMPTY_TEXT),
        ('{"type":"message","text":"123456"}', ErrorCode.TEXT_TOO_LONG),
    ],
)
def test_invalid_frames(data: str, code: ErrorCode) -> None:
    result = parse(data)
    assert isinstance(result, FrameError) and result.code is code


def test_refusals_echo_the_client_id() -> None:
    result = parse('{"type":"message","text":"123456","id":"x"}')
    assert isinstance(result, FrameError) and result.id == "x"


def test_server_objects_never_contain_raw_newlines() -> None:
    text = protocol.error(ErrorCode.RATE_LIMITED, "line1\nline2", client_id="a\nb",
                          retry_after=0.12345)
    assert "\n" not in text
    assert orjson.loads(text) == {"type": "error", "code": "rate_limited",
                                  "message": "line1\nline2", "retry_after": 0.123, "id": "a\nb"}
    frame = protocol.join_frame([protocol.ping(1), protocol.ack("x", 2)])
    assert [orjson.loads(x)["type"] for x in frame.split("\n")] == ["ping", "ack"]


# -- moderation frames (a moderator's delete and ban) ----------------------------------------

@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"type":"delete","seq":7}', DeleteMessage(7)),
        ('{"type":"delete","seq":7,"id":"d1"}', DeleteMessage(7, "d1")),
        ('{"type":"ban","user":"eve"}', BanUser("eve")),
        ('{"type":"ban","user":"eve","reason":"  spam ","minutes":30,"id":"b"}',
         BanUser("eve", "spam", minutes=30.0, id="b")),
        ('{"type":"ban","user":"eve","until":1900000000.5}', BanUser("eve", until=1900000000.5)),
        ('{"type":"ban","user":"eve","reason":null,"minutes":null}', BanUser("eve")),
    ],
)
def test_valid_moderation_frames(data: str, expected: object) -> None:
    assert parse(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        '{"type":"delete"}',
        '{"type":"delete","seq":0}',
        '{"type":"delete","seq":-3}',
        '{"type":"delete","seq":"4"}',
        '{"type":"delete","seq":true}',
        '{"type":"delete","seq":1.5}',
        '{"type":"delete","seq":1,"id":"toolong"}',
        '{"type":"ban"}',
        '{"type":"ban","user":""}',
        '{"type":"ban","user":7}',
        f'{{"type":"ban","user":"{"u" * (protocol.MAX_USER_CHARS + 1)}"}}',
        f'{{"type":"ban","user":"eve","reason":"{"r" * (protocol.MAX_REASON_CHARS + 1)}"}}',
        '{"type":"ban","user":"eve","reason":5}',
        '{"type":"ban","user":"eve","minutes":0}',
        '{"type":"ban","user":"eve","minutes":-1}',
        '{"type":"ban","user":"eve","minutes":"5"}',
        '{"type":"ban","user":"eve","minutes":true}',
        '{"type":"ban","user":"eve","minutes":1e300}',
        '{"type":"ban","user":"eve","until":"tomorrow"}',
        '{"type":"ban","user":"eve","minutes":5,"until":1900000000}',
    ],
)
def test_invalid_moderation_frames(data: str) -> None:
    result = parse(data)
    assert isinstance(result, FrameError) and result.code is ErrorCode.INVALID_MESSAGE, result


def test_a_refused_moderation_frame_echoes_its_id() -> None:
    result = parse('{"type":"delete","seq":0,"id":"d"}')
    assert isinstance(result, FrameError) and result.id == "d"


def test_welcome_says_moderator_only_when_true() -> None:
    plain = orjson.loads(protocol.welcome("r", "u", "U", 0, [], False))
    assert "moderator" not in plain
    assert orjson.loads(protocol.welcome("r", "u", "U", 0, [], False,
                                         moderator=True))["moderator"] is True


def test_moderated_answers() -> None:
    assert orjson.loads(protocol.moderated_delete(4, "d")) == {
        "type": "moderated", "action": "delete", "seq": 4, "id": "d"}
    assert orjson.loads(protocol.moderated_ban("eve", None, "spam", None)) == {
        "type": "moderated", "action": "ban", "user": "eve", "until": None, "reason": "spam",
        "id": None}

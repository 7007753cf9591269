from __future__ import annotations

import orjson
import pytest

from rooms import protocol
from rooms.protocol import ErrorCode, FrameError, Pong, SendMessage


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

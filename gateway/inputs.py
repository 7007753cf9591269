"""What an HTTP request brings, parsed: one helper per kind of value, used by every route.

Each refuses a bad value with ``Rejection(400, "bad_request", detail)``, the detail naming the
parameter, so no value a client chose reaches the store or a room unchecked (before these,
``before=99999999999999999999`` raised ``OverflowError`` in SQLite, a body that was not UTF-8
``UnicodeDecodeError`` and deep nesting ``RecursionError``: 500s with tracebacks). Pure: the
caller hands in the raw text or bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import Rejection
from rooms.text import user_id_problem

MAX_INT = 2**63 - 1
"""The largest integer a request may give (a seq, ``after``/``before``, ``limit``): SQLite's
INTEGER is a signed 64-bit one (a larger value raised ``OverflowError`` in the driver), and
one more is still a Redis stream id (an unsigned 64-bit one). Beyond any seq a room reaches."""
_MAX_DIGITS = len(str(MAX_INT))


def int_param(raw: str | None, name: str, *, minimum: int, maximum: int = MAX_INT) -> int | None:
    """``raw`` (a query parameter or path segment) as an integer in ``[minimum, maximum]``;
    ``None`` when absent or empty. ASCII digits only: no sign, no space, no ``²``."""
    if raw is None or raw == "":
        return None
    digits = raw.lstrip("0") or "0"
    # Counted before int(): Python refuses to convert more than 4,300 digits (ValueError).
    if not (raw.isascii() and raw.isdigit()) or len(digits) > _MAX_DIGITS \
            or not minimum <= int(digits) <= maximum:
        raise Rejection(400, "bad_request",
                        f"{name} must be an integer from {minimum} to {maximum}")
    return int(digits)


def json_object(raw: bytes | str) -> dict[str, Any]:
    """A request body holding one JSON object, parsed as the socket parses frames (orjson):
    UTF-8 only, no lone surrogate escape, no ``NaN``/``Infinity``, at most 1,024 levels deep;
    a number beyond a double is refused too."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejection(400, "bad_request", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Rejection(400, "bad_request", "the body must be one JSON object")
    return body


def user_id(value: object, name: str = "user") -> str:
    """``value`` as a user id (a path segment or a body field called ``name``), held to the
    rule a token's ``sub`` is (``rooms.text.user_id_problem``)."""
    problem = user_id_problem(value)
    if problem is not None:
        raise Rejection(400, "bad_request", f"{name} {problem}")
    assert isinstance(value, str)
    return value

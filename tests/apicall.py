"""Calling the server API (``/api/v1``) from tests: plain HTTP, off the event loop."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from tests.support import SLOW, make_token

API_KEY = "test-api-key-that-is-long-enough-0123456789"


def api_token(user: str = "backend", rooms: list[str] | None = None, **extra: Any) -> str:
    """A service credential: a JWT with ``"scope": "api"``."""
    return make_token(user, rooms, scope="api", **extra)


def call_sync(port: int, method: str, path: str, body: Any = None,
              token: str | None = API_KEY) -> tuple[int, Any, dict[str, str]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}", data=data,
                                     method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        # A bound for a hang, not a latency check: an erasure of thousands of messages took
        # over 10 s at load 15 (fresh-clone run 35).
        with urllib.request.urlopen(request, timeout=30 * SLOW) as response:
            raw, status, headers = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, headers = exc.read(), exc.code, dict(exc.headers)
    return status, json.loads(raw) if raw else None, headers


async def call(port: int, method: str, path: str, body: Any = None,
               token: str | None = API_KEY) -> tuple[int, Any]:
    """``(status, parsed JSON body)`` of one API request."""
    status, obj, _ = await asyncio.to_thread(call_sync, port, method, path, body, token)
    return status, obj

"""TokenVerifier's cache of verified tokens: a hit skips PyJWT, but the cache never accepts a
token the verifier would refuse (issue 22, item 7). Revocation on top of it: test_tickets'
``test_revoke_closes_every_socket_of_the_user_and_refuses_older_tokens`` (the revoked user's
token was verified, so cached, by the handshake before the revocation)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from typing import Any

import jwt
import pytest

from gateway.auth import AuthError, TokenVerifier, make_verifier
from gateway.config import load_config
from tests.support import SECRET

CONFIG = load_config({}, jwt_secret=SECRET)


class _Wall:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _verifier(size: int = 8, wall: _Wall | None = None,
              audience: str = "roomchat") -> tuple[TokenVerifier, list[str]]:
    """A verifier with a cache of ``size``, and the tokens PyJWT was asked to verify."""
    verifier = make_verifier(replace(CONFIG, jwt_cache_size=size, jwt_audience=audience))
    if wall is not None:
        verifier._wall = wall
    seen: list[str] = []
    decode = verifier._jwt.decode_complete

    def spy(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return decode(token, *args, **kwargs)

    verifier._jwt.decode_complete = spy  # type: ignore[method-assign,assignment]
    return verifier, seen


def _token(**over: Any) -> str:
    alg = over.pop("alg", "HS256")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "alice", "rooms": ["lobby"], "aud": "roomchat",
                              "iss": "roomchat", "iat": now, "exp": now + 3600}
    claims.update(over)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET,
                      algorithm=alg)


def test_a_token_seen_again_is_not_verified_again() -> None:
    verifier, seen = _verifier()
    token = _token()
    first = verifier.verify(token)
    assert verifier.verify(token) == first
    assert seen == [token] and verifier.cached == 1


def test_an_expired_cached_token_is_refused() -> None:
    wall = _Wall()
    verifier, seen = _verifier(wall=wall)
    token = _token(exp=int(wall.now) + 60)
    verifier.verify(token)
    wall.now += 60 + CONFIG.jwt_leeway - 1  # within the leeway: still served
    verifier.verify(token)
    wall.now += 1  # exp + leeway: what PyJWT refuses
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert info.value.reason == "token_expired"
    assert verifier.cached == 0 and seen == [token]


@pytest.mark.parametrize("over", [
    {"aud": "elsewhere"}, {"iss": "elsewhere"}, {"alg": "HS512"},
    {"nbf": int(time.time()) + 3600}, {"exp": int(time.time()) - 60},
])
def test_a_token_the_verifier_refuses_is_never_cached(over: dict[str, Any]) -> None:
    verifier, seen = _verifier()
    good = _token()
    verifier.verify(good)  # the same user's accepted token is in the cache
    bad = _token(**over)
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier.verify(bad)
    assert seen == [good, bad, bad] and verifier.cached == 1


def test_a_cache_with_another_audience_refuses_the_token() -> None:
    mine, _ = _verifier()
    other, _ = _verifier(audience="elsewhere")
    token = _token()
    mine.verify(token)
    with pytest.raises(AuthError):
        other.verify(token)


def test_the_cache_is_bounded_and_forgets_the_least_recently_used() -> None:
    verifier, seen = _verifier(size=3)
    tokens = [_token(sub=f"u{i}") for i in range(4)]
    for token in tokens[:3]:
        verifier.verify(token)
    verifier.verify(tokens[0])  # used again: now the most recent
    verifier.verify(tokens[3])  # evicts tokens[1]
    assert verifier.cached == 3
    assert hashlib.sha256(tokens[1].encode()).digest() not in verifier._cache
    seen.clear()
    for token in (tokens[0], tokens[2], tokens[3], tokens[1]):
        verifier.verify(token)
    assert seen == [tokens[1]]


def test_size_zero_caches_nothing() -> None:
    verifier, seen = _verifier(size=0)
    token = _token()
    verifier.verify(token)
    verifier.verify(token)
    assert seen == [token, token] and verifier.cached == 0


def test_the_setting_is_refused_below_zero() -> None:
    assert load_config({"ROOMCHAT_JWT_CACHE_SIZE": "0"}).jwt_cache_size == 0
    with pytest.raises(ValueError, match="ROOMCHAT_JWT_CACHE_SIZE"):
        load_config({"ROOMCHAT_JWT_CACHE_SIZE": "-1"})

"""Issue and verify roomchat JWTs. Pure apart from reading key files in ``load_keys``.

A token carries ``sub`` (user id), optional ``name`` (display name, defaults to ``sub``),
``rooms`` (room names, or ``["*"]`` for all), optional ``admin`` (bool), optional ``moderator``
(bool: moderates every room the token may join) or ``mod`` (the room names it moderates),
optional ``scope`` (``"api"``: a service credential for ``/api/v1``, never a chat socket), and
the registered claims ``exp``, ``iat``, ``aud``, ``iss`` (all required). The algorithm is pinned
by config: a token signed with any other algorithm (``none`` included) is refused, which also
closes the HS/RS key-confusion hole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm

from gateway.config import HMAC_ALGORITHMS, MIN_SECRET_CHARS, Config
from rooms import text as room_text
from rooms.text import unsafe_text, user_id_problem

log = logging.getLogger("roomchat.auth")
ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
ALL_ROOMS = "*"
API_SCOPE = "api"
"""The ``scope`` claim of a service credential: it calls ``/api/v1`` and opens no chat socket."""
MAX_USER_CHARS = room_text.MAX_USER_CHARS  # the rule for user ids is rooms.text.user_id_problem
MAX_NAME_CHARS = 64
_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class AuthError(Exception):
    """A token was refused. ``reason`` is the wire code (``missing_token``, ``invalid_token``,
    ``token_expired``, ``room_forbidden``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Claims:
    user: str
    name: str
    rooms: frozenset[str]
    expires_at: float  # Unix seconds
    admin: bool = False
    issued_at: float = 0.0  # Unix seconds (``iat``): revocations refuse tokens issued before
    scope: str | None = None  # ``API_SCOPE``: a service credential (gateway.api), not a user
    moderator: bool = False  # ``"moderator": true``: moderates every room it may join
    mod: frozenset[str] = frozenset()  # ``"mod": [...]``: the rooms it moderates

    def may_join(self, room: str) -> bool:
        return ALL_ROOMS in self.rooms or room in self.rooms

    def moderates(self, room: str) -> bool:
        """Whether this user may delete messages and ban users in ``room`` (from the page)."""
        if not self.may_join(room):
            return False
        return self.moderator or ALL_ROOMS in self.mod or room in self.mod


def parse_ttl(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``7d`` (or plain seconds) to seconds. Raises ``ValueError``."""
    match = _TTL.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 15m, 1h or 7d")
    return float(match.group(1)) * _TTL_UNITS[match.group(2)]


def valid_room_name(room: str) -> bool:
    return ROOM_NAME.fullmatch(room) is not None


class _PreparedHMAC(HMACAlgorithm):
    """PyJWT's HMAC, with our own secrets' checks done once.

    PyJWT's ``prepare_key`` checks the secret on every verification (that it is not a PEM, SSH
    or DER key, nor JWK JSON: the key-confusion defence), trying to parse it each way: about 30
    µs of a handshake's CPU here (bench/profiles/2026-11-26-handshake-py-spy.md). The secrets
    are ours and fixed, so they pass the same checks once, when the verifier is made; any other
    key still goes through them.
    """

    def __init__(self, algorithm: str, secrets: list[Any]) -> None:
        """Raises ``ValueError`` for a secret PyJWT refuses (an asymmetric key, say)."""
        base = jwt.get_algorithm_by_name(algorithm)
        assert isinstance(base, HMACAlgorithm)
        super().__init__(base.hash_alg)
        try:
            self._prepared = {secret: base.prepare_key(secret) for secret in secrets}
        except jwt.InvalidKeyError as exc:
            raise ValueError(f"the {algorithm} secret is not usable: {exc}") from None

    def prepare_key(self, key: str | bytes) -> bytes:
        prepared = self._prepared.get(key) if isinstance(key, str | bytes) else None
        return prepared if prepared is not None else super().prepare_key(key)


class TokenVerifier:
    """Verifies tokens signed with the pinned algorithm, by ``key`` or, for a token whose
    header names a ``kid``, by that entry of ``keys`` (several at once: key rotation).

    Remembers up to ``cache_size`` verified tokens, keyed by the SHA-256 of the whole token
    (the token itself is not kept), least recently used dropped first: a token enters only
    once PyJWT accepted it (signature with the pinned algorithm, ``aud``, ``iss``, ``exp``,
    ``nbf``, ``iat``, required claims) and ``_claims`` did, and a hit is refused as expired
    once ``exp`` is past (with ``leeway``, as PyJWT counts it). Any other token, one differing
    in a single byte included, takes the full verification. Revocations and bans are not
    this class's: callers check them on every use, cached or not (``gateway.access``).
    """

    def __init__(self, algorithm: str, key: Any, *, audience: str, issuer: str,
                 leeway: float, keys: dict[str, Any] | None = None, cache_size: int = 0,
                 wall: Callable[[], float] = time.time) -> None:
        self.algorithm = algorithm
        self._cache: OrderedDict[bytes, Claims] = OrderedDict()
        self._cache_size = cache_size
        self._wall = wall
        self._key = key
        self._keys = keys or {}
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._jwt = jwt.PyJWT()
        if algorithm in HMAC_ALGORITHMS:
            # PyJWT's decoder verifies with the algorithm objects of its PyJWS (``_jws``): ours
            # replaces its HMAC for the one algorithm accepted.
            signatures = self._jwt._jws
            signatures.unregister_algorithm(algorithm)
            signatures.register_algorithm(
                algorithm, _PreparedHMAC(algorithm, [key, *self._keys.values()]))

    def verify(self, token: str | None) -> Claims:
        """The token's claims. Raises ``AuthError`` (never anything else) when it is refused."""
        if not token:
            raise AuthError("missing_token", "a token is required (?token=...)")
        if not self._cache_size:
            return self._verify(token)
        # A reconnect storm after a network blip shows the same tokens again: their signature
        # check (PyJWT, ~45 us) was a large part of a handshake's CPU.
        digest = hashlib.sha256(token.encode()).digest()
        cache = self._cache
        claims = cache.get(digest)
        if claims is not None:
            if claims.expires_at <= self._wall() - self._leeway:
                del cache[digest]
                raise AuthError("token_expired", "the token has expired")
            cache.move_to_end(digest)
            return claims
        claims = self._verify(token)
        cache[digest] = claims
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return claims

    @property
    def cached(self) -> int:
        """Tokens remembered now (at most ``cache_size``)."""
        return len(self._cache)

    def _verify(self, token: str) -> Claims:
        """``verify`` without the cache."""
        try:
            key = self._key
            if self._keys:  # key rotation: the header's kid picks the key
                kid = jwt.get_unverified_header(token).get("kid")
                if kid is not None:
                    if not isinstance(kid, str) or kid not in self._keys:
                        raise AuthError("invalid_token", "invalid token: unknown key id (kid)")
                    key = self._keys[kid]
            # Without rotation the header is read once, by decode_complete (parsing it
            # beforehand as well was a quarter of a verification); a kid is then refused after.
            decoded = self._jwt.decode_complete(
                token, key, algorithms=[self.algorithm], audience=self._audience,
                issuer=self._issuer, leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
            if not self._keys and decoded["header"].get("kid") is not None:
                raise AuthError("invalid_token", "invalid token: unknown key id (kid)")
            payload = decoded["payload"]
        except jwt.ExpiredSignatureError:
            raise AuthError("token_expired", "the token has expired") from None
        except jwt.PyJWTError as exc:
            raise AuthError("invalid_token", f"invalid token: {exc}") from None
        return _claims(payload)


def _claims(payload: dict[str, Any]) -> Claims:
    user = payload["sub"]
    name = payload.get("name", user)
    rooms = payload.get("rooms")
    admin = payload.get("admin", False)
    problem = user_id_problem(user)
    if problem is not None:
        raise AuthError("invalid_token", f"sub {problem}")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME_CHARS:
        raise AuthError("invalid_token", f"name must be a string of 1 to {MAX_NAME_CHARS} chars")
    problem = unsafe_text(name)
    if problem is not None:
        raise AuthError("invalid_token", f"name must not contain {problem}")
    if not isinstance(rooms, list) or not all(
        isinstance(r, str) and (r == ALL_ROOMS or valid_room_name(r)) for r in rooms
    ):
        raise AuthError("invalid_token", "rooms must be a list of room names or [\"*\"]")
    if not isinstance(admin, bool):
        raise AuthError("invalid_token", "admin must be a boolean")
    scope = payload.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise AuthError("invalid_token", "scope must be a string")
    moderator = payload.get("moderator", False)
    if not isinstance(moderator, bool):
        raise AuthError("invalid_token", "moderator must be a boolean")
    mod = payload.get("mod", [])
    if not isinstance(mod, list) or not all(
        isinstance(r, str) and (r == ALL_ROOMS or valid_room_name(r)) for r in mod
    ):
        raise AuthError("invalid_token", "mod must be a list of room names or [\"*\"]")
    return Claims(user=user, name=name.strip(), rooms=frozenset(rooms),
                  expires_at=float(payload["exp"]), admin=admin,
                  issued_at=float(payload["iat"]), scope=scope, moderator=moderator,
                  mod=frozenset(mod))


class TokenIssuer:
    def __init__(self, algorithm: str, key: Any, *, audience: str, issuer: str,
                 kid: str | None = None) -> None:
        self.algorithm = algorithm
        self._key = key
        self._audience = audience
        self._issuer = issuer
        self._kid = kid

    def issue(self, user: str, *, rooms: list[str], ttl: float, name: str | None = None,
              admin: bool = False, now: float | None = None, scope: str | None = None,
              moderator: bool = False, mod: list[str] | None = None) -> str:
        """A signed token (``scope="api"``: a service credential). Raises ``ValueError`` for a
        bad user, name or room."""
        now = time.time() if now is None else now
        problem = user_id_problem(user)
        if problem is not None:  # verify() would refuse the token
            raise ValueError(f"user {problem}")
        if name is not None and not 1 <= len(name.strip()) <= MAX_NAME_CHARS:
            raise ValueError(f"name must be 1 to {MAX_NAME_CHARS} characters")
        for room in rooms:
            if room != ALL_ROOMS and not valid_room_name(room):
                raise ValueError(f"invalid room name {room!r}: 1-64 of [A-Za-z0-9_-]")
        payload: dict[str, Any] = {"sub": user, "rooms": rooms, "aud": self._audience,
                                   "iss": self._issuer, "iat": int(now), "exp": int(now + ttl)}
        if name is not None:
            payload["name"] = name.strip()
        if admin:
            payload["admin"] = True
        if scope is not None:
            payload["scope"] = scope
        if moderator:
            payload["moderator"] = True
        if mod:
            for room in mod:
                if room != ALL_ROOMS and not valid_room_name(room):
                    raise ValueError(f"invalid room name {room!r}: 1-64 of [A-Za-z0-9_-]")
            payload["mod"] = mod
        headers = {"kid": self._kid} if self._kid is not None else None
        return jwt.encode(payload, self._key, algorithm=self.algorithm, headers=headers)


def _secret(config: Config, filename: str = "jwt-secret") -> str:
    if config.jwt_secret:
        secret = config.jwt_secret
    else:
        path = config.data_dir / filename
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            generated = secrets.token_urlsafe(48)
            # O_EXCL: two processes starting at once must not overwrite each other's secret;
            # mode 0600 from creation: never readable by others, not even for a moment.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(generated)
                log.info("generated a new %s secret in %s (what was signed with another one is "
                         "now refused)", "JWT" if filename == "jwt-secret" else "URL-signing",
                         path)
            except FileExistsError:
                pass
        secret = path.read_text(encoding="utf-8").strip()
        if len(secret) < MIN_SECRET_CHARS:  # ROOMCHAT_JWT_SECRET itself is Config's to check
            raise ValueError(f"{path} holds a secret shorter than {MIN_SECRET_CHARS} "
                             "characters: put a longer one there, or set ROOMCHAT_JWT_SECRET")
    return secret


def server_secret(config: Config) -> str:
    """The HMAC secret every instance shares, whatever the JWT algorithm: ``gateway.files``
    derives its URL-signing key from it. ``ROOMCHAT_JWT_SECRET`` when set; else, with an HMAC
    JWT algorithm, the one generated into DATA_DIR/jwt-secret; with a key pair (RS256, ES256,
    EdDSA) one generated into DATA_DIR/url-secret, so no jwt-secret file appears beside a key
    pair (several instances then share it, or set ROOMCHAT_JWT_SECRET). Raises ``ValueError``
    for a short one."""
    if config.jwt_secret or config.jwt_algorithm in HMAC_ALGORITHMS:
        return _secret(config)
    return _secret(config, "url-secret")


def _read(path: Path | None, what: str, setting: str) -> bytes:
    """The key file ``setting`` names. Raises ``ValueError`` (one line) when it is not set or
    cannot be read."""
    if path is None:
        raise ValueError(f"{what} requires {setting}")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def _public_key(alg: str, pem: bytes, setting: str) -> Any:
    """``pem`` loaded as ``alg``'s public key object. PyJWT parses a PEM given as bytes again
    for every token (13-21 µs of a 66-137 µs verification, RS256/ES256/EdDSA); given the loaded
    key it uses it as is. Loading here also refuses an unusable file at startup, in one line,
    instead of refusing every token. Raises ``ValueError``."""
    try:
        return jwt.get_algorithm_by_name(alg).prepare_key(pem)
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{setting}: not a usable {alg} public key ({exc})") from None


def _keys(config: Config) -> dict[str, Any]:
    """``ROOMCHAT_JWT_KEYS``: ``kid=secret`` (HS*) or ``kid=/path/to/key.pem`` entries (their
    form and the secrets' length are ``Config``'s to check). Raises ``ValueError`` for a PEM
    file that cannot be read."""
    keys: dict[str, Any] = {}
    for entry in config.jwt_keys:
        kid, _, value = entry.partition("=")
        if config.jwt_algorithm in HMAC_ALGORITHMS:
            keys[kid] = value
        else:
            keys[kid] = _read(Path(value), config.jwt_algorithm, f"ROOMCHAT_JWT_KEYS ({kid})")
    return keys


def _public_keys(config: Config) -> dict[str, Any]:
    """``_keys`` with each PEM loaded as the algorithm's public key (see ``_public_key``)."""
    return {kid: _public_key(config.jwt_algorithm, pem, f"ROOMCHAT_JWT_KEYS ({kid})")
            for kid, pem in _keys(config).items()}


def make_verifier(config: Config) -> TokenVerifier:
    """The verifier for ``config``. Raises ``ValueError`` for an unusable key setup."""
    alg = config.jwt_algorithm
    key: Any
    if alg in HMAC_ALGORITHMS:
        key = _secret(config)
        keys = _keys(config)
    else:  # one of ASYMMETRIC_ALGORITHMS (Config refuses any other)
        key = _public_key(alg, _read(config.jwt_public_key_file, alg,
                                     "ROOMCHAT_JWT_PUBLIC_KEY_FILE"),
                          "ROOMCHAT_JWT_PUBLIC_KEY_FILE")
        keys = _public_keys(config)
    return TokenVerifier(alg, key, audience=config.jwt_audience, issuer=config.jwt_issuer,
                         leeway=config.jwt_leeway, keys=keys, cache_size=config.jwt_cache_size)


def make_issuer(config: Config) -> TokenIssuer:
    """The issuer for ``config`` (same key resolution as ``make_verifier``)."""
    alg = config.jwt_algorithm
    key: Any
    if config.jwt_kid is not None:  # Config: an HS* kid of jwt_keys
        return TokenIssuer(alg, _keys(config)[config.jwt_kid], audience=config.jwt_audience,
                           issuer=config.jwt_issuer, kid=config.jwt_kid)
    if alg in HMAC_ALGORITHMS:
        key = _secret(config)
    else:  # one of ASYMMETRIC_ALGORITHMS (Config refuses any other)
        key = _read(config.jwt_private_key_file, alg, "ROOMCHAT_JWT_PRIVATE_KEY_FILE")
    return TokenIssuer(alg, key, audience=config.jwt_audience, issuer=config.jwt_issuer)

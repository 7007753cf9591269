"""JWT verification matrix (pure)."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth import AuthError, make_issuer, make_verifier, parse_ttl
from gateway.config import load_config
from tests.support import SECRET, make_token

CONFIG = load_config({}, jwt_secret=SECRET)
VERIFY = make_verifier(CONFIG)


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "rooms": ["lobby"], "aud": "roomchat",
                            "iss": "roomchat", "iat": now, "exp": now + 3600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def refused(token: str) -> str:
    with pytest.raises(AuthError) as info:
        VERIFY.verify(token)
    return info.value.reason


def test_valid_token() -> None:
    c = VERIFY.verify(jwt.encode(claims(name="Alice"), SECRET, algorithm="HS256"))
    assert (c.user, c.name, c.may_join("lobby"), c.may_join("other")) == (
        "alice", "Alice", True, False)
    assert VERIFY.verify(make_token(rooms=["*"])).may_join("anything")
    assert VERIFY.verify(make_token(user="bob")).name == "bob"  # name defaults to sub


def _unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(payload)}."


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "missing_token"),
        ("garbage", "invalid_token"),
        (_unsigned(claims()), "invalid_token"),
        (jwt.encode(claims(), SECRET, algorithm="HS512"), "invalid_token"),
        (jwt.encode(claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256"),
         "token_expired"),
        (jwt.encode(claims(exp=None), SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(iat=None), SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(sub=None), SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(aud="other"), SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(aud=None), SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(iss="evil"), SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(iss=None), SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(), SECRET + "x", algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(rooms="lobby"), SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(rooms=None), SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(rooms=["bad room"]), SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(sub=""), SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(name=""), SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode(claims(admin="yes"), SECRET, algorithm="HS256"), "invalid_token"),
    ],
)
def test_refusals(token: str, reason: str) -> None:
    assert refused(token) == reason


def test_leeway_accepts_slightly_expired() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 3), SECRET, algorithm="HS256")
    assert VERIFY.verify(token).user == "alice"


def _pem_pair(private: Any) -> tuple[bytes, bytes]:
    priv = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    pub = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return priv, pub


@pytest.mark.parametrize(
    ("alg", "key"),
    [("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
     ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
     ("EdDSA", ed25519.Ed25519PrivateKey.generate)],
)
def test_asymmetric_algorithms_issue_and_verify(tmp_path: Path, alg: str, key: Any) -> None:
    priv, pub = _pem_pair(key())
    (tmp_path / "priv.pem").write_bytes(priv)
    (tmp_path / "pub.pem").write_bytes(pub)
    cfg = replace(CONFIG, jwt_algorithm=alg, jwt_public_key_file=tmp_path / "pub.pem",
                  jwt_private_key_file=tmp_path / "priv.pem")
    token = make_issuer(cfg).issue("carol", rooms=["x"], ttl=60, admin=True)
    verified = make_verifier(cfg).verify(token)
    assert (verified.user, verified.admin) == ("carol", True)
    # Key confusion: an HS256 token "signed" with the public key must not pass.
    forged = jwt.encode(claims(), "x" * 40, algorithm="HS256")
    with pytest.raises(AuthError):
        make_verifier(cfg).verify(forged)


def test_hmac_secrets_are_checked_once_and_other_keys_every_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from jwt.algorithms import HMACAlgorithm

    rotated = "r" * 40
    verifier = make_verifier(replace(CONFIG, jwt_keys=(f"k1={rotated}",)))
    tokens = [jwt.encode(claims(), SECRET, algorithm="HS256"),
              jwt.encode(claims(), rotated, algorithm="HS256", headers={"kid": "k1"})]
    checks: list[object] = []
    real = HMACAlgorithm.prepare_key

    def counted(self: HMACAlgorithm, key: str | bytes) -> bytes:
        checks.append(key)
        return real(self, key)

    monkeypatch.setattr(HMACAlgorithm, "prepare_key", counted)
    assert [verifier.verify(token).user for token in tokens] == ["alice", "alice"]
    assert checks == []  # our secrets were checked when the verifier was made
    # Any other key is still checked (and refused, here: a public key as an HMAC secret).
    _, pub = _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(jwt.InvalidKeyError):
        verifier._jwt._jws.get_algorithm_by_name("HS256").prepare_key(pub)
    assert checks == [pub]
    # A secret that is really a public key is refused when the verifier is made (ValueError).
    with pytest.raises(ValueError, match="HS256 secret is not usable"):
        make_verifier(replace(CONFIG, jwt_secret=pub.decode()))


def test_public_keys_are_loaded_once_and_checked_at_startup(tmp_path: Path) -> None:
    priv, pub = _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    (tmp_path / "priv.pem").write_bytes(priv)
    (tmp_path / "pub.pem").write_bytes(pub)
    _, other = _pem_pair(ec.generate_private_key(ec.SECP256R1()))
    (tmp_path / "ec.pem").write_bytes(other)
    cfg = replace(CONFIG, jwt_algorithm="RS256", jwt_public_key_file=tmp_path / "pub.pem",
                  jwt_private_key_file=tmp_path / "priv.pem",
                  jwt_keys=(f"k1={tmp_path / 'pub.pem'}",))
    verifier = make_verifier(cfg)
    # Loaded key objects, not PEM bytes that PyJWT would parse again for every token.
    assert not isinstance(verifier._key, bytes)
    assert not isinstance(verifier._keys["k1"], bytes)
    token = make_issuer(cfg).issue("dana", rooms=["x"], ttl=60)
    assert verifier.verify(token).user == "dana"
    rotated = jwt.encode(claims(), priv, algorithm="RS256", headers={"kid": "k1"})
    assert verifier.verify(rotated).user == "alice"
    # An EC key for RS256, in either setting: refused when the verifier is made.
    with pytest.raises(ValueError, match="ROOMCHAT_JWT_PUBLIC_KEY_FILE: not a usable RS256"):
        make_verifier(replace(cfg, jwt_public_key_file=tmp_path / "ec.pem"))
    with pytest.raises(ValueError, match=r"ROOMCHAT_JWT_KEYS \(k2\): not a usable RS256"):
        make_verifier(replace(cfg, jwt_keys=(f"k2={tmp_path / 'ec.pem'}",)))


def test_rs_hs_key_confusion_with_public_key_as_hmac_secret(tmp_path: Path) -> None:
    _, pub = _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    (tmp_path / "pub.pem").write_bytes(pub)
    cfg = replace(CONFIG, jwt_algorithm="RS256", jwt_public_key_file=tmp_path / "pub.pem")
    import hashlib
    import hmac

    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    sig = base64.urlsafe_b64encode(
        hmac.new(pub, header + b"." + body, hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(AuthError) as info:
        make_verifier(cfg).verify((header + b"." + body + b"." + sig).decode())
    assert info.value.reason == "invalid_token"


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        make_verifier(replace(CONFIG, jwt_secret="short"))


def test_generated_secret_is_stable(tmp_path: Path) -> None:
    cfg = load_config({}, data_dir=tmp_path)
    token = make_issuer(cfg).issue("u", rooms=["r"], ttl=60)
    assert make_verifier(cfg).verify(token).user == "u"
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("text", "seconds"),
                         [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800), ("30", 30)])
def test_parse_ttl(text: str, seconds: float) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-1h", "1w", "soon"])
def test_parse_ttl_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)


@pytest.mark.parametrize("claim", ["sub", "name"])
@pytest.mark.parametrize("bad", ["\ud800", "x\udfffy", "a\x00b", "line\nbreak", "\x1b[31mred",
                                 "del\x7f", "c1\x85"])
def test_lone_surrogates_and_control_characters_are_refused(claim: str, bad: str) -> None:
    # jwt.encode escapes them as \\uXXXX, so the signature is valid: only our check refuses.
    token = jwt.encode(claims(**{claim: bad}), SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as info:
        VERIFY.verify(token)
    assert info.value.reason == "invalid_token"
    assert claim in info.value.detail


@pytest.mark.parametrize("good", ["Zoë", "李小龍", "👩\u200d👩\u200d👧", "a b",
                                  "\U0001d518\U0001d52b\U0001d526"])  # 4-byte letters
def test_names_with_any_printable_unicode_are_accepted(good: str) -> None:
    c = VERIFY.verify(jwt.encode(claims(sub=good, name=good), SECRET, algorithm="HS256"))
    assert (c.user, c.name) == (good, good)



def test_moderator_claims_name_the_rooms_a_user_moderates() -> None:
    def verified(**over: Any) -> Any:
        return VERIFY.verify(jwt.encode(claims(rooms=["a", "b"], **over), SECRET,
                                        algorithm="HS256"))

    assert not verified().moderates("a")
    assert verified(moderator=True).moderates("a")
    assert not verified(moderator=True).moderates("c")  # only rooms the token may join
    assert verified(mod=["b"]).moderates("b")
    assert not verified(mod=["b"]).moderates("a")
    assert verified(mod=["*"]).moderates("a")
    for bad in ({"moderator": "yes"}, {"mod": "b"}, {"mod": ["bad room"]}):
        with pytest.raises(AuthError):
            verified(**bad)


@pytest.mark.parametrize("bad", ["", "x" * 65, "a\x07b", "line\nbreak", "\ud800"])
def test_the_issuer_refuses_a_user_id_the_verifier_would(bad: str) -> None:
    """``roomchat token --user`` is held to the rule ``verify`` applies to ``sub``
    (``rooms.text.user_id_problem``): it never mints a token no server accepts."""
    issuer = make_issuer(load_config({}, jwt_secret=SECRET))
    with pytest.raises(ValueError, match=r"^user must"):
        issuer.issue(bad, rooms=["lobby"], ttl=60)
    assert VERIFY.verify(issuer.issue("u" * 64, rooms=["lobby"], ttl=60)).user == "u" * 64

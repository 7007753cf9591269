"""Signed file URLs (``files.signing``): pure, the clock passed in."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from files.signing import UrlRefused, UrlSigner, Variant, derive_key

KEY = derive_key("test-secret-that-is-long-enough-for-hs256-0123456789")
NOW = 1_700_000_000.5


def params(path: str) -> tuple[str, str]:
    query = parse_qs(urlsplit(path).query)
    return query["exp"][0], query["sig"][0]


def test_a_signed_url_opens_its_file_until_it_expires() -> None:
    signer = UrlSigner(KEY, 30)
    url = signer.sign("lobby", "A" * 22, Variant.FILE, NOW)
    assert url.path.startswith(f"/rooms/lobby/files/{'A' * 22}?exp=")
    exp, sig = params(url.path)
    assert int(exp) == url.expires == 1_700_000_031  # now + ttl, rounded up to the second
    assert signer.check("lobby", "A" * 22, Variant.FILE, exp, sig, NOW) == url.expires
    assert signer.check("lobby", "A" * 22, Variant.FILE, exp, sig, url.expires - 0.01)
    with pytest.raises(UrlRefused, match="expired") as refused:
        signer.check("lobby", "A" * 22, Variant.FILE, exp, sig, url.expires)
    assert refused.value.expired


@pytest.mark.parametrize(("room", "file_id", "variant"), [
    ("other", "A" * 22, Variant.FILE), ("lobby", "B" * 22, Variant.FILE),
    ("lobby", "A" * 22, Variant.THUMB)])
def test_a_url_opens_nothing_else(room: str, file_id: str, variant: Variant) -> None:
    signer = UrlSigner(KEY, 30)
    exp, sig = params(signer.sign("lobby", "A" * 22, Variant.FILE, NOW).path)
    with pytest.raises(UrlRefused, match="signature") as refused:
        signer.check(room, file_id, variant, exp, sig, NOW)
    assert not refused.value.expired


@pytest.mark.parametrize(("exp", "sig"), [
    (None, None), ("", "x"), ("1700000031", None), ("-5", "x"), ("1e9", "x"), ("٣", "x"),
    ("9" * 13, "x"), ("1700000031", "forged"), ("1700000031", "é" * 22)])
def test_malformed_or_forged_parameters_are_refused(exp: str | None, sig: str | None) -> None:
    with pytest.raises(UrlRefused):
        UrlSigner(KEY, 30).check("lobby", "A" * 22, Variant.FILE, exp, sig, NOW)


def test_a_longer_expiry_in_a_valid_url_breaks_its_signature() -> None:
    signer = UrlSigner(KEY, 30)
    exp, sig = params(signer.sign("lobby", "A" * 22, Variant.FILE, NOW).path)
    with pytest.raises(UrlRefused, match="signature"):
        signer.check("lobby", "A" * 22, Variant.FILE, str(int(exp) + 3600), sig, NOW)


def test_another_secret_signs_differently() -> None:
    ours = UrlSigner(KEY, 30).sign("lobby", "A" * 22, Variant.FILE, NOW)
    theirs = UrlSigner(derive_key("another-secret-that-is-long-enough-0123456789"), 30)
    with pytest.raises(UrlRefused, match="signature"):
        theirs.check("lobby", "A" * 22, Variant.FILE, *params(ours.path), NOW)


def test_long_lifetimes_round_to_the_minute_so_caches_hit() -> None:
    signer = UrlSigner(KEY, 3600)
    first = signer.sign("lobby", "A" * 22, Variant.FILE, NOW)
    again = signer.sign("lobby", "A" * 22, Variant.FILE, NOW + 20)
    assert first.expires % 60 == 0 and first.expires - NOW >= 3600
    assert first.expires - NOW < 3660
    assert again == first  # NOW + 20 s + 1 h is still before the minute first rounded to


def test_the_lifetime_must_be_positive() -> None:
    with pytest.raises(ValueError):
        UrlSigner(KEY, 0)

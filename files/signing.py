"""Short-lived signed URLs for files: what lets an ``<img>`` (which cannot send a bearer header)
fetch a file of a room. Pure: ``now`` is passed in.

A signature is an HMAC-SHA256 over the room, the file id, the variant (``file`` or ``thumb``)
and the expiry, truncated to 128 bits, with a key derived from the server's secret (never the
secret itself: a signature cannot help forge a token). Whoever holds the URL may fetch that
one variant of that one file from that one room until it expires: a URL is handed only to
someone who may read the room (an upload's answer, a message delivered to a member).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote

from files.errors import FileError

KEY_CONTEXT = b"roomchat file URLs v1"
"""What the signing key is derived for: another use of the same secret derives another key."""
ROUND_SECONDS = 60
"""With a TTL of ten minutes or more, expiries are rounded up to the minute, so URLs signed for
the same file within a minute are the same URL and a browser's cache serves repeated views."""


class Variant(StrEnum):
    FILE = "file"
    THUMB = "thumb"


class UrlRefused(FileError):
    """A signed URL that does not open the file: ``expired`` says whether it was a good one
    past its time (else a wrong or foreign signature)."""

    def __init__(self, detail: str, *, expired: bool) -> None:
        super().__init__(detail)
        self.expired = expired


@dataclass(frozen=True, slots=True)
class SignedUrl:
    path: str
    expires: int


def derive_key(secret: str | bytes) -> bytes:
    """The URL-signing key for a server secret (every process with the secret derives it)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, KEY_CONTEXT, hashlib.sha256).digest()


class UrlSigner:
    """Signs and checks file URLs; ``ttl``: seconds a URL stays valid (at least)."""

    def __init__(self, key: bytes, ttl: float) -> None:
        if not ttl > 0:
            raise ValueError("the URL lifetime must be more than 0 seconds")
        self._key = key
        self.ttl = ttl

    def signature(self, room: str, file_id: str, variant: Variant, expires: int) -> str:
        message = f"{room}\n{file_id}\n{variant.value}\n{expires}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def expiry(self, now: float) -> int:
        """When a URL signed at ``now`` expires: ``now + ttl``, rounded up to the second, or
        to the minute (ROUND_SECONDS) for TTLs of ten minutes or more."""
        step = ROUND_SECONDS if self.ttl >= 600 else 1
        return math.ceil((now + self.ttl) / step) * step

    def sign(self, room: str, file_id: str, variant: Variant, now: float) -> SignedUrl:
        """The path (with its query) that serves ``variant`` of the file to anyone until it
        expires: ``/rooms/<room>/files/<id>[/thumb]?exp=<unix>&sig=<signature>``."""
        expires = self.expiry(now)
        sig = self.signature(room, file_id, variant, expires)
        tail = "/thumb" if variant is Variant.THUMB else ""
        return SignedUrl(f"/rooms/{quote(room)}/files/{quote(file_id)}{tail}"
                         f"?exp={expires}&sig={sig}", expires)

    def check(self, room: str, file_id: str, variant: Variant, exp: str | None,
              sig: str | None, now: float) -> int:
        """The expiry of a URL's ``exp`` and ``sig`` parameters if they open ``variant`` of
        the file in ``room`` at ``now``. Raises ``UrlRefused``: the signature first (a foreign
        or forged URL is refused as such even when also expired), then the time."""
        if not exp or not sig or not exp.isascii() or not exp.isdigit() or len(exp) > 12:
            raise UrlRefused("the file URL is not a signed one", expired=False)
        expires = int(exp)
        expected = self.signature(room, file_id, variant, expires)
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
            raise UrlRefused("the file URL's signature does not match", expired=False)
        if now >= expires:
            raise UrlRefused("the file URL has expired: reload the messages for a new one",
                             expired=True)
        return expires

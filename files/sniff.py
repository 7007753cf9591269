"""An upload's type, from its first bytes (puremagic), never from its name or its client's
``Content-Type``. Pure."""

from __future__ import annotations

import puremagic

from files.meta import DOWNLOAD_TYPE

SNIFF_BYTES = 8192
"""How much of the start of a file is read to tell its type."""
_ALIASES = {"image/jpg": "image/jpeg", "image/x-png": "image/png"}


def sniff(head: bytes) -> str:
    """The MIME type ``head`` (a file's first SNIFF_BYTES) says, or DOWNLOAD_TYPE when its
    bytes name none. Only the types of ``files.meta.IMAGE_TYPES`` change how a file is kept
    and served; any other is a label for people."""
    if not head:
        return DOWNLOAD_TYPE
    try:
        found = puremagic.from_string(head, mime=True)
    except (puremagic.PureError, ValueError):
        return DOWNLOAD_TYPE
    found = str(found or "").strip().lower()
    if not found or "/" not in found or len(found) > 100 or not found.isascii():
        return DOWNLOAD_TYPE
    return _ALIASES.get(found, found)

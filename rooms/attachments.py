"""The files a message carries, as the room and the engines know them: metadata only. Pure.

A message's ``files`` are uploads (``files`` package, served by ``gateway.files``) that the
gateway resolved and checked before the message reached its room (``gateway.attachments``):
the room stores and delivers what it was given and never asks the blob store anything. No URL
is ever stored: signed URLs expire, so clients ask for them when they show a file
(``POST /rooms/<room>/files/urls``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from rooms.text import unsafe_text

FILE_ID = re.compile(r"[A-Za-z0-9_-]{22}")
"""What a file id looks like (``files.meta.new_file_id``: 128 random bits, URL-safe base64).
Checked before an id reaches a store key or a lookup."""


@dataclass(frozen=True, slots=True)
class FileRef:
    """One file of a message: ``{"id","name","size","type","width"?,"height"?,"thumb"?}`` on
    the wire (``width``/``height``: an image's, after orientation, both or neither;
    ``thumb``: a thumbnail can be fetched)."""

    id: str
    name: str
    size: int
    type: str
    width: int | None = None
    height: int | None = None
    thumb: bool = False

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": self.id, "name": self.name, "size": self.size,
                               "type": self.type}
        if self.width is not None and self.height is not None:
            obj["width"] = self.width
            obj["height"] = self.height
        if self.thumb:
            obj["thumb"] = True
        return obj

    @classmethod
    def from_obj(cls, obj: object) -> FileRef | None:
        """A file from its wire object as stored (JSON), or None when it is not one (the
        engines' records are read as untrusted input: ``rooms.engines.redis_records``)."""
        if not isinstance(obj, dict):
            return None
        file_id, name, size, kind = obj.get("id"), obj.get("name"), obj.get("size"), \
            obj.get("type")
        width, height, thumb = obj.get("width"), obj.get("height"), obj.get("thumb", False)
        if not (isinstance(file_id, str) and FILE_ID.fullmatch(file_id)
                and isinstance(name, str) and name and unsafe_text(name) is None
                and isinstance(kind, str) and kind
                and _count(size) and isinstance(thumb, bool)):
            return None
        if (width is None) != (height is None) or (width is not None and not (
                _count(width) and _count(height))):
            return None
        return cls(file_id, name, size, kind, width, height, thumb)


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def files_to_json(files: tuple[FileRef, ...]) -> list[dict[str, Any]]:
    return [f.to_obj() for f in files]


def files_from_json(value: object) -> tuple[FileRef, ...] | None:
    """A message's stored ``files`` (a JSON list), or None when one is not a file."""
    if not isinstance(value, list):
        return None
    found = tuple(FileRef.from_obj(item) for item in value)
    if any(f is None for f in found):
        return None
    return tuple(f for f in found if f is not None)

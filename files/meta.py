"""What is known of one stored file (``FileMeta``), its id and its name. Pure; no I/O.

A file's id is 22 characters of ``secrets.token_urlsafe(16)`` (128 random bits), not a hash
of its content: an id reveals nothing of the bytes (nobody can confirm that a user uploaded a
known file by computing its hash), two uploads of the same bytes are two files that live and
die apart (one user's erasure never touches another's copy: no reference counts), and a
guessed id finds nothing. An id is checked (``valid_file_id``) before it reaches a store key.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from files.errors import BadName
from rooms.attachments import FileRef
from rooms.text import unsafe_text

FILE_ID = re.compile(r"[A-Za-z0-9_-]{22}")
MAX_NAME_CHARS = 255
"""Longest file name kept (what most file systems allow for one name)."""
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
"""The types decoded and re-encoded as images (served inline); everything else is a download."""
DOWNLOAD_TYPE = "application/octet-stream"
"""The Content-Type every non-image is served with, whatever it was sniffed as."""


def new_file_id() -> str:
    return secrets.token_urlsafe(16)


def valid_file_id(value: str) -> bool:
    """Whether ``value`` can be a file id (and so a part of a store key)."""
    return FILE_ID.fullmatch(value) is not None


def clean_name(raw: str | None, default: str = "file") -> str:
    """The name kept for an upload named ``raw`` by its client: only the part after the last
    ``/`` or ``\\`` (a name is a label, never a path; browsers send the base name, some tools
    the path), stripped; ``default`` when none was given. Raises ``BadName`` when what is left
    is empty, ``.`` or ``..``, longer than MAX_NAME_CHARS or holds a control character or a
    lone surrogate (``rooms.text.unsafe_text``)."""
    if raw is None or raw == "":
        return default
    problem = unsafe_text(raw)
    if problem is not None:
        raise BadName(f"the file name must not contain {problem}")
    name = re.split(r"[/\\]", raw)[-1].strip()
    if name in ("", ".", ".."):
        raise BadName("the file name is empty once its folders are left out")
    if len(name) > MAX_NAME_CHARS:
        raise BadName(f"the file name is longer than {MAX_NAME_CHARS} characters")
    return name


@dataclass(frozen=True, slots=True)
class FileMeta:
    """One stored file. ``size`` is the stored bytes (an image's re-encoded form); ``type`` its
    MIME type (an image's, or what the bytes were sniffed as); ``width``/``height`` for images
    (after orientation); ``thumb``: a thumbnail is stored; ``created``: Unix seconds of the
    upload; ``seq``: the message it was attached to (None: not yet; collected after
    ``file_orphan_ttl``)."""

    id: str
    room: str
    user: str
    name: str
    size: int
    type: str
    created: float
    width: int | None = None
    height: int | None = None
    thumb: bool = False
    seq: int | None = None

    @property
    def image(self) -> bool:
        return self.type in IMAGE_TYPES

    def ref(self) -> FileRef:
        """The metadata a message carries of this file (width and height both or neither)."""
        both = self.width is not None and self.height is not None
        return FileRef(self.id, self.name, self.size, self.type,
                       self.width if both else None, self.height if both else None, self.thumb)

    def public(self) -> dict[str, Any]:
        """The object clients see: ``{"id","name","size","type","width"?,"height"?,
        "thumb"?}`` (a message's ``files`` entries; URLs are added by the gateway)."""
        return self.ref().to_obj()

    def to_json(self) -> bytes:
        return orjson.dumps({"v": 1, "id": self.id, "room": self.room, "user": self.user,
                             "name": self.name, "size": self.size, "type": self.type,
                             "created": self.created, "width": self.width,
                             "height": self.height, "thumb": self.thumb, "seq": self.seq})

    @classmethod
    def from_json(cls, raw: bytes) -> FileMeta:
        """Raises ``ValueError`` for anything but what ``to_json`` writes."""
        try:
            obj = orjson.loads(raw)
            meta = cls(id=obj["id"], room=obj["room"], user=obj["user"], name=obj["name"],
                       size=obj["size"], type=obj["type"], created=obj["created"],
                       width=obj["width"], height=obj["height"], thumb=obj["thumb"],
                       seq=obj["seq"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a file's metadata: {exc}") from None
        if not (isinstance(meta.id, str) and valid_file_id(meta.id)
                and all(isinstance(v, str) for v in (meta.room, meta.user, meta.name, meta.type))
                and isinstance(meta.size, int) and isinstance(meta.created, int | float)
                and isinstance(meta.thumb, bool)
                and all(v is None or isinstance(v, int) for v in (meta.width, meta.height,
                                                                  meta.seq))):
            raise ValueError("not a file's metadata: a field has the wrong type")
        return meta

"""The files' metadata and lifecycle over a ``BlobStore``: what is stored where, who owns what,
quotas, attaching to messages, orphans and erasure. It knows nothing of rooms' state: a room is
a name and a message a seq.

The layout, the same in a directory and a bucket::

    meta/<id>.json          FileMeta (``files.meta``): written last, so a file with metadata
                            has its bytes; deleted first, so a file being deleted serves no more
    blob/<owner>/<id>       the bytes (an image re-encoded); <owner> is a hash of the user id,
                            so one listing sums a user's storage (``usage``) or finds their files
                            (``erase``), and no user id ever becomes a path
    thumb/<id>              an image's thumbnail (WebP)
    pending/<id>            written first, deleted once the file is attached to a message:
                            the orphan collector lists only these (``collect_orphans``)
    msg/<room>/<seq>/<id>   empty: the file is attached to message <seq> of <room> (a hash of
                            the room's name), written before the metadata says so, deleted
                            with the file: what a message's delete, retention and a room's
                            removal list (``delete_message``, ``prune``)

A crash between two writes leaves a pending marker, so the collector removes whatever part was
written. Every operation is safe to repeat; none needs a lock across processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from files.blobstore import BlobStore, Entry
from files.errors import BlobStoreError, FileNotFound, NotAttachable
from files.meta import FileMeta, valid_file_id

log = logging.getLogger("roomchat.files")

ATTACH_MARGIN = 60.0
"""Seconds before ``file_orphan_ttl`` from which an upload can no longer be attached (at most
half the TTL): the collector takes only files older than the TTL, so a file is never attached
and collected at once, even by two processes whose clocks differ by less than this."""


def owner_key(user: str) -> str:
    """The folder of ``user``'s blobs: 32 hex digits of SHA-256 (no user id is ever a path)."""
    return hashlib.sha256(user.encode()).hexdigest()[:32]


def meta_key(file_id: str) -> str:
    return f"meta/{file_id}.json"


def blob_key(owner: str, file_id: str) -> str:
    return f"blob/{owner}/{file_id}"


def thumb_key(file_id: str) -> str:
    return f"thumb/{file_id}"


def pending_key(file_id: str) -> str:
    return f"pending/{file_id}"


def room_key(room: str) -> str:
    """The folder of ``room``'s attached files: 32 hex digits of SHA-256 (a room's name is
    never a path)."""
    return hashlib.sha256(room.encode()).hexdigest()[:32]


def message_key(room: str, seq: int, file_id: str) -> str:
    return f"msg/{room_key(room)}/{seq}/{file_id}"


def attach_refusal(meta: FileMeta | None, room: str, user: str, *, now: float,
                   ttl: float) -> FileNotFound | NotAttachable | None:
    """Why the upload ``meta`` (None: no such file) cannot be attached to a new message by
    ``user`` in ``room``, or None when it can: the rules ``Catalog.attach`` enforces, for a
    caller that checks before the message is stored (``gateway.attachments``). Another
    user's file is ``FileNotFound`` (nobody learns which ids exist); the user's own file of
    another room, one attached already (``meta.seq``) or one too old to attach (the
    collector may be taking it) is ``NotAttachable``."""
    if meta is None or meta.user != user:
        return FileNotFound("no such file: upload it first (POST /rooms/<room>/files)")
    if meta.room != room:
        return NotAttachable("the file was uploaded to another room: upload it to this one")
    if meta.seq is not None:
        return NotAttachable(f"the file is attached to message {meta.seq} already")
    if now - meta.created > ttl - min(ATTACH_MARGIN, ttl / 2):
        return NotAttachable("the upload is too old to attach: upload it again")
    return None


class Catalog:
    """Stored files by id. Raises ``BlobStoreError`` when the store fails."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    async def add(self, meta: FileMeta, original: Path, thumb: Path | None) -> None:
        """Store a new file: its bytes from ``original`` and, for an image, its thumbnail
        (both files are consumed), then its metadata. Not attached to a message until
        ``attach``. On failure nothing is visible; what was written is collected later."""
        owner = owner_key(meta.user)
        await self.blobs.put_bytes(pending_key(meta.id), owner.encode())
        await self.blobs.put_file(blob_key(owner, meta.id), original)
        if thumb is not None:
            await self.blobs.put_file(thumb_key(meta.id), thumb)
        await self.blobs.put_bytes(meta_key(meta.id), meta.to_json())

    async def get(self, file_id: str) -> FileMeta | None:
        """The file's metadata, or None (for an id of no possible file too)."""
        if not valid_file_id(file_id):
            return None
        raw = await self.blobs.get_bytes(meta_key(file_id))
        if raw is None:
            return None
        try:
            return FileMeta.from_json(raw)
        except ValueError as exc:
            log.warning("files: unreadable metadata of %s: %s", file_id, exc)
            return None

    def blob_key(self, meta: FileMeta, thumb: bool = False) -> str:
        """Where the file's bytes (or its thumbnail's) are."""
        return thumb_key(meta.id) if thumb else blob_key(owner_key(meta.user), meta.id)

    async def usage(self, user: str) -> int:
        """Bytes of ``user``'s stored files (thumbnails are ours, not counted)."""
        return sum(entry.size for entry in await self.blobs.list(f"blob/{owner_key(user)}/"))

    async def attach(self, file_id: str, room: str, seq: int, *, now: float, ttl: float,
                     user: str | None = None) -> FileMeta:
        """Mark the file as attached to message ``seq`` of ``room`` (it is then never collected
        as an orphan); the rich-messages path calls this once the message is stored. Idempotent
        for the same message. ``user``: when given, the file must be theirs.

        Raises ``FileNotFound`` (no such file, or ``user``'s is not), ``NotAttachable`` (a file
        of another room, already attached to another message, or uploaded more than ``ttl``
        minus ATTACH_MARGIN seconds ago: the collector may be taking it)."""
        meta = await self.get(file_id)
        if meta is None or (user is not None and meta.user != user):
            raise FileNotFound(f"no file {file_id}")
        if meta.room != room:
            raise NotAttachable("the file was uploaded to another room")
        if meta.seq == seq:
            return meta
        if meta.seq is not None:
            raise NotAttachable(f"the file is attached to message {meta.seq} already")
        if now - meta.created > ttl - min(ATTACH_MARGIN, ttl / 2):
            raise NotAttachable("the upload is too old to attach: upload it again")
        attached = replace(meta, seq=seq)
        # The message's index first: a crash before the metadata leaves an entry that
        # ``delete_message`` and ``prune`` skip (the file does not say it is that message's).
        await self.blobs.put_bytes(message_key(room, seq, file_id), b"")
        await self.blobs.put_bytes(meta_key(file_id), attached.to_json())
        await self.blobs.delete(pending_key(file_id))
        return attached

    async def delete(self, meta: FileMeta) -> None:
        """Remove the file: metadata first (it serves no more), then thumbnail, bytes, marker."""
        await self.blobs.delete(meta_key(meta.id))
        await self.blobs.delete(thumb_key(meta.id))
        await self.blobs.delete(blob_key(owner_key(meta.user), meta.id))
        await self.blobs.delete(pending_key(meta.id))
        if meta.seq is not None:
            await self.blobs.delete(message_key(meta.room, meta.seq, meta.id))

    async def delete_message(self, room: str, seq: int) -> list[str]:
        """Delete the files attached to message ``seq`` of ``room`` (it was deleted); the ids
        deleted. Safe to repeat; a message without files costs one listing."""
        return await self._delete_attached(
            room, await self.blobs.list(f"msg/{room_key(room)}/{seq}/"), lambda s: s == seq)

    async def prune(self, room: str, below: int) -> list[str]:
        """Delete the files attached to messages of ``room`` with a seq below ``below``
        (retention pruned them from the room's log); the ids deleted."""
        return await self._delete_attached(
            room, await self.blobs.list(f"msg/{room_key(room)}/"), lambda s: s < below)

    async def _delete_attached(self, room: str, entries: list[Entry],
                               wanted: Callable[[int], bool]) -> list[str]:
        deleted: list[str] = []
        for entry in entries:
            parts = entry.key.split("/")  # msg/<room>/<seq>/<id>
            if len(parts) != 4 or not parts[2].isdigit() or not wanted(int(parts[2])):
                continue
            seq, file_id = int(parts[2]), parts[3]
            meta = await self.get(file_id)
            if meta is not None and meta.room == room and meta.seq == seq:
                await self.delete(meta)
                deleted.append(file_id)
            else:  # what a crash or an erasure left of the index: the file is not that message's
                await self.blobs.delete(entry.key)
        return deleted

    async def erase(self, user: str, room: str | None = None) -> list[str]:
        """Delete ``user``'s files in ``room`` (every room: None), attached or not; the ids
        deleted. What the erasure path (``roomchat erase``) calls; safe to repeat."""
        owner = owner_key(user)
        erased: list[str] = []
        for entry in await self.blobs.list(f"blob/{owner}/"):
            file_id = entry.key.rsplit("/", 1)[-1]
            meta = await self.get(file_id)
            if meta is None:
                if room is None:  # bytes whose metadata a crash lost: theirs all the same
                    await self.blobs.delete(entry.key)
                    await self.blobs.delete(thumb_key(file_id))
                    erased.append(file_id)
                continue
            if room is not None and meta.room != room:
                continue
            await self.delete(meta)
            erased.append(file_id)
        return erased

    async def collect_orphans(self, *, now: float, ttl: float) -> list[str]:
        """Delete every upload not attached to a message within ``ttl`` seconds, and what a
        crash left of an upload; the ids collected. One failure is logged and skipped (the next
        run retries it)."""
        collected: list[str] = []
        for entry in await self.blobs.list("pending/"):
            if entry.modified > now - ttl:
                continue
            file_id = entry.key.rsplit("/", 1)[-1]
            try:
                meta = await self.get(file_id)
                if meta is not None and meta.seq is not None:  # attached, marker left behind
                    await self.blobs.delete(entry.key)
                    continue
                if meta is not None and meta.created > now - ttl:
                    continue
                if meta is not None:
                    await self.delete(meta)
                else:  # a crash before the metadata: the marker names the owner
                    owner = (await self.blobs.get_bytes(entry.key) or b"").decode(errors="replace")
                    await self.blobs.delete(thumb_key(file_id))
                    with contextlib.suppress(ValueError):  # a marker of no known form
                        await self.blobs.delete(blob_key(owner, file_id))
                    await self.blobs.delete(entry.key)
                collected.append(file_id)
            except BlobStoreError as exc:
                log.warning("files: could not collect %s: %s", file_id, exc)
        return collected


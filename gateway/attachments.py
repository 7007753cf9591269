"""Files of messages, between the rooms and the file store: what lets a room carry uploads
without ever touching the blob store.

Before a message reaches its room (``resolve``): the file ids a ``message`` names are looked
up in the catalog and checked (``files.catalog.attach_refusal``: the sender's own upload, to
this room, not attached yet, not too old), then the frame goes on with their metadata
(``SendMessage.files``). The room stores and delivers that as it is; its loop never waits for
blob I/O. The socket's reader (``gateway.ws``) does this on its own task, holding the frames
the client sent after it until it is done, so a connection's frames reach the room in the
order sent; the server API does it in its request. A refusal is answered at once with an
``error`` (``file_not_found``, ``file_not_attachable``, ``unavailable``); nothing is stored.

After the room stored its batch (``stored``, the rooms' ``rooms.actor.Stored`` hook, on the
room's loop: it only queues): each new message's files are attached to it
(``Catalog.attach``, now that its seq is known), a deleted message's files are deleted, and
the files of messages retention pruned go too. One worker task does these jobs in order; at
most ``file_jobs_limit`` wait (beyond, a job is dropped with a warning).

What is not atomic, said plainly: a message is stored before its files are marked attached.
If the process dies in between (or the job is dropped), the message keeps its files'
metadata but the orphan collector deletes their bytes after ``file_orphan_ttl`` (downloads
then answer 404). A resend of a message (same ``id``) whose files were attached meanwhile is
let through when the stored message at their seq is that same message, so the room answers
it as the duplicate it is. Between the check and the attach, a file is claimed in this
process (``CLAIM_TTL``): another message naming it is refused as ``file_not_attachable``
(a resend with the same ``id`` passes). Two processes are not told of each other's claims:
two messages naming one upload sent through two processes within that moment may both be
stored; the second one's attach then fails (logged) and deleting either deletes the file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from files.errors import BlobStoreError, FileNotFound, NotAttachable
from files.service import FileService
from rooms import protocol
from rooms.attachments import FileRef
from rooms.errors import StoreError
from rooms.messages import Action, AnyDraft, Appended, ChangeDraft, Draft, StoredMessage
from rooms.protocol import ErrorCode, SendMessage

if TYPE_CHECKING:
    from gateway.gateway import Gateway

log = logging.getLogger("roomchat.files")

CLAIM_TTL = 60.0
"""Seconds a file stays claimed by the message that named it, unless attached sooner: long
enough for any message to be stored or refused (``store_outage_timeout`` is 15 s)."""
ATTACH_ATTEMPTS = 3
"""Tries of one job against a failing store (1 s, then 2 s apart) before it is given up."""


class Refused(Exception):
    """A message's files were refused: ``error`` is the frame's ``error`` object's fields."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Attach:
    room: str
    seq: int
    user: str
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Deleted:
    room: str
    seq: int


@dataclass(frozen=True, slots=True)
class _Prune:
    room: str


_Job = _Attach | _Deleted | _Prune


class Attachments:
    """Resolving a message's files, and the jobs that follow its storing. ``service``: the
    open ``FileService`` (raises ``BlobStoreError`` before the server started). ``start`` and
    ``stop`` own the worker task."""

    def __init__(self, gw: Gateway, service: Callable[[], FileService]) -> None:
        self._gw = gw
        self._service = service
        config = gw.config
        self._timeout = config.room.store_timeout
        self._retention = config.room.history_retention
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue(config.file_jobs_limit)
        self._worker: asyncio.Task[None] | None = None
        # Per room, the seq up to which retention was last applied to its files; bounded
        # like the rooms a process runs (an evicted room is pruned again on its next append).
        self._pruned: OrderedDict[str, int] = OrderedDict()
        self._pruned_limit = max(1, config.max_live_rooms)
        # file id -> (room, user, message id, since): checked, not yet attached (oldest first).
        self._claims: OrderedDict[str, tuple[str, str, str | None, float]] = OrderedDict()
        self.dropped = 0
        """Jobs dropped because ``file_jobs_limit`` were waiting (statistics, tests)."""

    # -- before the room ------------------------------------------------------------------

    async def resolve(self, room: str, user: str, frame: SendMessage) -> SendMessage:
        """``frame`` with its files' metadata (``files``), in the order named. Raises
        ``Refused`` (send it as the frame's ``error``; the message is not sent)."""
        if not frame.file_ids:
            return frame
        try:
            async with asyncio.timeout(self._timeout):
                refs = [await self._check(room, user, file_id, frame.id)
                        for file_id in frame.file_ids]
        except (BlobStoreError, StoreError, TimeoutError) as exc:
            log.warning("files: cannot check the files of a message in room %s: %s", room,
                        exc or "timed out")
            raise Refused(ErrorCode.UNAVAILABLE, "file storage is unavailable; the message "
                          "was not sent: resend it in a moment") from None
        self._claim(room, user, frame.id, refs)
        return dataclasses.replace(frame, files=tuple(refs))

    def _claim(self, room: str, user: str, client_id: str | None,
               refs: list[FileRef]) -> None:
        """Claim ``refs`` for message ``client_id`` (no await here: check and claim are one
        step on the loop). Raises ``Refused`` when another message claimed one."""
        now = time.monotonic()
        claims = self._claims
        while claims and next(iter(claims.values()))[3] <= now - CLAIM_TTL:
            claims.popitem(last=False)
        for ref in refs:
            claim = claims.get(ref.id)
            if claim is not None and (claim[2] is None or claim[:3] != (room, user, client_id)):
                raise Refused(ErrorCode.FILE_NOT_ATTACHABLE, f"file {ref.id}: another message "
                              "of yours carries it already")
        for ref in refs:
            claims[ref.id] = (room, user, client_id, now)
            claims.move_to_end(ref.id)

    async def _check(self, room: str, user: str, file_id: str,
                     client_id: str | None) -> FileRef:
        service = self._service()
        meta = await service.catalog.get(file_id)
        refusal = service.attach_refusal(meta, room, user)
        if refusal is None:
            assert meta is not None
            return meta.ref()
        if isinstance(refusal, NotAttachable) and meta is not None and meta.room == room \
                and meta.seq is not None and client_id is not None \
                and await self._resent(room, meta.seq, user, client_id):
            return meta.ref()  # a resend of the message it went with: a duplicate
        if isinstance(refusal, FileNotFound):
            raise Refused(ErrorCode.FILE_NOT_FOUND, f"no file {file_id} of yours: upload it "
                          "to this room first (POST /rooms/<room>/files)")
        raise Refused(ErrorCode.FILE_NOT_ATTACHABLE, f"file {file_id}: {refusal}")

    async def _resent(self, room: str, seq: int, user: str, client_id: str) -> bool:
        """Whether message ``seq`` of ``room`` is ``user``'s with id ``client_id``."""
        entries = await self._gw.store.read(room, seq - 1, seq, 1)
        return bool(entries) and isinstance(entries[0], StoredMessage) and \
            entries[0].user == user and entries[0].id == client_id

    # -- after the room -------------------------------------------------------------------

    def stored(self, room: str, batch: Sequence[AnyDraft],
               results: Sequence[Appended]) -> None:
        """The rooms' hook (``rooms.actor.Stored``): queue what follows ``batch`` being
        stored. Never blocks."""
        top = 0
        for draft, result in zip(batch, results, strict=True):
            if result.refused is not None or result.duplicate or result.noop or not result.seq:
                continue
            top = max(top, result.seq)
            if isinstance(draft, Draft) and draft.files:
                self._queue(_Attach(room, result.seq, draft.user,
                                    tuple(f.id for f in draft.files)))
            elif isinstance(draft, ChangeDraft) and draft.action is Action.DELETE:
                self._queue(_Deleted(room, draft.target))
        retention = self._retention
        if retention and top > retention:
            # Retention prunes the log a step at a time (~1% of it); so do the files.
            cutoff = top - retention
            last = self._pruned.get(room)
            if last is None or cutoff >= last + max(1, retention // 100):
                self._pruned[room] = cutoff
                self._pruned.move_to_end(room)
                while len(self._pruned) > self._pruned_limit:
                    self._pruned.popitem(last=False)
                self._queue(_Prune(room))

    def _queue(self, job: _Job) -> None:
        try:
            self._jobs.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("files: %d file jobs waiting already (file_jobs_limit); dropped %s",
                        self._jobs.maxsize, job)

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="files-jobs")

    async def stop(self, timeout: float) -> None:
        """Finish the jobs waiting (the rooms have stored their last batches by now), for up
        to ``timeout`` seconds; then cancel the rest."""
        if self._worker is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._jobs.join()
        except TimeoutError:
            log.warning("files: %d file jobs left undone at shutdown", self._jobs.qsize())
        self._worker.cancel()
        await asyncio.wait([self._worker])
        self._worker = None

    async def idle(self) -> None:
        """Return once every job queued so far is done (tests, shutdown)."""
        await self._jobs.join()

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await self._run(job)
            finally:
                self._jobs.task_done()

    async def _run(self, job: _Job) -> None:
        for attempt in range(ATTACH_ATTEMPTS):
            try:
                await self._do(job)
                return
            except (BlobStoreError, StoreError) as exc:
                if attempt + 1 == ATTACH_ATTEMPTS:
                    log.error("files: gave up on %s: %s", job, exc)
                    return
                await asyncio.sleep(2.0 ** attempt)

    async def _do(self, job: _Job) -> None:
        service = self._service()
        if isinstance(job, _Attach):
            for file_id in job.ids:
                try:
                    await service.attach(file_id, job.room, job.seq, user=job.user)
                    self._claims.pop(file_id, None)  # the catalog says so from now on
                except (FileNotFound, NotAttachable) as exc:
                    # Deleted meanwhile (an erasure), or named by two messages at once.
                    log.warning("files: file %s of message %d in room %s not attached: %s",
                                file_id, job.seq, job.room, exc)
        elif isinstance(job, _Deleted):
            deleted = await service.delete_message(job.room, job.seq)
            if deleted:
                log.info("files: deleted %d files of message %d in room %s", len(deleted),
                         job.seq, job.room)
        else:
            entries = await self._gw.store.read(job.room, 0, protocol.MAX_SEQ, 1)
            if entries:  # the oldest entry still stored: files of older messages go
                pruned = await service.prune(job.room, entries[0].seq)
                if pruned:
                    log.info("files: deleted %d files of messages pruned from room %s",
                             len(pruned), job.room)


def refusal_error(refused: Refused, client_id: str | None) -> str:
    """The ``error`` object answering a message whose files were refused."""
    return protocol.error(refused.code, refused.message, client_id=client_id,
                          retry_after=1.0 if refused.code is ErrorCode.UNAVAILABLE else None)


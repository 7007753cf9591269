"""Files of a room over HTTP: uploads, downloads with signed URLs, and the files' lifecycle in
one process (``files.service`` does the work; this module reads requests and maps its errors).

- ``POST /rooms/<room>/files?name=<file name>``: a member's upload (``Purpose.UPLOAD``: the
  user's token in ``Authorization: Bearer``), the raw bytes as the body (no multipart), read
  in chunks as they arrive. ``POST /api/v1/rooms/<room>/files?name=&user=`` is the same for a
  service credential (``Purpose.API``; ``user``: whose file it is, default the credential's).
  Each costs a token of the user's upload bucket (``upload_rate``/``upload_burst``). Answers
  201 with the file (``files.meta.FileMeta.public``) plus ``url`` (and ``thumb_url``): signed
  URLs valid for ``file_url_ttl``, and ``expires`` (Unix seconds).
- ``GET /rooms/<room>/files/<id>`` and ``.../<id>/thumb``: with a signed URL's ``exp`` and
  ``sig`` (what an ``<img>`` uses), or a member's bearer token (``Purpose.FILE``); under
  ``/api/v1`` with a service credential. Images are served inline as their type, everything
  else as ``application/octet-stream`` with ``Content-Disposition: attachment``; every answer
  has ``X-Content-Type-Options: nosniff``, a CSP of ``default-src 'none'; sandbox`` (an SVG or
  HTML file opened directly runs nothing), an ``ETag``, and ``Range`` support.
- ``POST /rooms/<room>/files/urls`` (a member's bearer, ``Purpose.FILE``; ``/api/v1``: a service
  credential) with ``{"ids": [...]}`` (at most ``max_file_urls``): signed URLs of the room's
  files, ``{"files": {"<id>": {"url", "thumb_url"?, "expires"}}}`` (what a page showing a
  message's files asks for; messages carry metadata only). Unknown ids are left out.

Messages carry files through ``gateway.attachments`` (resolved before the room, attached,
deleted and pruned after it).

The uploads' rate buckets, the URL signer and the ``FileService`` (opened with the server,
with its orphan collector task) live in ``Files``, in ``app.extensions[EXTENSION]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from quart import Blueprint, Quart, Response, current_app, request
from quart.wrappers.response import ResponseBody
from werkzeug.exceptions import RequestedRangeNotSatisfiable, RequestEntityTooLarge

from files.blobstore import open_blobstore
from files.errors import (
    BadImage,
    BadName,
    BlobStoreError,
    EmptyFile,
    FileError,
    FileNotFound,
    FileTooLarge,
    ImageTooLarge,
    NotAttachable,
    QuotaExceeded,
    UploadStalled,
)
from files.meta import DOWNLOAD_TYPE, FileMeta, clean_name, valid_file_id
from files.service import FileLimits, FileService
from files.signing import UrlRefused, UrlSigner, Variant, derive_key
from gateway.access import Purpose, QuartKnock
from gateway.auth import server_secret, valid_room_name
from gateway.config import Config
from gateway.errors import Rejection
from gateway.inputs import json_object, user_id
from gateway.limits import KeyedBuckets
from rooms.protocol import dumps
from rooms.ratelimit import BytePace

if TYPE_CHECKING:
    from gateway.gateway import Gateway

log = logging.getLogger("roomchat.files")

EXTENSION = "roomchat.files"
FILE_CSP = "default-src 'none'; sandbox"
"""Whatever a file holds (an SVG's script, an HTML page), opened on its own it runs nothing."""

URL_LOOKUPS = 8
"""Metadata reads one ``files/urls`` request runs at once (each is one blob-store read)."""

UPLOAD_PATH = re.compile(r"(?:/api/v1)?/rooms/[A-Za-z0-9_-]{1,64}/files")
"""The upload routes' paths (``upload``, ``api_upload``): the bodies ``UploadPace`` paces."""
PACE_BURST = 1024 * 1024
"""Bytes of uploads read at once before ``upload_read_rate`` applies: a small file (a
screenshot) is read at the network's speed."""

blueprint = Blueprint("files", __name__)
api_blueprint = Blueprint("files_api", __name__, url_prefix="/api/v1")


class Files:
    """What the file routes of one process share. ``start``/``stop`` open and close the blob
    store and own the orphan collector's task. Raises ``ValueError`` for a bad setting."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.signer = UrlSigner(derive_key(server_secret(config)), config.file_url_ttl)
        self.uploads: KeyedBuckets[str] = KeyedBuckets(config.upload_rate, config.upload_burst)
        self.limits = FileLimits(
            max_file_bytes=config.max_file_bytes,
            max_user_storage_bytes=config.max_user_storage_bytes,
            max_image_pixels=config.max_image_pixels, file_orphan_ttl=config.file_orphan_ttl,
            image_workers=config.image_workers,
            upload_idle_timeout=config.upload_idle_timeout)
        self._service: FileService | None = None
        self._collector: asyncio.Task[None] | None = None

    @property
    def service(self) -> FileService:
        if self._service is None:
            raise BlobStoreError("the file store is not open (server not started)")
        return self._service

    async def start(self) -> None:
        """Open the blob store (``files_url``) and start the orphan collector. Raises
        ``ValueError`` or ``BlobStoreError`` (``gateway.preflight`` checks both first)."""
        blobs = await open_blobstore(self.config.resolved_files_url,
                                     spool=self.config.data_dir / "files-spool")
        self._service = FileService(blobs, self.limits)
        # Owned here: cancelled and awaited in stop().
        self._collector = asyncio.create_task(self._service.run_collector(),
                                              name="files-collector")

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.wait([self._collector])
            self._collector = None
        if self._service is not None:
            await self._service.close()
            self._service = None

    def described(self, meta: FileMeta, now: float) -> dict[str, Any]:
        """The file as a client sees it, with URLs signed at ``now``: ``url``, ``thumb_url``
        (with a thumbnail) and ``expires``."""
        obj = meta.public()
        signed = self.signer.sign(meta.room, meta.id, Variant.FILE, now)
        obj["url"] = signed.path
        if meta.thumb:
            obj["thumb_url"] = self.signer.sign(meta.room, meta.id, Variant.THUMB, now).path
        obj["expires"] = signed.expires
        return obj


def install(app: Quart, config: Config) -> Files:
    """Add the file routes to ``app``; the caller starts and stops the returned ``Files``
    with the server (``gateway.app``). Raises ``ValueError`` for a bad setting."""
    files = Files(config)
    app.extensions[EXTENSION] = files
    # Quart holds a request body's unread part in memory up to this, and refuses a declared
    # Content-Length above it: at least an upload's limit (its own default is 16 MiB).
    app.config["MAX_CONTENT_LENGTH"] = max(app.config["MAX_CONTENT_LENGTH"] or 0,
                                           config.max_file_bytes)
    app.register_blueprint(blueprint)
    app.register_blueprint(api_blueprint)

    async def refused(exc: FileError) -> Response:
        return file_rejection(exc).response()

    app.register_error_handler(FileError, refused)
    return files


ASGIApp = Callable[..., Awaitable[None]]


class UploadPace:
    """ASGI middleware in front of Quart: the bodies of uploads (``UPLOAD_PATH``, POST) are
    read at most ``rate`` bytes a second, all uploads of this process together (``rate`` 0:
    no bound). Reading a body costs the process's core (socket reads, HTTP parsing, Quart's
    copies, the spool's writes: ~3 ms of CPU per MiB here); unbounded, one upload at full
    speed took what the core had and a busy room's p99 rose with it (bench/filesp99.py).

    Why not in the route: Quart's receiver task appends a request's body to the request's
    buffer as fast as it arrives, whatever the handler's pace (up to ``MAX_CONTENT_LENGTH``),
    so the route cannot slow the reading. Waiting here, in ``receive``, does: Hypercorn stops
    reading the socket once its queue to the app is full, and TCP slows the sender; Quart's
    buffer then holds what arrived while the route waited for the disk."""

    def __init__(self, app: ASGIApp, rate: float) -> None:
        self.app = app
        self.pace = BytePace(rate, PACE_BURST) if rate > 0 else None

    def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                 send: Callable[[Any], Awaitable[None]]) -> Awaitable[None]:
        if self.pace is None or scope["type"] != "http" or scope["method"] != "POST" or \
                UPLOAD_PATH.fullmatch(scope["path"]) is None:
            return self.app(scope, receive, send)
        return self.app(scope, self._paced(receive, self.pace), send)

    @staticmethod
    def _paced(receive: Callable[[], Awaitable[Any]],
               pace: BytePace) -> Callable[[], Awaitable[Any]]:
        async def paced() -> Any:
            message = await receive()
            if message["type"] == "http.request" and message.get("body"):
                wait = pace.delay(len(message["body"]), time.monotonic())
                if wait > 0:
                    await asyncio.sleep(wait)
            return message

        return paced


def files_of(app: Quart) -> Files:
    files: Files = app.extensions[EXTENSION]
    return files


def file_rejection(exc: FileError) -> Rejection:
    """The HTTP answer for a ``files`` error (the one place they become statuses)."""
    if isinstance(exc, FileTooLarge):
        return Rejection(413, "file_too_large", str(exc))
    if isinstance(exc, QuotaExceeded):
        return Rejection(413, "quota_exceeded", str(exc))
    if isinstance(exc, ImageTooLarge):
        return Rejection(413, "image_too_large", str(exc))
    if isinstance(exc, EmptyFile):
        return Rejection(400, "empty_file", str(exc))
    if isinstance(exc, BadName):
        return Rejection(400, "bad_request", str(exc))
    if isinstance(exc, BadImage):
        return Rejection(422, "bad_image", str(exc))
    if isinstance(exc, UploadStalled):
        return Rejection(408, "upload_stalled", str(exc))
    if isinstance(exc, FileNotFound):
        return Rejection(404, "not_found", "no such file in this room")
    if isinstance(exc, NotAttachable):
        return Rejection(409, "not_attachable", str(exc))
    if isinstance(exc, UrlRefused):
        return Rejection(403, "url_expired" if exc.expired else "bad_signature", str(exc))
    if isinstance(exc, BlobStoreError):
        log.warning("files: %s", exc)
        return Rejection(503, "unavailable", "file storage is unavailable; try again shortly")
    return Rejection(500, "internal", "internal error")


def content_disposition(kind: str, name: str) -> str:
    """``kind`` (``inline`` or ``attachment``) with ``name`` twice: an ASCII stand-in for old
    clients (``filename``; what is not printable ASCII, a quote or a backslash becomes ``_``)
    and the name itself in UTF-8 (RFC 5987/6266 ``filename*``)."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


# -- uploads -------------------------------------------------------------------------------------

@blueprint.post("/rooms/<room>/files")
async def upload(room: str) -> Response:
    """A member's upload (module docstring)."""
    gw: Gateway = current_app.extensions["roomchat"]
    admission = await gw.door.admit(QuartKnock(request), Purpose.UPLOAD, room)
    return await _receive(room, admission.caller.user)


@api_blueprint.post("/rooms/<room>/files")
async def api_upload(room: str) -> Response:
    """An upload through the server API, as ``user`` (default: the credential's)."""
    gw: Gateway = current_app.extensions["roomchat"]
    admission = await gw.door.admit(QuartKnock(request), Purpose.API, room)
    raw_user = request.args.get("user")
    user = user_id(raw_user) if raw_user is not None else admission.caller.user
    return await _receive(room, user)


async def _receive(room: str, user: str) -> Response:
    files = files_of(current_app)
    name = clean_name(request.args.get("name"))
    declared = request.content_length
    if declared is not None and declared > files.config.max_file_bytes:
        raise FileTooLarge(files.config.max_file_bytes)  # before it costs an upload
    wait = files.uploads.take(user, time.monotonic())
    if wait > 0:
        raise Rejection(429, "too_many_uploads", "too many uploads; retry after Retry-After "
                        "seconds", wait)
    meta = await files.service.receive(_body(files.config.max_file_bytes), room=room,
                                       user=user, name=name, declared=declared)
    return Response(dumps(files.described(meta, time.time())), status=201,
                    content_type="application/json", headers={"Cache-Control": "no-store"})


async def _body(limit: int) -> AsyncIterator[bytes]:
    """The request's body as it arrives. Quart refuses a body whose unread part passes
    ``MAX_CONTENT_LENGTH`` (``install`` sets it to ``limit`` or more): that is this file's
    ``FileTooLarge`` too."""
    try:
        async for chunk in request.body:
            yield chunk
    except RequestEntityTooLarge:
        raise FileTooLarge(limit) from None


# -- signed URLs for files a page shows --------------------------------------------------------

@blueprint.post("/rooms/<room>/files/urls")
async def urls(room: str) -> Response:
    """Signed URLs for files of the room (what an ``<img>`` needs: it cannot send a bearer
    header): ``{"ids": [...]}`` (at most ``max_file_urls``) -> ``{"files": {"<id>": {"url",
    "thumb_url"?, "expires"}}}``. A member's bearer token (``Purpose.FILE``): whoever may
    read the room may download its files, as with the bearer download itself (an upload's
    id is 128 random bits, known from the message that carries it, or to its uploader; and a
    message reaches members before its files are marked attached, so that mark cannot be
    asked for). Ids of no file of this room, or of no possible file, are left out: one
    answer for all of them."""
    gw: Gateway = current_app.extensions["roomchat"]
    await gw.door.admit(QuartKnock(request), Purpose.FILE, room)
    return await _urls(room)


@api_blueprint.post("/rooms/<room>/files/urls")
async def api_urls(room: str) -> Response:
    """``urls`` for a service credential."""
    gw: Gateway = current_app.extensions["roomchat"]
    await gw.door.admit(QuartKnock(request), Purpose.API, room)
    return await _urls(room)


async def _urls(room: str) -> Response:
    files = files_of(current_app)
    body = json_object(await request.get_data())
    ids = body.get("ids")
    most = files.config.max_file_urls
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or \
            len(ids) > most:
        raise Rejection(400, "bad_request", f"ids must be a list of at most {most} file ids")
    wanted = [i for i in dict.fromkeys(ids) if valid_file_id(i)]
    found: dict[str, FileMeta] = {}
    lookups = asyncio.Semaphore(URL_LOOKUPS)

    async def look(file_id: str) -> None:
        async with lookups:
            meta = await files.service.catalog.get(file_id)
        if meta is not None and meta.room == room:
            found[file_id] = meta

    async with asyncio.TaskGroup() as group:
        for file_id in wanted:
            group.create_task(look(file_id))
    now = time.time()
    signed = {}
    for file_id in wanted:  # in the order asked
        if file_id in found:
            described = files.described(found[file_id], now)
            signed[file_id] = {key: described[key] for key in ("url", "thumb_url", "expires")
                               if key in described}
    return Response(dumps({"files": signed}), content_type="application/json",
                    headers={"Cache-Control": "no-store"})


# -- downloads -----------------------------------------------------------------------------------

@blueprint.get("/rooms/<room>/files/<file_id>")
async def download(room: str, file_id: str) -> Response:
    return await _download(room, file_id, Variant.FILE)


@blueprint.get("/rooms/<room>/files/<file_id>/thumb")
async def download_thumb(room: str, file_id: str) -> Response:
    return await _download(room, file_id, Variant.THUMB)


@api_blueprint.get("/rooms/<room>/files/<file_id>")
async def api_download(room: str, file_id: str) -> Response:
    return await _api_download(room, file_id, Variant.FILE)


@api_blueprint.get("/rooms/<room>/files/<file_id>/thumb")
async def api_download_thumb(room: str, file_id: str) -> Response:
    return await _api_download(room, file_id, Variant.THUMB)


async def _download(room: str, file_id: str, variant: Variant) -> Response:
    """With a signed URL (``exp``/``sig``), or else a member's bearer token."""
    files = files_of(current_app)
    if not valid_room_name(room) or not valid_file_id(file_id):
        raise FileNotFound(file_id)  # no store is asked about what no id can be
    exp, sig = request.args.get("exp"), request.args.get("sig")
    if exp is not None or sig is not None:
        now = time.time()
        expires = files.signer.check(room, file_id, variant, exp, sig, now)
        cache = f"private, max-age={max(0, int(expires - now))}"
    else:
        gw: Gateway = current_app.extensions["roomchat"]
        await gw.door.admit(QuartKnock(request), Purpose.FILE, room)
        cache = "private, no-cache"
    return await _send(files.service, await files.service.find(room, file_id), variant, cache)


async def _api_download(room: str, file_id: str, variant: Variant) -> Response:
    gw: Gateway = current_app.extensions["roomchat"]
    await gw.door.admit(QuartKnock(request), Purpose.API, room)
    if not valid_file_id(file_id):
        raise FileNotFound(file_id)
    files = files_of(current_app)
    return await _send(files.service, await files.service.find(room, file_id), variant,
                       "no-store")


async def _send(service: FileService, meta: FileMeta, variant: Variant,
                cache: str) -> Response:
    thumb = variant is Variant.THUMB
    size = await service.thumb_size(meta) if thumb else meta.size
    if thumb:
        content_type, disposition = service.thumb_type, "inline"
    elif meta.image:
        content_type, disposition = meta.type, "inline"
    else:
        content_type, disposition = DOWNLOAD_TYPE, "attachment"
    response = Response(BlobBody(service, meta, thumb, size), content_type=content_type)
    response.content_length = size
    response.set_etag(f"{meta.id}-{variant.value}")  # a file's bytes never change
    response.headers["Content-Disposition"] = content_disposition(disposition, meta.name)
    response.headers["Content-Security-Policy"] = FILE_CSP
    response.headers["Cache-Control"] = cache
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    response.headers["Accept-Ranges"] = "bytes"
    return await response.make_conditional(request, accept_ranges=True, complete_length=size)


class BlobBody(ResponseBody):
    """A stored file's bytes as a Quart response body, with the one range Quart asks for
    (``make_conditional``): Quart then answers ``Range`` with 206 (or 416) and
    ``If-None-Match`` with 304."""

    def __init__(self, service: FileService, meta: FileMeta, thumb: bool, size: int) -> None:
        self._service = service
        self._meta = meta
        self._thumb = thumb
        self.size = size
        self.begin = 0
        self.end = size
        self._chunks: AsyncIterator[bytes] | None = None

    async def make_conditional(self, begin: int, end: int | None) -> int:
        """Serve bytes ``begin`` to ``end`` (exclusive; None: to the end; a negative
        ``begin``: that many last bytes); the whole size. Raises 416 for a range outside."""
        if begin < 0:  # bytes=-N (Quart's own file body would seek before the start)
            begin = max(0, self.size + begin)
        end = self.size if end is None else min(end, self.size)
        if begin >= end:
            raise RequestedRangeNotSatisfiable(self.size)
        self.begin, self.end = begin, end
        return self.size

    async def __aenter__(self) -> BlobBody:
        self._chunks = self._service.read(self._meta, self._thumb, self.begin, self.end)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc_value: BaseException | None, tb: TracebackType | None) -> None:
        if self._chunks is not None:
            close = getattr(self._chunks, "aclose", None)
            if close is not None:
                with contextlib.suppress(BlobStoreError):
                    await close()

    def __aiter__(self) -> AsyncIterator[bytes]:
        assert self._chunks is not None, "iterated outside `async with`"
        return self._chunks


async def erase_files(app: Quart, user: str, room: str | None = None) -> list[str]:
    """Delete ``user``'s files (in ``room`` only, when given): the erasure path's hook
    (``POST /api/v1/users/<user>/erase``, so ``roomchat erase``). The ids deleted."""
    return await files_of(app).service.erase(user, room)

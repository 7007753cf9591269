"""Files over HTTP against a real server (file:// and s3://): uploads, signed and bearer
downloads, the bad files of issue 23, limits at their edges, and the lifecycle hooks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from files.meta import new_file_id
from gateway.client import ClientError, RoomClient
from tests.apicall import API_KEY, call
from tests.imagefiles import (
    GPS_IFD,
    HTML,
    SVG,
    image,
    jpeg_with_gps,
    opened,
    png_bomb,
    polyglot_jpeg,
    truncated,
)
from tests.redis_server import redis_server
from tests.s3_server import S3_ENV, make_bucket, s3_server
from tests.startup import assert_one_line, serve
from tests.support import (
    SLOW,
    Server,
    free_port,
    make_config,
    make_token,
    running_server,
    server_process,
    until,
)

MiB = 1024 * 1024


def http(port: int, method: str, path: str, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request: ``(status, headers with lower-case names, body)``. A body is
    sent the way a browser sends it (``_early_answered``): an answer that comes before the
    whole body went out (a refusal of its declared size) is read, not lost to a broken pipe."""
    if data:
        return _early_answered(port, method, path, data, headers or {})
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30 * SLOW) as response:
            status, got, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, got, body = exc.code, exc.headers, exc.read()
    return status, {k.lower(): v for k, v in got.items()}, body


def _early_answered(port: int, method: str, path: str, data: bytes,
                    headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """``http`` with a body, watching for the answer while sending it (RFC 9112 9.5: a client
    sending a body should watch for an error answer and stop sending). The server refuses a
    declared size over the limit before reading the body and then closes: urllib, which sends
    everything before it reads, met a broken pipe there on a loaded machine."""
    conn = HTTPConnection("127.0.0.1", port, timeout=30 * SLOW)
    try:
        conn.putrequest(method, path)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            conn.putheader(name, value)
        conn.endheaders()
        sock = conn.sock
        assert sock is not None
        view = memoryview(data)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for start in range(0, len(view), 65536):
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break  # answered early: stop sending, read it
                sock.sendall(view[start:start + 65536])
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        conn.close()


class Files:
    """Calls of one server's file routes, off the event loop."""

    def __init__(self, server: Server, user: str = "alice", room: str = "lobby") -> None:
        self.port = server.port
        self.token = make_token(user, [room, "team"])

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    async def upload(self, data: bytes, name: str = "f", room: str = "lobby",
                     token: str | None = None) -> tuple[int, dict[str, Any]]:
        status, _, body = await asyncio.to_thread(
            http, self.port, "POST", f"/rooms/{room}/files?name={quote(name)}", data,
            self.auth(token))
        return status, json.loads(body)

    async def uploaded(self, data: bytes, name: str = "f", room: str = "lobby") -> dict[str, Any]:
        status, obj = await self.upload(data, name, room)
        assert status == 201, obj
        return obj

    async def get(self, path: str, headers: dict[str, str] | None = None
                  ) -> tuple[int, dict[str, str], bytes]:
        return await asyncio.to_thread(http, self.port, "GET", path, None, headers)


@pytest.fixture(params=["file", "s3"])
async def srv(request: pytest.FixtureRequest, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    """A real server whose files live in a directory, or in a bucket of a real S3 server."""
    config = replace(make_config(tmp_path), api_key=API_KEY)
    if request.param == "s3":
        for name, value in S3_ENV.items():
            monkeypatch.setenv(name, value)
        with s3_server() as endpoint:
            config = replace(config, files_url=make_bucket(endpoint, "roomchat-files"))
            async with running_server(config) as server:
                yield server
    else:
        async with running_server(config) as server:
            yield server


async def test_upload_and_download_round_trip(srv: Server) -> None:
    files = Files(srv)
    data = image("PNG", (800, 600))
    obj = await files.uploaded(data, "photo of me.png")
    assert obj["name"] == "photo of me.png" and obj["type"] == "image/png"
    assert (obj["width"], obj["height"], obj["thumb"]) == (800, 600, True)
    assert obj["expires"] >= time.time() + srv.config.file_url_ttl
    status, headers, body = await files.get(obj["url"])
    assert status == 200 and len(body) == obj["size"] == int(headers["content-length"])
    assert opened(body).size == (800, 600)
    assert headers["content-type"] == "image/png"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert headers["content-disposition"] == (
        "inline; filename=\"photo of me.png\"; filename*=UTF-8''photo%20of%20me.png")
    status, headers, thumb = await files.get(obj["thumb_url"])
    assert status == 200 and headers["content-type"] == "image/webp"
    assert opened(thumb).size == (480, 360)
    # A member's bearer token opens it too (what a page may fetch with its credential).
    status, _, same = await files.get(f"/rooms/lobby/files/{obj['id']}", files.auth())
    assert status == 200 and same == body


@contextlib.asynccontextmanager
async def file_server(tmp_path: Path, **settings: Any) -> AsyncIterator[Server]:
    """A real server with files in ``tmp_path/files`` and some settings changed."""
    config = replace(make_config(tmp_path), api_key=API_KEY, **settings)
    async with running_server(config) as server:
        yield server


def stored(tmp_path: Path) -> list[str]:
    """Every file under the server's files directory (and its S3 spool), relative."""
    return sorted(str(p.relative_to(tmp_path)) for folder in ("files", "files-spool")
                  for p in (tmp_path / folder).rglob("*") if p.is_file())


@pytest.mark.parametrize("api", [False, True])
async def test_uploads_are_read_at_upload_read_rate(tmp_path: Path, api: bool) -> None:
    """``upload_read_rate``: a process reads uploads' bodies at most that fast (after a first
    ``PACE_BURST``): 1 MiB at once, then 1 MiB/s, so 3 MiB take two seconds at least, whether
    the member's route or the server API's. (Unpaced, 3 MiB over loopback take well under.)
    Other requests are not paced: a history page meanwhile answers at once."""
    async with file_server(tmp_path, upload_read_rate=float(MiB)) as srv:
        files = Files(srv)
        data = b"\x01" * (3 * MiB)
        started = time.monotonic()
        path, auth = ("/api/v1/rooms/lobby/files?name=paced.bin&user=alice",
                      {"Authorization": f"Bearer {API_KEY}"}) if api else \
            ("/rooms/lobby/files?name=paced.bin", files.auth())
        task = asyncio.ensure_future(asyncio.to_thread(http, srv.port, "POST", path, data, auth))
        await asyncio.sleep(0.5)
        page = await asyncio.to_thread(http, srv.port, "GET", "/rooms/lobby/history?before=1",
                                       None, files.auth())
        assert page[0] == 200 and time.monotonic() - started < 1.5
        status, _, body = await task
        assert status == 201, body
        assert time.monotonic() - started >= 1.9
        assert json.loads(body)["size"] == 3 * MiB


async def test_html_and_svg_are_downloads_never_pages(tmp_path: Path) -> None:
    async with file_server(tmp_path) as srv:
        files = Files(srv)
        for data, name, kind in ((HTML, "page.html", "text/html"),
                                 (SVG, "logo.svg", "image/svg+xml")):
            obj = await files.uploaded(data, name)
            assert obj["type"] == kind and "thumb" not in obj and "width" not in obj
            status, headers, body = await files.get(obj["url"])
            assert status == 200 and body == data  # kept as sent: a download
            assert headers["content-type"] == "application/octet-stream"
            assert headers["content-disposition"].startswith("attachment; ")
            assert headers["content-security-policy"] == "default-src 'none'; sandbox"
            assert headers["x-content-type-options"] == "nosniff"
            status, _, _ = await files.get(f"/rooms/lobby/files/{obj['id']}/thumb",
                                           files.auth())
            assert status == 404


async def test_a_polyglot_and_gps_are_gone_after_upload(tmp_path: Path) -> None:
    async with file_server(tmp_path) as srv:
        files = Files(srv)
        obj = await files.uploaded(polyglot_jpeg(), "cat.html.jpg")
        assert obj["type"] == "image/jpeg"
        _, headers, body = await files.get(obj["url"])
        assert b"<script" not in body and headers["content-type"] == "image/jpeg"
        assert opened(body).format == "JPEG"
        obj = await files.uploaded(jpeg_with_gps((640, 480)), "holiday.jpg")
        assert (obj["width"], obj["height"]) == (480, 640)  # upright
        _, _, body = await files.get(obj["url"])
        assert GPS_IFD not in opened(body).getexif() and b"Secret Camera" not in body
        blobs = [p for p in (tmp_path / "files" / "blob").rglob("*") if p.is_file()]
        assert blobs and not any(b"Secret Camera" in p.read_bytes() for p in blobs)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_bombs_and_truncated_images_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    async with file_server(tmp_path) as srv:
        files = Files(srv)
        status, obj = await files.upload(png_bomb(10_000), "bomb.png")
        assert (status, obj["error"]) == (413, "image_too_large"), obj
        status, obj = await files.upload(truncated(image("JPEG", (400, 400), quality=100)),
                                         "half.jpg")
        assert (status, obj["error"]) == (422, "bad_image"), obj
        status, obj = await files.upload(b"", "empty.txt")
        assert (status, obj["error"]) == (400, "empty_file")
        assert stored(tmp_path) == []


async def send_chunked(port: int, path: str, token: str, total: int,
                       declared: int | None = None) -> tuple[int, dict[str, Any], int]:
    """Upload ``total`` zero bytes in 64 KiB chunks (chunked, or with ``declared`` as the
    Content-Length), reading the answer as soon as it comes: ``(status, body, bytes sent)``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    length = (f"Content-Length: {declared}" if declared is not None
              else "Transfer-Encoding: chunked")
    writer.write(f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n"
                 f"{length}\r\n\r\n".encode())
    answer = asyncio.ensure_future(reader.read(1 << 20))
    chunk, sent = b"\0" * 65536, 0
    try:
        while sent < total and not answer.done():
            writer.write(chunk if declared is not None
                         else b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            await writer.drain()
            sent += len(chunk)
    except ConnectionError:
        pass  # the server answered and closed while we were still sending
    raw = await asyncio.wait_for(answer, 10 * SLOW)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if head.lower().find(b"transfer-encoding: chunked") >= 0:
        body = body.split(b"\r\n")[1]
    return status, json.loads(body), sent


async def test_an_upload_past_the_limit_is_refused_mid_stream(tmp_path: Path) -> None:
    """A 26 MiB upload against the default 25 MiB: refused while it is being sent, and
    nothing of it is left on disk."""
    async with file_server(tmp_path) as srv:
        assert srv.config.max_file_bytes == 25 * MiB
        token = make_token("alice", ["lobby"])
        status, obj, _ = await send_chunked(srv.port, "/rooms/lobby/files?name=big", token,
                                            26 * MiB)
        assert (status, obj["error"]) == (413, "file_too_large"), obj
        assert str(25 * MiB) in obj["detail"]
        # Declared too large: refused before a byte of the body is read.
        status, obj, _ = await send_chunked(srv.port, "/rooms/lobby/files?name=big", token,
                                            26 * MiB, declared=26 * MiB)
        assert (status, obj["error"]) == (413, "file_too_large")
        # The refused request's cleanup runs as it unwinds.
        await until(lambda: stored(tmp_path) == [], 5, "the refused uploads to be removed")


async def test_the_size_limit_at_its_edge(tmp_path: Path) -> None:
    async with file_server(tmp_path, max_file_bytes=MiB) as srv:
        files = Files(srv)
        obj = await files.uploaded(b"x" * MiB, "exact.bin")
        assert obj["size"] == MiB
        status, refused = await files.upload(b"x" * (MiB + 1), "over.bin")
        assert (status, refused["error"]) == (413, "file_too_large")
        assert len([p for p in stored(tmp_path) if p.startswith("files/blob/")]) == 1


@pytest.mark.parametrize(("name", "status", "kept"), [
    ("../../etc/passwd", 201, "passwd"), ("..\\..\\boot.ini", 201, "boot.ini"),
    ("a\x00b.txt", 400, None), ("x" * 300, 400, None), ("ok/", 400, None)])
async def test_path_tricks_in_names(tmp_path: Path, name: str, status: int,
                                    kept: str | None) -> None:
    async with file_server(tmp_path) as srv:
        got, obj = await Files(srv).upload(b"hello", name)
        assert got == status, obj
        if kept is not None:
            assert obj["name"] == kept
            # The name is a label: nothing outside the files folder was written.
            assert all(p.startswith(("files/", "roomchat.sqlite3", "jwt-secret"))
                       for p in stored(tmp_path))
        else:
            assert obj["error"] == "bad_request"


@pytest.mark.parametrize("file_id", [
    "..%2F..%2Fjwt-secret", "%2E%2E", "..", "a" * 21 + "%00", "a" * 200, "meta",
    "AAAAAAAAAAAAAAAAAAAAA%2F"])
async def test_path_tricks_in_ids(tmp_path: Path, file_id: str) -> None:
    async with file_server(tmp_path) as srv:
        files = Files(srv)
        await files.uploaded(b"hello")
        for suffix in ("", "/thumb"):
            status, _, body = await files.get(f"/rooms/lobby/files/{file_id}{suffix}",
                                              files.auth())
            assert status == 404, body
            assert b"test-secret" not in body


async def test_a_foreign_rooms_file(tmp_path: Path) -> None:
    async with file_server(tmp_path) as srv:
        files = Files(srv)
        theirs = await files.uploaded(image("PNG"), "team.png", room="team")
        # Their id under our room: not found (as an id of no file: nothing tells them apart).
        status, _, body = await files.get(f"/rooms/lobby/files/{theirs['id']}", files.auth())
        assert (status, json.loads(body)["error"]) == (404, "not_found")
        status, _, body = await files.get(f"/rooms/lobby/files/{new_file_id()}", files.auth())
        assert (status, json.loads(body)["error"]) == (404, "not_found")
        # Their signed URL moved to our room: its signature is for theirs.
        status, _, body = await files.get(theirs["url"].replace("/team/", "/lobby/"))
        assert (status, json.loads(body)["error"]) == (403, "bad_signature")
        # A signed URL of the file, for the thumbnail: no.
        status, _, body = await files.get(theirs["url"].replace("?", "/thumb?"))
        assert (status, json.loads(body)["error"]) == (403, "bad_signature")
        # A token for lobby only cannot read team's files with its bearer.
        lobby_only = make_token("bob", ["lobby"])
        status, _, body = await files.get(f"/rooms/team/files/{theirs['id']}",
                                          files.auth(lobby_only))
        assert (status, json.loads(body)["error"]) == (403, "room_forbidden")


async def test_an_expired_url_is_refused(tmp_path: Path) -> None:
    async with file_server(tmp_path, file_url_ttl=1.0) as srv:
        files = Files(srv)
        obj = await files.uploaded(b"short-lived")
        assert (await files.get(obj["url"]))[0] == 200
        # Served until its expiry (whole seconds), refused from then on.
        while (answer := await files.get(obj["url"]))[0] == 200:
            assert time.time() < obj["expires"] + 2 * SLOW, "served long after its expiry"
            await asyncio.sleep(0.05)
        assert time.time() >= obj["expires"], "refused before its expiry"
        status, _, body = answer
        assert (status, json.loads(body)["error"]) == (403, "url_expired")


async def test_ranges_and_etags(tmp_path: Path) -> None:
    async with file_server(tmp_path) as srv:
        files = Files(srv)
        data = bytes(range(256)) * 4000  # 1,024,000 bytes: several read chunks
        obj = await files.uploaded(data, "data.bin")
        url = obj["url"]
        status, headers, body = await files.get(url, {"Range": "bytes=1000-1999"})
        assert status == 206 and body == data[1000:2000]
        assert headers["content-range"] == f"bytes 1000-1999/{len(data)}"
        status, headers, body = await files.get(url, {"Range": "bytes=-100"})
        assert status == 206 and body == data[-100:]
        status, headers, body = await files.get(url, {"Range": "bytes=1023990-"})
        assert status == 206 and body == data[1023990:]
        status, headers, _ = await files.get(url, {"Range": f"bytes={len(data)}-"})
        assert status == 416
        status, headers, body = await files.get(url)
        assert status == 200 and body == data and headers["accept-ranges"] == "bytes"
        etag = headers["etag"]
        status, headers, body = await files.get(url, {"If-None-Match": etag})
        assert status == 304 and body == b""
        status, _, body = await files.get(url, {"If-None-Match": '"another"'})
        assert status == 200 and body == data


async def test_who_may_upload_and_download(tmp_path: Path) -> None:
    async with file_server(tmp_path) as srv:
        files = Files(srv)
        status, _, body = await asyncio.to_thread(http, srv.port, "POST",
                                                  "/rooms/lobby/files?name=x", b"x")
        assert (status, json.loads(body)["error"]) == (401, "missing_token")
        status, obj = await files.upload(b"x", token=API_KEY)
        assert (status, obj["error"]) == (401, "invalid_token")
        status, obj = await files.upload(b"x", token=make_token("eve", ["other"]))
        assert (status, obj["error"]) == (403, "room_forbidden")
        obj = await files.uploaded(b"hello")
        status, _, body = await files.get(f"/rooms/lobby/files/{obj['id']}")
        assert (status, json.loads(body)["error"]) == (401, "missing_token")
        # The server API: upload as a user, download.
        status, headers, body = await asyncio.to_thread(
            http, srv.port, "POST", "/api/v1/rooms/lobby/files?name=report.pdf&user=ci",
            b"%PDF-1.4 report", {"Authorization": f"Bearer {API_KEY}"})
        assert status == 201, body
        report = json.loads(body)
        assert report["type"] == "application/pdf" and report["name"] == "report.pdf"
        status, headers, body = await asyncio.to_thread(
            http, srv.port, "GET", f"/api/v1/rooms/lobby/files/{report['id']}", None,
            {"Authorization": f"Bearer {API_KEY}"})
        assert status == 200 and body == b"%PDF-1.4 report"
        assert headers["content-disposition"].startswith("attachment")
        # A user token on the API's upload: refused as on every API call.
        status, _, body = await asyncio.to_thread(
            http, srv.port, "POST", "/api/v1/rooms/lobby/files", b"x", files.auth())
        assert (status, json.loads(body)["error"]) == (403, "api_scope_required")


async def test_the_upload_rate_and_quota(tmp_path: Path) -> None:
    async with file_server(tmp_path, upload_rate=0.01, upload_burst=2, max_file_bytes=100,
                           max_user_storage_bytes=150) as srv:
        files = Files(srv)
        await files.uploaded(b"x" * 100)
        status, obj = await files.upload(b"x" * 51)  # 151 > 150
        assert (status, obj["error"]) == (413, "quota_exceeded"), obj
        status, obj = await files.upload(b"x")
        assert (status, obj["error"]) == (429, "too_many_uploads"), obj
        other = Files(srv, user="bob")
        assert (await other.uploaded(b"x" * 50))["size"] == 50  # per user


async def test_orphans_are_collected_by_the_running_server(tmp_path: Path) -> None:
    async with file_server(tmp_path, file_orphan_ttl=1.0) as srv:
        files = Files(srv)
        obj = await files.uploaded(b"never attached")
        deadline = time.monotonic() + 10 * SLOW
        while (await files.get(obj["url"]))[0] == 200:
            assert time.monotonic() < deadline, "the orphan was never collected"
            await asyncio.sleep(0.2)
        assert (await files.get(obj["url"]))[0] == 404
        # The collector removes the record, then the bytes: wait for both.
        while [p for p in stored(tmp_path) if "/blob/" in p or "/meta/" in p]:
            assert time.monotonic() < deadline, "the orphan's bytes were never removed"
            await asyncio.sleep(0.05)


async def test_two_processes_on_redis_share_a_files_volume(tmp_path: Path) -> None:
    """Upload through one server process, download through another: one Redis, one shared
    ``file://`` directory, each process with its own data directory (as in compose)."""
    shared = tmp_path / "shared-files"
    with redis_server(tmp_path / "redis") as redis_url:
        env = {"ROOMCHAT_STORE_URL": redis_url, "ROOMCHAT_FILES_URL": shared.as_uri()}
        with server_process(tmp_path / "a", env=env) as one, \
                server_process(tmp_path / "b", env=env) as two:
            token = make_token("alice", ["lobby"])
            auth = {"Authorization": f"Bearer {token}"}
            status, _, body = await asyncio.to_thread(
                http, one.port, "POST", "/rooms/lobby/files?name=shared.jpg",
                jpeg_with_gps((300, 200)), auth)
            assert status == 201, body
            obj = json.loads(body)
            status, _, got = await asyncio.to_thread(http, two.port, "GET", obj["url"])
            assert status == 200 and opened(got).size == (200, 300)
            status, _, thumb = await asyncio.to_thread(http, two.port, "GET", obj["thumb_url"])
            assert status == 200 and opened(thumb).format == "WEBP"
            status, _, same = await asyncio.to_thread(
                http, two.port, "GET", f"/rooms/lobby/files/{obj['id']}", None, auth)
            assert status == 200 and same == got
        assert not (tmp_path / "a" / "files").exists()  # nothing in either data directory
        assert len([p for p in (shared / "blob").rglob("*") if p.is_file()]) == 1


async def test_erasure_deletes_the_users_files(tmp_path: Path) -> None:
    """``POST /api/v1/users/<user>/erase`` (what ``roomchat erase`` calls) deletes every file
    the user uploaded, in every room; others' files stay."""
    async with file_server(tmp_path) as srv:
        alice, bob = Files(srv), Files(srv, user="bob")
        mine = [await alice.uploaded(image("PNG"), room=room) for room in ("lobby", "team")]
        theirs = await bob.uploaded(b"bob's")
        status, obj = await call(srv.port, "POST", "/users/alice/erase")
        assert (status, obj["files"]) == (200, 2)
        for gone in mine:
            assert (await alice.get(gone["url"]))[0] == 404
            assert (await alice.get(gone["thumb_url"]))[0] == 404
        assert (await bob.get(theirs["url"]))[0] == 200
        assert len([p for p in stored(tmp_path) if "/blob/" in p]) == 1
        status, obj = await call(srv.port, "POST", "/users/alice/erase")
        assert (status, obj["files"]) == (200, 0)  # a retry is harmless


async def test_the_bot_client_uploads_a_file(tmp_path: Path) -> None:
    """``RoomClient.upload`` (gateway/client.py): bytes or a path streamed from disk; a
    refusal is a ``ClientError`` with the server's code."""
    async with file_server(tmp_path, max_file_bytes=MiB) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        async with RoomClient(base, "lobby", token=make_token("bot", ["lobby"])) as bot:
            photo = tmp_path / "photo.jpg"
            photo.write_bytes(jpeg_with_gps((64, 48)))
            obj = await bot.upload(photo)
            assert (obj["name"], obj["type"], obj["width"]) == ("photo.jpg", "image/jpeg", 48)
            status, _, body = await asyncio.to_thread(http, srv.port, "GET", obj["url"])
            assert status == 200 and GPS_IFD not in opened(body).getexif()
            obj = await bot.upload(b"notes", name="notes.txt")
            assert (obj["name"], obj["size"]) == ("notes.txt", 5)
            with pytest.raises(ClientError) as refused:
                await bot.upload(b"x" * (MiB + 1), name="big.bin")
            assert refused.value.code == "file_too_large"
            # Far over: the server answers the declared size and closes while most of the
            # body is unsent. The client watches for that answer (urllib met a broken pipe).
            huge = tmp_path / "huge.bin"
            huge.write_bytes(b"x" * (32 * MiB))
            for source in (huge, huge.read_bytes()):
                with pytest.raises(ClientError) as refused:
                    await bot.upload(source, name="huge.bin")
                assert refused.value.code == "file_too_large"


def test_a_files_store_that_cannot_work_is_one_line_at_start(tmp_path: Path) -> None:
    """``roomchat serve`` refuses to start, in one line and exit 2 (gateway.preflight), for a
    directory it cannot write, a bucket it cannot read, or a URL of no known form."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      env={"ROOMCHAT_FILES_URL": (blocker / "files").as_uri()})
    assert_one_line(code, err, "ROOMCHAT_FILES_URL", "cannot write files under")
    with s3_server() as endpoint:
        code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}", env={
            **S3_ENV, "ROOMCHAT_FILES_URL": f"s3://missing-bucket?endpoint={endpoint}"})
        assert_one_line(code, err, "ROOMCHAT_FILES_URL", "'missing-bucket' cannot be read")
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      env={"ROOMCHAT_FILES_URL": "ftp://files.example/x"})
    assert_one_line(code, err, "ROOMCHAT_FILES_URL must be file:///path/to/dir or s3://")

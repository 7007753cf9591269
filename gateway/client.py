"""``RoomClient``: a small async client of one room for bots, scripts and tests (on the
``websockets`` library). It connects with a token (through a single-use ticket by default),
yields what the room sends, sends messages (replies, mentions) and changes to them (edits,
deletes, reactions) with ids and awaits their acks, and across dropped connections reconnects
with backoff, resumes with ``after`` and drops what it already saw (by seq), resending
unacknowledged frames with their ids (the server deduplicates them).

    async with RoomClient("http://127.0.0.1:8000", "lobby", token=jwt) as client:
        seq = await client.send("hello")
        await client.edit(seq, "hello!")
        await client.react(seq, "\N{THUMBS UP SIGN}")
        await client.send("see above", reply_to=seq)
        photo = await client.upload("cat.jpg")  # {"id", "name", "size", "type", "url", ...}
        async for event in client:          # message, change, read, presence, typing objects
            ...

A room's log is one sequence of entries: ``message`` objects and ``change`` objects (an edit,
a delete or a reaction to an earlier message, docs/protocol.md); ``apply_change`` folds a
change into the message it targets, as the server does.

It needs nothing of the server's code (only ``websockets``): copy it into a bot's project.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import random
import secrets
import select
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from http.client import HTTPConnection, HTTPSConnection
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

FINAL_CLOSE_CODES = frozenset({1000, 1003, 1008, 4001, 4003, 4004})
"""Close codes after which reconnecting cannot help (docs/protocol.md, "Close codes")."""
FINAL_STATUSES = frozenset({400, 401, 403, 404})
"""Refused upgrades (or ticket requests) that a retry would not change."""
RETRY_ERRORS = frozenset({"rate_limited", "busy", "unavailable"})
RECONNECT_BASE = 0.5
"""Seconds before the first reconnect (then doubling; ``RoomClient``'s ``max_backoff`` caps it)."""


def reconnect_delay(attempt: int, max_backoff: float,
                    random: Callable[[], float] = random.random) -> float:
    """The wait before reconnect number ``attempt`` (0 first): ``RECONNECT_BASE`` doubling to
    ``max_backoff``, drawn from half of that to all of it (equal jitter). It is
    ``rooms.backoff.backoff_delay(attempt, base=0.5, cap=max_backoff, jitter=0.5)``, written out
    so this file needs nothing of the server's (tests/rooms/test_backoff.py pins the two)."""
    ceiling = min(max_backoff, RECONNECT_BASE * 2.0 ** min(attempt, 1023))
    return ceiling * (0.5 + 0.5 * random())


def apply_change(message: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``message`` (a ``message`` object in its current state) after ``change`` (a ``change``
    object whose ``target`` is its seq), as the server folds it (docs/protocol.md): an edit
    sets ``text`` and ``edited``; a delete makes the tombstone (``text`` ``""``, ``deleted``,
    nothing else of what the text said); a reaction adds or removes its user from the emoji's
    ``users``. Idempotent: applying a change the message already holds changes nothing.
    Returns a new dict; ``message`` is not modified."""
    if change["target"] != message["seq"]:
        raise ValueError(f"change {change['seq']} is to message {change['target']}, "
                         f"not {message['seq']}")
    if message.get("deleted"):
        return dict(message)  # a tombstone stays one
    action = change["action"]
    if action == "delete":
        kept = ("type", "room", "seq", "id", "user", "name", "ts")
        return {**{k: message[k] for k in kept if k in message}, "text": "", "deleted": True}
    if action == "edit":
        return {**message, "text": change["text"], "edited": change["ts"]}
    if action != "react":
        return dict(message)  # an action this client does not know: ignorable
    reactions: list[dict[str, Any]] = [{"emoji": r["emoji"], "users": list(r["users"])}
                                       for r in message.get("reactions", ())]
    user = change["user"]
    users = next((r["users"] for r in reactions if r["emoji"] == change["emoji"]), None)
    if change["on"]:
        if users is None:
            reactions.append({"emoji": change["emoji"], "users": [user]})
        elif user not in users:
            users.append(user)
    elif users is not None and user in users:
        users.remove(user)
        reactions = [r for r in reactions if r["users"]]  # an emoji nobody has is not listed
    changed = {k: v for k, v in message.items() if k != "reactions"}
    if reactions:
        changed["reactions"] = reactions
    return changed


class ClientError(Exception):
    """The server refused something for good: ``code`` is its wire code (an HTTP refusal's
    ``error``, a close code as a string, or an ``error`` object's ``code``)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class RoomClient:
    """One room's connection, kept up until ``aclose`` (or the end of ``async with``).

    ``base_url``: ``http(s)://host:port``. ``token``: the user's JWT. ``tickets``: connect with
    a fresh ticket each time (``POST /rooms/<room>/ticket``) rather than the JWT in the URL.
    ``after``: resume after this seq; ``history``: without ``after``, whether to yield the
    replayed history (else only what happens from the first connection on). ``queue_size``
    bounds what waits to be iterated (when full, reading the socket pauses). Backoff between
    reconnects: 0.5 s doubling to ``max_backoff``, with jitter.
    """

    def __init__(self, base_url: str, room: str, *, token: str, tickets: bool = True,
                 after: int | None = None, history: bool = True, queue_size: int = 1024,
                 max_backoff: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.room = room
        self.user: str | None = None
        self.welcome: dict[str, Any] | None = None
        self.last_seq = after  # highest seq yielded (or skipped as history); resumes from it
        self.connections = 0
        self._token = token
        self._tickets = tickets
        self._history = history
        self._max_backoff = max_backoff
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(queue_size)
        # Frames awaiting their ack, by id (without the id), in the order sent.
        self._unacked: dict[str, tuple[dict[str, Any], asyncio.Future[int]]] = {}
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        self._ws: ClientConnection | None = None
        self._ready = asyncio.Event()
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> RoomClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect; returns after the first ``welcome``. Raises ``ClientError`` if refused."""
        self._task = asyncio.create_task(self._run(), name=f"roomchat-client:{self.room}")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if not self._ready.is_set():
            await self.aclose()
            if self._failure is not None:
                raise self._failure

    async def aclose(self) -> None:
        """Close the connection and stop reconnecting; unacknowledged sends fail."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _, future in self._unacked.values():
            if not future.done():
                future.set_exception(ClientError("closed", "the client was closed"))
        self._unacked.clear()

    # -- what a bot calls ---------------------------------------------------------------------

    async def send(self, text: str, id: str | None = None, *, reply_to: int | None = None,
                   mentions: list[str] | None = None) -> int:
        """Send a message and return its seq once the server has stored it (resent after a
        reconnect until then; a retry is deduplicated by ``id``). ``reply_to``: the seq of the
        message it answers (the server adds its author and an excerpt); ``mentions``: the user
        ids it mentions. Raises ``ClientError`` (``not_found``, ``already_deleted`` for a
        ``reply_to`` that is gone; ``empty_text``, ``rate_limited`` held too long...)."""
        frame: dict[str, Any] = {"type": "message", "text": text}
        if reply_to is not None:
            frame["reply_to"] = reply_to
        if mentions:
            frame["mentions"] = list(mentions)
        return await self._request(frame, id)

    async def edit(self, seq: int, text: str, id: str | None = None) -> int:
        """Replace the text of message ``seq`` (this user's own) by ``text``; returns the seq of
        the edit's entry once stored. Raises ``ClientError`` (``forbidden``: not this user's;
        ``edit_window_passed``; ``already_deleted``; ``not_found``)."""
        return await self._request({"type": "edit", "seq": seq, "text": text}, id)

    async def delete(self, seq: int, id: str | None = None) -> int:
        """Delete message ``seq`` (this user's own; any, for a moderator of the room); returns
        the seq of the delete's entry once stored. Raises ``ClientError`` (``forbidden``,
        ``already_deleted``, ``not_found``)."""
        return await self._request({"type": "delete", "seq": seq}, id)

    async def react(self, seq: int, emoji: str, on: bool = True, id: str | None = None) -> int:
        """Put (``on``) or take back this user's reaction ``emoji`` (one emoji) on message
        ``seq``; returns the seq of its entry once stored, or when it changed nothing (already
        so) the seq of the message's last change. Raises ``ClientError``
        (``too_many_reactions``, ``already_deleted``, ``not_found``, ``invalid_message`` for
        what is not one emoji)."""
        return await self._request({"type": "react", "seq": seq, "emoji": emoji, "on": on}, id)

    async def read(self, seq: int) -> None:
        """Move this user's read marker in the room forward to ``seq`` (never back): their
        other connections get a ``read`` object, and the next ``welcome``'s ``unread`` counts
        from it. Not acknowledged; sent only while connected, and dropped by the server when
        over the connection's rate (a marker is a hint: a lost one is moved by the next)."""
        ws = self._ws
        if ws is not None and self._ready.is_set():
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"type": "read", "seq": seq}))

    async def _request(self, frame: dict[str, Any], id: str | None) -> int:
        """Send ``frame`` with an id and await its ack's seq (resent until acked)."""
        client_id = id or f"{self._prefix}-{next(self._ids)}"
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._unacked[client_id] = (frame, future)
        await self._transmit(client_id)
        return await future

    async def upload(self, source: bytes | str | os.PathLike[str],
                     name: str | None = None) -> dict[str, Any]:
        """Upload a file into the room (``POST /rooms/<room>/files`` with this client's
        token) and return the file the server answers: ``{"id", "name", "size", "type",
        "width"?, "height"?, "thumb"?, "url", "thumb_url"?, "expires"}`` (``url`` and
        ``thumb_url`` are paths signed until ``expires``: prefix them with ``base_url``).
        ``source``: the bytes, or a path (streamed from disk; its base name is the default
        ``name``). Raises ``ClientError`` with the server's code (``file_too_large``,
        ``quota_exceeded``, ``too_many_uploads``, ``bad_image``...)."""
        if name is None:
            name = "file" if isinstance(source, bytes) else os.path.basename(os.fspath(source))

        def post() -> dict[str, Any]:
            url = f"{self.base_url}/rooms/{quote(self.room)}/files?name={quote(name)}"
            headers = {"Authorization": f"Bearer {self._token}",
                       "Content-Type": "application/octet-stream"}
            with contextlib.ExitStack() as stack:
                if isinstance(source, bytes):
                    body: BinaryIO = io.BytesIO(source)
                    length = len(source)
                else:  # streamed from disk
                    body = stack.enter_context(open(source, "rb"))
                    length = os.fstat(body.fileno()).st_size
                status, answer = post_watching(url, headers, body, length, timeout=60)
            obj: dict[str, Any] = json.loads(answer or b"{}")
            if status >= 400:
                raise ClientError(obj.get("error", str(status)), obj.get("detail", ""))
            return obj

        return await asyncio.to_thread(post)

    async def send_file(self, source: bytes | str | os.PathLike[str], text: str = "",
                        id: str | None = None, *, name: str | None = None) -> int:
        """Upload ``source`` (``upload``) and send a message carrying it, with ``text``
        (may be empty); returns the message's seq once stored."""
        return await self.send_files([(source, name)], text, id)

    async def send_files(self, sources: list[tuple[bytes | str | os.PathLike[str], str | None]],
                         text: str = "", id: str | None = None) -> int:
        """Upload each ``(source, name)`` in turn, then send one message carrying them all
        (at most the server's ``max_files_per_message``); returns its seq once stored. An
        upload not sent (a refusal on the way) is deleted by the server after
        ``file_orphan_ttl``. Raises ``ClientError``: an upload's code, or the message's
        (``too_many_files``, ``file_not_attachable``...); ``bad_request`` for no file."""
        if not sources:
            raise ClientError("bad_request", "send_files needs at least one file")
        ids = [(await self.upload(source, name))["id"] for source, name in sources]
        return await self._request({"type": "message", "text": text, "files": ids}, id)

    async def recv(self) -> dict[str, Any]:
        """The next object from the room: the log's entries (``message`` and ``change``),
        deduplicated by seq, then ``read`` (this user's marker moved on another connection),
        ``presence``, ``typing``. Raises ``ClientError`` once the connection ended for good."""
        event = await self._events.get()
        if event is None:
            self._events.put_nowait(None)  # every later call ends the same way
            raise self._failure or ClientError("closed", "the client was closed")
        return event

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            try:
                yield await self.recv()
            except ClientError:
                if self._task is None:
                    return  # closed by us
                raise

    # -- the connection -------------------------------------------------------------------------

    async def _ticket(self) -> str:
        def post() -> str:
            request = urllib.request.Request(
                f"{self.base_url}/rooms/{quote(self.room)}/ticket", data=b"", method="POST",
                headers={"Authorization": f"Bearer {self._token}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return str(json.loads(response.read())["ticket"])
            except urllib.error.HTTPError as exc:
                body = json.loads(exc.read() or b"{}")
                raise _Refused(exc.code, body.get("error", str(exc.code)),
                               body.get("detail", "")) from None

        return await asyncio.to_thread(post)

    async def _url(self) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        credential = (f"ticket={await self._ticket()}" if self._tickets
                      else f"token={quote(self._token)}")
        after = "" if self.last_seq is None else f"&after={self.last_seq}"
        return f"{scheme}://{parts.netloc}/rooms/{quote(self.room)}/ws?{credential}{after}"

    async def _run(self) -> None:
        attempt = 0
        try:
            while True:
                try:
                    url = await self._url()
                    async with websockets.connect(url, compression=None, max_size=2**24,
                                                  open_timeout=10) as ws:
                        self._ws = ws
                        attempt = 0
                        await self._session(ws)
                    code, reason = ws.close_code, ws.close_reason
                    if code in FINAL_CLOSE_CODES:
                        raise ClientError(str(code), reason or "closed by the server")
                except InvalidStatus as exc:
                    status = exc.response.status_code
                    body = json.loads(exc.response.body or b"{}")
                    if status in FINAL_STATUSES:
                        raise ClientError(body.get("error", str(status)),
                                          body.get("detail", "")) from None
                except _Refused as exc:
                    if exc.status in FINAL_STATUSES:
                        raise ClientError(exc.error, exc.detail) from None
                except (OSError, TimeoutError, ConnectionClosed):
                    pass
                finally:
                    self._ws = None
                delay = reconnect_delay(attempt, self._max_backoff)
                attempt += 1
                await asyncio.sleep(delay)
        except ClientError as exc:
            self._failure = exc
            for _, future in self._unacked.values():
                if not future.done():
                    future.set_exception(exc)
            self._unacked.clear()
            await self._events.put(None)

    async def _session(self, ws: ClientConnection) -> None:
        async with asyncio.TaskGroup() as tg:  # owns the delayed resends of this connection
            with contextlib.suppress(ConnectionClosed):  # a drop: _run reconnects
                async for frame in ws:
                    if not isinstance(frame, str):
                        continue
                    for line in frame.split("\n"):
                        await self._handle(json.loads(line), ws, tg)

    async def _handle(self, obj: dict[str, Any], ws: ClientConnection,
                      tg: asyncio.TaskGroup) -> None:
        kind = obj.get("type")
        if kind == "welcome":
            self.welcome = obj
            self.user = obj["user"]
            self.connections += 1
            if self.last_seq is None and not self._history:
                self.last_seq = obj["seq"]  # only what happens from now on
            self._ready.set()
            for client_id in list(self._unacked):  # resend what was never acked
                await self._transmit(client_id)
        elif kind in ("message", "change"):  # the log's entries: one sequence
            if self.last_seq is not None and obj["seq"] <= self.last_seq:
                return  # seen before this reconnect (or history not wanted)
            self.last_seq = obj["seq"]
            await self._events.put(obj)
        elif kind == "ack":
            entry = self._unacked.pop(obj.get("id") or "", None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(obj["seq"])
        elif kind == "ping":
            await ws.send('{"type":"pong"}')
        elif kind == "error":
            entry = self._unacked.get(obj.get("id") or "")
            if entry is None:
                return
            if obj["code"] in RETRY_ERRORS:
                tg.create_task(self._transmit(obj["id"], delay=obj.get("retry_after", 1.0)))
            else:
                del self._unacked[obj["id"]]
                if not entry[1].done():
                    entry[1].set_exception(ClientError(obj["code"], obj.get("message", "")))
        elif kind is not None:
            await self._events.put(obj)

    async def _transmit(self, client_id: str, delay: float = 0.0) -> None:
        """Send (or resend) an unacknowledged frame if connected; after a reconnect the
        welcome resends it anyway."""
        if delay:
            await asyncio.sleep(delay)
        entry = self._unacked.get(client_id)
        ws = self._ws
        if entry is None or ws is None or not self._ready.is_set():
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({**entry[0], "id": client_id}))


class _Refused(Exception):
    """A ticket request was refused (HTTP ``status``)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


UPLOAD_CHUNK = 65_536
"""Bytes of a request body sent between two looks for an early answer."""


def post_watching(url: str, headers: dict[str, str], body: BinaryIO, length: int, *,
                  timeout: float) -> tuple[int, bytes]:
    """POST ``length`` bytes of ``body`` to ``url``; ``(status, response body)``.

    Watches for the answer while sending (RFC 9112, 9.5: a client sending a body should stop
    when an error answer arrives). The server refuses a declared size over its limit before
    reading the body, answers and closes: a client that sends everything before reading (as
    urllib does) meets a broken pipe there and never sees ``file_too_large``. Raises
    ``OSError`` when the server closed without answering."""
    parts = urlsplit(url)
    conn_type = HTTPSConnection if parts.scheme == "https" else HTTPConnection
    conn = conn_type(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.putrequest("POST", parts.path + (f"?{parts.query}" if parts.query else ""))
        for name, value in {**headers, "Content-Length": str(length)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        sock = conn.sock
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while chunk := body.read(UPLOAD_CHUNK):
                if select.select([sock], [], [], 0)[0]:
                    break  # answered before the whole body went: read the answer
                sock.sendall(chunk)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()

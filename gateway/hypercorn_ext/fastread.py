"""Read a room socket's client text frames straight off the TCP transport; anything else goes
back to Hypercorn, for good.

Measured in bench/ (``bench/profiles/2026-11-26-small-rooms.md``): in many small rooms each
client frame took Hypercorn's whole inbound path: a read task resumed per TCP read (``wait_for``
around ``StreamReader.read``: four objects parked per connection until its next frame, which
every garbage collection then walks), ``H11Protocol``, ``WSStream``, wsproto's generator-based
parser and an ASGI message dict, five awaits deep. What browsers send is almost only small,
masked, final text frames, and parsing one is a few lines.

``DirectReader`` takes over the transport's protocol once the socket is accepted (HTTP/1.1,
plain TCP, no extension negotiated, Hypercorn's reading task idle) and hands each complete
text frame's text to a callback. It never decides anything about a frame it does not fully
understand: at the first frame that is not a final, masked, RSV-free text frame of at most
``websocket_max_message_size`` bytes with valid UTF-8 (a ping, a close, a binary or fragmented
message, a protocol error), it gives the transport back to Hypercorn's protocol together with
every byte from that frame on, and Hypercorn's reader and wsproto handle the rest of the
connection as before: pongs, close handshakes, 1002/1007/1009. Its ``connection_lost``,
``eof_received`` and write flow control are Hypercorn's protocol's, so closing, draining and
aborting are unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class ReadingOwner(Protocol):
    """Who is told when a ``DirectReader`` gives reading back to Hypercorn."""

    def reading_given_back(self) -> None:
        """Called once, before Hypercorn's protocol sees a byte: from now on the stream's
        state is Hypercorn's to change (``FrameWriter``'s cached "open")."""

_FIN_TEXT = 0x81  # FIN set, RSV1-3 clear, opcode 1 (text)
_MASKED = 0x80


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (RFC 6455 section 5.3)."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little")


def parse_text_frames(data: bytes, limit: int) -> tuple[list[str], int, bool]:
    """Complete client text frames at the start of ``data``.

    Returns ``(texts, used, foreign)``: the texts of the leading complete frames of the simple
    kind (final, masked, no RSV bit, opcode text, at most ``limit`` bytes, valid UTF-8), how
    many bytes they took, and whether the frame at ``used`` is of another kind (then it and
    everything after belong to someone who parses every kind). Not foreign and ``used <
    len(data)``: the rest is the start of a frame still arriving.
    """
    texts: list[str] = []
    end = len(data)
    pos = 0
    while end - pos >= 2:
        length = data[pos + 1] & 0x7F
        if data[pos] != _FIN_TEXT or not data[pos + 1] & _MASKED or length == 127:
            return texts, pos, True
        head = pos + 2
        if length == 126:
            if end - pos < 4:
                break
            length = int.from_bytes(data[head:head + 2], "big")
            head += 2
        if length > limit:
            return texts, pos, True
        start = head + 4
        if start + length > end:
            break
        try:
            texts.append(unmask(data[start:start + length], data[head:start]).decode())
        except UnicodeDecodeError:
            return texts, pos, True
        pos = start + length
    return texts, pos, False


class DirectReader(asyncio.Protocol):
    """The transport's protocol while frames are simple (see the module docstring)."""

    __slots__ = ("_inner", "_limit", "_on_text", "_owner", "_partial", "_transport")

    def __init__(self, transport: asyncio.Transport, inner: asyncio.Protocol,
                 on_text: Callable[[str], None], limit: int,
                 owner: ReadingOwner | None = None) -> None:
        """``inner``: Hypercorn's protocol (given back the transport when needed);
        ``on_text``: called with each text, in order; must not block nor raise;
        ``owner``: told when reading goes back to Hypercorn (an object, not a bound method:
        one allocation less per connection)."""
        self._transport = transport
        self._inner = inner
        self._on_text = on_text
        self._limit = limit
        self._owner = owner
        self._partial = b""  # the start of a frame still arriving (at most limit + 14 bytes)

    def data_received(self, data: bytes) -> None:
        if self._partial:
            data = self._partial + data
        texts, used, foreign = parse_text_frames(data, self._limit)
        on_text = self._on_text
        for text in texts:
            on_text(text)
        if foreign:
            self._partial = b""
            self._give_back(data[used:])
        else:
            self._partial = data[used:] if used < len(data) else b""

    def _give_back(self, rest: bytes) -> None:
        transport = self._transport
        if transport.get_protocol() is not self:
            return  # given back already (a callback above gave up on the connection)
        if self._owner is not None:
            self._owner.reading_given_back()
        transport.set_protocol(self._inner)
        if not transport.is_closing():
            self._inner.data_received(rest)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

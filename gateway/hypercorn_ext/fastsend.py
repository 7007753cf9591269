"""Write WebSocket text frames straight to the TCP transport of an HTTP/1.1 Hypercorn
connection.

Measured in bench/: when frames cannot be coalesced (many small rooms, light load) each delivery
is one frame, and Hypercorn's per-frame path (ASGI send -> ``WSStream.app_send`` -> wsproto ->
``H11Protocol.stream_send`` -> ``TCPServer.protocol_send``: four awaits, three event objects and
a lock) cost more than everything else roomchat does for that delivery. A server-to-client text
frame without extensions is a two-to-ten byte header and the UTF-8 payload, so for the common
case we build it ourselves and write it, like ``websockets.broadcast()`` does.

The fast path is taken only when all of this holds, checked on every send (cheap attribute
reads); anything else goes through the ASGI ``send`` unchanged:

- Hypercorn's HTTP/1.1 stack (``WSStream`` over ``H11Protocol`` over ``TCPServer``); HTTP/2
  streams share a connection and its flow control, so they always take the ASGI path;
- the WebSocket is accepted and open on both Hypercorn's and wsproto's side;
- no extension was negotiated (permessage-deflate is off by default,
  ``gateway.hypercorn_ext.compression``).

Frames are written whole with one ``transport.write``, so they cannot interleave with the frames
Hypercorn writes itself (pongs, close). Backpressure is kept: when the transport buffers data we
await ``drain()``, as Hypercorn would. Tested against Hypercorn 0.17-0.18 (pinned in
pyproject.toml); ``_locate`` returns None for any other shape, which means the ASGI path.

The same handle on the TCP transport lets the gateway free a connection whose peer stopped
reading: ``abort`` drops it (RST) instead of waiting forever for buffers to drain, and
``wait_closed`` tells when the socket is really gone. On other shapes (HTTP/2 streams share
their connection) neither is possible: the stream ends when the handler returns.

On the same shape, ``take_inbound`` has Hypercorn hand inbound frames to the handler directly
(no reader task, no app-queue hop) and ``forget_handshake`` drops what an accepted connection
no longer needs: together about half of an idle connection's memory
(bench/profiles/2026-11-26-idle-memory.md).

All of this is the part ``direct_send``, and reading (``read_directly``) the part
``direct_read`` (``gateway.hypercorn_ext.parts``): ``enable`` switches them for the connections
opened afterwards. Off, a ``FrameWriter`` is a plain ASGI transport: sends and closes go
through ``send``, ``take_inbound`` and ``read_directly`` decline, and the transport handle is
gone (``abort`` does nothing, ``wait_closed`` returns at once, ``tcp_progress`` is None).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import sys
import termios
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto.connection import ConnectionState

from gateway.hypercorn_ext.fastread import DirectReader
from rooms.session import SharedFrame

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# SO_LINGER on with a zero timeout: close() resets the connection and discards unsent data,
# instead of leaving an orphaned socket that keeps retrying a peer with a zero window.
_LINGER_RESET = struct.pack("ii", 1, 0)
# struct tcp_info (linux/tcp.h): u64 tcpi_bytes_acked sits at byte 120 (after 8 bytes of u8
# fields, 24 u32 and 2 u64); present since Linux 4.1.
_BYTES_ACKED_OFFSET = 120
_TCP_INFO_LEN = 128


class _AcceptedHandshake:
    """What Hypercorn reads of an accepted handshake (``WSStream.handshake.accepted``)."""

    __slots__ = ()
    accepted = True


_ACCEPTED = _AcceptedHandshake()

# Process-wide, set by ``enable`` (the parts installed by ``gateway.hypercorn_ext.install``).
_sending = False
_reading = False


def enable(*, direct_send: bool, direct_read: bool) -> None:
    """Process-wide: whether ``FrameWriter``s created from now on reach Hypercorn's HTTP/1.1
    transport (``direct_send``) and may read from it (``direct_read``, only with the first)."""
    global _sending, _reading
    _sending = direct_send
    _reading = direct_send and direct_read


class _Events(list[Any]):
    """wsproto's pending events (``append``, ``popleft``, truth) without a deque's block."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame (RFC 6455 section 5.2) carrying ``payload``."""
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 1 << 16:
        header = b"\x81\x7e" + length.to_bytes(2, "big")
    else:
        header = b"\x81\x7f" + length.to_bytes(8, "big")
    return header + payload


def _open(stream: WSStream) -> bool:
    """Accepted and open, on Hypercorn's side and on wsproto's."""
    return (stream.state is ASGIWebsocketState.CONNECTED and not stream.closed
            and stream.connection.state is ConnectionState.OPEN)


def _locate(send: Send) -> tuple[WSStream, asyncio.StreamWriter] | None:
    """Hypercorn's stream and writer behind an ASGI ``send``, if it is the HTTP/1.1 shape."""
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return None
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None
    server = getattr(protocol.send, "__self__", None)
    if not isinstance(server, TCPServer):
        return None
    return stream, server.writer


async def _discard(message: MutableMapping[str, Any]) -> None:
    """What a detached ``FrameWriter`` sends with: nothing."""


class FrameWriter:
    """``rooms.session.Transport`` for a Hypercorn WebSocket: direct frames when possible."""

    __slots__ = ("_live", "_plain", "_send", "_target")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._target = _locate(send) if _sending else None
        self._plain: bool | None = None  # no extension negotiated; known once accepted
        # The TCP transport while the stream is known open and plain without looking: from
        # ``read_directly`` until Hypercorn could change the stream's state. It changes only
        # on what Hypercorn reads (peer's close, ping, a bad frame: only once ``DirectReader``
        # gave reading back, which calls ``reading_given_back``), on what we send (``close``)
        # or once the handler is done (``detach``); a lost connection shows in the
        # transport's own ``is_closing()``, still checked per write. None: check in full.
        self._live: asyncio.WriteTransport | None = None

    @property
    def direct(self) -> bool:
        """Whether sends go straight to the transport (for tests and statistics)."""
        return self._target is not None and bool(self._plain)

    async def send(self, data: str) -> None:
        target = self._target
        if target is not None:
            stream, writer = target
            if writer.transport.is_closing():
                # Aborted (or being closed by Hypercorn): writes would vanish silently.
                raise ConnectionResetError("the connection is closed")
            if _open(stream) and self._no_extension(stream):
                writer.write(text_frame(data.encode()))
                if writer.transport.get_write_buffer_size():
                    await writer.drain()
                return
        await self._send({"type": "websocket.send", "text": data})

    def _no_extension(self, stream: WSStream) -> bool:
        """No extension was negotiated on the (open) connection; learnt once, then kept."""
        if self._plain is None:
            connection: Any = stream.connection
            self._plain = not any(ext.enabled() for ext in connection._proto.extensions)
        return self._plain

    def send_now(self, data: str) -> bool:
        """Write one text frame at once if that cannot block: the direct path's shape, open,
        and nothing already buffered for the peer. False when nothing was written (the caller
        then queues it for ``send``, which waits for the buffer to drain)."""
        transport = self._live or self._writable()
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        transport.write(text_frame(data.encode()))
        return True

    def send_shared_now(self, shared: SharedFrame) -> bool:
        """``send_now(shared.text)`` with the frame built once per broadcast: the first writer
        to need it stores it in ``shared.ws_frame`` (every connection this writes to directly
        negotiated no extension, so the bytes are the same for all)."""
        transport = self._live or self._writable()
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        frame = shared.ws_frame
        if frame is None:
            frame = shared.ws_frame = text_frame(shared.text.encode())
        transport.write(frame)
        return True

    def _writable(self) -> asyncio.WriteTransport | None:
        """The TCP transport if the direct path's shape holds and the stream is open on both
        sides, looked up in full (while ``_live`` is not set)."""
        target = self._target
        if target is None or not self._plain:
            return None
        stream, writer = target
        return writer.transport if _open(stream) else None

    def reading_given_back(self) -> None:
        """Hypercorn reads the stream from now on (``DirectReader``): look its state up per
        send."""
        self._live = None

    def take_inbound(self, handler: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> bool:
        """Have Hypercorn pass each inbound ASGI message (``websocket.receive``,
        ``websocket.disconnect``) to ``handler`` from its own reading task, instead of putting
        it on the connection's app queue for ``receive()``. Call it before accepting.

        True on the HTTP/1.1 shape: the caller must not call ``receive()`` again, and
        ``handler`` must not block (Hypercorn reads nothing more from the socket until it
        returns, which keeps TCP backpressure) nor raise. False on other shapes: keep reading
        ``receive()``. Saves a reader task and a queue hop per frame (bench/profiles/).
        """
        if self._target is None:
            return False
        self._target[0].app_put = handler
        return True

    def read_directly(self, on_text: Callable[[str], None]) -> bool:
        """Read the client's frames ourselves from now on (``gateway.hypercorn_ext.fastread``):
        ``on_text`` gets each simple text frame's text, in order; anything else, from the first
        frame of another kind on, still reaches the ``take_inbound`` handler through Hypercorn.

        Only on the HTTP/1.1 shape over plain TCP, accepted and open, with no extension
        negotiated, and while Hypercorn's reading task is idle, waiting for data (nothing it
        read is left unparsed). False, and nothing changed, otherwise.
        """
        target = self._target
        if target is None or not _reading:
            return False
        stream, writer = target
        transport = writer.transport
        if (transport.is_closing() or writer.get_extra_info("ssl_object") is not None
                or not _open(stream) or not self._no_extension(stream)):
            return False
        inner = transport.get_protocol()
        reader: Any = getattr(inner, "_stream_reader", None)
        if (not isinstance(inner, asyncio.StreamReaderProtocol) or reader is None
                or reader._buffer or reader._waiter is None):
            return False  # Hypercorn's reader has data in hand, or is not waiting for more
        protocol = getattr(stream.send, "__self__", None)
        if isinstance(protocol, H11Protocol) and isinstance(protocol.connection, H11WSConnection) \
                and protocol.connection.buffer:
            return False  # bytes that came with the handshake, not yet parsed
        # (uvloop's transports have the interface without subclassing asyncio.Transport.)
        transport.set_protocol(DirectReader(cast(asyncio.Transport, transport), inner, on_text,
                                            stream.config.websocket_max_message_size,
                                            self))
        self._live = transport
        return True

    def forget_handshake(self) -> None:
        """Once accepted (HTTP/1.1 shape), shrink what an idle connection keeps (bytes per
        connection measured in bench/profiles/2026-11-26-idle-memory.md):

        - the HTTP/1.1 parser behind the WebSocket (``H11WSConnection.h11_connection``, ~1 KB):
          it only wrote the handshake's response; frames bypass it;
        - the parsed handshake (``WSStream.handshake``, ~0.5 KB): afterwards Hypercorn reads
          only its ``accepted`` flag;
        - two empty deques, 760 bytes each however empty: the stream writer's drain waiters
          and wsproto's pending events, used with ``append``, ``remove``, ``popleft`` and
          iteration only, become lists.

        Elsewhere (HTTP/2, or a shape not known): nothing.
        """
        if self._target is None:
            return
        stream, writer = self._target
        protocol = getattr(stream.send, "__self__", None)
        if isinstance(protocol, H11Protocol) and isinstance(protocol.connection, H11WSConnection):
            protocol.connection.h11_connection = None  # type: ignore[assignment]
        if getattr(stream.handshake, "accepted", False):
            stream.handshake = _ACCEPTED  # type: ignore[assignment]
        flow: Any = writer.transport.get_protocol()  # asyncio.StreamReaderProtocol
        waiters = getattr(flow, "_drain_waiters", None)
        if type(waiters) is deque and not waiters:
            flow._drain_waiters = []
        connection: Any = stream.connection
        events = getattr(connection, "_events", None)
        if type(events) is deque and not events:
            connection._events = _Events()

    def detach(self) -> None:
        """The connection is over: forget Hypercorn's stream. It refers to the connection's
        inbound handler, which refers to its session, which refers to this writer: without
        this, a closed connection is a reference cycle that only the garbage collector frees.
        Sends after this do nothing."""
        self._target = None
        self._live = None
        self._send = _discard

    async def close(self, code: int, reason: str) -> None:
        self._live = None  # no frame may follow the close frame
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    def abort(self) -> None:
        """Drop the TCP connection now (RST), whatever is buffered. Never blocks.

        HTTP/1.1: the transport is aborted, so every pending ``drain()`` (ours and Hypercorn's)
        returns and the socket is closed on the next loop iteration. Other shapes: nothing can
        be dropped from here (an HTTP/2 connection carries other streams); the caller's bounded
        ASGI close and returning from the handler is the best available.
        """
        if self._target is None:
            return
        transport = self._target[1].transport
        if transport.is_closing():
            return  # closed or being aborted already: nothing to drop
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Already closed: OSError, or under uvloop ValueError (a socket whose fd is -1).
            with contextlib.suppress(OSError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    def tcp_progress(self) -> tuple[int, int] | None:
        """``(acked, pending)``: bytes the peer's TCP stack has acknowledged (Linux
        ``tcpi_bytes_acked``) and bytes written but not yet acknowledged (our buffer and the
        kernel's send queue); None where that can't be read.

        ``acked`` grows only while the peer reads, until its receive buffer is full: a stopped
        client (a zombie) still acks what fits in its buffer, so this proves progress only
        through a known stretch of data (a replay), not liveness in general.
        """
        if self._target is None:
            return None
        transport = self._target[1].transport
        sock = transport.get_extra_info("socket")
        if sock is None or transport.is_closing():
            return None
        try:
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        except (OSError, ValueError):  # closed meanwhile (uvloop: ValueError, fd -1)
            return None
        if len(info) < _TCP_INFO_LEN:
            return None
        acked: int = struct.unpack_from("Q", info, _BYTES_ACKED_OFFSET)[0]
        pending = int.from_bytes(queued, sys.byteorder) + transport.get_write_buffer_size()
        return acked, pending

    async def wait_closed(self) -> None:
        """Return once the TCP connection is closed (at once on shapes without one of our own).

        Hypercorn closes it when the close handshake ends or the peer goes away; a peer that
        stops reading can delay that forever, so bound this and ``abort()`` after.
        """
        if self._target is None:
            return
        with contextlib.suppress(OSError):  # closed by a reset: closed all the same
            await self._target[1].wait_closed()

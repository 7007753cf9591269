"""Hypercorn WebSocket behaviour corrected: a frame that fails to parse gets its close frame.

wsproto reports a frame it cannot accept (invalid UTF-8 in a text frame, a protocol violation,
a message inflating past the limit) as a ``CloseConnection`` event while its own state stays
OPEN; Hypercorn 0.17-0.18 answers a ``CloseConnection`` only in the REMOTE_CLOSING state, so it
dropped the TCP connection without the close frame RFC 6455 (section 7.1.7) requires: clients
saw 1006 instead of 1007, 1002 or 1009. ``install()`` replaces ``WSStream._handle_events`` with
the same loop plus that close frame.
"""

from __future__ import annotations

from typing import Any

from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import FrameTooLargeError
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason


async def _handle_events(self: Any) -> None:
    for event in self.connection.events():
        if isinstance(event, Message):
            try:
                self.buffer.extend(event)
            except FrameTooLargeError:
                await self._send_wsproto_event(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG))
                break
            if event.message_finished:
                await self.app_put(self.buffer.to_message())
                self.buffer.clear()
        elif isinstance(event, Ping):
            await self._send_wsproto_event(event.response())
        elif isinstance(event, CloseConnection):
            if self.connection.state is ConnectionState.REMOTE_CLOSING:
                await self._send_wsproto_event(event.response())
            elif self.connection.state is ConnectionState.OPEN:
                # A frame we could not parse: fail the connection with its code (the fix).
                await self._send_wsproto_event(event)
            await self.send(StreamClosed(stream_id=self.stream_id))


def install() -> None:
    """Process-wide; idempotent."""
    ws_stream.WSStream._handle_events = _handle_events  # type: ignore[method-assign]

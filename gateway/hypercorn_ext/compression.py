"""permessage-deflate for WebSockets served by Hypercorn in this process: declined unless
compression is on, and bounded when it is. Two parts (``gateway.hypercorn_ext.parts``):

- **deflate_off.** Hypercorn always accepts permessage-deflate when the client offers it
  (browsers always do) and has no setting to refuse it (hypercorn #307). Compression runs per
  recipient on the event loop, so in a busy room it costs more CPU than everything else on the
  delivery path (FIELD-NOTES, bench/). ``Handshake.accept`` builds the extension from the
  module-level name ``ws_stream.PerMessageDeflate``; ours answers the offer through wsproto's
  public ``Extension.accept`` with None (declined) when compression is off, and the handshake
  then simply omits the extension, which RFC 7692 allows.
- **deflate_bound.** When compression is on, wsproto inflates each frame without a limit before
  Hypercorn's ``websocket_max_message_size`` check sees the message: a ~500 KB frame of zeros
  inflated to ~650 MB. ``frame_inbound_payload_data`` inflates at most ``max_message_bytes``
  per message and fails the connection with 1009 past that, before allocating more. It uses
  ``PerMessageDeflate``'s private decompressor state, hence a part of its own: a wsproto change
  there leaves declining (the default) in place.
"""

from __future__ import annotations

import zlib
from typing import Any

from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

_HYPERCORNS = ws_stream.PerMessageDeflate  # type: ignore[attr-defined]
_accepting = True
_bounded = False
_max_message_bytes = 16 * 1024 * 1024


class RoomchatDeflate(PerMessageDeflate):
    """permessage-deflate that declines offers while compression is off and, when bounded,
    never inflates one message past ``max_message_bytes``."""

    _inflated = 0

    def accept(self, offer: str) -> bool | str | None:
        if not _accepting:
            return None  # declined: wsproto leaves the extension out of the handshake
        return super().accept(offer)

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        if not _bounded or not self._inbound_compressed or not self._inbound_is_compressible:
            return super().frame_inbound_payload_data(proto, data)
        if self._decompressor is None:  # not set up yet: let wsproto do it
            return super().frame_inbound_payload_data(proto, data)
        room = _max_message_bytes - self._inflated
        try:
            out = self._decompressor.decompress(bytes(data), room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > _max_message_bytes or self._decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        if fin:
            self._inflated = 0
        return super().frame_inbound_complete(proto, fin)


def configure(*, decline: bool, bound: bool, compression: bool,
              max_message_bytes: int) -> None:
    """Process-wide (the last call wins). ``decline``: the deflate_off part is installed, so
    offers are declined unless ``compression``; ``bound``: the deflate_bound part is, so an
    accepted extension inflates at most ``max_message_bytes`` per message. Neither: Hypercorn's
    own extension (offers accepted, inflation unbounded)."""
    global _accepting, _bounded, _max_message_bytes
    _accepting = compression or not decline
    _bounded = bound
    _max_message_bytes = max_message_bytes
    ws_stream.PerMessageDeflate = (  # type: ignore[attr-defined]
        RoomchatDeflate if decline or bound else _HYPERCORNS)

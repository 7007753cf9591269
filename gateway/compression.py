"""Turn permessage-deflate on or off for WebSockets served by Hypercorn in this process, and
bound what a compressed message may inflate to.

Hypercorn always accepts permessage-deflate when the client offers it (browsers always do) and
has no setting to refuse it (hypercorn issue #307). Compression runs per recipient on the event
loop, so in a busy room it costs more CPU than everything else on the delivery path (measured in
docs/FIELD-NOTES and bench/). We wrap ``Handshake.accept`` to ignore the client's offer when
compression is off; the handshake then simply omits the extension, which RFC 7692 allows.

When it is on, wsproto inflates each frame without a limit before Hypercorn's
``websocket_max_message_size`` check sees the message: a ~500 KB frame of zeros inflated to
~650 MB. ``BoundedDeflate`` inflates at most ``max_message_bytes`` per message and fails the
connection with 1009 past that, before allocating more.
"""

from __future__ import annotations

import zlib
from typing import Any

from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

_original_accept = ws_stream.Handshake.accept
_enabled = True
_max_message_bytes = 16 * 1024 * 1024


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that never inflates one message past ``_max_message_bytes``."""

    _inflated = 0

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
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


def _accept(self: Any, *args: Any, **kwargs: Any) -> Any:
    if not _enabled:
        self.extensions = None
    return _original_accept(self, *args, **kwargs)


def set_compression(enabled: bool, max_message_bytes: int = _max_message_bytes) -> None:
    """Process-wide: accept (``True``) or decline (``False``) permessage-deflate offers; an
    accepted one inflates at most ``max_message_bytes`` per message."""
    global _enabled, _max_message_bytes
    _enabled = enabled
    _max_message_bytes = max_message_bytes
    ws_stream.Handshake.accept = _accept  # type: ignore[method-assign]
    ws_stream.PerMessageDeflate = BoundedDeflate  # type: ignore[attr-defined]

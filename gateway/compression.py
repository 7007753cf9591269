"""Turn permessage-deflate on or off for WebSockets served by Hypercorn in this process.

Hypercorn always accepts permessage-deflate when the client offers it (browsers always do) and
has no setting to refuse it (hypercorn issue #307). Compression runs per recipient on the event
loop, so in a busy room it costs more CPU than everything else on the delivery path (measured in
docs/FIELD-NOTES and bench/). We wrap ``Handshake.accept`` to ignore the client's offer when
compression is off; the handshake then simply omits the extension, which RFC 7692 allows.
"""

from __future__ import annotations

from typing import Any

from hypercorn.protocol import ws_stream

_original_accept = ws_stream.Handshake.accept
_enabled = True


def _accept(self: Any, *args: Any, **kwargs: Any) -> Any:
    if not _enabled:
        self.extensions = None
    return _original_accept(self, *args, **kwargs)


def set_compression(enabled: bool) -> None:
    """Process-wide: accept (``True``) or decline (``False``) permessage-deflate offers."""
    global _enabled
    _enabled = enabled
    ws_stream.Handshake.accept = _accept  # type: ignore[method-assign]

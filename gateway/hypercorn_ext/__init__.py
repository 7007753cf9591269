"""Everything that replaces or reaches into private parts of Hypercorn, wsproto or asyncio, behind
one ``install()`` that checks what it replaces (``fence``) and falls back to Hypercorn's plain
ASGI path part by part; ``ROOMCHAT_FAST_PATHS=0`` installs none (docs/upstream.md)."""

from gateway.hypercorn_ext.fastsend import FrameWriter
from gateway.hypercorn_ext.parts import PARTS, Installed, install

__all__ = ["PARTS", "FrameWriter", "Installed", "install"]

"""Files to upload in tests, made here: images with metadata, bombs, truncated and polyglot
files, and the scripts that must never run."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

GPS_IFD = 0x8825
ORIENTATION = 0x0112
HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"
SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
       b'<script>alert(document.cookie)</script><rect width="10" height="10"/></svg>')


def image(fmt: str = "JPEG", size: tuple[int, int] = (64, 48),
          color: tuple[int, int, int] = (200, 30, 30), **save: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt, **save)
    return out.getvalue()


def jpeg_with_gps(size: tuple[int, int] = (640, 480), orientation: int = 6) -> bytes:
    """A JPEG whose EXIF holds a GPS position, a camera model and an orientation (6: shown
    turned 90° clockwise, so width and height swap once applied)."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x0110] = "Secret Camera 3000"  # Model
    exif[GPS_IFD] = {1: "N", 2: (51.0, 30.0, 12.5), 3: "W", 4: (0.0, 7.0, 39.0)}
    return image("JPEG", size, exif=exif.tobytes())


def png_bomb(side: int = 20_000) -> bytes:
    """A valid PNG header and tiny compressed data claiming ``side`` x ``side`` pixels (a
    decompression bomb: ~100 KB that would decode to gigabytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def polyglot_jpeg() -> bytes:
    """A JPEG that is also an HTML page: markup in a comment segment and after the end."""
    plain = image("JPEG", (32, 32))
    comment = b"\xff\xfe" + struct.pack(">H", len(HTML) + 2) + HTML
    return plain[:2] + comment + plain[2:] + HTML


def animated_gif(frames: int = 4) -> bytes:
    out = io.BytesIO()
    images = [Image.new("RGB", (40, 30), (i * 60, 0, 0)) for i in range(frames)]
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=80,
                   loop=0, comment=b"made by a secret tool")
    return out.getvalue()


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image

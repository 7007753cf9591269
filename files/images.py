"""Uploaded images, made safe to show: decoded and re-encoded with Pillow, so nothing but
pixels survives (no EXIF, GPS, XMP or comments; no bytes appended after the image, as in a
JPEG/HTML polyglot), turned upright (EXIF orientation applied), and a thumbnail made.

Synchronous and CPU-bound: ``files.service`` runs ``process_image`` in a bounded pool of worker
processes, never on the event loop. The ICC colour profile is kept: it changes how the pixels
look, and holds nothing about the picture's author or place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from files.errors import BadImage, ImageTooLarge

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF"}
"""The image types re-encoded (``files.meta.IMAGE_TYPES``), each in its own format."""
THUMB_PIXELS = 480
"""A thumbnail's longest side, at most (a smaller image keeps its size)."""
THUMB_FORMAT = "WEBP"
THUMB_TYPE = "image/webp"
JPEG_QUALITY = 90
THUMB_QUALITY = 80
PILLOW_PIXEL_GUARD = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
"""Pillow's own decompression-bomb guard (it refuses larger images at ``open``); a
``max_image_pixels`` above it is capped by it."""


@dataclass(frozen=True, slots=True)
class Processed:
    """An image re-encoded: its type (the one it came as), size after orientation, frames."""

    type: str
    width: int
    height: int
    frames: int


def process_image(source: Path, output: Path, thumb: Path, kind: str,
                  max_pixels: int) -> Processed:
    """Decode the image at ``source`` (sniffed as ``kind``, one of FORMATS), write it
    re-encoded to ``output`` and its thumbnail (WebP) to ``thumb``.

    Raises ``ImageTooLarge`` when its pixels (all frames of an animation) pass ``max_pixels``,
    checked from its header before anything is decoded, and ``BadImage`` when it is not a
    whole image of that kind (truncated, corrupt, another format inside).
    """
    fmt = FORMATS[kind]
    try:
        with Image.open(source, formats=[fmt]) as image:
            frames = getattr(image, "n_frames", 1)
            pixels = image.width * image.height * frames
            if pixels > max_pixels:
                raise ImageTooLarge(pixels, max_pixels)
            icc = image.info.get("icc_profile")
            if frames > 1:
                first = _write_animation(image, output, fmt, icc)
            else:
                image.load()  # raises for a truncated image (LOAD_TRUNCATED_IMAGES is off)
                # In place: a copy of a 50-megapixel image is 150-200 MB more.
                ImageOps.exif_transpose(image, in_place=True)
                image.info = {}  # what a save could copy from: EXIF, XMP, comments
                _write_still(image, output, fmt, icc)
                first = image
            width, height = first.size
            _write_thumb(first, thumb)  # last: it shrinks the image
    except Image.DecompressionBombError:
        raise ImageTooLarge(None, min(max_pixels, PILLOW_PIXEL_GUARD)) from None
    except (OSError, SyntaxError, ValueError, EOFError, UnidentifiedImageError) as exc:
        raise BadImage(f"the file is not a whole {fmt} image ({exc})") from None
    return Processed(kind, width, height, frames)


def _write_still(image: Image.Image, output: Path, fmt: str, icc: bytes | None) -> None:
    options: dict[str, object] = {"exif": b""}
    if icc:
        options["icc_profile"] = icc
    if fmt == "JPEG":
        options["quality"] = JPEG_QUALITY
        if image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("RGB")
    elif fmt == "WEBP":
        options["quality"] = JPEG_QUALITY
    elif fmt == "GIF":
        options.pop("exif")
        options.pop("icc_profile", None)
    image.save(output, format=fmt, **options)


def _write_animation(image: Image.Image, output: Path, fmt: str,
                     icc: bytes | None) -> Image.Image:
    """Every frame re-encoded with its duration (an animation keeps moving); the first frame,
    for the thumbnail."""
    frames: list[Image.Image] = []
    durations: list[int] = []
    for frame in ImageSequence.Iterator(image):
        frame.load()
        durations.append(int(frame.info.get("duration", 100)))
        converted = frame.convert("RGBA")
        converted.info = {}  # a GIF's save copies comments and extensions from here
        frames.append(converted)
    options: dict[str, object] = {"save_all": True, "append_images": frames[1:],
                                  "duration": durations, "loop": int(image.info.get("loop", 0))}
    if fmt == "GIF":
        options["disposal"] = 2
    else:
        options["exif"] = b""
        if icc:
            options["icc_profile"] = icc
    if fmt == "WEBP":
        options["quality"] = JPEG_QUALITY
    frames[0].save(output, format=fmt, **options)
    return frames[0]


def _write_thumb(image: Image.Image, thumb: Path) -> None:
    """Shrinks ``image`` itself (it is written already): no full-size copy."""
    image.thumbnail((THUMB_PIXELS, THUMB_PIXELS), Image.Resampling.LANCZOS)
    small = image
    if small.mode not in ("RGB", "RGBA"):
        small = small.convert("RGBA" if small.has_transparency_data else "RGB")
    small.info = {}
    small.save(thumb, format=THUMB_FORMAT, quality=THUMB_QUALITY, exif=b"")

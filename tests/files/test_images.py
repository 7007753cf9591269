"""Images re-encoded in a worker (``files.images``): only pixels survive."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
from PIL import Image

from files.errors import BadImage, ImageTooLarge
from files.images import PILLOW_PIXEL_GUARD, THUMB_PIXELS, process_image
from gateway.config import MAX_PILLOW_PIXELS
from tests.imagefiles import (
    GPS_IFD,
    HTML,
    animated_gif,
    image,
    jpeg_with_gps,
    opened,
    png_bomb,
    polyglot_jpeg,
    truncated,
)

LIMIT = 50_000_000


def run(tmp_path: Path, data: bytes, kind: str, limit: int = LIMIT) -> tuple[bytes, bytes]:
    source = tmp_path / "in"
    source.write_bytes(data)
    process_image(source, tmp_path / "out", tmp_path / "thumb", kind, limit)
    return (tmp_path / "out").read_bytes(), (tmp_path / "thumb").read_bytes()


def test_gps_and_camera_are_gone_and_the_picture_is_upright(tmp_path: Path) -> None:
    data = jpeg_with_gps((640, 480))
    assert GPS_IFD in opened(data).getexif()  # the test's own check: it is there before
    source = tmp_path / "in"
    source.write_bytes(data)
    done = process_image(source, tmp_path / "out", tmp_path / "thumb", "image/jpeg", LIMIT)
    assert (done.width, done.height) == (480, 640)  # orientation 6 applied
    stored = opened((tmp_path / "out").read_bytes())
    assert stored.size == (480, 640) and stored.format == "JPEG"
    assert dict(stored.getexif()) == {}
    assert b"Secret Camera" not in (tmp_path / "out").read_bytes()
    thumb = opened((tmp_path / "thumb").read_bytes())
    assert thumb.format == "WEBP" and thumb.size == (360, THUMB_PIXELS)
    assert dict(thumb.getexif()) == {}


@pytest.mark.parametrize(("fmt", "kind"), [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                           ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_each_type_keeps_its_format(tmp_path: Path, fmt: str, kind: str) -> None:
    out, thumb = run(tmp_path, image(fmt, (1000, 200)), kind)
    assert opened(out).format == fmt and opened(out).size == (1000, 200)
    assert opened(thumb).size == (THUMB_PIXELS, 96)


def test_an_animation_keeps_its_frames_but_not_its_comment(tmp_path: Path) -> None:
    out, _ = run(tmp_path, animated_gif(4), "image/gif")
    stored = Image.open(tmp_path / "out")
    assert getattr(stored, "n_frames", 1) == 4
    assert b"secret tool" not in out


def test_a_polyglot_loses_its_html(tmp_path: Path) -> None:
    data = polyglot_jpeg()
    assert HTML in data and opened(data).format == "JPEG"
    out, thumb = run(tmp_path, data, "image/jpeg")
    assert b"<script" not in out and b"<script" not in thumb
    assert opened(out).size == (32, 32)


# Pillow warns from 89 M pixels up; our own check, after its open, refuses.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    with pytest.raises(ImageTooLarge, match="has 100000000 pixels, more than the limit of "
                                            "50000000"):
        run(tmp_path, png_bomb(10_000), "image/png")
    # Beyond Pillow's own guard: Pillow refuses it at open, and so do we.
    with pytest.raises(ImageTooLarge, match="too many pixels to count"):
        run(tmp_path, png_bomb(20_000), "image/png", limit=MAX_PILLOW_PIXELS)
    assert not (tmp_path / "out").exists()


def test_the_pixel_limit_at_its_edge(tmp_path: Path) -> None:
    data = image("PNG", (100, 50))
    run(tmp_path, data, "image/png", limit=5000)
    with pytest.raises(ImageTooLarge):
        run(tmp_path, data, "image/png", limit=4999)
    with pytest.raises(ImageTooLarge):  # all frames count
        run(tmp_path, animated_gif(4), "image/gif", limit=40 * 30 * 4 - 1)


def test_pillows_own_guard_is_the_settings_ceiling() -> None:
    assert PILLOW_PIXEL_GUARD == MAX_PILLOW_PIXELS


@pytest.mark.parametrize(("fmt", "kind"), [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                           ("GIF", "image/gif"), ("WEBP", "image/webp")])
def test_a_truncated_image_is_refused(tmp_path: Path, fmt: str, kind: str) -> None:
    big = image(fmt, (300, 300), optimize=False) if fmt != "WEBP" else image(fmt, (300, 300))
    noisy = Image.effect_noise((300, 300), 80).convert("RGB")  # compresses badly: long data
    out = io.BytesIO()
    noisy.save(out, format=fmt)
    for data in (truncated(big), truncated(out.getvalue())):
        with pytest.raises(BadImage, match=f"not a whole {fmt} image"):
            run(tmp_path, data, kind)


def test_bytes_of_another_type_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadImage):
        run(tmp_path, image("PNG"), "image/jpeg")


@pytest.mark.parametrize("error", [ImageTooLarge(10, 5), ImageTooLarge(None, 5),
                                   BadImage("not a whole JPEG image")])
def test_what_a_worker_raises_survives_the_way_back(error: Exception) -> None:
    """Images are processed in worker processes: their errors come back pickled (one that
    could not be unpickled broke the pool, and a bomb was answered 422 instead of 413)."""
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)

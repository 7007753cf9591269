"""Event-loop lag while a large image is uploaded and re-encoded (issue 23): proof that
decoding, re-encoding and thumbnailing run off the event loop.

    .venv/bin/python -m bench.fileslag [--side 8000] [--runs 3]

A real server (Hypercorn, in this process and loop) gets a JPEG of ``side`` x ``2/3 side``
pixels over HTTP from a client thread; meanwhile a probe task sleeps 1 ms at a time and records
how late each wake-up is. The control run calls ``files.images.process_image`` on the loop
itself, which is what the probe must catch. Prints one line per run and the figures to quote.
Not a test (timings depend on the machine and its load); the target is a lag under 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import socket
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import jwt
from PIL import Image

from files.images import process_image
from gateway.app import Gateway, create_app
from gateway.config import load_config
from gateway.server import serve

SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"
TICK = 0.001


def big_jpeg(side: int) -> bytes:
    """A photo-like JPEG: smooth noise scaled up (a few MB for tens of megapixels)."""
    small = Image.effect_noise((side // 20, side * 2 // 60), 60).convert("RGB")
    out = io.BytesIO()
    small.resize((side, side * 2 // 3), Image.Resampling.BICUBIC).save(out, "JPEG",
                                                                       quality=92)
    return out.getvalue()


class Probe:
    """Sleeps TICK at a time and records how late each wake-up is (seconds)."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(TICK)
            self.lags.append(loop.time() - start - TICK)

    def summary(self) -> str:
        lags = sorted(self.lags)
        p99 = lags[int(len(lags) * 0.99)] if lags else 0.0
        return (f"max {max(lags) * 1000:6.1f} ms, p99 {p99 * 1000:5.1f} ms, median "
                f"{statistics.median(lags) * 1000:4.2f} ms over {len(lags)} wake-ups")


def upload(port: int, data: bytes, token: str) -> float:
    started = time.monotonic()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/rooms/lobby/files?name=big.jpg",
                                     data=data, method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        assert answer.status == 201
    return time.monotonic() - started


async def measure(data: bytes, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config({}, data_dir=Path(tmp), jwt_secret=SECRET)
        app = create_app(config)
        gw: Gateway = app.extensions["roomchat"]
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(100)
        port = sock.getsockname()[1]
        shutdown = asyncio.Event()
        server = asyncio.create_task(serve(config, app=app, fd=sock.detach(),
                                           shutdown=shutdown, handle_signals=False))
        for _ in range(1000):  # 10 s at most
            if gw.started:
                break
            await asyncio.sleep(0.01)
        now = int(time.time())
        token = jwt.encode({"sub": "bench", "rooms": ["lobby"], "aud": "roomchat",
                            "iss": "roomchat", "iat": now, "exp": now + 3600}, SECRET)
        try:
            for run in range(runs):
                probe = Probe()
                prober = asyncio.create_task(probe.run())
                seconds = await asyncio.to_thread(upload, port, data, token)
                prober.cancel()
                await asyncio.wait([prober])
                print(f"off the loop, run {run + 1}: upload + re-encode {seconds:5.2f} s; "
                      f"loop lag {probe.summary()}")
            # Control: the same work on the loop, which the probe must see.
            source = Path(tmp) / "control.jpg"
            source.write_bytes(data)
            probe = Probe()
            prober = asyncio.create_task(probe.run())
            await asyncio.sleep(0.05)
            started = time.monotonic()
            process_image(source, Path(tmp) / "out", Path(tmp) / "thumb", "image/jpeg",
                          config.max_image_pixels)
            seconds = time.monotonic() - started
            await asyncio.sleep(0.05)
            prober.cancel()
            await asyncio.wait([prober])
            print(f"control, ON the loop:     re-encode {seconds:5.2f} s; "
                  f"loop lag {probe.summary()}")
        finally:
            shutdown.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server, 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8000, help="image width in pixels")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    data = big_jpeg(args.side)
    print(f"image: {args.side} x {args.side * 2 // 3} px JPEG, {len(data) / 1e6:.1f} MB")
    asyncio.run(measure(data, args.runs))


if __name__ == "__main__":
    main()

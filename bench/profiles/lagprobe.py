"""``roomchat`` with a probe: event-loop lag and every garbage collection, written on exit.

``python -m bench.profiles.lagprobe OUT.json serve --bind ...`` runs ``roomchat serve`` unchanged
except for two observers: a task that sleeps 1 ms in a loop and records how late it woke
(uvloop's clock has millisecond steps), and a ``gc.callbacks`` hook timing each collection.
``OUT.json`` gets ``{"lags": [[unix_time, ms], ...], "gcs": [[unix_time, generation, ms,
collected], ...]}`` when the server exits (SIGTERM included). Used by ``small_rooms.py``.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import sys
import time
from typing import Any

import gateway.server
from gateway.cli import main

_lags: list[tuple[float, float]] = []
_gcs: list[tuple[float, int, float, int]] = []
_started: list[float] = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _gcs.append((time.time(), int(info["generation"]),
                     (time.perf_counter() - _started[0]) * 1000, int(info["collected"])))


async def _lag() -> None:
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(0.001)
        _lags.append((time.time(), (loop.time() - before - 0.001) * 1000))


def _probed(serve: Any) -> Any:
    async def serve_with_probe(*args: Any, **kwargs: Any) -> None:
        probe = asyncio.create_task(_lag())
        try:
            await serve(*args, **kwargs)
        finally:
            probe.cancel()

    return serve_with_probe


def run(out: str, argv: list[str]) -> int:
    """Run ``roomchat argv`` with the probes; write ``out`` at exit."""
    gc.callbacks.append(_on_gc)
    gateway.server.serve = _probed(gateway.server.serve)

    def write() -> None:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"lags": _lags, "gcs": _gcs}, f)

    atexit.register(write)
    return main(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))

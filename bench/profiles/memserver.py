"""``roomchat serve`` that reports where its memory is, for ``bench.profiles.idle_memory``.

Runs the real ``roomchat serve`` (same CLI, same settings, uvloop) in this process. On SIGUSR1 it
writes ``$ROOMCHAT_MEMDUMP_DIR/<n>.json`` (RSS, glibc malloc statistics, pymalloc blocks, live
objects by type) and, when tracemalloc is on (``python -X tracemalloc=N``), ``<n>.snapshot``.
Profiling only: never imported by roomchat itself.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

_dumps = 0


_MALLINFO_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                    "uordblks", "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO_FIELDS]


def _mallinfo() -> dict[str, int]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {name: int(getattr(info, name)) for name in _MALLINFO_FIELDS}


def _status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile... of /proc/self/status, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _pymalloc_stats(path: Path) -> dict[str, int]:
    """``sys._debugmallocstats()`` (it writes to fd 2), kept in ``path``; its byte totals."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("w") as f:
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    totals = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.rpartition("=")
        if sep and key.strip() not in totals and value.strip().replace(",", "").isdigit():
            totals[key.strip()] = int(value.strip().replace(",", ""))
    return totals


def dump(signum: int = 0, frame: FrameType | None = None) -> None:
    global _dumps
    _dumps += 1
    out_dir = Path(os.environ["ROOMCHAT_MEMDUMP_DIR"])
    if os.environ.get("ROOMCHAT_MEMDUMP_COLLECT"):
        gc.collect()
    objects = gc.get_objects()
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in objects:
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        counts[name] += 1
        try:
            sizes[name] += sys.getsizeof(obj)
        except TypeError:
            pass
    del objects
    report: dict[str, Any] = {
        "status": _status(),
        "mallinfo": _mallinfo(),
        "allocated_blocks": sys.getallocatedblocks(),
        "gc_counts": dict(counts),
        "gc_sizes": dict(sizes),
        "tracing": tracemalloc.is_tracing(),
    }
    if tracemalloc.is_tracing():
        report["traced"] = tracemalloc.get_traced_memory()
        report["tracemalloc_overhead"] = tracemalloc.get_tracemalloc_memory()
        tracemalloc.take_snapshot().dump(str(out_dir / f"{_dumps}.snapshot"))
    report["pymalloc"] = _pymalloc_stats(out_dir / f"{_dumps}.pymalloc.txt")
    (out_dir / f"{_dumps}.json").write_text(json.dumps(report))
    (out_dir / f"{_dumps}.done").touch()


def main() -> int:
    signal.signal(signal.SIGUSR1, dump)
    from gateway.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

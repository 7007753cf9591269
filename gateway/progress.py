"""Progress of the command line's long operations (``import``, ``export``, ``backup``,
``restore``, ``erase``) on a terminal, with tqdm: the count, the rate and, when the total is
known, the time left. Nothing at all when stderr is not a terminal (a pipe, a file, cron, CI):
the commands' one summary line is all a script sees.

tqdm, not rich's progress: one pure-Python package with no dependencies of its own (rich brings
three), and its bar is exactly the count, rate and time left asked for."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

FALLBACK_SIZE = (80, 24)
"""Columns and lines of a terminal that does not say its own."""


class Bar:
    """What a command tells its bar: ``advance(n)`` (n more done: entries, bytes, pages) and
    ``total(n)`` (the total, once known). Does nothing when there is no terminal."""

    def __init__(self, bar: Any = None) -> None:
        self._bar = bar

    def advance(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.update(n)

    def total(self, n: int) -> None:
        if self._bar is not None:
            self._bar.total = n
            self._bar.refresh()


@contextmanager
def progress(what: str, *, total: int | None = None, unit: str = "it",
             scale: bool = False, stream: TextIO | None = None) -> Iterator[Bar]:
    """A bar on ``stream`` (default stderr) named ``what`` while the block runs, if it is a
    terminal. ``total`` None: a count and a rate, no time left (until ``Bar.total``).
    ``scale``: SI prefixes for the count (bytes). The bar is removed when the block ends (the
    command prints its own summary)."""
    out = sys.stderr if stream is None else stream
    if not out.isatty():
        yield Bar()
        return
    from tqdm import tqdm

    # The terminal's size when it says one: a fresh pty (ssh -T, docker exec -t, script(1))
    # says 0x0, and tqdm then draws nothing at all (its bars below row 0 are hidden).
    try:
        size = os.get_terminal_size(out.fileno())
        width, height = size.columns or FALLBACK_SIZE[0], size.lines or FALLBACK_SIZE[1]
    except (OSError, ValueError):
        width, height = FALLBACK_SIZE
    with tqdm(total=total, desc=what, unit=unit, unit_scale=scale, file=out, leave=False,
              ncols=width, nrows=height, mininterval=0.2) as bar:
        yield Bar(bar)

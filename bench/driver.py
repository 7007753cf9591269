"""The Python side of the load generator: starts ``bench/loadgen/loadgen.js`` and talks to it.

The Node process reads one JSON command per line on stdin and answers with JSON lines on stdout;
this module sends a command and waits (with a timeout) for the answer event.
"""

from __future__ import annotations

import json
import selectors
import time
from pathlib import Path
from typing import Any

from bench.procs import Child, ChildError, Children

LOADGEN_DIR = Path(__file__).resolve().parent / "loadgen"
NODE = "/usr/bin/node"


class LoadgenError(RuntimeError):
    """The load generator failed, answered with an error, or timed out."""


class Loadgen:
    """A running load generator process for one server and one client layout."""

    def __init__(self, kids: Children, name: str, spec: dict[str, Any], cpu: int | None,
                 script: str = "loadgen.js") -> None:
        """Write ``spec`` next to the logs and start ``script`` (in ``bench/loadgen/``: the load
        generator, or ``storm.js``) pinned to ``cpu``.

        Raises:
            LoadgenError: it did not say ``ready``.
        """
        spec_path = kids.log_dir / f"{name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        self.child: Child = kids.start(
            name,
            [NODE, "--max-old-space-size=4096", str(LOADGEN_DIR / script), str(spec_path)],
            cpu=cpu,
            cwd=LOADGEN_DIR,
            pipes=True,
        )
        self.kids = kids
        self._buf = b""
        self.wait_event("ready", 30)

    def command(self, cmd: dict[str, Any], expect: str, timeout_s: float) -> dict[str, Any]:
        """Send ``cmd`` and return the next event named ``expect``.

        Raises:
            LoadgenError: an ``error`` event, the process died, or ``timeout_s`` passed.
        """
        stdin = self.child.popen.stdin
        if stdin is None:
            raise LoadgenError("loadgen has no stdin")
        try:
            stdin.write((json.dumps(cmd) + "\n").encode())
            stdin.flush()
        except BrokenPipeError as exc:
            raise LoadgenError(f"loadgen died:\n{self.child.log_tail()}") from exc
        return self.wait_event(expect, timeout_s)

    def wait_event(self, expect: str, timeout_s: float) -> dict[str, Any]:
        """Read stdout lines until an event named ``expect`` (see :meth:`command`)."""
        stdout = self.child.popen.stdout
        if stdout is None:
            raise LoadgenError("loadgen has no stdout")
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            while True:
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event: dict[str, Any] = json.loads(line)
                    if event.get("event") == "error":
                        raise LoadgenError(f"loadgen: {event.get('error')}")
                    if event.get("event") == expect:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LoadgenError(f"loadgen: no {expect!r} within {timeout_s:.0f}s")
                if not sel.select(min(left, 1.0)):
                    if not self.child.alive():
                        raise LoadgenError(f"loadgen exited:\n{self.child.log_tail()}")
                    continue
                chunk = stdout.read1(65536)  # type: ignore[attr-defined]
                if not chunk:
                    raise LoadgenError(f"loadgen closed its output:\n{self.child.log_tail()}")
                self._buf += chunk

    def quit(self) -> None:
        """Ask the loadgen to exit, then make sure it did."""
        try:
            self.command({"cmd": "quit"}, "bye", 10)
        except (LoadgenError, ChildError, OSError):
            pass
        self.kids.stop(self.child)

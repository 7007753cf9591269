"""Start-up mistakes, seen from outside: run ``roomchat serve`` expecting it to refuse to start,
and check that it said so in exactly one line (exit code 2, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import SECRET, SLOW


def serve(tmp: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``roomchat serve`` (it should refuse to start); its exit code and stderr."""
    full_env = {**os.environ, "ROOMCHAT_JWT_SECRET": SECRET, **(env or {})}
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", *args],
        capture_output=True, text=True, env=full_env, cwd=tmp, timeout=30 * SLOW, check=False)
    return out.returncode, out.stderr


def assert_one_line(code: int, stderr: str, *expected: str) -> str:
    assert "Traceback" not in stderr, stderr
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("roomchat: ")
    for text in expected:
        assert text in line
    return line

"""Start-up mistakes: ``roomchat serve`` prints exactly one line on stderr and exits 2, no
traceback (each case is a real process, with real sockets and directories)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import SECRET, SLOW, free_port


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


def test_redis_store_without_the_redis_package(tmp_path: Path) -> None:
    # A module that fails to import exactly as a missing package does, ahead of site-packages.
    shadow = tmp_path / "no-redis"
    shadow.mkdir()
    (shadow / "redis.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'redis'\", name='redis')\n")
    path = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      "--store-url", "redis://127.0.0.1:6379/0", env={"PYTHONPATH": path})
    assert_one_line(code, err, "pip install 'roomchat[redis]'")


def test_redis_unreachable_names_where_but_never_the_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      "--store-url", f"redis://:hunter2-sekret@127.0.0.1:{port}/0")
    line = assert_one_line(code, err, "cannot reach Redis", f"127.0.0.1:{port}")
    assert "hunter2" not in line


def test_unknown_store_url_scheme(tmp_path: Path) -> None:
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      "--store-url", "postgres://admin:pw-sekret@db/chat")
    line = assert_one_line(code, err, "unknown store URL", "sqlite:///", "redis://")
    assert "pw-sekret" not in line


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = serve(tmp_path, "--bind", f"127.0.0.1:{port}")
    assert_one_line(code, err, f"127.0.0.1:{port}", "already in use")


@pytest.mark.parametrize(("bind", "expected"), [
    ("nohost:99999", "out of range"),
    ("abc", "HOST:PORT"),
    ("no-such-host.invalid:8000", "cannot resolve"),
    ("::1:8000", "brackets"),
])
def test_bad_bind(tmp_path: Path, bind: str, expected: str) -> None:
    code, err = serve(tmp_path, "--bind", bind)
    assert_one_line(code, err, repr(bind), expected)


def test_data_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}", "--data-dir", "data")
    assert_one_line(code, err, "data", "is not a directory")


def test_data_dir_cannot_be_created(tmp_path: Path) -> None:
    # Below a regular file: no user, root included, can create it.
    (tmp_path / "file").write_text("")
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      "--data-dir", "file/data")
    assert_one_line(code, err, "cannot create data directory", "file/data")


def test_data_dir_not_writable(tmp_path: Path) -> None:
    # /proc is a directory nobody can create files in, root included (chmod would not stop
    # root, and these tests run as root in containers).
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}", "--data-dir", "/proc")
    assert_one_line(code, err, "/proc", "is not writable")


def test_unusable_public_key_file(tmp_path: Path) -> None:
    # Refused at startup, not by refusing every token afterwards.
    (tmp_path / "pub.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n"
                                      "-----END PUBLIC KEY-----\n")
    code, err = serve(tmp_path, "--bind", f"127.0.0.1:{free_port()}",
                      env={"ROOMCHAT_JWT_ALGORITHM": "RS256",
                           "ROOMCHAT_JWT_PUBLIC_KEY_FILE": str(tmp_path / "pub.pem")})
    assert_one_line(code, err, "ROOMCHAT_JWT_PUBLIC_KEY_FILE", "not a usable RS256 public key")

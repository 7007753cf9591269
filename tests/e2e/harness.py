"""Support for the browser tests: a real roomchat server in a subprocess, tokens, screenshot checks.

Nothing here imports Playwright, so it also serves tests that only use a WebSocket client.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from websockets.sync.client import connect

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = REPO_ROOT / "test-artefacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Timeouts are generous: the machine is a shared 2-core box, and a Python server plus Chromium
# can be slow.
START_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 30.0
SECRET = "e2e-secret-0123456789abcdefghijklmnopqrstuvwxyz"
AUDIENCE = "roomchat"
ISSUER = "roomchat"


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def roomchat_command() -> list[str]:
    """How to run the CLI: the venv's `roomchat` next to this Python, else `python -m gateway`."""
    script = Path(sys.executable).with_name("roomchat")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def mint_token(
    user: str,
    rooms: list[str],
    *,
    name: str | None = None,
    ttl: float = 3600.0,
    secret: str = SECRET,
    now: float | None = None,
) -> str:
    """An HS256 token the test server accepts; a negative ``ttl`` gives an already expired one."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": user,
        "name": name or user.capitalize(),
        "rooms": rooms,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": int(issued) if ttl > 0 else int(issued + ttl - 60),
        "exp": int(issued + ttl),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass
class RoomchatServer:
    """One `roomchat serve` subprocess on a fixed port and data dir; restartable on both."""

    data_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    secret: str = SECRET
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def link(self, room: str, token: str) -> str:
        """The invitation link a person would open: the token in the fragment."""
        return f"{self.base_url}/rooms/{room}#token={token}"

    def token(self, user: str, rooms: list[str], **kwargs: Any) -> str:
        return mint_token(user, rooms, secret=self.secret, **kwargs)

    def start(self) -> None:
        """Start the server and wait until /healthz answers 200; fails with the server's log."""
        assert self.proc is None, "server already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["ROOMCHAT_JWT_SECRET"] = self.secret
        env.pop("ROOMCHAT_DEV_LOGIN", None)
        cmd = [
            *roomchat_command(),
            "serve",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts}: {' '.join(cmd)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise AssertionError(f"roomchat serve exited with {code}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.1)  # polling for readiness, not a timing assumption
        self.kill()
        raise AssertionError(
            f"roomchat serve not healthy after {START_TIMEOUT_S}s:\n{self.log_tail()}"
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=2) as res:
                return bool(res.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> int:
        """SIGTERM (the server closes every socket with 1012 and exits), wait, return the code."""
        proc = self.proc
        if proc is None:
            return 0
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"roomchat serve ignored SIGTERM for {STOP_TIMEOUT_S}s:\n{self.log_tail()}"
            ) from None
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def revoke(self, user: str) -> str:
        """`roomchat revoke --user USER` beside the running server (same data dir); its stdout."""
        env = dict(os.environ)
        env["ROOMCHAT_JWT_SECRET"] = self.secret
        result = subprocess.run(
            [*roomchat_command(), "revoke", "--user", user, "--data-dir", str(self.data_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, f"roomchat revoke failed:\n{result.stderr}"
        return result.stdout

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.base_url}{path}", timeout=10) as res:
            return json.loads(res.read())


# ---- screenshots ---------------------------------------------------------------------------------

MIN_SCREENSHOT_BYTES = 4096


def png_has_several_colours(data: bytes) -> bool:
    """True when the PNG (8-bit RGB/RGBA, as Chromium writes them) has two different pixels.

    A tiny decoder (the test environment has no Pillow): inflate the IDAT stream and undo the
    per-row filters until a pixel differs from the first one, so a normal screenshot is settled
    within its first rows.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos = 8
    width = height = 0
    bit_depth = colour_type = interlace = -1
    idat = bytearray()
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    channels = {2: 3, 6: 4}.get(colour_type)
    if bit_depth != 8 or channels is None or interlace != 0:
        raise ValueError(f"unsupported PNG: depth {bit_depth}, colour type {colour_type}")
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    prev = bytearray(stride)
    first: bytes | None = None
    for row in range(height):
        start = row * (stride + 1)
        filt = raw[start]
        line = bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(filt, line, prev, channels)
        if first is None:
            first = bytes(line[:channels])
        if line != first * width:
            return True
        prev = line
    return False


def _unfilter(filt: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    n = len(line)
    if filt == 0:
        return
    if filt == 1:
        for i in range(bpp, n):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
    elif filt == 2:
        for i in range(n):
            line[i] = (line[i] + prev[i]) & 0xFF
    elif filt == 3:
        for i in range(n):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
    elif filt == 4:
        for i in range(n):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + pred) & 0xFF
    else:
        raise ValueError(f"bad PNG filter {filt}")


@dataclass(frozen=True)
class PngPixels:
    """A decoded PNG: ``rows`` holds ``height`` rows of ``width * channels`` bytes, no filters."""

    width: int
    height: int
    channels: int
    rows: bytes


def png_pixels(data: bytes) -> PngPixels:
    """Decode a PNG as Chromium writes them (8-bit RGB or RGBA, not interlaced).

    Two PNGs with equal ``png_pixels`` show the same picture even when their bytes differ (another
    zlib level or filter choice). Raises ``ValueError`` for anything else.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos = 8
    width = height = 0
    bit_depth = colour_type = interlace = -1
    idat = bytearray()
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    channels = {2: 3, 6: 4}.get(colour_type)
    if bit_depth != 8 or channels is None or interlace != 0:
        raise ValueError(f"unsupported PNG: depth {bit_depth}, colour type {colour_type}")
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise ValueError(f"PNG data is {len(raw)} bytes, expected {height * (stride + 1)}")
    out = bytearray()
    prev = bytearray(stride)
    for row in range(height):
        start = row * (stride + 1)
        line = bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(raw[start], line, prev, channels)
        out += line
        prev = line
    return PngPixels(width, height, channels, bytes(out))


def check_screenshot(path: Path) -> None:
    """Assert that `path` is a real screenshot: written, not tiny, not a single colour."""
    assert path.exists(), f"screenshot {path} was not written"
    data = path.read_bytes()
    assert len(data) > MIN_SCREENSHOT_BYTES, f"screenshot {path} is only {len(data)} bytes"
    assert png_has_several_colours(data), f"screenshot {path} is a single colour"


# ---- a plain WebSocket client (the "other person" in some tests) ---------------------------------


def split_frame(frame: str | bytes) -> list[dict[str, Any]]:
    """The JSON objects in one server frame (several may be joined by newlines)."""
    text = frame.decode() if isinstance(frame, bytes) else frame
    return [json.loads(line) for line in text.split("\n") if line.strip()]


class ChatPeer:
    """A synchronous protocol client for tests: connect, read history, send and wait for acks."""

    def __init__(
        self,
        server: RoomchatServer,
        room: str,
        user: str,
        *,
        name: str | None = None,
        after: int | None = None,
    ) -> None:
        token = server.token(user, [room], name=name)
        url = f"{server.ws_base}/rooms/{room}/ws?token={token}"
        if after is not None:
            url += f"&after={after}"
        # Entered by hand: websockets 17 warns unless a connection is used as a context manager.
        self.ws = connect(url, open_timeout=30, close_timeout=5).__enter__()
        self.pending: list[dict[str, Any]] = []
        self.welcome = self.next_of("welcome")
        self.messages: list[dict[str, Any]] = []

    def next_object(self, timeout: float = 30.0) -> dict[str, Any]:
        while not self.pending:
            self.pending += split_frame(self.ws.recv(timeout=timeout))
        obj = self.pending.pop(0)
        if obj.get("type") == "ping":
            self.ws.send(json.dumps({"type": "pong"}))
        if obj.get("type") == "message":
            self.messages.append(obj)
        return obj

    def next_of(self, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            obj = self.next_object(max(0.1, deadline - time.monotonic()))
            if obj.get("type") == kind:
                return obj

    def read_history(self) -> list[dict[str, Any]]:
        """Every message up to the welcome's seq (the replay that follows the welcome)."""
        target = int(self.welcome["seq"])
        while not self.messages or int(self.messages[-1]["seq"]) < target:
            if target == 0:
                break
            self.next_object()
        return [m for m in self.messages if int(m["seq"]) <= target]

    def send(self, text: str, msg_id: str, **fields: Any) -> dict[str, Any]:
        """Send one message (``fields``: ``reply_to``, ``mentions``) and return its ack, resending
        (same id) after rate_limited/busy."""
        answer = self.request({"type": "message", "text": text, "id": msg_id, **fields})
        if answer.get("type") != "ack":
            raise AssertionError(f"message refused: {answer}")
        return answer

    def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send ``frame`` (it has an ``id``: a message, edit, delete or react) and return the
        server's answer to it: its ``ack``, or its ``error`` (after resending, same id, as long
        as the error is rate_limited or busy)."""
        frame_id = frame["id"]
        while True:
            self.ws.send(json.dumps(frame))
            while True:
                obj = self.next_object()
                if obj.get("id") != frame_id or obj.get("type") not in ("ack", "error"):
                    continue
                if obj["type"] == "error" and obj.get("code") in ("rate_limited", "busy"):
                    time.sleep(float(obj.get("retry_after", 1)))  # the protocol's own wait
                    break
                return obj

    def change(self, frame: dict[str, Any]) -> dict[str, Any]:
        """An edit, delete or react (``frame`` with its ``id``): its ack (fails on a refusal)."""
        answer = self.request(frame)
        if answer.get("type") != "ack":
            raise AssertionError(f"{frame['type']} refused: {answer}")
        return answer

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> ChatPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fill(server: RoomchatServer, room: str, count: int) -> None:
    """`count` messages "m001".. from two people (so grouping is exercised), all acknowledged.
    (Rooms this test filled alone: message n has seq n.)"""
    peers = [ChatPeer(server, room, "bob", name="Bob"), ChatPeer(server, room, "carol")]
    try:
        for n in range(1, count + 1):
            peer = peers[(n // 3) % 2]  # three in a row from each: groups of messages
            ack = peer.send(f"m{n:03d}", f"id-{n}")
            assert ack["seq"] == n
    finally:
        for peer in peers:
            peer.close()

"""``roomchat serve`` as a real process: signals, crashes, restarts, packaging."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import orjson
import websockets

from tests.support import (
    REPO,
    SLOW,
    collect_messages,
    make_token,
    send_and_ack,
    server_process,
    start_process,
)


async def test_sigterm_closes_sockets_with_1012_and_exits(tmp_path: Path) -> None:
    with server_process(tmp_path) as srv:
        async with websockets.connect(srv.url("lobby", make_token()), compression=None) as ws:
            assert '"welcome"' in str(await ws.recv())
            await ws.send('{"type":"message","text":"persist me","id":"p"}')
            assert '"ack"' in str(await ws.recv()) or '"ack"' in str(await ws.recv())
            started = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 10 * SLOW)
            except websockets.ConnectionClosed:
                pass
            assert ws.close_code == 1012
        assert srv.proc.wait(timeout=15 * SLOW) == 0
        assert time.monotonic() - started < 12 * SLOW
        assert "token=" not in srv.output()


async def test_kill_9_keeps_every_acked_message(tmp_path: Path) -> None:
    env = {"ROOMCHAT_RATE_BURST": "1000", "ROOMCHAT_RATE_PER_SEC": "1000"}
    token = make_token("writer")
    srv = start_process(tmp_path, env=env)
    try:
        acked = await send_and_ack(srv.url("durable", token), [f"k{i}" for i in range(200)])
    finally:
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
    assert sorted(acked) == list(range(1, 201))
    with server_process(tmp_path, port=srv.port, env=env) as again:
        welcome, replay = await collect_messages(
            again.url("durable", make_token("reader"), after="0"), 200)
        assert welcome["seq"] == 200
        seen = {m["seq"]: m["text"] for m in replay}
        assert [seen[seq] for seq in acked] == [f"k{i}" for i in range(200)]
        # Dedup survives the restart: resending an acked id gets the original seq.
        async with websockets.connect(again.url("durable", token), compression=None) as ws:
            await ws.recv()
            await ws.send('{"type":"message","text":"k7","id":"k7"}')
            while True:
                lines = [orjson.loads(x) for x in str(await ws.recv()).split("\n")]
                acks = [x for x in lines if x["type"] == "ack"]
                if acks:
                    assert acks[0] == {"type": "ack", "id": "k7", "seq": acked[7],
                                       "duplicate": True}
                    break


def test_token_cli_prints_a_working_link(tmp_path: Path) -> None:
    env = {**os.environ}
    env.pop("ROOMCHAT_JWT_SECRET", None)
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--user", "demo", "--name", "Demo User",
         "--room", "lobby", "--room", "lobby", "--ttl", "15m", "--data-dir", str(tmp_path),
         "--link", "http://127.0.0.1:8000/"],
        capture_output=True, text=True, env=env, check=True)
    link = out.stdout.strip()
    assert link.startswith("http://127.0.0.1:8000/rooms/lobby#token=")
    secret_file = tmp_path / "jwt-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text()
    assert secret not in out.stdout + out.stderr
    import jwt

    claims = jwt.decode(link.split("#token=")[1], secret, algorithms=["HS256"],
                        audience="roomchat", issuer="roomchat")
    assert (claims["sub"], claims["name"], claims["rooms"]) == ("demo", "Demo User", ["lobby"])
    assert 899 <= claims["exp"] - claims["iat"] <= 900


def test_token_cli_rejects_bad_input_clearly(tmp_path: Path) -> None:
    for args, message in ((["--room", "bad room"], "invalid room name"),
                          (["--room", "r", "--ttl", "soon"], "invalid duration"),
                          ([], "--room")):
        out = subprocess.run([sys.executable, "-m", "gateway", "token", "--user", "u",
                              "--data-dir", str(tmp_path), *args],
                             capture_output=True, text=True, check=False)
        assert out.returncode == 2
        assert message in out.stderr


def test_wheel_contains_the_static_client(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("roomchat-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gateway/static/index.html" in names
    assert "rooms/actor.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)

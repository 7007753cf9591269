"""roomchat export, backup and restore against a live server process (the data dir in use),
then the restored copy served by a new process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.apicall import API_KEY, call
from tests.redis_server import redis_server
from tests.support import REPO, SECRET, collect_messages, make_token, server_process

ENV = {"ROOMCHAT_API_KEY": API_KEY, "PYTHONPATH": str(REPO), "ROOMCHAT_API_RATE": "100000",
       "ROOMCHAT_API_BURST": "100000"}


def roomchat(*args: str, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ROOMCHAT_JWT_SECRET": SECRET, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, env=env, check=check, timeout=60, cwd=REPO)


async def test_export_backup_restore_while_serving(tmp_path: Path) -> None:
    data = tmp_path / "live"
    with server_process(data, env=ENV) as proc:
        for i in range(1, 1201):  # more than one export page
            status, _ = await call(proc.port, "POST", "/rooms/lobby/messages",
                                   {"text": f"m{i}", "id": f"m{i}"})
            assert status == 200
        await call(proc.port, "POST", "/rooms/other/messages", {"text": "elsewhere"})
        assert (await call(proc.port, "DELETE", "/rooms/lobby/messages/2"))[0] == 200

        out = roomchat("export", "--room", "lobby", "--data-dir", str(data)).stdout
        lines = [json.loads(line) for line in out.splitlines()]
        assert [m["seq"] for m in lines] == list(range(1, 1201))
        assert lines[0] == {**lines[0], "type": "message", "room": "lobby", "text": "m1",
                            "id": "m1", "user": "api"}
        assert (lines[1]["text"], lines[1]["deleted"]) == ("", True)
        _, page = await call(proc.port, "GET", "/rooms/lobby/messages?limit=3")
        assert lines[:3] == page["messages"]  # the same objects as the API and the socket
        tail = roomchat("export", "--room", "lobby", "--after", "1198", "--data-dir",
                        str(data)).stdout
        assert [json.loads(x)["seq"] for x in tail.splitlines()] == [1199, 1200]

        # A backup while the server runs and keeps writing.
        target = tmp_path / "backup.sqlite3"
        result = roomchat("backup", "--to", str(target), "--data-dir", str(data))
        assert "backed up 1201 messages" in result.stdout
        assert target.stat().st_mode & 0o777 == 0o600
        assert (await call(proc.port, "POST", "/rooms/lobby/messages", {"text": "after"}))[1][
            "seq"] == 1201
        live, _ = await collect_messages(proc.url("lobby", make_token("r"), after="1201"), 0)
        again = roomchat("backup", "--to", str(target), "--data-dir", str(data), check=False)
        assert again.returncode == 2 and "exists" in again.stderr

    # Restore into a fresh data dir and serve it: the history is the backup's.
    fresh = tmp_path / "restored"
    assert "restored 1201 messages" in roomchat("restore", "--from", str(target), "--data-dir",
                                                str(fresh)).stdout
    refused = roomchat("restore", "--from", str(target), "--data-dir", str(fresh), check=False)
    assert refused.returncode == 2 and "--force" in refused.stderr
    roomchat("restore", "--from", str(target), "--data-dir", str(fresh), "--force")
    with server_process(fresh, env=ENV) as proc:
        _, page = await call(proc.port, "GET", "/rooms/lobby/messages?before=99999&limit=2")
        assert [m["text"] for m in page["messages"]] == ["m1199", "m1200"]
        status, body = await call(proc.port, "POST", "/rooms/lobby/messages",
                                  {"text": "next", "id": "m5"})
        assert body == {"seq": 5, "duplicate": True}  # dedup came back with the data
        status, body = await call(proc.port, "POST", "/rooms/lobby/messages", {"text": "new"})
        assert body == {"seq": 1201, "duplicate": False}
        # Seq 1201 is another message than the live server's: a client that saw that one is
        # told by the epoch (a restore gives the database a new one), not taken as recovered.
        welcome, _ = await collect_messages(
            proc.url("lobby", make_token("r"), after="1201", epoch=live["epoch"]), 0)
        assert welcome["epoch"] != live["epoch"] and welcome["recovered"] is False


def test_restore_refuses_what_is_not_a_roomchat_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a database at all" * 100)
    result = roomchat("restore", "--from", str(junk), "--data-dir", str(tmp_path / "d"),
                      check=False)
    assert result.returncode == 2 and "not a roomchat database" in result.stderr
    missing = roomchat("backup", "--to", str(tmp_path / "b"), "--data-dir",
                       str(tmp_path / "nothing"), check=False)
    assert missing.returncode == 2 and "no database" in missing.stderr


async def test_export_reads_redis_and_backup_points_to_its_own_tools(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url, \
            server_process(tmp_path / "a", env={**ENV, "ROOMCHAT_STORE_URL": url}) as proc:
        for text in ("one", "two"):
            await call(proc.port, "POST", "/rooms/r/messages", {"text": text})
        await call(proc.port, "DELETE", "/rooms/r/messages/1")
        out = roomchat("export", "--room", "r", "--store-url", url).stdout
        assert [(json.loads(x)["text"], json.loads(x).get("deleted")) for x in
                out.splitlines()] == [("", True), ("two", None)]
        result = roomchat("backup", "--to", str(tmp_path / "b"), check=False,
                          env={"ROOMCHAT_STORE_URL": url})
        assert result.returncode == 2 and "AOF/RDB" in result.stderr

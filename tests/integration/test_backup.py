"""roomchat export, backup and restore against a live server process (the data dir in use),
then the restored copy served by a new process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.apicall import API_KEY, call
from tests.redis_server import redis_server
from tests.support import REPO, SECRET, collect_messages, make_token, server_process

ENV = {"ROOMCHAT_API_KEY": API_KEY, "PYTHONPATH": str(REPO), "ROOMCHAT_API_RATE": "100000",
       "ROOMCHAT_API_BURST": "100000"}


def entries(export: str) -> list[dict[str, Any]]:
    """The log entries of an export (its sections' header and end lines left out)."""
    return [obj for obj in map(json.loads, export.splitlines())
            if obj["type"] in ("message", "change")]


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

        done = roomchat("export", "--room", "lobby", "--data-dir", str(data))
        lines = entries(done.stdout)
        assert done.stderr == "exported 1200 messages and 1 change of 'lobby'\n"
        assert [m["seq"] for m in lines] == list(range(1, 1202))  # 1201: the delete entry
        assert lines[0] == {**lines[0], "type": "message", "room": "lobby", "text": "m1",
                            "id": "m1", "user": "api"}
        assert (lines[1]["text"], lines[1]["deleted"]) == ("", True)
        assert (lines[-1]["type"], lines[-1]["action"], lines[-1]["target"]) == (
            "change", "delete", 2)
        _, page = await call(proc.port, "GET", "/rooms/lobby/messages?limit=3")
        assert lines[:3] == page["messages"]  # the same objects as the API and the socket
        tail = roomchat("export", "--room", "lobby", "--after", "1198", "--data-dir",
                        str(data)).stdout
        assert [x["seq"] for x in entries(tail)] == [1199, 1200, 1201]
        assert json.loads(tail.splitlines()[-1]) == {"type": "end", "room": "lobby",
                                                     "seq": 1201, "entries": 3}

        # A backup while the server runs and keeps writing.
        target = tmp_path / "backup.sqlite3"
        result = roomchat("backup", "--to", str(target), "--data-dir", str(data))
        assert result.stdout == (f"backed up 1201 messages, 1 change and 0 read markers to "
                                 f"{target}\n")
        assert target.stat().st_mode & 0o777 == 0o600
        assert (await call(proc.port, "POST", "/rooms/lobby/messages", {"text": "after"}))[1][
            "seq"] == 1202
        live, _ = await collect_messages(proc.url("lobby", make_token("r"), after="1202"), 0)
        again = roomchat("backup", "--to", str(target), "--data-dir", str(data), check=False)
        assert again.returncode == 2 and "exists" in again.stderr

    # Restore into a fresh data dir and serve it: the history is the backup's.
    fresh = tmp_path / "restored"
    assert "restored 1201 messages, 1 change and 0 read markers" in roomchat(
        "restore", "--from", str(target), "--data-dir", str(fresh)).stdout
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
        assert body == {"seq": 1202, "duplicate": False}
        # Seq 1202 is another message than the live server's: a client that saw that one is
        # told by the epoch (a restore gives the database a new one), not taken as recovered.
        welcome, _ = await collect_messages(
            proc.url("lobby", make_token("r"), after="1202", epoch=live["epoch"]), 0)
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
        out = entries(roomchat("export", "--room", "r", "--store-url", url).stdout)
        assert [(x["seq"], x["type"], x.get("text"), x.get("deleted"), x.get("target"))
                for x in out] == [(1, "message", "", True, None),
                                  (2, "message", "two", None, None),
                                  (3, "change", None, None, 1)]
        result = roomchat("backup", "--to", str(tmp_path / "b"), check=False,
                          env={"ROOMCHAT_STORE_URL": url})
        assert result.returncode == 2 and "AOF/RDB" in result.stderr


THUMBS = "\N{THUMBS UP SIGN}"


async def test_changes_and_read_markers_survive_backup_and_restore(tmp_path: Path) -> None:
    """Issue 21: a backup carries every change entry and read marker; restored and served, the
    room reads the same (history in its current state, a replay of its log, the export) and
    each user's unread counts are as they were."""
    data = tmp_path / "live"
    with server_process(data, env=ENV) as proc:
        async def api(method: str, path: str, body: Any = None) -> Any:
            status, answer = await call(proc.port, method, path, body)
            assert status == 200, (method, path, answer)
            return answer

        first = (await api("POST", "/rooms/lobby/messages",
                           {"text": "helo", "user": "alice", "id": "a1"}))["seq"]
        await api("PATCH", f"/rooms/lobby/messages/{first}",
                  {"text": "hello", "user": "alice", "id": "e1"})
        await api("PUT", f"/rooms/lobby/messages/{first}/reactions/{quote(THUMBS)}?user=bob")
        reply = (await api("POST", "/rooms/lobby/messages",
                           {"text": "hi @alice", "user": "bob", "reply_to": first,
                            "mentions": ["alice"]}))["seq"]
        gone = (await api("POST", "/rooms/lobby/messages", {"text": "oops", "user": "bob"}))[
            "seq"]
        await api("DELETE", f"/rooms/lobby/messages/{gone}?user=bob")
        await api("PUT", "/rooms/lobby/read/alice", {"seq": first})
        await api("PUT", "/rooms/lobby/read/bob", {"seq": reply})
        _, history = await call(proc.port, "GET", "/rooms/lobby/messages")
        unread = {user: (await api("GET", f"/users/{user}/unread"))["rooms"]
                  for user in ("alice", "bob")}
        assert unread["alice"] == [{"room": "lobby", "read": first, "unread": 1,
                                    "mentions": 1}]
        exported = roomchat("export", "--room", "lobby", "--data-dir", str(data)).stdout
        assert exported.count('"type":"change"') == 3
        target = tmp_path / "backup.sqlite3"
        result = roomchat("backup", "--to", str(target), "--data-dir", str(data))
        assert result.stdout == (f"backed up 3 messages, 3 changes and 2 read markers to "
                                 f"{target}\n")

    fresh = tmp_path / "restored"
    assert roomchat("restore", "--from", str(target), "--data-dir", str(fresh)).stdout == (
        f"restored 3 messages, 3 changes and 2 read markers into {fresh}/roomchat.sqlite3\n")
    with server_process(fresh, env=ENV) as proc:
        _, page = await call(proc.port, "GET", "/rooms/lobby/messages")
        assert page == history
        assert page["messages"][0]["reactions"] == [{"emoji": THUMBS, "users": ["bob"]}]
        for user, rooms in unread.items():
            _, body = await call(proc.port, "GET", f"/users/{user}/unread")
            assert body["rooms"] == rooms, user
        # The same entries (the header's epoch is the restore's new one).
        assert entries(roomchat("export", "--room", "lobby", "--data-dir",
                                str(fresh)).stdout) == entries(exported)
        # A retried edit is still known (its id came back with the log): not stored again.
        status, body = await call(proc.port, "PATCH", f"/rooms/lobby/messages/{first}",
                                  {"text": "hello", "user": "alice", "id": "e1"})
        assert (status, body["change"], body["duplicate"]) == (200, first + 1, True)

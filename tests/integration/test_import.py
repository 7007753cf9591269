"""roomchat export | roomchat import between engines (issue 24, "Moving between engines"):
SQLite -> Redis and Redis -> SQLite with every seq kept, then a real server on the target
serves the same history; bad inputs refused in one line with nothing written; progress on a
terminal only."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

from rooms.attachments import FileRef
from rooms.engines import open_engine
from rooms.messages import Action, ChangeDraft, Draft, Entry, StoredMessage
from tests.apicall import API_KEY, call
from tests.redis_server import redis_server
from tests.support import REPO, SECRET, server_process

ENV = {"ROOMCHAT_API_KEY": API_KEY, "PYTHONPATH": str(REPO)}
FILE = FileRef("f" * 22, "plan.pdf", 1234, "application/pdf")


def roomchat(*args: str, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ROOMCHAT_JWT_SECRET": SECRET, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, env=env, check=check, timeout=120, cwd=REPO)


async def fill(url: str) -> list[Entry]:
    """A room with messages, an edit, deletes (one of an edited message), reactions (one taken
    back), replies, mentions and a file's metadata; another room too. Its log as read."""
    engine = await open_engine(url)
    try:
        async def add(*drafts: Any, room: str = "lobby") -> None:
            await engine.append(room, list(drafts), retention=0, dedup_window=100)

        await add(Draft("alice", "Alice", "a1", "hello @bob", 1000, mentions=("bob",)),
                  Draft("bob", "Bob", "b1", "hi alice", 1001, reply_to=1),
                  Draft("carol", "Carol", "c1", "", 1002, files=(FILE,)))
        await add(ChangeDraft("alice", "Alice", "e1", 1003, Action.EDIT, 1, text="hello @bob!"),
                  ChangeDraft("bob", "Bob", "r1", 1004, Action.REACT, 1, emoji="👍", on=True),
                  ChangeDraft("carol", "Carol", "r2", 1005, Action.REACT, 1, emoji="🎉", on=True),
                  ChangeDraft("carol", "Carol", "r3", 1006, Action.REACT, 1, emoji="🎉"))
        await add(Draft("dave", "Dave", "d1", "to be edited then deleted", 1007),
                  Draft("erin", "Erin", None, "answer to dave", 1008, reply_to=8))
        await add(ChangeDraft("dave", "Dave", "e2", 1009, Action.EDIT, 8, text="edited"),
                  ChangeDraft("dave", "Dave", "x1", 1010, Action.DELETE, 8),
                  ChangeDraft("mod", "Mod", "x2", 1011, Action.DELETE, 2, moderator=True),
                  Draft("bob", "Bob", "b2", "last words", 1012))
        await add(Draft("zed", "Zed", "z1", "elsewhere", 1000), room="other")
        log = await engine.read("lobby", 0, 2**53, 1000)
        assert isinstance(log[2], StoredMessage) and log[2].files == (FILE,)
        return log
    finally:
        await engine.close()


async def check_moved(source: str, target: str, tmp_path: Path, target_env: dict[str, str],
                      expected: list[Entry]) -> None:
    export = tmp_path / "all.ndjson"
    done = roomchat("export", "--all-rooms", "--store-url", source)
    export.write_text(done.stdout)
    assert done.stderr.startswith("exported ") and "of 2 rooms" in done.stderr
    result = roomchat("import", str(export), "--store-url", target)
    assert result.stdout.startswith("imported ") and "of 2 rooms" in result.stdout
    assert "every seq kept" in result.stdout
    if target.startswith("sqlite://"):
        # One epoch per SQLite database: it takes the first room's; the other room's (another
        # on Redis) is not kept, and the command says so.
        assert "the store's epoch is not the export's for other:" in result.stderr
    else:
        assert result.stderr == ""
    engine = await open_engine(target)
    try:
        moved = await engine.read("lobby", 0, 2**53, 1000)
        assert [e.to_wire() for e in moved] == [e.to_wire() for e in expected]
        # A client that had seen up to seq 4 before the move resumes with the same entries.
        assert [e.to_wire() for e in await engine.read("lobby", 4, 2**53, 1000)] == \
            [e.to_wire() for e in expected if e.seq > 4]
        assert await engine.top("lobby") == expected[-1].seq
        src = await open_engine(source)
        try:
            assert await engine.history("lobby", before=2**53, limit=100) == \
                await src.history("lobby", before=2**53, limit=100)
            assert await engine.log_epoch("lobby") == await src.log_epoch("lobby")  # type: ignore[attr-defined]
        finally:
            await src.close()
    finally:
        await engine.close()
    # A real server on the target serves the same history, and goes on after the last seq.
    with server_process(tmp_path / "served", env={**ENV, **target_env}) as proc:
        status, page = await call(proc.port, "GET", "/rooms/lobby/messages?limit=100")
        assert status == 200
        assert page["messages"] == [json.loads(e.to_wire()) for e in expected
                                    if e.to_obj()["type"] == "message"]
        status, sent = await call(proc.port, "POST", "/rooms/lobby/messages", {"text": "new"})
        assert status == 200 and sent["seq"] == expected[-1].seq + 1
    # Importing again: the rooms have entries now.
    again = roomchat("import", str(export), "--store-url", target, check=False)
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "already has entries" in again.stderr
    skipped = roomchat("import", str(export), "--store-url", target, "--skip-existing")
    assert "imported 0 entries of 0 rooms" in skipped.stdout and "lobby" in skipped.stdout


async def test_sqlite_to_redis(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'src.sqlite3'}"
    expected = await fill(source)
    with redis_server(tmp_path / "redis") as url:
        await check_moved(source, url, tmp_path, {"ROOMCHAT_STORE_URL": url}, expected)


async def test_redis_to_sqlite(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        expected = await fill(url)
        target = f"sqlite:///{tmp_path / 'served' / 'roomchat.sqlite3'}"
        await check_moved(url, target, tmp_path, {}, expected)


async def test_bad_inputs_are_refused_in_one_line_with_nothing_written(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'src.sqlite3'}"
    await fill(source)
    good = roomchat("export", "--room", "lobby", "--store-url", source).stdout
    target = tmp_path / "target.sqlite3"
    url = f"sqlite:///{target}"
    cases = {
        "truncated.ndjson": (good[:len(good) // 2], "truncated"),
        "no-end.ndjson": ("".join(good.splitlines(keepends=True)[:-1]), "truncated"),
        "old.ndjson": ("".join(good.splitlines(keepends=True)[1:-1]), "no export header"),
        "wrong.ndjson": ("hello\n", "not JSON"),
        "unordered.ndjson": (good.replace('"seq":5,', '"seq":5000,', 1), "not above"),
        "a-line-gone.ndjson": ("".join(good.splitlines(keepends=True)[:3]
                                       + good.splitlines(keepends=True)[4:]), "end line"),
    }
    for name, (text, why) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        result = roomchat("import", str(path), "--store-url", url, check=False)
        assert result.returncode == 2, (name, result.stderr)
        assert result.stderr.count("\n") == 1 and why in result.stderr, (name, result.stderr)
        assert result.stdout == ""
    engine = await open_engine(url)
    try:
        assert await engine.top("lobby") == 0  # nothing of any of them was written
    finally:
        await engine.close()
    path = tmp_path / "good.ndjson"
    path.write_text(good)
    memory = roomchat("import", str(path), "--store-url", "memory://", check=False)
    assert memory.returncode == 2 and memory.stderr.count("\n") == 1
    assert "memory://" in memory.stderr


def test_progress_shows_on_a_terminal_only(tmp_path: Path) -> None:
    """Through a pipe: the summary line alone. On a terminal (a pty): tqdm's bar."""
    data = tmp_path / "data"
    export = tmp_path / "e.ndjson"
    lines = ['{"type":"export","format":1,"room":"r","after":0,"epoch":null,"top":3000}\n']
    lines += [f'{{"type":"message","room":"r","seq":{i},"id":null,"user":"u","name":"U",'
              f'"text":"m{i}","ts":{i}}}\n' for i in range(1, 3001)]
    lines.append('{"type":"end","room":"r","seq":3000,"entries":3000}\n')
    export.write_text("".join(lines))
    piped = roomchat("import", str(export), "--data-dir", str(data / "a"))
    assert piped.stderr == "" and piped.stdout.startswith("imported 3000 entries of 1 room")
    main, secondary = pty.openpty()
    env = {**os.environ, "ROOMCHAT_JWT_SECRET": SECRET, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "import", str(export),
                             "--data-dir", str(data / "b")], stdout=subprocess.PIPE,
                            stderr=secondary, env=env, cwd=REPO)
    os.close(secondary)  # (the child holds it: reads end when the child does)
    seen = b""
    while True:  # read while it runs: a pty's unread output is gone once its writer closes
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.stdout is not None
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 0
    os.close(main)
    assert out.startswith(b"imported 3000 entries")
    # The check's bar (bytes), then the import's: its count of the total, and a rate.
    assert b"check:" in seen and b"B/s" in seen, seen[-500:]
    assert b"import:" in seen and b"/3000" in seen and b"entry/s" in seen, seen[-500:]


async def test_sqlite_to_postgres(tmp_path: Path, postgres_url: str) -> None:
    """Into the PostgreSQL log (docs/design/log-and-bus.md, "Import"): every seq and the
    room's epoch kept (epochs are per room there, as on Redis), and a server on it goes on."""
    source = f"sqlite:///{tmp_path / 'src.sqlite3'}"
    expected = await fill(source)
    await check_moved(source, postgres_url, tmp_path, {"ROOMCHAT_STORE_URL": postgres_url},
                      expected)


async def test_u0000_kept_by_an_older_store_is_imported_as_u_fffd(tmp_path: Path,
                                                                   postgres_url: str) -> None:
    """``rooms.text`` refuses U+0000 now (PostgreSQL cannot hold it); a SQLite store may have
    kept it before. Its export still moves: U+0000 becomes U+FFFD, in texts and excerpts."""
    source = f"sqlite:///{tmp_path / 'src.sqlite3'}"
    engine = await open_engine(source)
    try:
        await engine.append("lobby", [Draft("ann", "Ann", "a1", "nul\x00here", 1),
                                      Draft("bob", "Bob", "b1", "re", 2, reply_to=1)],
                            retention=0, dedup_window=10)
    finally:
        await engine.close()
    export = tmp_path / "nul.ndjson"
    export.write_text(roomchat("export", "--all-rooms", "--store-url", source).stdout)
    done = roomchat("import", str(export), "--store-url", postgres_url)
    assert "every seq kept" in done.stdout
    target = await open_engine(postgres_url)
    try:
        first, second = await target.history("lobby", before=10, limit=10)
        assert first.text == "nul\ufffdhere"
        assert second.reply_to is not None and second.reply_to.excerpt == "nul\ufffdhere"
    finally:
        await target.close()

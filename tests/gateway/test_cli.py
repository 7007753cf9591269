"""The command line as a user meets it: `roomchat` run as a process from a fresh folder, its exit
code and its exact one-line messages (never a traceback)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import jwt
import pytest

from gateway.config import settings_table
from tests.support import REPO, SECRET, SLOW, free_port

# Each test starts `roomchat` as a Python process (~0.5 s of CPU: the interpreter and the
# gateway's imports): the integration tier, out of `make check`'s in-process unit tier.
pytestmark = pytest.mark.integration


def roomchat(tmp: Path, *args: str, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_")}
    base["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-m", "gateway", *args], cwd=tmp, check=False,
                          capture_output=True, text=True, timeout=30,
                          env={**base, **(env or {})})
    assert "Traceback" not in done.stderr
    return done


def test_version(tmp_path: Path) -> None:
    done = roomchat(tmp_path, "--version")
    assert done.returncode == 0
    assert done.stdout == f"roomchat {version('roomchat')}\n"


def test_settings_show_values_in_effect_beside_defaults(tmp_path: Path) -> None:
    done = roomchat(tmp_path, "settings", "--bind", "127.0.0.1:9001",
                    env={"ROOMCHAT_RATE_BURST": "7", "ROOMCHAT_JWT_SECRET": SECRET,
                         "ROOMCHAT_JWT_KEYS": f"old={SECRET}"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()}
    assert rows["setting"] == ["setting", "in", "effect", "default", "from"]
    assert rows["ROOMCHAT_BIND"][1:] == ["127.0.0.1:9001", "127.0.0.1:8000", "flag"]
    assert rows["ROOMCHAT_RATE_BURST"][1:] == ["7", "10", "env"]
    assert rows["ROOMCHAT_WORKERS"][1:] == ["1", "1", "default"]
    # Secrets are never printed: only that they are set (and the kids of the rotation keys).
    assert SECRET not in done.stdout
    assert rows["ROOMCHAT_JWT_SECRET"][1:] == ["(set,", "hidden)", "(unset)", "env"]
    assert rows["ROOMCHAT_JWT_KEYS"][1:] == ["old=***", "(none)", "env"]
    assert len(rows) == 1 + settings_table().count("\n| `ROOMCHAT_")


def test_settings_markdown_is_the_configuration_doc_table(tmp_path: Path) -> None:
    done = roomchat(tmp_path, "settings", "--markdown", env={"ROOMCHAT_RATE_BURST": "7"})
    assert done.returncode == 0
    assert done.stdout == settings_table() + "\n"
    assert done.stdout in (REPO / "docs" / "configuration.md").read_text()


def test_misspelt_variable_is_warned_about_in_one_line(tmp_path: Path) -> None:
    done = roomchat(tmp_path, "settings", "--markdown",
                    env={"ROOMCHAT_RATE_BRUST": "3", "ROOMCHAT_TEST_SLOW": "2",
                         "ROOMCHAT_SOAK_SECONDS": "1", "ROOMCHAT_CHAOS_SEED": "1",
                         "ROOMCHAT_DOMAIN": "chat.example.com"})
    assert done.returncode == 0
    assert done.stderr == ("roomchat: warning: ROOMCHAT_RATE_BRUST is not a setting and is "
                           "ignored (did you mean ROOMCHAT_RATE_BURST?)\n")


def test_unknown_variable_without_a_close_name(tmp_path: Path) -> None:
    done = roomchat(tmp_path, "--version", env={"ROOMCHAT_ZZZ": "1"})
    assert done.returncode == 0
    # argparse's --version exits while parsing: the check runs after, so only for commands.
    done = roomchat(tmp_path, "settings", "--markdown", env={"ROOMCHAT_ZZZ": "1"})
    assert done.stderr == ("roomchat: warning: ROOMCHAT_ZZZ is not a setting and is ignored "
                           "(`roomchat settings` lists them)\n")


def test_token_warns_when_it_creates_the_secret(tmp_path: Path) -> None:
    first = roomchat(tmp_path, "token", "--user", "bob", "--room", "lobby")
    assert first.returncode == 0
    assert first.stderr == (f"roomchat: no secret in {tmp_path / 'var'}: created one; a running "
                            "server with another data dir will refuse these tokens\n")
    secret = (tmp_path / "var" / "jwt-secret").read_text().strip()
    claims = jwt.decode(first.stdout.strip(), secret, algorithms=["HS256"], audience="roomchat")
    assert claims["sub"] == "bob" and claims["rooms"] == ["lobby"]
    again = roomchat(tmp_path, "token", "--user", "bob", "--room", "lobby")
    assert again.returncode == 0 and again.stderr == ""
    given = roomchat(tmp_path / "var", "token", "--user", "bob", "--room", "lobby",
                     env={"ROOMCHAT_JWT_SECRET": SECRET})
    assert given.returncode == 0 and given.stderr == ""


@pytest.mark.parametrize(("args", "message"), [
    (["--link", "localhost:8000"], "roomchat: --link 'localhost:8000': give the server's base "
     "URL with its scheme, e.g. http://127.0.0.1:8000 or https://chat.example.com\n"),
    (["--link", "127.0.0.1:8000"], "roomchat: --link '127.0.0.1:8000': give the server's base "
     "URL with its scheme, e.g. http://127.0.0.1:8000 or https://chat.example.com\n"),
    (["--ttl", "10"], "roomchat: --ttl '10' has no unit: use e.g. 90s, 15m, 1h or 7d\n"),
    (["--ttl", "1w"], "roomchat: invalid duration '1w': use e.g. 90s, 15m, 1h or 7d\n"),
])
def test_token_refuses_link_without_scheme_and_ttl_without_unit(
        tmp_path: Path, args: list[str], message: str) -> None:
    done = roomchat(tmp_path, "token", "--user", "bob", "--room", "lobby", *args,
                    env={"ROOMCHAT_JWT_SECRET": SECRET})
    assert done.returncode == 2
    assert done.stderr == message
    assert done.stdout == ""
    assert not (tmp_path / "var").exists()  # refused before anything was created


def test_token_link_with_scheme(tmp_path: Path) -> None:
    done = roomchat(tmp_path, "token", "--user", "bob", "--room", "lobby", "--ttl", "15m",
                    "--link", "https://chat.example.com/", env={"ROOMCHAT_JWT_SECRET": SECRET})
    assert done.returncode == 0, done.stderr
    prefix = "https://chat.example.com/rooms/lobby#token="
    assert done.stdout.startswith(prefix)
    claims = jwt.decode(done.stdout.strip()[len(prefix):], SECRET, algorithms=["HS256"],
                        audience="roomchat")
    assert claims["exp"] - claims["iat"] == 900


def test_token_moderator_flags(tmp_path: Path) -> None:
    env = {"ROOMCHAT_JWT_SECRET": SECRET}
    done = roomchat(tmp_path, "token", "--user", "mo", "--room", "a", "--room", "b",
                    "--mod", "b", env=env)
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"], audience="roomchat")
    assert claims["mod"] == ["b"] and "moderator" not in claims
    done = roomchat(tmp_path, "token", "--user", "mo", "--all-rooms", "--moderator", env=env)
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"], audience="roomchat")
    assert claims["moderator"] is True and "mod" not in claims
    done = roomchat(tmp_path, "token", "--api", "--moderator", env=env)
    assert done.returncode == 2
    assert done.stderr == ("roomchat: an API credential moderates through /api/v1: drop "
                           "--moderator/--mod\n")


def test_erase_with_no_server_says_what_to_do_in_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = roomchat(tmp_path, "erase", "--user", "alice", "--url", f"http://127.0.0.1:{port}",
                    env={"ROOMCHAT_JWT_SECRET": SECRET})
    assert done.returncode == 2
    assert done.stderr == (
        f"roomchat: no server answered at http://127.0.0.1:{port} ([Errno 111] Connection "
        "refused): start it, give its --url, or --offline to erase in the store directly (on "
        "SQLite, members online are then not told)\n")
    assert done.stdout == ""
    # Without --url it asks where the server's settings say it listens.
    done = roomchat(tmp_path, "erase", "--user", "alice",
                    env={"ROOMCHAT_JWT_SECRET": SECRET, "ROOMCHAT_BIND": f"0.0.0.0:{port}"})
    assert done.returncode == 2
    assert done.stderr.startswith(f"roomchat: no server answered at http://127.0.0.1:{port} ")


@pytest.mark.parametrize(("args", "message"), [
    (["--url", "127.0.0.1:8000"], "roomchat: --url '127.0.0.1:8000': give the server's base "
     "URL with its scheme, e.g. http://127.0.0.1:8000\n"),
    (["--url", "http://127.0.0.1:8000", "--offline"],
     "roomchat: give --url or --offline, not both\n"),
    (["--offline"], "roomchat: no database at {tmp}/var/roomchat.sqlite3: give the server's "
     "--data-dir or --store-url\n"),
    (["--offline", "--store-url", "redis://127.0.0.1:1/0"], "roomchat: cannot erase in the "
     "store: cannot reach Redis at redis://127.0.0.1:1/0: "),  # then redis-py's words
])
def test_erase_refuses_operator_mistakes_in_one_line(
        tmp_path: Path, args: list[str], message: str) -> None:
    done = roomchat(tmp_path, "erase", "--user", "alice", *args,
                    env={"ROOMCHAT_JWT_SECRET": SECRET})
    assert done.returncode == 2
    assert done.stderr.startswith(message.format(tmp=tmp_path.absolute()))
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n")
    assert done.stdout == ""
    assert not (tmp_path / "var").exists()  # no database or secret created by a refusal


@pytest.mark.parametrize(("command", "extra"), [("revoke", []), ("erase", ["--offline"])])
@pytest.mark.parametrize(("user", "message"), [
    ("", "roomchat: --user must be 1 to 64 characters\n"),
    ("x" * 65, "roomchat: --user must be 1 to 64 characters\n"),
    ("bob\nroomchat: revoked 'alice'", "roomchat: --user \"bob\\nroomchat: revoked 'alice'\" "
     "contains a control character: no user id does\n"),
    ("bob\x1b[2J", "roomchat: --user 'bob\\x1b[2J' contains a control character: no user id "
     "does\n"),
], ids=["empty", "65-chars", "newline", "escape"])
def test_user_ids_are_checked_before_anything_is_touched(
        tmp_path: Path, command: str, extra: list[str], user: str, message: str) -> None:
    done = roomchat(tmp_path, command, "--user", user, *extra,
                    env={"ROOMCHAT_JWT_SECRET": SECRET})
    assert (done.returncode, done.stderr, done.stdout) == (2, message, "")
    assert not (tmp_path / "var").exists()


def test_a_user_id_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    # Bytes that are not UTF-8 reach Python's argv as lone surrogates (surrogateescape).
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_")}
    done = subprocess.run([sys.executable, "-m", "gateway", "revoke", "--user", b"bob\xff"],
                          cwd=tmp_path, check=False, capture_output=True, timeout=30,
                          env={**base, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2
    assert done.stderr == (b"roomchat: --user 'bob\\udcff' contains a lone surrogate: no user "
                           b"id does\n")
    assert not (tmp_path / "var").exists()


def test_revoke_refuses_a_data_dir_with_no_database(tmp_path: Path) -> None:
    # A mistyped --data-dir used to get an empty database created there and "revoked", exit 0,
    # while the server's own store never heard of it (issue 20, 4).
    done = roomchat(tmp_path, "revoke", "--user", "mallory", "--data-dir", "dta")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"roomchat: no database at {tmp_path.absolute()}/dta/roomchat.sqlite3"
                           ": give the server's --data-dir or --store-url\n")
    assert not (tmp_path / "dta").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["serve", "--port", "9000"],
     "roomchat: serve has no --port: use --bind HOST:PORT, e.g. --bind 127.0.0.1:9000\n"),
    (["serve", "--host=0.0.0.0"],
     "roomchat: serve has no --host: use --bind HOST:PORT, e.g. --bind 0.0.0.0:8000\n"),
    (["serve", "--wrokers", "2"],
     "roomchat: serve: unrecognized arguments: --wrokers 2 (did you mean --workers?)\n"),
    (["token", "8000"], "roomchat: token: unrecognized argument: 8000 (`roomchat token --help` "
     "lists what it takes)\n"),
    (["serve", "--log-level", "loud"], "roomchat: --log-level 'loud' (ROOMCHAT_LOG_LEVEL): use "
     "debug, info, warning or error\n"),
], ids=["port", "host", "typo", "positional", "log-level"])
def test_unknown_flags_and_values_get_one_line_saying_what_to_use(
        tmp_path: Path, args: list[str], message: str) -> None:
    # argparse printed the top-level usage and "unrecognized arguments: --port 9000"; a bad
    # log level said only "Unknown level: 'LOUD'" (issue 20, 16).
    done = roomchat(tmp_path, *args, env={"ROOMCHAT_JWT_SECRET": SECRET})
    assert (done.returncode, done.stderr, done.stdout) == (2, message, "")


def test_serve_check_runs_the_start_up_checks_and_exits(tmp_path: Path) -> None:
    port = free_port()
    done = roomchat(tmp_path, "serve", "--check", "--bind", f"127.0.0.1:{port}",
                    env={"ROOMCHAT_JWT_SECRET": SECRET})
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (f"roomchat: ready to serve on 127.0.0.1:{port} (store sqlite://"
                           f"{tmp_path.absolute()}/var/roomchat.sqlite3)\n")
    # What the app checks as it is built, not only the preflight's own checks.
    done = roomchat(tmp_path, "serve", "--check", "--bind", f"0.0.0.0:{port}", "--dev-login",
                    env={"ROOMCHAT_JWT_SECRET": SECRET})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("roomchat: dev login is refused on a non-loopback bind")


def make_run(tmp: Path, *variables: str) -> subprocess.Popen[str]:
    """``make run`` with this interpreter's venv (nothing to install), data in ``tmp``."""
    venv = Path(sys.executable).parent.parent
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_")}
    return subprocess.Popen(
        ["make", "--no-print-directory", "-C", str(REPO), f"VENV={venv}",
         "-o", f"{venv}/.run-installed", "run", *variables],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**base, "ROOMCHAT_DATA_DIR": str(tmp / "data")})


def test_make_run_with_a_taken_port_fails_before_printing_a_link(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with make_run(tmp_path, f"BIND=127.0.0.1:{port}") as make:
            out, _ = make.communicate(timeout=60)
    assert make.returncode != 0
    assert "#token=" not in out and "open this link" not in out, out
    assert out.splitlines()[0] == (f"roomchat: cannot listen on 127.0.0.1:{port}: the address "
                                   "is already in use (is another server running?)")


def test_make_run_serves_the_bind_and_room_it_is_given(tmp_path: Path) -> None:
    port = free_port()
    with make_run(tmp_path, f"BIND=127.0.0.1:{port}", "ROOM=team") as make:
        try:
            assert make.stdout is not None
            lines: list[str] = []
            while not any("#token=" in line for line in lines):
                line = make.stdout.readline()
                assert line, "".join(lines)
                lines.append(line)
            link = next(line.strip() for line in lines if "#token=" in line)
            assert link.startswith(f"http://127.0.0.1:{port}/rooms/team#token=")
            deadline = time.monotonic() + 20 * SLOW
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz",
                                                timeout=5) as answer:
                        assert answer.status == 200
                        break
                except OSError:
                    assert time.monotonic() < deadline, "make run did not start serving"
                    time.sleep(0.1)
        finally:
            os.killpg(make.pid, signal.SIGTERM)  # make's group: make and the server it runs
            make.communicate(timeout=30 * SLOW)


def test_readme_documents_make_run_variables() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make run BIND=127.0.0.1:9000 ROOM=team" in readme


@pytest.mark.parametrize(("args", "message"), [
    (["revoke", "--user", "mallory"], "roomchat: the store is memory://: its messages live only "
     "inside the running server, so no other command can reach them\n"),
    (["erase", "--user", "mallory", "--offline"], "roomchat: the store is memory://: its "
     "messages live only inside the running server, so no other command can reach them\n"),
    (["export", "--room", "lobby"], "roomchat: export: the store is memory://, whose messages "
     "live only inside the running server (nothing to copy, lost when it stops)\n"),
    (["backup", "--to", "copy.sqlite3"], "roomchat: backup: the store is memory://, whose "
     "messages live only inside the running server (nothing to copy, lost when it stops)\n"),
])
def test_offline_commands_refuse_a_memory_store_in_one_line(
        tmp_path: Path, args: list[str], message: str) -> None:
    """A fresh process's memory:// is empty: an offline command would act on nothing and say
    it was done (an export of 0 messages, a revocation the server never hears of)."""
    done = roomchat(tmp_path, *args, env={"ROOMCHAT_JWT_SECRET": SECRET,
                                          "ROOMCHAT_STORE_URL": "memory://"})
    assert (done.returncode, done.stderr, done.stdout) == (2, message, "")

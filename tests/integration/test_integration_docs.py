"""docs/integration.md's examples, run against a real server: tokens minted by the Python example
(PyJWT) and by the Node one (node:crypto, `npm ci` + `node --test`) with the shared secret, a
rotated `kid`, and key pairs the server only holds the public half of."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import jwt
import orjson
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.auth import make_issuer
from tests.support import REPO, SECRET, SLOW, make_config, running_server

DOC = REPO / "docs" / "integration.md"
EXAMPLES = REPO / "docs" / "examples"
NODE_DIR = EXAMPLES / "node"
NEXT_SECRET = "the-next-secret-after-rotation-0123456789abcdef"


def key_pair(tmp: Path, kind: str) -> tuple[Path, Path]:
    """``(private.pem, public.pem)`` of an Ed25519 or RSA key, as `openssl genpkey` writes."""
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = tmp / f"{kind}-private.pem", tmp / f"{kind}-public.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def ticket(port: int, token: str, room: str = "lobby") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/rooms/{room}/ticket",
                                     method="POST", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10 * SLOW) as res:
            return res.status, json.load(res)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


async def join(port: int, token: str) -> dict[str, Any]:
    """Get a ticket with ``token`` and open the room with it, as the page does: the welcome."""
    status, body = await asyncio.to_thread(ticket, port, token)
    assert status == 200, body
    url = f"ws://127.0.0.1:{port}/rooms/lobby/ws?ticket={body['ticket']}"
    async with websockets.connect(url, compression=None) as ws:
        first = str(await asyncio.wait_for(ws.recv(), 10 * SLOW)).split("\n")[0]
    welcome: dict[str, Any] = orjson.loads(first)
    assert welcome["type"] == "welcome"
    return welcome


def python_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mint_token", EXAMPLES / "mint_token.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doc_shows_the_examples_as_they_are_tested() -> None:
    doc = DOC.read_text()
    assert (EXAMPLES / "mint_token.py").read_text() in doc
    assert (NODE_DIR / "mint.mjs").read_text() in doc


async def test_python_example_hs256_and_kid(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    mint = python_example()
    config = replace(make_config(tmp_path), jwt_keys=(f"2026-01={NEXT_SECRET}",))
    monkeypatch.setenv("ROOMCHAT_JWT_SECRET", SECRET)
    async with running_server(config) as srv:
        welcome = await join(srv.port, mint.roomchat_token("u42", "Ada", ["lobby"]))
        assert (welcome["user"], welcome["name"]) == ("u42", "Ada")
        monkeypatch.setenv("ROOMCHAT_JWT_SECRET", NEXT_SECRET)  # the app moved to the new key
        welcome = await join(srv.port, mint.roomchat_token("u43", "Bo", ["*"], kid="2026-01"))
        assert welcome["user"] == "u43"
        status, body = await asyncio.to_thread(  # the new secret without its kid: refused
            ticket, srv.port, mint.roomchat_token("u44", "Cy", ["lobby"]))
        assert (status, body["error"]) == (401, "invalid_token")
        status, body = await asyncio.to_thread(
            ticket, srv.port, mint.roomchat_token("u45", "Di", ["other"], kid="2026-01"))
        assert (status, body["error"]) == (403, "room_forbidden")


@pytest.mark.parametrize(("kind", "algorithm"), [("ed25519", "EdDSA"), ("rsa", "RS256")])
async def test_python_example_key_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       kind: str, algorithm: str) -> None:
    private, public = key_pair(tmp_path, kind)
    config = replace(make_config(tmp_path), jwt_secret=None, jwt_algorithm=algorithm,
                     jwt_public_key_file=public)
    monkeypatch.delenv("ROOMCHAT_JWT_SECRET", raising=False)
    monkeypatch.setenv("ROOMCHAT_JWT_ALGORITHM", algorithm)
    monkeypatch.setenv("ROOMCHAT_JWT_PRIVATE_KEY_FILE", str(private))
    async with running_server(config) as srv:
        welcome = await join(srv.port, python_example().roomchat_token("u7", "Eve", ["lobby"]))
        assert welcome["user"] == "u7"
    assert not (tmp_path / "jwt-secret").exists()  # the server never needed a secret


def npm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("the Node example needs node and npm on PATH (Node 18+)")
    done = subprocess.run(["npm", *args], cwd=NODE_DIR, capture_output=True, text=True,
                          timeout=120 * SLOW, check=False, env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"npm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def node_mint(env: dict[str, str]) -> str:
    done = subprocess.run(["node", "mint.mjs", "node-user", "lobby"], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=30 * SLOW, check=True,
                          env={**os.environ, **env})
    return done.stdout.strip()


@pytest.mark.parametrize("kind", ["hs256", "ed25519", "rsa"])
async def test_node_example(tmp_path: Path, kind: str) -> None:
    await asyncio.to_thread(npm, "ci", "--no-audit", "--no-fund")
    config = make_config(tmp_path)
    env = {"ROOMCHAT_JWT_SECRET": SECRET}
    if kind != "hs256":
        private, public = key_pair(tmp_path, kind)
        config = replace(config, jwt_secret=None, jwt_public_key_file=public,
                         jwt_algorithm="EdDSA" if kind == "ed25519" else "RS256")
        env = {"ROOMCHAT_JWT_PRIVATE_KEY_FILE": str(private)}
    async with running_server(config) as srv:
        done = await asyncio.to_thread(
            npm, "test", env={**env, "ROOMCHAT_URL": f"http://127.0.0.1:{srv.port}"})
        assert "# fail 0" in done.stdout and "# skipped 0" in done.stdout, done.stdout
        welcome = await join(srv.port, await asyncio.to_thread(node_mint, env))
        assert (welcome["user"], welcome["name"]) == ("node-user", "node-user")


def test_the_claims_table_lists_every_claim_the_server_reads(tmp_path: Path) -> None:
    # The page said "There is no `moderator` claim" while the server took `moderator` and `mod`
    # (issue 20, 16). Every claim roomchat's own issuer can write has a row.
    issuer = make_issuer(make_config(tmp_path))
    token = issuer.issue("u1", rooms=["lobby"], ttl=60, name="U", admin=True, scope="api",
                         moderator=True, mod=["lobby"])
    claims = set(jwt.decode(token, options={"verify_signature": False}))
    section = DOC.read_text().partition("## The claims")[2].partition("\n## ")[0]
    rows = {claim for line in section.splitlines() if line.startswith("| `")
            for claim in re.findall(r"`(\w+)`", line.split("|")[1])}
    assert claims <= rows, f"claims without a row in docs/integration.md: {claims - rows}"


@pytest.mark.parametrize(("env", "variable"), [
    ({}, "ROOMCHAT_JWT_SECRET"),
    ({"ROOMCHAT_JWT_ALGORITHM": "EdDSA"}, "ROOMCHAT_JWT_PRIVATE_KEY_FILE"),
], ids=["hs256", "eddsa"])
def test_python_example_says_which_variable_to_set(env: dict[str, str], variable: str) -> None:
    # It died with a KeyError traceback when the variable was unset (issue 20, 16).
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_JWT")}
    done = subprocess.run([sys.executable, str(EXAMPLES / "mint_token.py"), "alice", "lobby"],
                          capture_output=True, text=True, timeout=30 * SLOW, check=False,
                          env={**base, **env})
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"mint_token.py: set {variable} to sign ")
    assert done.stderr.count("\n") == 1


def test_node_example_says_which_variable_to_set() -> None:
    if shutil.which("node") is None:
        pytest.fail("the Node example needs node on PATH (Node 18+)")
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_JWT")}
    done = subprocess.run(["node", "mint.mjs", "alice", "lobby"], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=30 * SLOW, check=False,
                          env=base)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == ("mint.mjs: set ROOMCHAT_JWT_SECRET (the secret the roomchat server "
                           "has) or ROOMCHAT_JWT_PRIVATE_KEY_FILE (your private key; the server "
                           "has its public half)\n")

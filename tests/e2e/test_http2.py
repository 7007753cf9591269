"""HTTPS + HTTP/2 served by Hypercorn directly (``--certfile/--keyfile``), in Chromium.

Chromium opens WebSockets over an existing h2 connection (RFC 8441) when the server allows it,
which Hypercorn always does. Hypercorn has open reports (#327, #329) that a second WebSocket on
one h2 connection can break all of them: here two tabs and two extra sockets share one h2
connection, one socket is closed by the client and one by the server, and the rest keep working.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from gateway.tls import make_dev_cert

from .conftest import Shooter
from .harness import SECRET, free_port, mint_token, roomchat_command
from .pages import expect_live, send, texts, wait_until

SOCKETS_JS = """async ([url, count]) => {
  window.__extra = [];
  window.__extraGot = [];
  const opened = [];
  for (let i = 0; i < count; i++) {
    const ws = new WebSocket(url);
    window.__extra.push(ws);
    window.__extraGot.push([]);
    ws.onmessage = (e) => {
      for (const line of String(e.data).split('\\n')) {
        const obj = JSON.parse(line);
        if (obj.type === 'message') window.__extraGot[i].push(obj.text);
      }
    };
    opened.push(new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; }));
  }
  await Promise.all(opened);
  return window.__extra.length;
}"""


class TlsServer:
    def __init__(self, data_dir: Path, log: Path) -> None:
        self.cert = make_dev_cert(data_dir)
        self.port = free_port()
        self.log = log
        env = {**os.environ, "ROOMCHAT_JWT_SECRET": SECRET}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*roomchat_command(), "serve", "--bind", f"127.0.0.1:{self.port}",
                 "--data-dir", str(data_dir), "--certfile", str(self.cert.cert),
                 "--keyfile", str(self.cert.key)],
                env=env, stdout=out, stderr=subprocess.STDOUT)
        context = ssl.create_default_context(cafile=str(self.cert.ca_cert))
        deadline = time.monotonic() + 45
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", context=context,
                                            timeout=2) as res:
                    if res.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"TLS server did not start:\n{log.read_text()}")
            time.sleep(0.1)

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    server = TlsServer(tmp_path / "data", tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()


def _extra_texts(page: Page) -> list[list[str]]:
    got: list[list[str]] = page.evaluate("window.__extraGot")
    return got


def test_websockets_share_one_h2_connection_and_survive_each_other(
    browser: Browser, tls_server: TlsServer, shoot: Shooter
) -> None:
    # One browser context: both tabs share the network session, hence the h2 connection.
    context = browser.new_context(ignore_https_errors=True)
    try:
        alice = context.new_page()
        alice.goto(f"{tls_server.base}/rooms/lobby#token="
                   f"{mint_token('alice', ['lobby'], name='Alice')}")
        expect_live(alice)
        assert alice.evaluate(
            "performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
        bob = context.new_page()
        bob.goto(f"{tls_server.base}/rooms/lobby#token={mint_token('bob', ['lobby'], name='Bob')}")
        expect_live(bob)
        ws_url = (f"wss://localhost:{tls_server.port}/rooms/lobby/ws?token="
                  f"{mint_token('carol', ['lobby'])}")
        assert alice.evaluate(SOCKETS_JS, [ws_url, 2]) == 2

        send(alice, "over h2 one")
        send(bob, "over h2 two")
        for page in (alice, bob):
            expect(texts(page)).to_have_text(["over h2 one", "over h2 two"])
        deadline = time.monotonic() + 30
        while _extra_texts(alice) != [["over h2 one", "over h2 two"]] * 2:
            assert time.monotonic() < deadline, _extra_texts(alice)
            alice.wait_for_timeout(100)

        # One extra socket closed by the client, the other by the server (binary frame: 1003).
        alice.evaluate("window.__extra[0].close(1000)")
        alice.evaluate("window.__extra[1].send(new Uint8Array([1, 2, 3]))")
        wait_until(alice, lambda: bool(alice.evaluate(
            "() => window.__extra.every(ws => ws.readyState === WebSocket.CLOSED)")),
            "both extra sockets closed")
        send(bob, "still alive")
        for page in (alice, bob):
            expect(texts(page)).to_have_text(["over h2 one", "over h2 two", "still alive"])
        send(alice, "both ways")
        expect(texts(bob).last).to_have_text("both ways")
        shoot(alice, "http2-alice")
    finally:
        context.close()

    log = tls_server.log.read_text()
    # Every WebSocket went over HTTP/2 (the access log's protocol field), none over 1.1.
    h2_sockets = re.findall(r'"GET /rooms/lobby/ws 2" 200', log)
    assert len(h2_sockets) >= 4, log
    assert '"GET /rooms/lobby/ws 1.1"' not in log
    assert "token=" not in log

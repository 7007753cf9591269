"""The page's reconnect policy (static/chat.js ``backoffDelay``, ``restartDelay``,
``reconnectDelay``, on static/backoff.js), run in Node on the modules themselves with a fixed
``random()``: full jitter, a spread restart, the server's Retry-After as a floor; and
static/backoff.js alone (the admin page's equal jitter). (bench/storm.py replays storms with
these same functions.)"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

STATIC = Path(__file__).resolve().parents[2] / "static"

# chat.js is an ES module for the browser; a data: URL loads it as one in Node without a
# package.json saying so, and its import of /static/backoff.js (a path only the server
# resolves) is pointed at that file's own data: URL.
SCRIPT = """
const fs = require('fs');
const dataUrl = (text) => 'data:text/javascript;base64,' + Buffer.from(text).toString('base64');
const helperUrl = dataUrl(fs.readFileSync(process.argv[2], 'utf8'));
const chatSource = fs.readFileSync(process.argv[1], 'utf8').replace("'/static/backoff.js'",
  JSON.stringify(helperUrl));
Promise.all([import(dataUrl(chatSource)), import(helperUrl)]).then(([chat, helper]) => {
  const fixed = (x) => () => x;
  const admin = { baseMs: 1000, maxMs: 30000, jitter: 0.5 };
  const out = {
    helper: {
      none: [0, 1, 3, 6, -2].map((a) => helper.backoffDelay(a, { baseMs: 500, maxMs: 30000,
        jitter: 0 })),
      admin: [0, 2, 5, 2000].map((a) => [helper.backoffDelay(a, { ...admin, random: fixed(0) }),
        helper.backoffDelay(a, { ...admin, random: fixed(0.999) })]),
      rounded: helper.backoffDelay(0, { baseMs: 1000, maxMs: 1000, random: fixed(0.12345) }),
      jittered: [0, 0.5, 1].map((r) => helper.jittered(2, 3, fixed(r))),
    },
    backoff: [0, 1, 2, 5, 9].map((a) => [chat.backoffDelay(a, fixed(0)),
      chat.backoffDelay(a, fixed(1))]),
    half: chat.backoffDelay(2, fixed(0.5)),
    restart: [chat.restartDelay(fixed(0)), chat.restartDelay(fixed(1))],
    restartPlan: chat.reconnectDelay(chat.closeAction(1012), 6, fixed(1)),
    dropped: chat.reconnectDelay(chat.closeAction(1006), 2, fixed(1)),
    busy: chat.reconnectDelay(chat.ticketRefusalAction(503, { error: 'busy' }, 7000), 0,
      fixed(0.5)),
    busyShortHint: chat.reconnectDelay(chat.ticketRefusalAction(503, { error: 'busy' }, 1000), 3,
      fixed(0.5)),
    tooFast: chat.reconnectDelay(chat.ticketRefusalAction(429, { error: 'too_many_handshakes' }), 0,
      fixed(1)),
  };
  process.stdout.write(JSON.stringify(out));
});
"""


@pytest.fixture(scope="module")
def policy() -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("these tests need node on PATH (Node 18+)")
    done = subprocess.run([node, "-e", SCRIPT, str(STATIC / "chat.js"),
                           str(STATIC / "backoff.js")], capture_output=True, text=True,
                          timeout=30, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_backoff_draws_from_zero_to_the_doubling_cap(policy: dict[str, Any]) -> None:
    # Full jitter: [0, d] with d = 1 s doubling to 30 s.
    assert policy["backoff"] == [[0, 1000], [0, 2000], [0, 4000], [0, 30000], [0, 30000]]
    assert policy["half"] == 2000


def test_a_restart_reconnects_within_two_seconds_and_resets_the_backoff(
        policy: dict[str, Any]) -> None:
    assert policy["restart"] == [0, 2000]
    assert policy["restartPlan"] == {"delay": 2000, "attempt": 1}
    assert policy["dropped"] == {"delay": 4000, "attempt": 3}


def test_a_busy_server_s_retry_after_is_a_floor_over_the_backoff(policy: dict[str, Any]) -> None:
    assert policy["busy"] == {"delay": 7000, "attempt": 1}
    assert policy["busyShortHint"] == {"delay": 4000, "attempt": 4}  # backoff above the hint
    assert policy["tooFast"] == {"delay": 4000, "attempt": 3}  # 429: from the third attempt


def test_the_backoff_helper_doubles_to_its_cap_with_the_jitter_asked(
        policy: dict[str, Any]) -> None:
    helper = policy["helper"]
    assert helper["none"] == [500, 1000, 4000, 30000, 500]  # a negative attempt counts as 0
    # The admin page's: 1 s doubling to 30 s, from half of it to all of it (as before the helper).
    assert helper["admin"] == [[500, 1000], [2000, 3998], [15000, 29985], [15000, 29985]]
    assert helper["rounded"] == 123
    assert helper["jittered"] == [2, 3.5, 5]

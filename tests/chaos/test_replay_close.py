"""Scenario 7, the slow-consumer path: a long replay in progress when its session is closed with
4009 (the client read part of it, then stopped). What it got is a gapless prefix, and its next
resume (``after=<last seq>``) fills every gap. Drain (1012) and token expiry (4001) are covered
by ``tests/integration/test_hardening.py::test_a_close_during_a_replay_leaves_no_gap``."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.chaos.harness import record
from tests.clients import FLOOD, RawClient, room_path, store_messages
from tests.conftest import ServerFactory
from tests.support import SLOW, collect_messages, make_token

STORED, LIVE = 600, 20


async def test_a_replay_cut_by_4009_resumes_without_a_gap(
        server_with: ServerFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    limits = {**FLOOD, "send_timeout": 1.0, "close_timeout": 1.0, "tick_interval": 0.1}
    async with server_with(**limits) as srv:
        await store_messages(srv.url("lobby", make_token("writer")), STORED)
        slow = await RawClient.connect(srv.port, room_path("lobby", make_token("slow"),
                                                           after="0"))
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(30 * SLOW):  # read part of the replay, then stop
                while len(slow.seqs) < 100:
                    slow._feed(await loop.sock_recv(slow.sock, 1 << 16))
            stopped_at = loop.time()
            await store_messages(srv.url("lobby", make_token("writer")), LIVE, first=STORED,
                                 size=10)
            async with asyncio.timeout(15 * SLOW):  # the send watchdog closes it
                while "4009" not in caplog.text:  # noqa: ASYNC110 (a log line, not an event)
                    await asyncio.sleep(0.05)
            closed_after = loop.time() - stopped_at
            await slow.read_to_end()  # it reads again: whatever is left, then the close/reset
        finally:
            slow.close()
        got = slow.seqs
        assert got == list(range(1, len(got) + 1)), "a gap: the resume would skip messages"
        assert 100 <= len(got) < STORED
        welcome, rest = await collect_messages(
            srv.url("lobby", make_token("slow"), after=str(got[-1])), STORED + LIVE - got[-1])
        assert welcome["recovered"] is True
        assert [m["seq"] for m in rest] == list(range(got[-1] + 1, STORED + LIVE + 1))
    record("replay-cut-by-4009", stored=STORED, live=LIVE, received_before_close=len(got),
           close_code=slow.close_code, reset=slow.reset,
           closed_seconds_after_stop=round(closed_after, 2),
           resumed=len(rest), recovered=welcome["recovered"])

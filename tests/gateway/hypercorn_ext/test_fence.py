"""The fence around Hypercorn's internals: the installed libraries are the ones the parts were
verified against, a part whose target changed is left out (one warning line, a metric) while
the server still serves, and ``ROOMCHAT_FAST_PATHS=0`` installs none."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypercorn.asyncio import tcp_server, worker_context
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.protocol import ws_stream

from gateway.hypercorn_ext import compression, fence, parts, wsfixes
from tests.support import Server, frame_writers, make_config, metric, running_server

HYPERCORNS = {
    "close_frames": (ws_stream.WSStream, "_handle_events"),
    "lean_app_queue": (TaskGroup, "spawn_app"),
    "lean_events": (worker_context.WorkerContext, "event_class"),
    "free_closed": (tcp_server.TCPServer, "run"),
}


def test_the_installed_libraries_are_the_ones_the_fast_paths_were_verified_against() -> None:
    """Fails after an upgrade of Hypercorn, wsproto or Python that changes (or is not known to
    leave unchanged) anything a part of gateway.hypercorn_ext replaces or reaches into."""
    found = {name: problems for name, problems in parts.verify().items() if problems}
    assert not found, (
        "gateway.hypercorn_ext no longer matches the installed libraries; these parts would "
        "fall back to Hypercorn's plain ASGI path:\n"
        + "\n".join(f"  {name}: {'; '.join(problems)}" for name, problems in found.items())
        + "\nRe-verify: read each changed target's diff against the part that reaches into it "
        "(docs/upstream.md), run `make test-plain-asgi`, tests/gateway/hypercorn_ext (Autobahn "
        "included) and the fast-path tests, then paste the entries `python -m "
        "gateway.hypercorn_ext` prints into VERIFIED in gateway/hypercorn_ext/fence.py.")


def test_every_target_names_something_that_exists() -> None:
    hashes = parts.installed_hashes()
    assert [t for t, digest in hashes.items() if digest is None] == []


VERSIONS = {"hypercorn": "0.18.0", "wsproto": "1.3.2", "python": "3.11"}
TABLE = {"hypercorn 0.18.0": {"hypercorn.x:f": "aaaa", "hypercorn.x:g": "bbbb"},
         "wsproto 1.3.2": {"wsproto.y:C": "cccc"}}


def test_matching_versions_and_hashes_are_no_problem() -> None:
    hashes = {"hypercorn.x:f": "aaaa", "wsproto.y:C": "cccc"}
    assert fence.problems(hashes, hashes, VERSIONS, TABLE) == []


def test_a_changed_or_missing_target_is_named() -> None:
    hashes: dict[str, str | None] = {"hypercorn.x:f": "ffff", "hypercorn.x:g": None}
    assert fence.problems(["hypercorn.x:f", "hypercorn.x:g"], hashes, VERSIONS, TABLE) == [
        "hypercorn.x:f changed in hypercorn 0.18.0", "hypercorn.x:g is gone in hypercorn 0.18.0"]


def test_an_unverified_version_is_named_once_per_library() -> None:
    versions = {**VERSIONS, "hypercorn": "0.19.0"}
    hashes = {"hypercorn.x:f": "aaaa", "hypercorn.x:g": "bbbb"}
    assert fence.problems(["hypercorn.x:f", "hypercorn.x:g"], hashes, versions, TABLE) == [
        "hypercorn 0.19.0 is not a verified version (verified: 0.18.0)"]


def test_asyncio_is_versioned_by_python() -> None:
    assert fence.library("asyncio.streams:StreamReader.feed_data") == "python"
    assert fence.library("hypercorn.protocol.h11:H11WSConnection") == "hypercorn"
    assert fence.installed_version("python") is not None


def test_the_printed_table_reads_back_as_the_verified_one() -> None:
    targets = parts.all_targets()
    namespace: dict[str, object] = {}
    exec(fence.table(targets, parts.installed_hashes(), parts.versions()), namespace)
    assert namespace["VERIFIED"] == fence.VERIFIED


@pytest.fixture
def changed_handle_events(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The table as if Hypercorn's ``WSStream._handle_events`` had changed."""
    target = "hypercorn.protocol.ws_stream:WSStream._handle_events"
    key = f"hypercorn {parts.versions()['hypercorn']}"
    table = {k: dict(v) for k, v in fence.VERIFIED.items()}
    table[key][target] = "0" * 16
    monkeypatch.setattr(fence, "VERIFIED", table)
    yield target


async def _sample(server: Server, name: str) -> float:
    """One sample of ``server``'s /metrics (read off the event loop that serves it)."""
    return await asyncio.to_thread(metric, server.port, name)


async def _ignore(message: object) -> None:
    """An inbound handler for ``take_inbound`` to refuse."""


def _serving_state() -> dict[str, object]:
    return {name: getattr(owner, attr) for name, (owner, attr) in HYPERCORNS.items()}


@pytest.mark.fast_paths
async def test_a_changed_target_leaves_its_part_out_and_the_server_serves(
        tmp_path: Path, changed_handle_events: str,
        caplog: pytest.LogCaptureFixture) -> None:
    original = wsfixes._HYPERCORNS["close_frames"][2]
    config = replace(make_config(tmp_path), fast_paths=True)
    with caplog.at_level(logging.WARNING, logger="roomchat.hypercorn_ext"):
        async with running_server(config) as srv:
            assert ws_stream.WSStream._handle_events is original  # Hypercorn's own
            assert TaskGroup.spawn_app is wsfixes._spawn_app  # the other parts are in place
            alice = await srv.connect()
            assert (await alice.recv())["type"] == "welcome"
            await alice.say("still served")
            assert (await alice.recv_type("message"))["text"] == "still served"
            assert all(w.direct for w in frame_writers(srv))
            mismatches = 'roomchat_fast_path_mismatches_total{part="close_frames"}'
            assert await _sample(srv, mismatches) == 1
            assert await _sample(srv, 'roomchat_fast_paths_active{part="close_frames"}') == 0
            assert await _sample(srv, 'roomchat_fast_paths_active{part="direct_read"}') == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert changed_handle_events in warnings[0].getMessage()
    assert "close_frames" in warnings[0].getMessage()


def test_a_part_whose_required_part_changed_is_left_out_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    target = "asyncio.streams:FlowControlMixin"  # direct_send's; direct_read needs direct_send
    table = {k: dict(v) for k, v in fence.VERIFIED.items()}
    table[f"python {parts.versions()['python']}"][target] = "0" * 16
    monkeypatch.setattr(fence, "VERIFIED", table)
    found = parts.verify()
    assert found["direct_send"] == (f"{target} changed in python {parts.versions()['python']}",)
    assert found["direct_read"] == ("needs direct_send, which changed",)
    assert not found["close_frames"]


async def test_fast_paths_off_installs_nothing_and_the_server_serves(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), fast_paths=False)
    try:
        async with running_server(config) as srv:
            assert _serving_state() == {name: wsfixes._HYPERCORNS[name][2]
                                        for name in HYPERCORNS}
            assert ws_stream.PerMessageDeflate is compression._HYPERCORNS  # type: ignore[attr-defined]
            alice = await srv.connect()
            assert (await alice.recv())["type"] == "welcome"
            await alice.say("plain")
            assert (await alice.recv_type("message"))["text"] == "plain"
            (writer,) = frame_writers(srv)
            assert writer._target is None and not writer.direct
            assert not writer.take_inbound(_ignore)
            for part in parts.NAMES:
                assert await _sample(srv, f'roomchat_fast_paths_active{{part="{part}"}}') == 0
    finally:
        # Put every part back for the tests that follow in this process.
        parts.install(enabled=True, compression_on=False, max_message_bytes=65_536)

"""The audit the fault tests end with: each client's seqs are exactly 1..top, with no gap and
no duplicate across its reconnects (it resumes with ``after=<last seq seen>``); everything it
sent was acked; and the room read back with ``after=0`` (and straight from its store: the Redis
stream here, the SQLite file in ``tests.chaos.harness``) holds every acked message exactly once,
at its acked seq, with no ``(user, id)`` stored twice.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import websockets
from redis import asyncio as aioredis

from tests.clients import Chatter, Stored, Target, connect


def anomalies(seqs: list[int], first: int = 1) -> list[str]:
    """The gaps and repeats in ``seqs`` (which should be ``first, first + 1, ...``)."""
    out: list[str] = []
    expected = first
    for i, seq in enumerate(seqs):
        if seq != expected:
            out.append(f"at #{i}: got {seq}, expected {expected}")
        expected = seq + 1
    return out[:10]


async def read_back(target: Target, room: str) -> list[dict[str, Any]]:
    """Every message of ``room``, read with ``after=0`` (resuming after the last one read, as
    any client would, if the server closes the connection meanwhile)."""
    got: list[dict[str, Any]] = []
    for _ in range(5):
        after = got[-1]["seq"] if got else 0
        client, welcome = await connect(target, "auditor", room, after=after)
        try:
            while welcome["seq"] > (got[-1]["seq"] if got else 0):
                got.append(await client.recv_type("message", 10))
            return got
        except websockets.ConnectionClosed:
            continue
        finally:
            await client.ws.close()
    raise AssertionError(f"could not read room {room} back")


async def stream_of(url: str, room: str) -> list[tuple[int, Stored]]:
    """The room's Redis stream, read directly (the key layout is in rooms/engines/redis.py)."""
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        entries: Any = await redis.xrange(f"roomchat:{{{room}}}:log")
    finally:
        await redis.aclose()
    return [(int(eid.split("-")[1]), (f["user"], f["id"] or None, f["text"]))
            for eid, f in entries]


def check_room(room: str, wire: list[dict[str, Any]], backing: list[tuple[int, Stored]],
               backing_name: str, chatters: list[Chatter], *, context: str = "") -> int:
    """The checks every test ends with (see the module docstring), given the room's read-back
    (``after=0``) and what its engine holds (``backing``, named ``backing_name`` in messages).
    Returns the room's top seq."""
    mine = [c for c in chatters if c.room == room]
    stored = {m["seq"]: (m["user"], m["id"], m["text"]) for m in wire}
    seqs = [m["seq"] for m in wire]
    assert seqs == list(range(1, len(seqs) + 1)), f"{context}{room} read back: {anomalies(seqs)}"
    assert backing == sorted(stored.items()), \
        f"{context}{room}: {backing_name} differs from read back"
    twice = [k for k, n in Counter((u, i) for u, i, _ in stored.values()).items() if n > 1]
    assert not twice, f"{context}{room}: stored more than once: {twice[:10]}"
    top = len(seqs)
    for c in mine:
        assert not c.problems, f"{context}{c}: {c.problems[:10]}"
        assert c.seqs == list(range(1, top + 1)), f"{context}{c}: {anomalies(c.seqs)}"
        wrong = [s for s in c.seqs if c.seen[s] != stored[s]]
        assert not wrong, f"{context}{c}: saw other messages than stored at {wrong[:10]}"
        assert not c.unacked, f"{context}{c}: never acked: {sorted(c.unacked)[:10]}"
        assert set(c.acked) == set(c.sent)
        misplaced = [cid for cid, seq in c.acked.items()
                     if stored.get(seq) != (c.user, cid, c.sent[cid])]
        assert not misplaced, f"{context}{c}: acked but not stored at their seq: {misplaced[:10]}"
        assert 1011 not in c.server_closes, f"{context}{c}: closed with 1011"
    stored_ids = {(u, i) for u, i, _ in stored.values()}
    sent = {(c.user, cid) for c in mine for cid in c.sent}
    assert stored_ids == sent, f"{context}{room}: stored messages nobody sent"
    return top


async def audit(url: str, target: Target, room: str, chatters: list[Chatter],
                *, context: str = "") -> None:
    """``check_room`` against the room's Redis stream."""
    wire = await read_back(target, room)
    check_room(room, wire, await stream_of(url, room), "stream", chatters, context=context)

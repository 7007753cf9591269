"""The live admin view: ``/admin`` (page) and ``/admin/ws`` (a stats stream for admin tokens).

The stream reuses the rooms' session machinery: a ``Session`` with a bounded outbox and its
writer, fed once per ``ADMIN_INTERVAL`` by a ticker. It follows the rooms' rules: a slow admin
client is closed with 4009, an expired token with 4001, and a client that stops answering the
heartbeat ``ping`` (every ``ping_interval``) for ``ping_timeout`` more seconds with 4010.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Any

from quart import Response, websocket

from gateway.access import Purpose, QuartKnock
from gateway.errors import REFUSALS, rejection_for
from rooms import protocol
from rooms.session import Session
from rooms.state import JoinPlan

if TYPE_CHECKING:
    from gateway.gateway import Gateway

class QuartTransport:
    """``rooms.session.Transport`` over Quart's websocket object (usable from any task)."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    async def send(self, data: str) -> None:
        await self._ws.send(data)

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code, reason)


ADMIN_INTERVAL = 1.0
MAX_ROOMS_SHOWN = 200
_ids = itertools.count(1)


def snapshot(gw: Gateway) -> dict[str, Any]:
    """Stats of the process and its busiest rooms (by connections), as one protocol object."""
    actors = sorted(gw.registry.rooms(), key=lambda a: (-a.counts().sessions, a.room))
    return {"type": "stats", "ts": int(time.time() * 1000), "connections": gw.connections,
            "rooms_active": len(actors),
            "rooms": [actor.statistics() for actor in actors[:MAX_ROOMS_SHOWN]]}


async def admin_socket(gw: Gateway) -> Response | None:
    """Serve one admin stream, once the front door admitted it (``Purpose.ADMIN_STREAM``: an
    admin token in ``?token=``); a refusal is the HTTP answer to the upgrade."""
    try:
        admission = await gw.door.admit(QuartKnock(websocket), Purpose.ADMIN_STREAM)
    except REFUSALS as exc:
        refused = rejection_for(exc)
        gw.observer.handshake_rejected(refused.error)
        return refused.response()
    claims = admission.claims
    cfg = gw.config.room
    session = Session(-next(_ids), claims.user, claims.name,
                      QuartTransport(websocket._get_current_object()),  # type: ignore[attr-defined]
                      outbox_limit=16, max_frame_messages=16, send_timeout=cfg.send_timeout,
                      close_timeout=cfg.close_timeout)
    hello = protocol.dumps({"type": "hello", "user": claims.user, "interval": ADMIN_INTERVAL})
    await websocket.accept()

    last_seen = time.monotonic()
    next_ping = last_seen + cfg.ping_interval

    async def tick() -> None:
        nonlocal next_ping
        while True:
            now = time.monotonic()
            if time.time() >= claims.expires_at:
                session.close_nowait(protocol.CloseCode.TOKEN_EXPIRED, "token expired")
                return
            if now - last_seen > cfg.ping_interval + cfg.ping_timeout:
                session.close_nowait(protocol.CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                return
            if now >= next_ping:
                next_ping = now + cfg.ping_interval
                session.offer(protocol.ping(int(time.time() * 1000)))
            if not session.offer(protocol.dumps(snapshot(gw))):
                session.close_nowait(protocol.CloseCode.SLOW_CONSUMER, "slow consumer",
                                     flush=False)
                return
            if session.stalled(time.monotonic()):
                session.abort(protocol.CloseCode.SLOW_CONSUMER, "slow consumer")
                return
            if gw.draining:
                session.close_nowait(protocol.CloseCode.SERVICE_RESTART, "server restarting")
                return
            await asyncio.sleep(min(ADMIN_INTERVAL, cfg.tick_interval))

    async def read() -> None:
        nonlocal last_seen
        while True:  # any frame (a pong, in practice) shows the client is alive
            await websocket.receive()
            last_seen = time.monotonic()

    async with asyncio.TaskGroup() as tg:
        ticker = tg.create_task(tick())
        reader = tg.create_task(read())
        await session.run_writer(JoinPlan(hello, 0, 0, False), "", gw.store, 1)
        ticker.cancel()
        reader.cancel()
    return None

"""Revoked users: refused at the door and disconnected, on every process, within seconds.

``roomchat revoke --user ID`` (run beside a live server, on the same data dir or store URL)
records ``(user, now)`` in the engine. Every process polls the engine's revocations every
``revocation_poll`` seconds (``Revocations.watch``): a new one closes every socket of that user in
every room of the process with 4003, and from then on refuses that user's tokens (and tickets)
issued before the revocation. Tokens issued afterwards are accepted: revocation ends sessions, it
does not ban (an application that bans stops issuing tokens).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.auth import AuthError, Claims
from rooms.engine import Engine
from rooms.errors import StoreError

log = logging.getLogger("roomchat.revocation")
SKEW_MARGIN = 60.0


class Revocations:
    """This process's view of the revocations; ``watch`` keeps it current."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._since = 0.0

    def check(self, claims: Claims) -> None:
        """Raise ``AuthError("token_revoked")`` if the claims' token predates a revocation of
        its user. (``iat`` has whole seconds: a token issued in the second of the revocation
        counts as before it.)"""
        at = self._at.get(claims.user)
        if at is not None and claims.issued_at < at:
            raise AuthError("token_revoked", "access was revoked; get a new token")

    def apply(self, rows: list[tuple[str, float]]) -> list[str]:
        """Record ``rows`` from the engine; the users whose revocation is new."""
        fresh = []
        for user, at in rows:
            if at > self._at.get(user, 0.0):
                self._at[user] = at
                fresh.append(user)
            self._since = max(self._since, at)
        return fresh

    async def load(self, engine: Engine) -> None:
        self.apply(await engine.revocations(0.0))

    async def watch(self, engine: Engine, interval: float,
                    on_revoked: Callable[[str], None]) -> None:
        """Poll until cancelled; ``on_revoked(user)`` for each new revocation. Storage errors
        are logged and retried at the next poll."""
        while True:
            await asyncio.sleep(interval)
            try:
                # Re-read a margin: a revocation recorded on another machine may carry a time
                # slightly behind the newest one seen here (clock skew).
                rows = await engine.revocations(self._since - SKEW_MARGIN)
            except StoreError as exc:
                log.debug("revocations: %s", exc)
                continue
            for user in self.apply(rows):
                log.info("access of user %r revoked: closing their connections", user)
                on_revoked(user)

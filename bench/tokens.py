"""JWTs for benchmark clients, minted with PyJWT the way roomchat expects them (HS256)."""

from __future__ import annotations

import time

import jwt

from bench.servers import JWT_SECRET


def mint_tokens(count: int, prefix: str = "bench", ttl_s: int = 6 * 3600) -> list[str]:
    """Return ``count`` tokens, each for a distinct user ``<prefix>-<i>``, valid for every room."""
    now = int(time.time())
    return [
        jwt.encode(
            {
                "sub": f"{prefix}-{i}",
                "name": f"Bench {i}",
                "rooms": ["*"],
                "aud": "roomchat",
                "iss": "roomchat",
                "iat": now,
                "exp": now + ttl_s,
            },
            JWT_SECRET,
            algorithm="HS256",
        )
        for i in range(count)
    ]

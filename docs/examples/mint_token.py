"""Mint roomchat tokens in your app's backend with PyJWT (`pip install 'pyjwt[crypto]'`).

Call ``roomchat_token`` after your own login has identified the user, and hand the result to the
page (``/rooms/<room>#token=...``) or to your own client. Run as a script to print one:
``python mint_token.py alice lobby``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import jwt


def roomchat_token(user_id: str, display_name: str, rooms: list[str], *, ttl: int = 15 * 60,
                   admin: bool = False, kid: str | None = None) -> str:
    """A token for ``user_id`` to join ``rooms`` (``["*"]``: every room) for ``ttl`` seconds.

    Signed like the server verifies (same setting names): ``ROOMCHAT_JWT_ALGORITHM`` HS256 (the
    default) with ``ROOMCHAT_JWT_SECRET``, or EdDSA/RS256 with ``ROOMCHAT_JWT_PRIVATE_KEY_FILE``
    (the server holds only the public key). Raises ``RuntimeError`` naming the variable to set
    when the key's variable is unset.
    """
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user_id,            # your user id: 1-64 characters, stable
        "name": display_name,      # what the room shows
        "rooms": rooms,
        "aud": "roomchat", "iss": "roomchat",  # ROOMCHAT_JWT_AUDIENCE / ROOMCHAT_JWT_ISSUER
        "iat": now,
        "exp": now + ttl,
    }
    if admin:
        claims["admin"] = True     # may open the /admin page (live stats)
    headers = {"kid": kid} if kid else None  # a key of ROOMCHAT_JWT_KEYS (rotation)
    algorithm = os.environ.get("ROOMCHAT_JWT_ALGORITHM", "HS256")
    hmac = algorithm.startswith("HS")
    variable = "ROOMCHAT_JWT_SECRET" if hmac else "ROOMCHAT_JWT_PRIVATE_KEY_FILE"
    setting = os.environ.get(variable)
    if not setting:
        raise RuntimeError(f"set {variable} to sign {algorithm} tokens: " + (
            "the secret the roomchat server has" if hmac else
            "your private key file (the roomchat server has its public half)"))
    key: str | bytes = setting if hmac else Path(setting).read_bytes()
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python mint_token.py USER ROOM")
    user, room = sys.argv[1:]
    try:
        print(roomchat_token(user, user.capitalize(), [room]))
    except (RuntimeError, OSError) as exc:  # a variable unset, a key file unreadable
        sys.exit(f"mint_token.py: {exc}")

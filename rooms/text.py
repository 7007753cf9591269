"""The one validation every text entering a room goes through. Pure; no I/O.

Socket frames, server API bodies, and whatever the engines read back from storage all pass
through these functions before a room sees them, so the rules live in one place:

- ``message_text``: a chat message's text (also an edit's). Trimmed; 1 to ``max_chars``
  characters; no lone surrogate (JSON's ``"\\ud800"`` decodes to one and it cannot be encoded as
  UTF-8, so storing or sending it fails: one such text once took a whole group commit down);
  no U+0000 (PostgreSQL's ``text`` cannot hold it: refused here for every engine, so no engine
  keeps what another would refuse). Other control characters stay allowed in messages
  (rendered as text, never as markup).
- ``unsafe_text``: the stricter rule for identifiers and names (user ids, display names,
  reasons, client message ids): no lone surrogate and no control character.
- ``user_id_problem``: a user id (a token's ``sub``), wherever one enters (tokens, API paths
  and bodies, ``ban`` frames, the CLI): 1 to ``MAX_USER_CHARS`` characters, ``unsafe_text``'s
  rule.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

MAX_USER_CHARS = 64
"""Longest user id (a token's ``sub``)."""


@dataclass(frozen=True, slots=True)
class TextProblem:
    """Why a text was refused: ``code`` is the wire error code (``invalid_message``,
    ``empty_text``, ``text_too_long``), ``message`` the sentence for people."""

    code: str
    message: str


def has_lone_surrogate(text: str) -> bool:
    """True if ``text`` holds a surrogate code point, which no UTF-8 encoder accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unsafe_text(text: str) -> str | None:
    """Why ``text`` can't be a user id, display name, reason or id, or None when it can.

    Refused: lone surrogates (see the module docstring) and control characters (category Cc:
    NUL, newlines, ESC, DEL, C1), which forge lines in logs and terminals and have no place in a
    name. Format characters (Cf: the joiners inside emoji sequences, bidi marks) stay allowed:
    real names and emoji need them.
    """
    if has_lone_surrogate(text):
        return "a lone surrogate"
    if text.isprintable():  # fast path: printable excludes every Cc (and more, checked below)
        return None
    for char in text:
        if unicodedata.category(char) == "Cc":
            return "a control character"
    return None


def user_id_problem(value: object) -> str | None:
    """Why ``value`` can't be a user id, or None when it can: the one rule for every user id
    that enters (a token's ``sub``, an API path or body, a ``ban`` frame, ``roomchat erase``).

    The answer ends a sentence that the caller starts with the field's name (``"sub "``,
    ``"user "``, ``"--user "``): ``must be a string of 1 to 64 characters``, ``must not contain
    a control character``. A user id is stored (revocations every process loads, bans) and
    shown, so nothing else may slip in by another door.
    """
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_USER_CHARS:
        return f"must be a string of 1 to {MAX_USER_CHARS} characters"
    problem = unsafe_text(value)
    return None if problem is None else f"must not contain {problem}"


def message_text(value: object, max_chars: int) -> str | TextProblem:
    """``value`` as a message's stored text (trimmed), or the problem that refuses it."""
    if not isinstance(value, str):
        return TextProblem("invalid_message", "text must be a string")
    text = value.strip()
    if not text:
        return TextProblem("empty_text", "text is empty")
    if len(text) > max_chars:
        return TextProblem("text_too_long", f"text is longer than {max_chars} characters")
    if has_lone_surrogate(text):
        return TextProblem("invalid_message", "text must not contain a lone surrogate "
                           "(an unpaired \\ud800-\\udfff escape)")
    if "\0" in text:
        return TextProblem("invalid_message", "text must not contain U+0000")
    return text

"""Searching a room's messages: the query a person types, made safe, and what a search answers.
Pure; no I/O (the engines run the query: ``Engine.search``).

A query is words and ``"quoted phrases"``; a message matches when it holds every one of them
(in any order, case and Latin accents ignored). A word ending in ``*`` matches every word it begins
(``deplo*``: deploy, deployed) once it has ``PREFIX_MIN_CHARS`` characters before the star.
Nothing else of the person's text is syntax: ``AND``, ``NEAR(``, ``-``, ``:`` or a stray quote
are words or nothing, never operators of the engine's query language, so no query can fail to
parse (``fts5_query`` builds an SQLite FTS5 expression in which each term is a quoted string).

A term with no letter or digit (``!!!``, a lone ``"``, ``*``) searches nothing and is dropped:
FTS5 would read it as an empty phrase, which an implicit AND ignores but an explicit one turns
into "match nothing".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from rooms.messages import StoredMessage

__all__ = ["MAX_TERMS", "PREFIX_MIN_CHARS", "SEARCH_SWITCHED_OFF", "SEARCH_UNSUPPORTED", "Found",
           "Place", "RoomsPage", "SearchPage", "Term", "fragments", "fts5_query", "parse_query",
           "tsquery_sql", "unmarked"]

SEARCH_UNSUPPORTED = ("searching messages needs an engine with a search index: the embedded "
                      "engine (SQLite) and the PostgreSQL log have one; this server stores "
                      "messages in Redis, which has none")
"""What ``SearchUnsupported`` says on the Redis engine (the HTTP 501's detail)."""
SEARCH_SWITCHED_OFF = ("searching messages is switched off (ROOMCHAT_SEARCH_INDEX=0: this server "
                       "keeps no search index); its operator can turn it on with "
                       "ROOMCHAT_SEARCH_INDEX=1 and a restart, which builds the index")
"""What ``SearchUnsupported`` says on the embedded engine opened with ``search_index`` off
(the HTTP 501's detail; the setting is ``gateway.config.Config.search_index``)."""
MAX_TERMS = 16
"""Most terms one query keeps (the rest are ignored): each is one more doclist the index
merges, and a message holding 16 given words is already found."""
PREFIX_MIN_CHARS = 3
"""Characters a word needs before a trailing ``*`` makes it a prefix: ``a*`` would walk every
word of the index that starts with ``a``."""
FRAGMENT_CONTEXT = 40
"""Characters of plain text kept on either side of a hit in a result's fragments; longer runs
are cut to this with an ellipsis (the message's full text is in the result too)."""
ELLIPSIS = "\u2026"

_TERM = re.compile(r'"([^"]*)"?|(\S+)')
_CONTROLS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)], " ")
"""Control characters become spaces: FTS5 ends a query string at a NUL ("unterminated
string"), and no indexed word holds one."""


@dataclass(frozen=True, slots=True)
class Term:
    """One term of a query: a word or a phrase (its words in this order), and whether it is
    a prefix (only a single word can be)."""

    text: str
    prefix: bool = False


def _searchable(text: str) -> bool:
    """Whether ``text`` holds a character the index keeps (unicode61's token characters:
    letters, digits, private-use characters)."""
    return any(unicodedata.category(c)[0] in "LN" or unicodedata.category(c) == "Co"
               for c in text)


def parse_query(query: str) -> list[Term]:
    """The terms of ``query``: quoted phrases (an unclosed quote runs to the end), then words
    split at white space and control characters; at most ``MAX_TERMS``, those without a
    letter or digit dropped, repeats dropped. Never raises; an empty list searches nothing."""
    terms: list[Term] = []
    seen: set[Term] = set()
    for match in _TERM.finditer(query.translate(_CONTROLS)):
        phrase, word = match.group(1), match.group(2)
        if phrase is not None:
            term = Term(" ".join(phrase.split()))
        else:
            stem = word.rstrip("*")
            prefix = stem != word and len(stem) >= PREFIX_MIN_CHARS
            term = Term(stem.replace('"', ""), prefix)
        if not _searchable(term.text) or term in seen:
            continue
        seen.add(term)
        terms.append(term)
        if len(terms) == MAX_TERMS:
            break
    return terms


def fts5_query(terms: list[Term]) -> str:
    """An FTS5 MATCH expression requiring every term: each a string in double quotes (a
    double quote inside doubled), a prefix followed by ``*``. ``terms`` must not be empty."""
    if not terms:
        raise ValueError("no terms to search for")
    quoted = ('"' + term.text.replace('"', '""') + '"' + (" *" if term.prefix else "")
              for term in terms)
    return " AND ".join(quoted)


def tsquery_sql(terms: list[Term]) -> tuple[str, dict[str, str]]:
    """A PostgreSQL ``tsquery`` expression requiring every term, and its parameters: each
    term's text is a bound parameter (``%(t0)s``, ...), never ``tsquery`` syntax. A word is
    ``plainto_tsquery``, a phrase ``phraseto_tsquery`` (its words adjacent, in order), a prefix
    ``to_tsquery`` of the word quoted (``quote_literal``, in SQL) followed by ``:*`` (a word
    the parser splits, ``it's*``, is its parts in order, each a prefix); all joined with
    ``&&``. Every function takes the configuration as ``%(config)s``, a parameter the caller
    adds (a ``regconfig`` name). ``terms`` must not be empty."""
    if not terms:
        raise ValueError("no terms to search for")
    parts: list[str] = []
    params: dict[str, str] = {}
    for index, term in enumerate(terms):
        name = f"t{index}"
        params[name] = term.text
        if term.prefix:
            # A backslash is no word character, but quote_literal would write E'..' for it
            # (and to_tsquery would read the E as a word): a space splits the words the same.
            parts.append(f"to_tsquery(%(config)s::regconfig, "
                         f"quote_literal(replace(%({name})s, '\\', ' ')) || ':*')")
        elif " " in term.text:
            parts.append(f"phraseto_tsquery(%(config)s::regconfig, %({name})s)")
        else:
            parts.append(f"plainto_tsquery(%(config)s::regconfig, %({name})s)")
    return " && ".join(parts), params


def fragments(marked: str, start: str, end: str,
              context: int = FRAGMENT_CONTEXT) -> tuple[tuple[str, bool], ...]:
    """``marked`` (a text with each hit between ``start`` and ``end``, which occur nowhere
    else in it) as pieces ``(text, hit)``, plain runs longer than ``context`` on a side of a hit
    cut to it with an ellipsis (the text's own start and end are kept when near enough).
    A text with no marks is one plain piece, cut to ``2 * context``."""
    pieces: list[tuple[str, bool]] = []
    rest = marked
    while rest:
        before, found, after = rest.partition(start)
        if before:
            pieces.append((before, False))
        if not found:
            break
        inside, _, rest = after.partition(end)
        if inside:
            pieces.append((inside, True))
    if not any(hit for _, hit in pieces):
        return unmarked("".join(text for text, _ in pieces), context)
    cut: list[tuple[str, bool]] = []
    last = len(pieces) - 1
    for index, (text, hit) in enumerate(pieces):
        kept = text
        if not hit and len(text) > context:
            if index == 0:  # before the first hit: keep its end
                kept = ELLIPSIS + text[-context:].lstrip()
            elif index == last:  # after the last hit: keep its start
                kept = text[:context].rstrip() + ELLIPSIS
            elif len(text) > 2 * context:  # between two hits: keep both sides
                kept = text[:context].rstrip() + " " + ELLIPSIS + " " + text[-context:].lstrip()
        cut.append((kept, hit))
    return tuple(cut)


def unmarked(text: str, context: int = FRAGMENT_CONTEXT) -> tuple[tuple[str, bool], ...]:
    """``text`` as one plain piece, cut to ``2 * context`` characters with an ellipsis."""
    return ((text if len(text) <= 2 * context else text[:2 * context] + ELLIPSIS, False),)


@dataclass(frozen=True, slots=True)
class Found:
    """One message a search found, in its current state, and where its text matched:
    ``fragments`` are pieces of the text (``(text, hit)``), cut around the hits."""

    message: StoredMessage
    fragments: tuple[tuple[str, bool], ...]

    def to_obj(self) -> dict[str, object]:
        """The wire object: the message as history has it, and its fragments as
        ``[{"text": ..., "hit": bool}, ...]`` (plain data: a page builds its own nodes)."""
        return {"message": self.message.to_obj(),
                "fragments": [{"text": text, "hit": hit} for text, hit in self.fragments]}


@dataclass(frozen=True, slots=True)
class SearchPage:
    """A page of results, newest first. ``before``: give it as the next call's ``before`` for
    the older results; None when this page holds the last of them."""

    results: tuple[Found, ...]
    before: int | None


@dataclass(frozen=True, slots=True, order=True)
class Place:
    """Where a message stands in a search across rooms (``Engine.search_all``): results come
    newest first, in descending ``(ts, room, seq)``, ``room`` compared by code point (SQL's
    binary / ``"C"`` collation). Unique per message and fixed while the message lives, so a
    cursor of it pages every room at once without a hit found twice or skipped, whatever is
    appended meanwhile (a new message comes after the cursor: the next search finds it)."""

    ts: int
    room: str
    seq: int

    def token(self) -> str:
        """The cursor as the wire carries it: ``<ts>.<seq>.<room>`` (a room name holds no
        ``.``; ``gateway.search`` parses it back)."""
        return f"{self.ts}.{self.seq}.{self.room}"

    @classmethod
    def of(cls, message: StoredMessage) -> Place:
        return cls(message.ts, message.room, message.seq)


@dataclass(frozen=True, slots=True)
class RoomsPage:
    """A page of results of a search across rooms, newest first (``Place`` order); each
    ``Found.message`` names its room. ``before``: give it as the next call's ``before`` for
    the older results; None when this page holds the last of them."""

    results: tuple[Found, ...]
    before: Place | None

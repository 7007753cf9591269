"""The pure part of search (``rooms.search``): a person's query made into a safe FTS5 query,
and highlighted text cut into fragments."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rooms.search import (
    ELLIPSIS,
    MAX_TERMS,
    Term,
    fragments,
    fts5_query,
    parse_query,
    unmarked,
)


def test_words_and_phrases_become_quoted_terms_all_required() -> None:
    assert parse_query('deploy  "blue green" friday') == [
        Term("deploy"), Term("blue green"), Term("friday")]
    assert fts5_query(parse_query('deploy "blue green"')) == '"deploy" AND "blue green"'


def test_query_syntax_is_never_passed_through() -> None:
    """Operators, column filters, stray quotes and stars are words or nothing."""
    assert parse_query('"') == []
    assert parse_query("*") == []
    assert parse_query("NEAR(") == [Term("NEAR(")]
    assert fts5_query(parse_query("NEAR( a OR b")) == '"NEAR(" AND "a" AND "OR" AND "b"'
    assert fts5_query(parse_query('text:x -y ^z')) == '"text:x" AND "-y" AND "^z"'
    assert fts5_query(parse_query('say "hi"" there')) == '"say" AND "hi" AND "there"'
    assert fts5_query(parse_query('a"b')) == '"ab"'
    assert parse_query("!!! ... ()") == []
    # FTS5 ends a string at a NUL ("unterminated string": found by the property below).
    assert fts5_query(parse_query("a\x00b")) == '"a" AND "b"'


def test_a_prefix_needs_enough_characters() -> None:
    assert parse_query("depl*") == [Term("depl", prefix=True)]
    assert fts5_query([Term("depl", prefix=True)]) == '"depl" *'
    assert parse_query("de*") == [Term("de")]  # too short: the word itself
    assert parse_query('"depl*"') == [Term("depl*")]  # inside quotes a star is text


def test_terms_are_bounded_and_not_repeated() -> None:
    many = " ".join(f"w{i}" for i in range(MAX_TERMS + 5))
    assert len(parse_query(many)) == MAX_TERMS
    assert parse_query("a a A") == [Term("a"), Term("A")]


def test_no_terms_is_refused_by_the_builder() -> None:
    with pytest.raises(ValueError):
        fts5_query([])


@given(st.text(max_size=200))
def test_any_query_parses_in_fts5(query: str) -> None:
    """Whatever a person types, FTS5 accepts what it becomes (no 500 from a query)."""
    terms = parse_query(query)
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(text, "
                 "tokenize='unicode61 remove_diacritics 2')")
    conn.execute("INSERT INTO t (text) VALUES ('some text')")
    if terms:
        conn.execute("SELECT rowid FROM t WHERE t MATCH ?", (fts5_query(terms),)).fetchall()


def test_fragments_split_marks_and_cut_long_plain_runs() -> None:
    assert fragments("a [b] c", "[", "]") == (("a ", False), ("b", True), (" c", False))
    long = "x" * 100
    cut = fragments(f"{long}[hit]{long}[two]{long}", "[", "]", context=10)
    assert cut == ((ELLIPSIS + "x" * 10, False), ("hit", True),
                   ("x" * 10 + " " + ELLIPSIS + " " + "x" * 10, False), ("two", True),
                   ("x" * 10 + ELLIPSIS, False))
    assert fragments("no marks", "[", "]") == (("no marks", False),)
    assert unmarked("y" * 30, context=10) == (("y" * 20 + ELLIPSIS, False),)

"""``Engine.search``, the engine contract's part for searching, on the embedded engine (SQLite
FTS5 kept in step by triggers) and the PostgreSQL log (a ``tsvector`` column with a GIN index,
a real PostgreSQL: tests/postgres_server.py), and the Redis engine's refusal (a real
redis-server)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from rooms.engine import Engine
from rooms.engines import open_engine
from rooms.engines.embedded import EmbeddedEngine
from rooms.engines.sqlite import SEARCH_OBJECTS, SEARCH_THREADS
from rooms.errors import SearchTooBroad, SearchUnsupported
from rooms.messages import Action, ChangeDraft, Draft
from rooms.search import (
    MAX_TERMS,
    SEARCH_SWITCHED_OFF,
    SEARCH_UNSUPPORTED,
    Place,
    SearchPage,
)
from tests.redis_server import redis_server


@pytest.fixture(params=["embedded", "postgres"])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a store of each engine that searches."""
    if request.param == "embedded":
        yield f"sqlite://{tmp_path / 'db.sqlite3'}"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
async def engine(engine_url: str) -> AsyncIterator[Engine]:
    opened = await open_engine(engine_url)
    try:
        yield opened
    finally:
        await opened.close()


def on_postgres(url: str) -> bool:
    return url.startswith("postgresql://")


async def say(engine: Engine, room: str, *texts: str, user: str = "u") -> list[int]:
    done = await engine.append(room, [Draft(user, user.upper(), None, text, 1000 + i)
                                      for i, text in enumerate(texts)],
                               retention=0, dedup_window=0)
    return [a.seq for a in done]


async def seqs(engine: Engine, room: str, query: str, *, before: int | None = None,
               limit: int = 50) -> list[int]:
    page = await engine.search(room, query, before=before, limit=limit)
    return [found.message.seq for found in page.results]


async def test_finds_every_word_newest_first_with_highlights(engine: Engine) -> None:
    await say(engine, "a", "deploy on Friday", "the café is open", "Friday deploy again",
              "nothing here")
    page = await engine.search("a", "friday deploy", before=None, limit=10)
    assert [f.message.seq for f in page.results] == [3, 1]
    assert page.before is None
    assert page.results[0].message.text == "Friday deploy again"
    assert page.results[0].fragments == (("Friday", True), (" ", False), ("deploy", True),
                                         (" again", False))
    # Case and accents are folded, both ways.
    assert await seqs(engine, "a", "CAFE") == [2]
    assert await seqs(engine, "a", "café") == [2]
    # A phrase is its words in order; a prefix of three characters or more.
    assert await seqs(engine, "a", '"deploy again"') == [3]
    assert await seqs(engine, "a", '"again deploy"') == []
    assert await seqs(engine, "a", "depl*") == [3, 1]
    assert await seqs(engine, "a", "absent") == []


async def test_words_of_other_languages(engine: Engine, engine_url: str) -> None:
    """Case folded in every script that separates words, accents of Latin letters too; Greek
    accents only on PostgreSQL (``unaccent``'s rules have them; SQLite's unicode61 with
    remove_diacritics 2 not); a run of CJK characters is one token, found whole or by its
    start."""
    await say(engine, "a", "Καλημέρα σε όλους", "Привет, мир", "Ça coûte élevé",
              "日本語のテキスト", "مرحبا بالجميع")
    assert await seqs(engine, "a", "ΚΑΛΗΜΈΡΑ") == [1]
    assert await seqs(engine, "a", "καλημερα") == ([1] if on_postgres(engine_url) else [])
    assert await seqs(engine, "a", "мир") == [2]
    assert await seqs(engine, "a", "cout* eleve") == [3]
    assert await seqs(engine, "a", "日本語") == []  # not a word of its own: the run is
    assert await seqs(engine, "a", "日本語*") == [4]
    assert await seqs(engine, "a", "日本語のテキスト") == [4]
    assert await seqs(engine, "a", "مرحبا") == [5]


async def test_prefixes_holding_quotes_or_backslashes(engine: Engine) -> None:
    """A prefix is quoted as a string of the index's language, never parsed as its syntax: a
    quote, a backslash or a colon in it split words as in the text, and nothing else."""
    await say(engine, "a", "back\\slash here", "it's done", "a:b:c", "plain backslash")
    assert await seqs(engine, "a", "back\\sla*") == [1]
    assert await seqs(engine, "a", "it's*") == [2]
    assert await seqs(engine, "a", "a:b:*") == [3]
    assert await seqs(engine, "a", "bac*") == [4, 1]
    for hostile in ("'&!:*", "\\'|*", "x'):* | 'y*", "\\\\*"):
        assert await seqs(engine, "a", hostile) == []


async def test_rooms_are_searched_apart(engine: Engine) -> None:
    await say(engine, "a", "word in a")
    await say(engine, "b", "word in b", "word again in b")
    assert await seqs(engine, "a", "word") == [1]
    assert await seqs(engine, "b", "word") == [2, 1]
    assert await seqs(engine, "c", "word") == []


async def test_pages_by_seq(engine: Engine) -> None:
    await say(engine, "a", *[f"match number {i}" if i % 3 else f"other {i}" for i in range(30)])
    matching = [i + 1 for i in range(30) if i % 3][::-1]
    first = await engine.search("a", "match", before=None, limit=7)
    assert [f.message.seq for f in first.results] == matching[:7]
    assert first.before == matching[6]
    second = await engine.search("a", "match", before=first.before, limit=7)
    assert [f.message.seq for f in second.results] == matching[7:14]
    assert await seqs(engine, "a", "match", before=1) == []
    assert await seqs(engine, "a", "match", before=0) == []
    assert await seqs(engine, "a", "match", before=2**70) == matching
    assert await seqs(engine, "a", "match", limit=0) == []


async def test_an_edit_reindexes(engine: Engine) -> None:
    (seq,) = await say(engine, "a", "the old wording")
    await engine.append("a", [ChangeDraft("u", "U", None, 2000, Action.EDIT, seq,
                                          text="the new phrasing")],
                        retention=0, dedup_window=0)
    assert await seqs(engine, "a", "wording") == []
    (found,) = (await engine.search("a", "phrasing", before=None, limit=5)).results
    assert found.message.seq == seq and found.message.text == "the new phrasing"
    assert found.message.edited == 2000
    # The edit entry's own text is not indexed as a message of its own.
    assert await seqs(engine, "a", "new") == [seq]


async def test_reactions_and_changes_are_not_indexed(engine: Engine) -> None:
    (seq,) = await say(engine, "a", "plain words")
    await engine.append("a", [ChangeDraft("v", "V", None, 2000, Action.REACT, seq,
                                          emoji="tada", on=True)],
                        retention=0, dedup_window=0)
    assert await seqs(engine, "a", "tada") == []
    (found,) = (await engine.search("a", "plain", before=None, limit=5)).results
    assert [r.emoji for r in found.message.reactions] == ["tada"]  # current state


async def test_a_delete_removes_it(engine: Engine) -> None:
    first, second = await say(engine, "a", "secret plan", "secret again")
    await engine.append("a", [ChangeDraft("u", "U", None, 2000, Action.DELETE, first)],
                        retention=0, dedup_window=0)
    assert await seqs(engine, "a", "secret") == [second]
    assert await seqs(engine, "a", "plan") == []


async def test_an_erased_word_is_never_found_again(engine: Engine, engine_url: str,
                                                  tmp_path: Path) -> None:
    await say(engine, "a", "zanzibar meeting", user="gone")
    await say(engine, "b", "zanzibar too", "wombat later", user="gone")
    await engine.append("b", [ChangeDraft("gone", "GONE", None, 2000, Action.EDIT, 2,
                                          text="quokka")], retention=0, dedup_window=0)
    await say(engine, "a", "kept words", user="stays")
    assert await seqs(engine, "b", "quokka") == [2]
    await engine.erase("gone")
    for room in ("a", "b"):
        for word in ("zanzibar", "meeting", "quokka", "wombat"):
            assert await seqs(engine, room, word) == []
    assert await seqs(engine, "a", "kept") == [2]
    # Nor is it in the index's vocabulary.
    if on_postgres(engine_url):
        async with await psycopg.AsyncConnection.connect(engine_url) as pg:
            cursor = await pg.execute("SELECT word FROM ts_stat('SELECT search FROM entries')")
            assert {str(word) for (word,) in await cursor.fetchall()} == {"kept", "words"}
            # Erased texts are gone from every row, changes' rows included.
            cursor = await pg.execute("SELECT count(*) FROM entries WHERE text ~ "
                                      "'zanzibar|meeting|quokka|wombat'")
            assert await cursor.fetchone() == (0,)
        return  # the bytes of PostgreSQL's files: docs/design/log-and-bus.md, section 4
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, message_search, "
                     "row)")
        words = {term for (term,) in conn.execute("SELECT term FROM temp.vocab")}
    finally:
        conn.close()
    assert words == {"kept", "words"}
    # Nor in any page of the database: FTS5 keeps a deleted document's tokens in its older
    # segments until a merge reaches them, so the erasure merges the index.
    stored = b"".join([path.read_bytes() for path in tmp_path.glob("db.sqlite3*")])  # noqa: ASYNC240
    for raw in (b"zanzibar", b"meeting", b"quokka", b"wombat"):
        assert raw not in stored


async def test_retention_removes_pruned_messages(engine: Engine) -> None:
    for i in range(300):
        await engine.append("a", [Draft("u", "U", None, f"needle {i}", i)], retention=100,
                            dedup_window=0)
    found = await seqs(engine, "a", "needle", limit=500)
    assert found == list(range(300, 300 - len(found), -1))
    assert 100 <= len(found) < 300  # pruned in steps of 1% of retention


async def test_hostile_queries_find_nothing_and_never_fail(engine: Engine,
                                                           engine_url: str) -> None:
    # U+0000 cannot be stored in PostgreSQL (``rooms.text`` refuses it for every engine).
    control = "x\x01y" if on_postgres(engine_url) else "x\x00y"
    await say(engine, "a", 'near( "quoted" star* AND or', control)
    for query in ['"', "*", "NEAR(", "NEAR(a b)", "AND", "a OR", "-", "text:a", "^", "(",
                  '"""', "\x00", "", "   ", "a" * 10_000, "é" * 300, "🙂", "\ufdd0\ufdd1"]:
        page = await engine.search("a", query, before=None, limit=5)
        assert isinstance(page, SearchPage)
    assert await seqs(engine, "a", "NEAR(") == [1]  # as a word, not an operator
    assert await seqs(engine, "a", "AND") == [1]
    assert await seqs(engine, "a", "quoted") == [1]
    assert await seqs(engine, "a", '"') == []
    many = " ".join(f"w{i}" for i in range(MAX_TERMS * 4))
    assert await seqs(engine, "a", many) == []


async def test_marks_never_collide_with_the_text(engine: Engine) -> None:
    """Hits are marked with characters the page's texts do not hold: a text holding the
    first marker pair still comes back whole, with its hit."""
    text = "\ufdd0 tricky \ufdd1 word"
    await say(engine, "a", text)
    (found,) = (await engine.search("a", "word", before=None, limit=5)).results
    assert "".join(piece for piece, _ in found.fragments) == text
    assert [piece for piece, hit in found.fragments if hit] == ["word"]


async def test_a_database_from_before_search_is_indexed_on_open(tmp_path: Path) -> None:
    """The migration step: a database with messages but no index gets one, built from what
    is stored (current texts, no tombstones, no change entries), and keeps it up after."""
    path = tmp_path / "old.sqlite3"
    engine = await EmbeddedEngine.open(path)
    await say(engine, "a", "before the index", "deleted soon")
    await engine.append("a", [ChangeDraft("u", "U", None, 2000, Action.DELETE, 2)],
                        retention=0, dedup_window=0)
    await engine.close()
    conn = sqlite3.connect(path)
    for name in ("message_search_insert", "message_search_update", "message_search_delete"):
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DROP TABLE message_search")
    conn.execute("DROP VIEW message_search_content")
    conn.execute("DROP TABLE search_rooms")
    conn.commit()
    conn.close()
    engine = await EmbeddedEngine.open(path)
    try:
        assert await seqs(engine, "a", "index") == [1]
        assert await seqs(engine, "a", "deleted") == []
        await say(engine, "a", "after the index")
        assert await seqs(engine, "a", "index") == [4, 1]
    finally:
        await engine.close()
    conn = sqlite3.connect(path)
    try:  # the index agrees with its content
        conn.execute("INSERT INTO message_search (message_search) VALUES ('integrity-check')")
    finally:
        conn.close()


async def change(engine: Engine, room: str, action: Action, target: int,
                 text: str = "") -> None:
    (done,) = await engine.append(room, [ChangeDraft("u", "U", None, 3000, action, target,
                                                     text=text)], retention=0, dedup_window=0)
    assert done.refused is None


def search_schema(path: Path) -> list[tuple[str, str]]:
    """Every object of ``sqlite_master`` the search index makes or leaves behind (FTS5's
    shadow tables included) and every trigger."""
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name LIKE '%search%' "
            "OR type = 'trigger'").fetchall())
    finally:
        conn.close()


async def test_with_the_index_off_appends_work_search_is_refused_and_nothing_is_left(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``search_index`` off (``ROOMCHAT_SEARCH_INDEX=0``) on a database that had the index:
    dropped on open (triggers, the FTS5 table and its own tables, the view, the rooms'
    numbers), appends and changes go on, an erasure needs no index to merge, and a search is
    refused with the sentence naming the setting."""
    path = tmp_path / "db.sqlite3"
    engine = await open_engine(f"sqlite://{path}")
    await say(engine, "a", "indexed while on")
    await engine.close()
    assert len(search_schema(path)) > len(SEARCH_OBJECTS)  # (FTS5's own tables as well)
    with caplog.at_level(logging.INFO, logger="roomchat.store"):
        engine = await open_engine(f"sqlite://{path}", search_index=False)
    try:
        assert search_schema(path) == []
        assert [r.getMessage() for r in caplog.records
                if "search index" in r.getMessage()] == [
            "search index dropped (ROOMCHAT_SEARCH_INDEX is off): searches answer 501; "
            "turning it on rebuilds it at start"]
        assert await say(engine, "a", "stored while off", user="gone") == [2]
        await change(engine, "a", Action.EDIT, 1, "edited while off")
        assert [m.text for m in await engine.history("a", before=9, limit=5)] == [
            "edited while off", "stored while off"]
        assert await engine.erase("gone") == {"a": [2]}
        for query in ("stored", "", "!!!"):  # refused before the query is looked at
            with pytest.raises(SearchUnsupported) as refused:
                await engine.search("a", query, before=None, limit=5)
            assert str(refused.value) == SEARCH_SWITCHED_OFF
        assert "ROOMCHAT_SEARCH_INDEX=1" in SEARCH_SWITCHED_OFF
    finally:
        await engine.close()
    assert search_schema(path) == []
    # Opening it off again finds nothing to drop, and says nothing.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="roomchat.store"):
        engine = await open_engine(f"sqlite://{path}", search_index=False)
    await engine.close()
    assert not [r for r in caplog.records if "search index" in r.getMessage()]


async def test_off_then_on_finds_every_message_again_as_it_is_now(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Switched off, then on again: the index is rebuilt on open from the messages as they
    are now: those appended while it was off are found, edits made meanwhile by their new
    words only, and deletes made meanwhile never. Logged in one line with the time taken."""
    path = tmp_path / "db.sqlite3"
    engine = await EmbeddedEngine.open(path)
    await say(engine, "a", "alpha stays", "bravo before", "charlie doomed")  # 1-3
    await say(engine, "b", "alpha elsewhere")  # b 1
    await engine.close()
    engine = await EmbeddedEngine.open(path, search_index=False)
    await say(engine, "a", "delta while off", "echo first", "foxtrot doomed too")  # 4-6
    await change(engine, "a", Action.EDIT, 2, "bravo2 rewritten")  # 7
    await change(engine, "a", Action.EDIT, 5, "echo2 rewritten")  # 8
    await change(engine, "a", Action.DELETE, 3)  # 9
    await change(engine, "a", Action.DELETE, 6)  # 10
    await say(engine, "c", "golf in a room new while off")
    await engine.close()
    with caplog.at_level(logging.INFO, logger="roomchat.store"):
        engine = await EmbeddedEngine.open(path)
    try:
        (line,) = [r.getMessage() for r in caplog.records if "search index" in r.getMessage()]
        assert line.startswith("search index built from the stored messages of 3 rooms in ")
        assert line.endswith(" s (the database had none)")
        assert await seqs(engine, "a", "alpha") == [1]
        assert await seqs(engine, "b", "alpha") == [1]
        assert await seqs(engine, "a", "delta") == [4]
        assert await seqs(engine, "c", "golf") == [1]
        assert await seqs(engine, "a", "rewritten") == [5, 2]
        assert await seqs(engine, "a", "before") == []  # an edit's old words
        assert await seqs(engine, "a", "first") == []
        assert await seqs(engine, "a", "doomed") == []  # deleted on and off
        assert await seqs(engine, "a", "charlie") == []
        assert await seqs(engine, "a", "foxtrot") == []
        # And it is kept in step again.
        await say(engine, "a", "hotel after")  # 11
        assert await seqs(engine, "a", "after") == [11]
    finally:
        await engine.close()
    conn = sqlite3.connect(path)
    try:  # the index agrees with its content
        conn.execute("INSERT INTO message_search (message_search) VALUES ('integrity-check')")
    finally:
        conn.close()


async def test_an_index_left_in_part_is_built_again_whole(tmp_path: Path) -> None:
    """An index whose triggers are gone (dropped by hand, or by an older benchmark) is stale:
    on open it is dropped and rebuilt, so what came after is found and it stays in step."""
    path = tmp_path / "db.sqlite3"
    engine = await EmbeddedEngine.open(path)
    await say(engine, "a", "indexed words")
    await engine.close()
    conn = sqlite3.connect(path, isolation_level=None)
    for name in ("message_search_insert", "message_search_update", "message_search_delete"):
        conn.execute(f"DROP TRIGGER {name}")
    # What an append or an edit would write with the triggers gone: a row the index misses.
    conn.execute("INSERT INTO messages (room, seq, kind, user, name, text, ts) "
                 "VALUES ('a', 2, 0, 'u', 'U', 'missed words', 1)")
    conn.execute("UPDATE messages SET text = 'rewritten words' WHERE room = 'a' AND seq = 1")
    conn.close()
    engine = await EmbeddedEngine.open(path)
    try:
        assert await seqs(engine, "a", "missed") == [2]
        assert await seqs(engine, "a", "rewritten") == [1]
        assert await seqs(engine, "a", "indexed") == []
        await say(engine, "a", "later words")
        assert await seqs(engine, "a", "words") == [3, 2, 1]
    finally:
        await engine.close()
    assert {(kind, name) for kind, name in search_schema(path)} >= SEARCH_OBJECTS


async def test_redis_engine_refuses_with_the_engines_that_search(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        engine = await open_engine(url)
        try:
            with pytest.raises(SearchUnsupported) as refused:
                await engine.search("a", "word", before=None, limit=5)
            assert str(refused.value) == SEARCH_UNSUPPORTED
            assert "embedded engine (SQLite)" in SEARCH_UNSUPPORTED
        finally:
            await engine.close()


async def test_searches_do_not_take_the_readers_joins_need(tmp_path: Path) -> None:
    """A slow search (a common prefix over a big room: 100-300 ms) runs on threads of its own:
    with every reader thread busy, a search still answers, and with every search thread busy,
    history still does."""
    import threading

    engine = await EmbeddedEngine.open(tmp_path / "db.sqlite3")
    store = engine.store
    release = threading.Event()
    try:
        await say(engine, "a", "findable words")
        for pool, threads in ((store._readers, 4), (store._searchers, SEARCH_THREADS)):
            held = [pool.submit(release.wait) for _ in range(threads)]
            try:
                if pool is store._readers:
                    page = await asyncio.wait_for(
                        engine.search("a", "findable", before=None, limit=5), 10)
                    assert [f.message.seq for f in page.results] == [1]
                else:
                    found = await asyncio.wait_for(engine.history("a", before=9, limit=5), 10)
                    assert [m.seq for m in found] == [1]
            finally:
                release.set()
                for future in held:
                    future.result()
                release.clear()
    finally:
        release.set()
        await engine.close()


async def test_memory_engine_refuses_with_the_engines_that_search() -> None:
    from rooms.engines import memory

    engine = await open_engine("memory://")
    try:
        await say(engine, "a", "word")
        with pytest.raises(SearchUnsupported) as refused:
            await engine.search("a", "word", before=None, limit=5)
        assert str(refused.value) == memory.SEARCH_UNSUPPORTED
        assert "embedded engine (SQLite)" in memory.SEARCH_UNSUPPORTED
    finally:
        await engine.close()


async def test_search_all_orders_by_time_then_room_then_seq_and_pages_by_place(
        engine: Engine) -> None:
    """Ties of ``ts`` across rooms and within one are broken by room, then seq (all
    descending), and a cursor at any of them continues exactly after it."""
    for room, ts in (("b", 5000), ("b", 5000), ("a", 5000), ("c", 4000), ("a", 6000),
                     ("c", 5000)):
        await engine.append(room, [Draft("u", "U", None, "tie word", ts)], retention=0,
                            dedup_window=0)
    await engine.append("a", [Draft("u", "U", None, "other", 7000)], retention=0,
                        dedup_window=0)
    expected = [Place(6000, "a", 2), Place(5000, "c", 2), Place(5000, "b", 2),
                Place(5000, "b", 1), Place(5000, "a", 1), Place(4000, "c", 1)]
    page = await engine.search_all("tie", before=None, limit=10, most=6)
    assert ([Place.of(f.message) for f in page.results], page.before) == (expected, None)
    seen: list[Place] = []
    before: Place | None = None
    while True:
        page = await engine.search_all("word", before=before, limit=1, most=6)
        seen += [Place.of(f.message) for f in page.results]
        if page.before is None:
            break
        before = page.before
    assert seen == expected
    assert ("word", True) in page.results[0].fragments
    with pytest.raises(SearchTooBroad):
        await engine.search_all("tie", before=None, limit=10, most=5)
    with pytest.raises(SearchTooBroad):  # whatever the cursor
        await engine.search_all("tie", before=Place(4000, "c", 1), limit=10, most=5)

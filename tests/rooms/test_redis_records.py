"""rooms.engines.redis_records: what the Redis engine reads back, parsed as untrusted input
(pure). The engine's own tests, with data written into a real Redis by hand, are in
test_engine.py."""

from __future__ import annotations

import orjson
import pytest

from rooms.engine import Ban
from rooms.engines import redis_records as records
from rooms.messages import (
    Action,
    DeletedBy,
    Reaction,
    Reply,
    StoredChange,
    StoredMessage,
)

GOOD = {b"user": b"ann", b"name": b"Ann \xf0\x9f\x98\x80", b"id": b"c1", b"text": b"hi",
        b"ts": b"1700000000000"}


def test_a_message_roomchat_wrote_reads_back_exactly() -> None:
    parsed = records.message("r", b"0-7", GOOD)
    assert parsed == records.Parsed(StoredMessage("r", 7, "ann", "Ann \U0001f600", "c1", "hi",
                                                  1700000000000))
    no_id = records.message("r", b"0-8", {**GOOD, b"id": b""})
    assert no_id is not None and no_id.value.id is None and not no_id.repaired


@pytest.mark.parametrize("entry_id, fields", [
    (b"0-1", {k: v for k, v in GOOD.items() if k != b"text"}),
    (b"0-1", {k: v for k, v in GOOD.items() if k != b"user"}),
    (b"0-1", {k: v for k, v in GOOD.items() if k != b"ts"}),
    (b"0-1", {**GOOD, b"ts": b"soon"}),
    (b"0-1", {**GOOD, b"ts": b"-5"}),
    (b"0-1", {**GOOD, b"text": b"\xff\xfe"}),  # not UTF-8
    (b"0-1", {**GOOD, b"text": b"\xed\xa0\x80"}),  # an encoded lone surrogate
    (b"0-1", {**GOOD, b"user": b"a\nb"}),  # a user id no token can have
    (b"0-1", {**GOOD, b"user": b""}),
    (b"1700000000000-0", GOOD),  # an id roomchat never writes
    (b"0-x", GOOD),
    (b"0-1", [b"user", b"ann"]),
])
def test_entries_that_cannot_be_messages_are_none(entry_id: bytes, fields: object) -> None:
    assert records.message("r", entry_id, fields) is None


def test_an_unusable_name_or_id_is_mended() -> None:
    parsed = records.message("r", b"0-3", {**GOOD, b"name": b"\x1b[31m", b"id": b"\xff"})
    assert parsed is not None and parsed.repaired
    assert (parsed.value.name, parsed.value.id) == ("ann", None)
    missing = records.message("r", b"0-3", {k: v for k, v in GOOD.items() if k != b"name"})
    assert missing is not None and missing.repaired and missing.value.name == "ann"


def test_a_message_with_a_reply_and_mentions() -> None:
    parsed = records.message("r", b"0-9", {**GOOD, b"reply": b'[4,"bob","Bob","hi \xe2\x80\xa6"]',
                                          b"mentions": b'["bob","eve"]'})
    assert parsed == records.Parsed(StoredMessage(
        "r", 9, "ann", "Ann \U0001f600", "c1", "hi", 1700000000000,
        Reply(4, "bob", "Bob", "hi \u2026"), ("bob", "eve")))
    mended = records.message("r", b"0-9", {**GOOD, b"reply": b"[4]", b"mentions": b'["a\\n"]'})
    assert mended is not None and mended.repaired
    assert (mended.value.reply_to, mended.value.mentions) == (None, ())
    assert records.message("r", b"0-9", {**GOOD, b"c": b"e"}) is None  # a change's entry


CHANGE = {b"c": b"r", b"target": b"3", b"user": b"bob", b"name": b"Bob", b"id": b"",
          b"ts": b"5", b"emoji": "\U0001f44d".encode(), b"on": b"1"}


def test_changes() -> None:
    assert records.change("r", b"0-8", CHANGE) == records.Parsed(StoredChange(
        "r", 8, "bob", "Bob", None, 5, Action.REACT, 3, emoji="\U0001f44d", on=True))
    edit = {**CHANGE, b"c": b"e", b"text": b"new"}
    assert records.change("r", b"0-8", edit) == records.Parsed(StoredChange(
        "r", 8, "bob", "Bob", None, 5, Action.EDIT, 3, "new"))
    delete = {**CHANGE, b"c": b"d", b"by": b"author"}
    assert records.change("r", b"0-8", delete) == records.Parsed(StoredChange(
        "r", 8, "bob", "Bob", None, 5, Action.DELETE, 3, by=DeletedBy.AUTHOR))
    odd = records.change("r", b"0-8", {**delete, b"by": b"who"})
    assert odd is not None and odd.repaired and odd.value.by is DeletedBy.MODERATOR
    for fields in ({**CHANGE, b"c": b"x"}, {**CHANGE, b"target": b"0"},
                   {**CHANGE, b"emoji": b""}, {k: v for k, v in CHANGE.items() if k != b"ts"}):
        assert records.change("r", b"0-8", fields) is None
    assert isinstance(records.entry("r", b"0-8", CHANGE).value, StoredChange)  # type: ignore[union-attr]
    assert isinstance(records.entry("r", b"0-8", GOOD).value, StoredMessage)  # type: ignore[union-attr]


def test_states() -> None:
    state = (b'{"user":"ann","name":"Ann","id":"","text":"edited","ts":5,"edited":9,'
             b'"reactions":[["\xf0\x9f\x91\x8d",["bob"]]],"c":12,"e":[12],"a":[14]}')
    assert records.state("r", b"4", state) == records.Parsed(StoredMessage(
        "r", 4, "ann", "Ann", None, "edited", 5, edited=9,
        reactions=(Reaction("\U0001f44d", ("bob",)),)))
    tomb = b'{"user":"ann","name":"Ann","id":"c1","ts":5,"text":"","d":1}'
    assert records.state("r", 4, tomb) == records.Parsed(StoredMessage(
        "r", 4, "ann", "Ann", "c1", "", 5))
    bad_reactions = records.state("r", 4, state.replace(b'["bob"]', b"[]"))
    assert bad_reactions is not None and bad_reactions.repaired
    assert bad_reactions.value.reactions == ()
    for raw_seq, value in [(b"x", state), (b"4", b"{no"), (b"4", b'{"user":"ann","ts":5}'),
                           (b"4", b'{"user":"","text":"t","ts":5}'), (b"4", b"[]"),
                           (b"4", b'{"user":"ann","text":"t","ts":-5}')]:
        assert records.state("r", raw_seq, value) is None


def test_a_ban_is_a_ban_whatever_its_value_says() -> None:
    assert records.ban("eve", b"\0spam") == records.Parsed(Ban("eve", None, "spam"))
    assert records.ban("eve", b"1796641154.5\0") == records.Parsed(Ban("eve", 1796641154.5, ""))
    for value in (b"garbage", b"soon\0spam", b"nan\0spam", b"inf\0spam", b"1e999\0spam",
                  b"\0\xff", b"\0a\x07b"):
        parsed = records.ban("eve", value)
        assert parsed.repaired and parsed.value.user == "eve", value
        assert parsed.value.until is None  # read as "until lifted": Redis ends the key anyway
    assert records.ban("eve", b"soon\0spam").value.reason == "spam"
    assert records.ban("eve", b"\0\xff").value.reason == ""


def test_presence_entries() -> None:
    assert records.presence(b"node\0ann", b"2000\0Ann", 1000) == ("ann", "Ann")
    assert records.presence(b"node\0ann", b"999\0Ann", 1000) is None  # expired
    for field, value in [(b"nonul", b"2000\0Ann"), (b"node\0ann", b"2000"),
                         (b"node\0ann", b"later\0Ann"), (b"node\0\xff", b"2000\0Ann")]:
        assert records.presence(field, value, 1000) is None


def test_counts() -> None:
    assert [records.count(x) for x in (b"0", b"42", 42, b"", b"4.2", b"-1", b"1e3", b"\xd9\xa3",
                                       "42", True, 10**15)] == [
        0, 42, 42, None, None, None, None, None, None, None, None]


def test_a_messages_files_are_read_as_untrusted_input() -> None:
    good = orjson.dumps([{"id": "A" * 22, "name": "a.png", "size": 3, "type": "image/png",
                          "width": 2, "height": 1, "thumb": True}])
    fields = {b"user": b"u", b"name": b"U", b"text": b"", b"ts": b"1", b"files": good}
    parsed = records.message("r", b"0-5", fields)
    assert parsed is not None and not parsed.repaired
    assert [f.name for f in parsed.value.files] == ["a.png"] and not parsed.value.deleted
    for bad in (b"junk", orjson.dumps([{"id": "../x", "name": "a", "size": 1, "type": "t"}]),
                orjson.dumps([{"id": "A" * 22, "name": "a\x00", "size": 1, "type": "t"}]),
                orjson.dumps([{"id": "A" * 22, "name": "a", "size": -1, "type": "t"}]),
                orjson.dumps([{"id": "A" * 22, "name": "a", "size": 1, "type": "t",
                               "width": 3}])):
        # Unusable files: with no text either there is no message left to show.
        assert records.message("r", b"0-5", {**fields, b"files": bad}) is None
        mended = records.message("r", b"0-5", {**fields, b"text": b"hi", b"files": bad})
        assert mended is not None and mended.repaired and mended.value.files == ()
    state = records.state("r", b"5", orjson.dumps({"user": "u", "name": "U", "id": "", "ts": 1,
                                                  "text": "", "files": orjson.loads(good)}))
    assert state is not None and len(state.value.files) == 1

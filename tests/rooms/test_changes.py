"""rooms.changes: the log's rules for changes and replies, and a client's fold (pure). The
engines apply these rules (the embedded one calls them; Redis's log.lua mirrors them): the
engine contract suite, tests/rooms/test_engine.py, checks both against each other."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rooms.changes import Outcome, apply, excerpt, fold, reply, tombstone
from rooms.messages import (
    Action,
    ChangeDraft,
    DeletedBy,
    LogRules,
    Reaction,
    Refusal,
    Reply,
    StoredChange,
    StoredMessage,
)

RULES = LogRules(edit_window=60, max_reactions=2, reply_excerpt_chars=6)
MESSAGE = StoredMessage("r", 5, "ann", "Ann", "c", "hello world", 1_000_000,
                        Reply(2, "bob", "Bob", "hi"), ("bob",))
THUMB, PARTY, FIRE = "\U0001f44d", "\U0001f389", "\U0001f525"


def change(user: str, action: Action, **kw: object) -> ChangeDraft:
    return ChangeDraft(user, user.title(), None, kw.pop("ts", 1_000_500),  # type: ignore[arg-type]
                       action, 5, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "chars", "cut"), [
    ("hello", 5, "hello"), ("hello!", 5, "hell\u2026"), ("é" * 7, 3, "éé\u2026"),
    ("\U0001f600" * 4, 2, "\U0001f600\u2026"), ("ab", 1, "\u2026"),
])
def test_an_excerpt_is_at_most_its_length_with_the_ellipsis(text: str, chars: int,
                                                           cut: str) -> None:
    assert excerpt(text, chars) == cut and len(excerpt(text, chars)) <= chars


def test_a_reply_names_the_answered_message_or_refuses() -> None:
    assert reply(MESSAGE, RULES) == Reply(5, "ann", "Ann", "hello\u2026")
    assert reply(None, RULES) is Refusal.NOT_FOUND
    assert reply(tombstone(MESSAGE), RULES) is Refusal.ALREADY_DELETED


def test_edits_are_the_authors_within_the_window() -> None:
    assert apply(MESSAGE, change("ann", Action.EDIT, text="new"), RULES) == Outcome(
        message=replace(MESSAGE, text="new", edited=1_000_500))
    assert apply(MESSAGE, change("bob", Action.EDIT, text="x", moderator=True),
                 RULES).refused is Refusal.FORBIDDEN  # not even a moderator
    late = change("ann", Action.EDIT, text="x", ts=1_000_000 + 60_001)
    assert apply(MESSAGE, late, RULES).refused is Refusal.EDIT_WINDOW_PASSED
    assert apply(MESSAGE, late, replace(RULES, edit_window=0)).refused is None  # forever
    assert apply(MESSAGE, replace(late, ts=1_060_000), RULES).refused is None  # the edge
    assert apply(tombstone(MESSAGE), change("ann", Action.EDIT, text="x"),
                 RULES).refused is Refusal.ALREADY_DELETED
    assert apply(None, change("ann", Action.EDIT, text="x"), RULES).refused is Refusal.NOT_FOUND


def test_deletes_are_the_authors_or_a_moderators() -> None:
    assert apply(MESSAGE, change("ann", Action.DELETE, moderator=True), RULES) == Outcome(
        message=tombstone(MESSAGE), by=DeletedBy.AUTHOR)
    assert apply(MESSAGE, change("mod", Action.DELETE, moderator=True), RULES).by is \
        DeletedBy.MODERATOR
    assert apply(MESSAGE, change("eve", Action.DELETE), RULES).refused is Refusal.FORBIDDEN
    assert apply(tombstone(MESSAGE), change("ann", Action.DELETE),
                 RULES).refused is Refusal.ALREADY_DELETED
    assert tombstone(MESSAGE) == StoredMessage("r", 5, "ann", "Ann", "c", "", 1_000_000)


def test_reactions_toggle_one_user_and_are_bounded() -> None:
    on = apply(MESSAGE, change("bob", Action.REACT, emoji=THUMB, on=True), RULES).message
    assert on is not None and on.reactions == (Reaction(THUMB, ("bob",)),)
    assert apply(on, change("bob", Action.REACT, emoji=THUMB, on=True), RULES).noop
    assert apply(on, change("eve", Action.REACT, emoji=THUMB, on=False), RULES).noop
    both = apply(on, change("ann", Action.REACT, emoji=THUMB, on=True), RULES).message
    assert both is not None and both.reactions == (Reaction(THUMB, ("bob", "ann")),)
    two = apply(both, change("eve", Action.REACT, emoji=PARTY, on=True), RULES).message
    assert two is not None
    assert apply(two, change("eve", Action.REACT, emoji=FIRE, on=True),
                 RULES).refused is Refusal.TOO_MANY_REACTIONS
    # At the limit, adding to an emoji already there is fine; taking the last one away too.
    assert apply(two, change("eve", Action.REACT, emoji=THUMB, on=True), RULES).message
    gone = apply(two, change("eve", Action.REACT, emoji=PARTY, on=False), RULES).message
    assert gone is not None and gone.reactions == (Reaction(THUMB, ("bob", "ann")),)
    # A limit lowered below what a message has: it keeps them, and takes no new emoji.
    assert apply(two, change("eve", Action.REACT, emoji=FIRE, on=True),
                 replace(RULES, max_reactions=1)).refused is Refusal.TOO_MANY_REACTIONS
    assert apply(tombstone(two), change("bob", Action.REACT, emoji=THUMB, on=False),
                 RULES).refused is Refusal.ALREADY_DELETED


def test_folding_is_idempotent_and_a_delete_is_final() -> None:
    edit = StoredChange("r", 6, "ann", "Ann", None, 7, Action.EDIT, 5, "edited")
    react = StoredChange("r", 7, "bob", "Bob", None, 8, Action.REACT, 5, emoji=THUMB, on=True)
    delete = StoredChange("r", 8, "ann", "Ann", None, 9, Action.DELETE, 5, by=DeletedBy.AUTHOR)
    state = MESSAGE
    for entry in (edit, react):
        state = fold(state, entry)
        assert fold(state, entry) == state
    assert (state.text, state.edited, state.reactions) == (
        "edited", 7, (Reaction(THUMB, ("bob",)),))
    gone = fold(state, delete)
    assert gone == tombstone(MESSAGE)
    assert fold(fold(gone, edit), react) == gone  # older changes replayed after: no text back
    other = replace(edit, target=9)
    assert fold(MESSAGE, other) == MESSAGE  # another message's change
    emptied = replace(edit, text="")  # an edit whose text left with its message's delete
    assert fold(MESSAGE, emptied) == MESSAGE

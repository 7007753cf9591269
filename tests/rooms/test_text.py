"""rooms.text: the one validation every entering text goes through (pure)."""

from __future__ import annotations

import pytest

from rooms.text import TextProblem, has_lone_surrogate, message_text, unsafe_text


@pytest.mark.parametrize("text", ["\ud800", "a\udfff", "\ud83d x", "x\udc00y"])
def test_lone_surrogates_are_refused_everywhere(text: str) -> None:
    assert has_lone_surrogate(text)
    assert unsafe_text(text) == "a lone surrogate"
    problem = message_text(text, 100)
    assert isinstance(problem, TextProblem) and problem.code == "invalid_message"


def test_message_text_trims_and_checks_length_at_the_edge() -> None:
    assert message_text("  hi \U0001f600 ", 4) == "hi \U0001f600"
    assert message_text("x" * 5, 5) == "x" * 5
    assert message_text("x" * 6, 5) == TextProblem("text_too_long",
                                                   "text is longer than 5 characters")
    assert message_text(" \n ", 5) == TextProblem("empty_text", "text is empty")
    assert message_text(5, 5) == TextProblem("invalid_message", "text must be a string")
    # Control characters are text in a message (rendered with textContent), not in a name.
    assert message_text("line\nbreak\ttab \x01", 100) == "line\nbreak\ttab \x01"


def test_u0000_is_refused_in_messages_for_every_engine() -> None:
    """PostgreSQL's ``text`` cannot hold U+0000: refused here, the one door, for all engines."""
    for text in ["a\x00b", "\x00", " \x00 "]:
        assert message_text(text, 100) == TextProblem("invalid_message",
                                                      "text must not contain U+0000")
    assert unsafe_text("a\x00b") == "a control character"


def test_names_refuse_control_characters_and_keep_joiners() -> None:
    assert unsafe_text("a\nb") == "a control character"
    assert unsafe_text("\x7f") == "a control character"
    assert unsafe_text("\u0085") == "a control character"
    assert unsafe_text("Zoë \U0001f469\u200d\U0001f4bb \u202e") is None
    assert unsafe_text("plain name") is None

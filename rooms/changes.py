"""What a change does to a message: the log's rules, and folding. Pure; no I/O.

The embedded engine applies ``apply`` inside the transaction that appends the change (the Redis
engine's append.lua follows the same rules, in Lua, atomically with its append), so a change
is checked against the target's current state as every earlier entry left it, whichever
process sent it. ``fold`` is what a client does with a change entry it receives: idempotent,
so a message received in its current state and then a change already folded into it ends the
same (docs/protocol.md, "Changes").
"""

from __future__ import annotations

from dataclasses import dataclass

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

ELLIPSIS = "\u2026"


def excerpt(text: str, chars: int) -> str:
    """``text`` cut to at most ``chars`` characters (code points), the last one an ellipsis
    when it was cut. (append.lua cuts the same way, counting UTF-8 lead bytes.)"""
    if len(text) <= chars:
        return text
    return text[:chars - 1] + ELLIPSIS


def reply(target: StoredMessage | None, rules: LogRules) -> Reply | Refusal:
    """The ``reply_to`` of a message answering ``target`` (its current state; None: not a
    message stored in the room), or why it cannot be answered."""
    if target is None:
        return Refusal.NOT_FOUND
    if target.deleted:
        return Refusal.ALREADY_DELETED
    return Reply(target.seq, target.user, target.name,
                 excerpt(target.text, rules.reply_excerpt_chars))


def tombstone(message: StoredMessage) -> StoredMessage:
    """``message`` deleted: seq, user, name, id and ts kept, everything else gone."""
    return StoredMessage(message.room, message.seq, message.user, message.name, message.id,
                         "", message.ts)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``apply`` decided: refused (``refused``), nothing to do (``noop``), or stored: the
    target's new current state (``message``) and, for a delete, who did it (``by``)."""

    refused: Refusal | None = None
    noop: bool = False
    message: StoredMessage | None = None
    by: DeletedBy | None = None


def apply(target: StoredMessage | None, change: ChangeDraft, rules: LogRules) -> Outcome:
    """Check ``change`` against ``target`` (the current state of the message it names; None
    when that is not a message stored in the room) and say what storing it makes of it.

    - edit: the author only (``forbidden``), not deleted (``already_deleted``), within
      ``rules.edit_window`` seconds of the message's ``ts`` (0: forever;
      ``edit_window_passed``). The same text again is a new edit all the same.
    - delete: not deleted (``already_deleted``); by the author, or by a moderator
      (``change.moderator``; ``forbidden`` otherwise). The author's own delete is the
      author's even when they moderate the room.
    - react: not deleted; putting an emoji the user has, or taking back one they have not,
      is a ``noop``; a new emoji beyond ``rules.max_reactions`` is ``too_many_reactions``.
    """
    if target is None:
        return Outcome(Refusal.NOT_FOUND)
    if change.action is Action.EDIT:
        if change.user != target.user:
            return Outcome(Refusal.FORBIDDEN)
        if target.deleted:
            return Outcome(Refusal.ALREADY_DELETED)
        if rules.edit_window and change.ts - target.ts > rules.edit_window * 1000:
            return Outcome(Refusal.EDIT_WINDOW_PASSED)
        return Outcome(message=_edited(target, change.text, change.ts))
    if target.deleted:
        return Outcome(Refusal.ALREADY_DELETED)
    if change.action is Action.DELETE:
        if change.user == target.user:
            by = DeletedBy.AUTHOR
        elif change.moderator:
            by = DeletedBy.MODERATOR
        else:
            return Outcome(Refusal.FORBIDDEN)
        return Outcome(message=tombstone(target), by=by)
    reactions = _react(target.reactions, change.user, change.emoji, change.on)
    if reactions is None:
        return Outcome(noop=True)
    if len(reactions) > max(rules.max_reactions, len(target.reactions)):
        return Outcome(Refusal.TOO_MANY_REACTIONS)
    return Outcome(message=_reacted(target, reactions))


def _react(reactions: tuple[Reaction, ...], user: str, emoji: str,
           on: bool) -> tuple[Reaction, ...] | None:
    """``reactions`` with ``user``'s ``emoji`` put (``on``) or taken back; None when that
    changes nothing."""
    for index, reaction in enumerate(reactions):
        if reaction.emoji != emoji:
            continue
        if (user in reaction.users) == on:
            return None
        users = (*reaction.users, user) if on else tuple(u for u in reaction.users if u != user)
        rest = reactions[index + 1:]
        if users:
            return (*reactions[:index], Reaction(emoji, users), *rest)
        return (*reactions[:index], *rest)
    if not on:
        return None
    return (*reactions, Reaction(emoji, (user,)))


def fold(message: StoredMessage, change: StoredChange) -> StoredMessage:
    """``message`` with ``change`` applied as a client applies it (no rule is checked: the
    log did). Idempotent, and a no-op on a tombstone: a delete is final, so replaying older
    changes after a message received in its current state never brings a text back."""
    if message.deleted or change.target != message.seq:
        return message
    if change.action is Action.DELETE:
        return tombstone(message)
    if change.action is Action.EDIT:
        return _edited(message, change.text, change.ts) if change.text else message
    reactions = _react(message.reactions, change.user, change.emoji, change.on)
    return message if reactions is None else _reacted(message, reactions)


# ``dataclasses.replace`` would do, at five times the cost (it looks the fields up each call):
# an append applies one of these per change.

def _edited(m: StoredMessage, text: str, ts: int) -> StoredMessage:
    return StoredMessage(m.room, m.seq, m.user, m.name, m.id, text, m.ts, m.reply_to,
                         m.mentions, ts, m.reactions, m.files)


def _reacted(m: StoredMessage, reactions: tuple[Reaction, ...]) -> StoredMessage:
    return StoredMessage(m.room, m.seq, m.user, m.name, m.id, m.text, m.ts, m.reply_to,
                         m.mentions, m.edited, reactions, m.files)

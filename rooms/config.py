"""Every limit and timeout a room enforces, in one frozen dataclass.

Each field's ``metadata["help"]`` is the text of the settings table in the README; the gateway
reads ``ROOMCHAT_<FIELD NAME>`` environment variables for each field (see ``gateway.config``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TypeVar

from rooms.messages import LogRules

_T = TypeVar("_T")

MAX_REACTIONS = 1000
"""Highest ``max_reactions``: a message's current state holds them all, and every page that
shows it carries them."""
MAX_MENTIONS = 1000
"""Highest ``max_mentions``: each is a user id of up to 64 characters in the stored message."""
MAX_FILES_PER_MESSAGE = 100
"""Highest ``max_files_per_message``: each file's metadata (~150 bytes) is in the stored
message and in every page that shows it."""


def _setting(default: _T, help: str) -> _T:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """Limits and timeouts of every room. Times are seconds; sizes are counts.

    A plain frozen dataclass (no settings library) so ``rooms`` depends on nothing; the gateway
    loads it from the environment and names the variable in every error it raises."""

    rate_burst: int = _setting(10, "Per-connection token bucket size (messages).")
    rate_per_sec: float = _setting(2.0, "Per-connection refill rate (messages/second).")
    pong_cost: float = _setting(
        0.1, "Tokens of the per-connection bucket a `pong` costs (every other frame costs 1).")
    rate_abuse_strikes: int = _setting(
        20, "Rate-limited messages in a row (none accepted between) that close with 4008."
    )
    max_text_chars: int = _setting(2000, "Longest message text after trimming (characters).")
    max_id_chars: int = _setting(64, "Longest client message id (characters).")
    max_invalid_frames: int = _setting(
        5, "Invalid frames on one connection that close it with 1008."
    )
    history_on_join: int = _setting(50, "Messages replayed on a join without `after`.")
    history_page: int = _setting(500, "Messages read from storage per replay page.")
    history_retention: int = _setting(
        100_000, "Log entries (messages, and edits, deletes and reactions) kept per room; "
                 "older ones are pruned, and with a message its changes (0 keeps all)."
    )
    dedup_window: int = _setting(
        10_000, "Latest log entries per room (messages and changes) whose (user, id) are "
                "deduplicated, across restarts."
    )
    edit_window: float = _setting(
        0.0, "Seconds after a message was sent during which its author may edit it (0: "
             "forever). Deleting is allowed at any time.")
    max_reactions: int = _setting(
        20, "Distinct emoji one message may carry; a reaction with another gets "
            "`too_many_reactions`.")
    max_mentions: int = _setting(
        20, "Most users one message may mention (`mentions`).")
    max_files_per_message: int = _setting(
        10, "Most files one message may carry (`files`); more get `too_many_files`.")
    reply_excerpt_chars: int = _setting(
        100, "Longest excerpt of the answered message a reply carries (characters).")
    unread_scan: int = _setting(
        1000, "Most recent messages a join looks at to count a member's unread messages and "
              "mentions (`welcome.unread`); more are reported as `unread_capped`.")
    presence_delay: float = _setting(
        0.05, "Seconds a member's `presence` join may wait to go out with other joins: a "
              "burst of joins (a page of members reconnecting) costs each member one frame "
              "instead of one per join. Anything else the room sends goes out at once, with "
              "what waited before it. 0: each join's at once.")
    ping_interval: float = _setting(25.0, "Seconds between heartbeat pings.")
    ping_timeout: float = _setting(
        10.0, "Extra seconds of silence after a ping interval before closing with 4010."
    )
    outbox_limit: int = _setting(
        1024, "Messages queued for one connection before it is closed with 4009 (slow consumer)."
    )
    inbox_limit: int = _setting(
        4096, "Client frames queued for one room before senders get `busy` errors."
    )
    max_batch: int = _setting(
        512, "Most inbox frames a room handles (and stores in one commit) per wake-up."
    )
    batch_delay: float = _setting(
        0.005, "Longest wait, in seconds, of a busy room gathering more into one batch (one "
               "commit, one frame per member); 0 never waits. See batch_cost_factor.")
    batch_cost_factor: float = _setting(
        2.0, "A busy room (a message less than its wait after the previous one) waits this "
             "many times what one broadcast to its members recently cost, up to batch_delay "
             "(on Redis: batch_delay); a quiet room sends at once (rooms/batching.py). Lower "
             "trades CPU for latency: smaller batches, sent sooner.")
    direct_frames: bool = _setting(
        True, "A quiet room handles a member's frame where it arrives and stores its message "
              "with a callback, instead of waking the room's task (rooms/actor.py); busy rooms "
              "batch in their task either way. 0: every frame goes through the task.")
    max_frame_messages: int = _setting(
        256, "Most protocol objects coalesced into one WebSocket frame (a batch is not split)."
    )
    max_room_connections: int = _setting(
        2000, "Connections one room accepts; more get HTTP 503 room_full."
    )
    room_idle_ttl: float = _setting(
        30.0, "Seconds a room with no members stays loaded before its actor stops."
    )
    send_timeout: float = _setting(
        10.0, "Seconds one frame may take to send before the client is closed with 4009."
    )
    close_timeout: float = _setting(
        2.0, "Seconds to wait for a close frame to be written before giving up on it."
    )
    tick_interval: float = _setting(
        1.0, "Seconds between a room's housekeeping ticks (heartbeats, token expiry, idle stop, "
             "stalled sends); a room whose sockets are all idle ticks only when one is due."
    )
    sync_interval: float = _setting(
        5.0, "Shared engine (Redis): seconds between a room's syncs with it (presence refresh, "
             "and a check that nothing published was missed).")
    gap_repair_delay: float = _setting(
        0.02, "Shared engine: seconds a seq gap may wait for the pub/sub message in flight "
              "before it is read from the log.")
    presence_ttl: float = _setting(
        20.0, "Shared engine: seconds a process's presence entries live unless refreshed; a "
              "killed process's members leave within about this plus `sync_interval`.")
    store_outage_timeout: float = _setting(
        15.0, "Seconds a room keeps its sockets open while storage is unreachable (clients get "
              "`unavailable` errors) before closing them with 1013.")
    store_timeout: float = _setting(
        2.0, "Seconds one storage call may take before it counts as failed: a room's append "
             "or load (then members get `unavailable`, and the batch is retried), and on Redis "
             "every command (then handshakes get 503 `unavailable`). Bounds how long a hung "
             "Redis (stopped, partitioned) stalls a room; keep it well below "
             "store_outage_timeout.")

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                # NaN passes every comparison below; infinity makes no timer fire.
                raise ValueError(f"{item.name} must be a finite number")
        for name in ("rate_burst", "max_text_chars", "max_id_chars", "max_invalid_frames",
                     "history_page", "outbox_limit", "inbox_limit", "max_batch",
                     "max_frame_messages", "max_room_connections", "rate_abuse_strikes",
                     "max_reactions", "reply_excerpt_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("rate_per_sec", "ping_interval", "ping_timeout", "tick_interval",
                     "send_timeout", "close_timeout", "sync_interval", "presence_ttl",
                     "store_outage_timeout", "store_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 < self.pong_cost <= 1:
            raise ValueError("pong_cost must be in (0, 1]")
        for name in ("gap_repair_delay", "history_on_join", "history_retention", "dedup_window",
                     "room_idle_ttl", "batch_delay", "batch_cost_factor", "edit_window",
                     "max_mentions", "unread_scan", "max_files_per_message",
                     "presence_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.presence_ttl <= self.sync_interval:
            raise ValueError("presence_ttl must be longer than sync_interval")
        if self.max_reactions > MAX_REACTIONS:
            raise ValueError(f"max_reactions must be at most {MAX_REACTIONS}")
        if self.max_mentions > MAX_MENTIONS:
            raise ValueError(f"max_mentions must be at most {MAX_MENTIONS}")
        if self.max_files_per_message > MAX_FILES_PER_MESSAGE:
            raise ValueError(f"max_files_per_message must be at most {MAX_FILES_PER_MESSAGE}")

    @property
    def rules(self) -> LogRules:
        """The limits the log checks on changes and replies (``rooms.changes``)."""
        return LogRules(self.edit_window, self.max_reactions, self.reply_excerpt_chars)

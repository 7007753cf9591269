"""Everything about a chat room: its state, its actor, its storage.

Knows nothing of HTTP or Quart."""

"""The HTTP and WebSocket edge of roomchat: auth, upgrades, pages, health, metrics, CLI."""

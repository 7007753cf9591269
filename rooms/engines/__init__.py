"""The engines behind ``rooms.engine.Engine``: embedded (SQLite) and Redis."""

"""The fault suite (issue 13): real ``roomchat serve`` processes and real clients under kill -9,
SIGTERM, stalled and slow readers, Redis restarts, fuzzed frames and claims, and a randomized soak.

``make test`` runs every scenario in its short form; ``make chaos`` sets ``ROOMCHAT_CHAOS_FULL=1``
(longer runs, more clients, more examples, the 5-minute soak). See docs/reliability.md.
"""

"""Shield: an asyncio reverse proxy that shields a web service from abuse.

The folders follow a request: ``http`` (the wire) -> ``ops.observer`` -> ``enforce.gatekeeper``,
which asks ``decide`` (pure: it never awaits and imports nothing of Shield's beyond ``decide``
and ``config``) and acts on the answer with ``enforce`` (Shield's own answers, bans, challenges)
or ``upstream`` (the pool and forwarding). ``state`` keeps throttle and records in memory or
Redis; ``ops`` is what operators see; ``app`` assembles and runs it all. The README's Layout
section has the map; ``tests/test_layering.py`` keeps the pure part pure.
"""

__version__ = "0.1.0"

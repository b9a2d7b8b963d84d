"""Shield: an asyncio reverse proxy that shields a web service from abuse.

The package keeps decisions apart from I/O. ``shield.config`` and ``shield.headers`` are pure:
they never await and never import aiohttp, redis or prometheus_client, so they can be tested
with plain values and reused by ``shield check`` and ``shield explain``. Everything that touches
sockets, files or metrics lives in ``upstream``, ``proxy``, ``server``, ``admin`` and ``cli``.
``tests/test_layering.py`` keeps that true.
"""

__version__ = "0.1.0"

"""The decision core, pure: path normalization, compiled rules, identity, the throttle maths.

Nothing in this package awaits, does I/O, or imports aiohttp, redis or prometheus_client; it
works on plain values (``RequestView``) so ``shield explain`` and the tests run it as is.
``tests/test_layering.py`` keeps that true.
"""

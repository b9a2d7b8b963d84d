"""The decision core, pure: paths, client address, identity, compiled rules, the throttle maths.

Nothing in this package awaits, does I/O, or imports anything of Shield's beyond ``decide`` and
``config``; it works on plain values (``RequestView``), so ``shield explain`` and the tests run
it as is. ``tests/test_layering.py`` keeps that true.
"""

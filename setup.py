"""Shield's build: the modules every request crosses compiled ahead of time with mypyc.

``pip install -e .`` (and so both README commands) compiles them when it can; with
``SHIELD_PURE_PYTHON=1`` set at install, or when a module does not compile (no C compiler, no
Python headers), that module stays plain Python and Shield runs the same code uncompiled. At run
time ``SHIELD_PURE_PYTHON=1`` ignores compiled modules that are there (``shield/__init__.py``),
so one checkout tests both builds. Each module here earns its place in the instruction counts
of ``tests/bench/instructions.py`` (tests/bench/README.md has the figures).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

# The request's path, in the order it crosses them (shield/__init__.py has the map).
COMPILED = [
    "shield/http/connection.py",
    "shield/http/flow.py",
    "shield/http/body_buffer.py",
    "shield/http/answer.py",
    "shield/http/headers.py",
    "shield/http/response.py",
    "shield/http/request_id.py",
    "shield/ops/observer.py",
    "shield/ops/top.py",
    "shield/enforce/gatekeeper.py",
    "shield/enforce/answers.py",
    "shield/decide/client_address.py",
    "shield/decide/paths.py",
    "shield/decide/policy.py",
    "shield/decide/network_facts.py",
    "shield/decide/decision.py",
    "shield/decide/gcra.py",
    "shield/state/memory_throttle.py",
    "shield/state/overlimit.py",
    "shield/state/breaker.py",
    "shield/state/redis_throttle.py",
    "shield/upstream/pool.py",
    "shield/upstream/forward.py",
]


def compiled_modules() -> list[object]:
    if os.environ.get("SHIELD_PURE_PYTHON") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("shield: mypyc is not installed; building the pure-Python package", file=sys.stderr)
        return []
    extensions = mypycify(COMPILED, opt_level="3", debug_level="1", group_name="shield")
    for extension in extensions:
        extension.optional = True  # a module that does not compile stays Python
    return list(extensions)


setup(ext_modules=compiled_modules())

"""Shield: an asyncio reverse proxy that shields a web service from abuse.

The folders follow a request: ``http`` (the wire) -> ``ops.observer`` -> ``enforce.gatekeeper``,
which asks ``decide`` (pure: it never awaits and imports nothing of Shield's beyond ``decide``
and ``config``) and acts on the answer with ``enforce`` (Shield's own answers, bans, challenges)
or ``upstream`` (the pool and forwarding). ``state`` keeps throttle and records in memory or
Redis; ``ops`` is what operators see; ``app`` assembles and runs it all. The README's Layout
section has the map; ``tests/test_layering.py`` keeps the pure part pure.

The modules on the request's path are compiled with mypyc when installed (``setup.py``);
``SHIELD_PURE_PYTHON=1`` in the environment runs the same code from its ``.py`` files instead,
and so does a checkout whose sources changed after they were compiled (with a warning): an old
build never runs in place of the code beside it.
"""

from __future__ import annotations

import os
import sys
import warnings
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, ModuleSpec, SourceFileLoader
from typing import Any

__version__ = "0.1.0"


class _SourceFirst:
    """Finds Shield's modules from their source files, past any compiled ones beside them."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if not name.startswith("shield.") or not path:
            return None
        for directory in path:
            spec = FileFinder(directory, (SourceFileLoader, SOURCE_SUFFIXES)).find_spec(name)
            if spec is not None:
                return spec
        return None


def _stale_build() -> str | None:
    """A compiled module whose source changed after the build, or None. The code is in one
    library beside the package (``shield__mypyc``), the modules' own ``.so`` files being thin
    doors to it that a rebuild leaves alone; 2 s of slack for an install writing files apart."""
    here = os.path.dirname(__file__)
    root = os.path.dirname(here)
    libraries = [name for name in os.listdir(root) if name.startswith("shield__mypyc.")]
    if not libraries:
        return None
    built = max(os.path.getmtime(os.path.join(root, name)) for name in libraries)
    for folder, _, files in os.walk(here):
        for name in files:
            if name.endswith(".so"):
                source = os.path.join(folder, name.split(".", 1)[0] + ".py")
                if os.path.exists(source) and os.path.getmtime(source) > built + 2:
                    return os.path.relpath(source, root)
    return None


def _prefer_sources() -> None:
    """Put ``_SourceFirst`` just before the standard path finder: import hooks installed ahead
    of it (atheris' instrumentation, for the fuzzers) still see every module first."""
    from importlib.machinery import PathFinder

    index = next((i for i, finder in enumerate(sys.meta_path) if finder is PathFinder), 0)
    sys.meta_path.insert(index, _SourceFirst())


if os.environ.get("SHIELD_PURE_PYTHON") == "1":
    _prefer_sources()
elif (_changed := _stale_build()) is not None:
    warnings.warn(
        f"{_changed} changed after the hot path was compiled: running the pure-Python code "
        "(pip install -e . compiles it again)",
        stacklevel=1,
    )
    _prefer_sources()


def build() -> str:
    """How this process runs the hot path: ``"compiled"`` (mypyc) or ``"pure Python"``."""
    from shield.http import connection

    return "compiled" if not connection.__file__ or not connection.__file__.endswith(".py") else "pure Python"

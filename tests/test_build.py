"""The build under test is the one asked for: compiled (mypyc, the default install) or pure.

``scripts/test.sh`` runs the suite on the compiled build and a subset again with
``SHIELD_PURE_PYTHON=1``; these tests make sure each run really exercised what it says, so a
failed compile cannot pass for a compiled run, nor a leftover ``.so`` for a pure one.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import shield

ROOT = Path(__file__).resolve().parent.parent


def compiled_list() -> list[str]:
    """The modules setup.py compiles, as module names."""
    text = (ROOT / "setup.py").read_text()
    start = text.index("COMPILED = [")
    names = []
    for line in text[start:].splitlines()[1:]:
        if line.strip() == "]":
            break
        path = line.strip().strip('",')
        names.append(path.removesuffix(".py").replace("/", "."))
    return names


def loaded_from(name: str) -> str:
    file = importlib.import_module(name).__file__
    assert file is not None
    return file


def test_the_build_under_test_is_the_one_asked_for() -> None:
    """Compiled unless ``SHIELD_PURE_PYTHON=1``: a machine without a C compiler runs the suite
    with that set (and installs with it, so nothing tries to compile)."""
    if os.environ.get("SHIELD_PURE_PYTHON") == "1":
        assert shield.build() == "pure Python"
        # Just before the standard finder, so hooks ahead of it (atheris instrumenting the
        # fuzzers' imports) still see Shield's modules.
        finders = [getattr(finder, "__name__", type(finder).__name__) for finder in sys.meta_path]
        assert finders[finders.index("PathFinder") - 1] == "_SourceFirst"
        for name in compiled_list():
            assert loaded_from(name).endswith(".py"), name
    else:
        assert shield.build() == "compiled", (
            "not compiled: reinstall (pip install -e .) or set SHIELD_PURE_PYTHON=1"
        )
        for name in compiled_list():
            assert loaded_from(name).endswith(".so"), name


def test_the_version_says_which_build_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shield", "--version"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "SHIELD_PURE_PYTHON": "1"},
    )
    assert result.stdout == f"shield {shield.__version__} (pure Python)\n"

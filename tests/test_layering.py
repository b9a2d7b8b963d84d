"""The layout says what is pure: everything under ``shield/decide/`` decides and does nothing else.

A module in ``decide/`` imports no I/O library and nothing of Shield's outside ``decide/`` and
``config/``, and never awaits. A few modules elsewhere are pure too (the rule file's model, the
header and target rules of the wire, the explain text); they are held to the first two rules.
And a module's name says one thing: no two modules in ``shield/`` share a name.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shield"
DECIDE = sorted((PACKAGE / "decide").glob("*.py"))
PURE_ELSEWHERE = [
    *sorted((PACKAGE / "config").glob("*.py")),
    PACKAGE / "state" / "breaker.py",
    PACKAGE / "state" / "overlimit.py",
    PACKAGE / "http" / "headers.py",
    PACKAGE / "http" / "target.py",
    PACKAGE / "http" / "response.py",
    PACKAGE / "http" / "proxy_protocol.py",
    PACKAGE / "ops" / "explain.py",
    PACKAGE / "clock.py",
]
IO_LIBRARIES = {
    "aiohttp",
    "asyncio",
    "redis",
    "prometheus_client",
    "aiocache",
    "httptools",
    "uvloop",
    "socket",
    "selectors",
    "subprocess",
    "threading",
}
# Shield's own packages that do I/O: a pure module outside decide/ may not lean on them either.
IO_PACKAGES = (
    "shield.enforce",
    "shield.upstream",
    "shield.app",
    "shield.ops",
    "shield.demo",
    "shield.state",
    "shield.feeds",
)
PURE_OUTSIDE_IO_PACKAGES = {"shield.state.breaker", "shield.state.overlimit", "shield.ops.explain"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def awaits(path: Path) -> list[ast.AST]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Await | ast.AsyncFunctionDef)]


def io_libraries(imports: set[str]) -> set[str]:
    return {name for name in imports if name.split(".")[0] in IO_LIBRARIES}


def test_the_decision_core_is_a_folder() -> None:
    assert len(DECIDE) > 10  # the glob found the package, not an empty or renamed folder


@pytest.mark.parametrize("path", DECIDE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_decide_imports_only_decide_and_config(path: Path) -> None:
    imports = imported_modules(path)
    outside = {
        name
        for name in imports
        if name.split(".")[0] == "shield" and not name.startswith(("shield.decide", "shield.config"))
    }
    assert not outside, f"{path.name} imports {sorted(outside)}"
    assert not io_libraries(imports), f"{path.name} imports {sorted(io_libraries(imports))}"


@pytest.mark.parametrize("path", DECIDE + PURE_ELSEWHERE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_modules_never_await(path: Path) -> None:
    assert not awaits(path)


@pytest.mark.parametrize("path", PURE_ELSEWHERE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_modules_elsewhere_import_no_io(path: Path) -> None:
    imports = imported_modules(path)
    leaning = {
        name for name in imports if name.startswith(IO_PACKAGES) and name not in PURE_OUTSIDE_IO_PACKAGES
    }
    assert not io_libraries(imports) and not leaning, (
        f"{path.name} imports {sorted(io_libraries(imports) | leaning)}"
    )


def test_no_two_modules_share_a_name() -> None:
    names = Counter(path.stem for path in PACKAGE.rglob("*.py") if path.stem not in ("__init__", "__main__"))
    assert [name for name, count in names.items() if count > 1] == []

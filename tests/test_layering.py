"""The decision core stays pure: no I/O libraries imported by the modules that decide."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shield"
PURE = [
    *sorted((PACKAGE / "policy").glob("*.py")),
    *sorted((PACKAGE / "config").glob("*.py")),
    PACKAGE / "limiter.py",
    PACKAGE / "state" / "breaker.py",
    PACKAGE / "state" / "overlimit.py",
    PACKAGE / "headers.py",
    PACKAGE / "target.py",
    PACKAGE / "response.py",
    PACKAGE / "clock.py",
    PACKAGE / "explain.py",
    PACKAGE / "proxy_protocol.py",
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
}
IO_MODULES = {"shield.proxy", "shield.upstream", "shield.server", "shield.gatekeeper", "shield.actions"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_modules_import_no_io(path: Path) -> None:
    imports = imported_modules(path)
    offending = {name for name in imports if name.split(".")[0] in IO_LIBRARIES or name in IO_MODULES}
    assert not offending, f"{path.name} imports {sorted(offending)}"


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_modules_never_await(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Await | ast.AsyncFunctionDef)]

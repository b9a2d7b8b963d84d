#!/usr/bin/env python3
"""What compiling each of setup.py's COMPILED modules saves, in instructions per proxied request.

    .venv/bin/python tests/bench/module_pays.py [MODULE[+MODULE] ...] [--commit HEAD] [--rules]

Leave-one-out: for each module (all of COMPILED by default; or the names given, ``gcra`` or
``shield/decide/gcra.py``, or several left out together, ``answer+answers``) a copy of
``--base``'s ``--commit`` (``git archive``, so uncommitted edits are not measured) goes to
``WORK/without-NAME`` with those modules dropped from COMPILED, and is built there (``setup.py
build_ext --inplace``, under ``nice -n 19``); ``WORK/all`` is the full build and ``WORK/none``
the bare archive, which runs pure Python. A tree already built from the same commit and module
list is reused. ``--group`` modules at a time are built, then counted by ``instructions.py``
(valgrind, ``nice -n 19``) in one run that counts ``all`` first (and ``none`` in the first run),
so each module compares with the full build of its own run (counts move about 1 % between runs,
far less within one). One build or one valgrind at a time, never both. A module with a class
whose base class is in another compiled module cannot be left out alone (mypyc: "interpreted
classes cannot inherit from compiled"): its row says which, and ``MODULE+BASE_MODULE`` measures
them together.

Prints a markdown table: per module, instructions per request with everything compiled and
without that module compiled, what compiling it saves (difference and ratio), and a verdict:
``pays`` from ``--pays`` percent saved (0.3), ``marginal`` above ``--noise`` (0.1), else ``does
not pay``. A saving is the module's share with all the others compiled (calls between
compiled modules are native), so the rows need not add up to ``all`` against ``none``. Example::

    .venv/bin/python tests/bench/module_pays.py --rules                # 21 builds + 25 counts: ~1 hour
    .venv/bin/python tests/bench/module_pays.py gcra policy --rules --requests 2000
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
STAMP = ".module_pays.json"


class Row(NamedTuple):
    module: str
    all: int
    without: int


def resolve(base: Path, commit: str) -> str:
    return subprocess.run(
        ["git", "-C", str(base), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def compiled_list(base: Path, commit: str) -> list[str]:
    """COMPILED as committed in ``base``'s setup.py."""
    source = subprocess.run(
        ["git", "-C", str(base), "show", f"{commit}:setup.py"], check=True, capture_output=True, text=True
    ).stdout
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets
        ):
            return [str(path) for path in ast.literal_eval(node.value)]
    raise SystemExit("no COMPILED list in setup.py")


def compiled_bases(base: Path, compiled: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Per module, its classes' bases defined in another COMPILED module, as (``Class(Base)``,
    module of Base): left out alone it fails at run time (mypyc: "interpreted classes cannot
    inherit from compiled"), so it can only go together with those modules."""
    dotted = {module.removesuffix(".py").replace("/", "."): module for module in compiled}
    found: dict[str, list[tuple[str, str]]] = {}
    for module in compiled:
        tree = ast.parse((base / module).read_text())
        imported = {
            alias.asname or alias.name: node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
        }
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                for parent in node.bases:
                    origin = dotted.get(imported.get(ast.unparse(parent).split("[")[0], ""), "")
                    if origin and origin != module:
                        found.setdefault(module, []).append((f"{node.name}({ast.unparse(parent)})", origin))
    return found


def short(module: str) -> str:
    return Path(module).stem


def extract(base: Path, commit: str, target: Path) -> None:
    """``git archive COMMIT`` of ``base`` into a fresh ``target``."""
    if target.exists():
        subprocess.run(["rm", "-rf", str(target)], check=True)
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(base), "archive", commit], check=True, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="tar")


def drop_module(setup_py: Path, module: str) -> None:
    text = setup_py.read_text()
    line = f'    "{module}",\n'
    if text.count(line) != 1:
        raise SystemExit(f"{setup_py}: no single line {line.strip()}")
    setup_py.write_text(text.replace(line, ""))


def prepare(base: Path, target: Path, commit: str, compiled: list[str]) -> None:
    """A tree of ``base``'s ``commit`` at ``target`` with exactly ``compiled`` compiled (none: no build)."""
    stamp = {"commit": commit, "compiled": compiled}
    stamp_file = target / STAMP
    reuse = stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp
    if reuse:
        print(f"reusing {target}", flush=True)
    else:
        extract(base, commit, target)
    if compiled and not reuse:
        for module in set(compiled_list(base, commit)) - set(compiled):
            drop_module(target / "setup.py", module)
        print(f"building {target} ({len(compiled)} modules compiled)", flush=True)
        with (target / "build.log").open("wb") as log:
            subprocess.run(
                ["nice", "-n", "19", sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                cwd=target,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
            )
    # Extensions are optional (setup.py): one that failed would silently stay Python.
    built = sorted(
        str(p.relative_to(target).parent / p.name.split(".")[0]) for p in target.glob("shield/**/*.so")
    )
    wanted = sorted(module.removesuffix(".py") for module in compiled)
    if built != wanted:
        raise SystemExit(f"{target}: compiled {built}, wanted {wanted} (see {target / 'build.log'})")
    stamp_file.write_text(json.dumps(stamp))


def why_not(tree: Path) -> str:
    """Why a tree's Shield did not answer: the import error, when it is one."""
    check = subprocess.run(
        ["nice", "-n", "19", sys.executable, "-c", "import shield.app.server"],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    lines = check.stderr.strip().splitlines()
    return lines[-1] if check.returncode and lines else "never answered (see instructions.py's message)"


def count(trees: dict[str, Path], rules: bool, requests: int) -> dict[str, tuple[int, int] | str]:
    """Per tree, (instructions per request of ``all`` in the same instructions.py run, its own),
    or why it did not run: a variant that fails is dropped and the rest counted again."""
    results: dict[str, tuple[int, int] | str] = {}
    pending = [name for name in trees if name != "all"]
    while pending:
        command = ["nice", "-n", "19", sys.executable, str(HERE / "instructions.py"), f"all={trees['all']}"]
        command += [f"{name}={trees[name]}" for name in pending]
        command += ["--requests", str(requests), *(["--rules"] if rules else [])]
        print("$", " ".join(command), flush=True)
        run = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # its errors go to stderr
        counts = {
            match[1]: int(match[2].replace(",", ""))
            for match in re.finditer(r"^(\S+)\s+([\d,]+) instructions per request$", run.stdout, re.M)
        }
        print("  " + ", ".join(f"{name} {value:,}" for name, value in counts.items()), flush=True)
        if "all" not in counts:
            raise SystemExit(f"instructions.py could not count all ({run.returncode}):\n{run.stdout}")
        for name in pending:
            if name in counts:
                results[name] = (counts["all"], counts[name])
        left = [name for name in pending if name not in counts]
        if run.returncode == 0 or not left:
            break
        results[left[0]] = why_not(trees[left[0]])
        pending = left[1:]
    return results


def verdict(saved: float, pays: float, noise: float) -> str:
    if saved >= pays:
        return "pays"
    if saved > noise:
        return "marginal"
    return "does not pay"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help="modules of COMPILED to measure (default: all of them)")
    parser.add_argument("--base", type=Path, default=HERE.parents[1], help="the git checkout to copy from")
    parser.add_argument("--commit", default="HEAD", help="the commit of --base to measure")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pays"), help="where the trees are built")
    parser.add_argument("--rules", action="store_true", help="add run_bench.py's 20 rules")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--group", type=int, default=5, help="modules per instructions.py run")
    parser.add_argument("--pays", type=float, default=0.3, help="percent saved from which a module pays")
    parser.add_argument("--noise", type=float, default=0.1, help="percent saved below which it does not")
    args = parser.parse_args()
    base = args.base.resolve()
    commit = resolve(base, args.commit)
    compiled = compiled_list(base, commit)
    by_name = {short(module): module for module in compiled} | {module: module for module in compiled}
    names = args.modules or [short(module) for module in compiled]
    unknown = [part for name in names for part in name.split("+") if part not in by_name]
    if unknown:
        raise SystemExit(f"not in COMPILED: {', '.join(unknown)}")
    trees = {"all": args.work / "all", "none": args.work / "none"}
    prepare(base, trees["all"], commit, compiled)
    prepare(base, trees["none"], commit, [])
    bases = compiled_bases(trees["all"], compiled)
    left_out = {name: {by_name[part] for part in name.split("+")} for name in names}
    blocked = {  # name -> why its tree could not run
        name: "cannot be left out alone: "
        + "; ".join(f"{cls} needs {origin} compiled" for m in out for cls, origin in bases.get(m, []))
        for name, out in left_out.items()
        if any(origin not in out for m in out for _, origin in bases.get(m, []))
    }
    measured = [name for name in names if name not in blocked]
    rows: list[Row] = []
    pure: tuple[int, int] | None = None
    for start in range(0, len(measured), args.group):  # build a group, count it, the next...
        group = measured[start : start + args.group]
        variants = {"all": trees["all"], **({"none": trees["none"]} if pure is None else {})}
        for name in group:
            variants[f"without-{name}"] = args.work / f"without-{name}"
            kept = [m for m in compiled if m not in left_out[name]]
            prepare(base, variants[f"without-{name}"], commit, kept)
        counts = count(variants, args.rules, args.requests)
        if pure is None and isinstance(none := counts.get("none"), tuple):
            pure = none
        for name in group:
            result = counts[f"without-{name}"]
            if isinstance(result, str):
                blocked[name] = f"does not run: {result}"
            else:
                rows.append(Row(name, *result))

    print(f"\ncommit {commit[:12]}, {'20 rules' if args.rules else 'no rules'}, {args.requests} requests\n")
    print("| module | all compiled | without it | saved | ratio | verdict |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        saved = row.without - row.all
        percent = 100 * saved / row.all
        print(
            f"| {row.module} | {row.all:,} | {row.without:,} | {saved:+,} ({percent:+.2f} %) "
            f"| {row.without / row.all:.4f} | {verdict(percent, args.pays, args.noise)} |"
        )
    for name, why in blocked.items():
        print(f"| {name} | | | | | {why} |")
    if pure is None:
        return 0
    print(
        f"\npure Python (none): {pure[1]:,}, all compiled {pure[0]:,} (same run): {pure[1] / pure[0]:.3f} x"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

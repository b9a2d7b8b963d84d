"""What the generated rule matchers cost, and whether a table-driven matcher beats them.

``shield.decide.matcher`` turns each index cell's rules into one generated Python function, the
common conditions inlined; that function stays interpreted even in the compiled (mypyc) build.
Here the same cells are also evaluated by a table-driven matcher: per rule a tuple of
``(kind, operand)`` tests, walked by one loop (``evaluate``), with the operands taken from the
same compiled rules (the same memos, regexes and condition tests). Both must pick the same rule
for every request of the set before anything is timed.

For each request (a browser's User-Agent on all of them), nanoseconds per call of the cell's
matcher, timeit-style (best and median of --repeat runs of --number calls), for the generated
function, the table-driven one, and a Python function that only returns (the call itself).
The rules are ``run_bench.py``'s 20 (``--rules bench``, those ``instructions.py --rules``
counts) or ``decision_cost.py``'s (``--rules decision``). ``--mypyc DIR`` also compiles
``evaluate`` alone with mypyc in DIR (once) and times that. Usage:

    .venv/bin/python tests/bench/matcher_cost.py [--rules bench|decision] [--number 200000]
    SHIELD_PURE_PYTHON=1 .venv/bin/python tests/bench/matcher_cost.py     # the pure build
    nice -n 19 .venv/bin/python tests/bench/matcher_cost.py --mypyc /tmp/matcher-mypyc

Instructions per call: one matcher in a loop under callgrind, minus a run with ``--loops 0``
(the start-up), divided by the loops; ``--case`` picks the request (default: ``GET /2b``):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        .venv/bin/python tests/bench/matcher_cost.py --only generated --loops 200000

The strings are the same objects on every call, so their hashes are cached; in a proxied request
the header values are new strings and the memo lookups hash them, the same extra for both.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from decision_cost import BROWSER, twenty_rules
from multidict import CIMultiDict, CIMultiDictProxy, istr
from run_bench import bench_rules

from shield.config import load_config
from shield.decide.identity import ANONYMOUS, Identity
from shield.decide.policy import CompiledRule, Policy, RequestView

# ---------------------------------------------------------------------------------------------
# The table-driven matcher: the kinds of test, and the loop that evaluates them.

PATH_IN = 0  # operand: a frozenset of exact paths
PATH_PREFIX = 1  # (prefix, prefix + "/")
PATH_REGEX = 2  # a pattern's fullmatch
PATHS = 3  # (exact paths and the prefixes themselves, the prefixes + "/", fullmatch or None)
FOR = 4  # True (authenticated) or False (anonymous)
HOST = 5  # the condition's Memo, by Host header
AGENT = 6  # the condition's Memo, by User-Agent
HEADER_PRESENT = 7  # an istr header name
HEADER_ABSENT = 8  # an istr header name
HEADER_EQUALS = 9  # (istr name, value)
CALL = 10  # the condition's own test of the view (CIDRs, cookies, query, header regexes...)
KINDS = ("PATH_IN", "PATH_PREFIX", "PATH_REGEX", "PATHS", "FOR", "HOST", "AGENT")
KINDS += ("HEADER_PRESENT", "HEADER_ABSENT", "HEADER_EQUALS", "CALL")

Test = tuple[int, Any]
Row = tuple[tuple[Test, ...], CompiledRule, tuple[CompiledRule, None]]
Table = tuple[Row, ...]

_USER_AGENT = istr("User-Agent")


def evaluate(table: Table, view: RequestView) -> tuple[Any, Any]:
    """The first enforcing rule of ``table`` whose tests all hold, and the dry-run rules met
    before it: what the cell's generated function answers."""
    path = view.path
    headers: Any = None
    agent: Any = None
    dry_runs: Any = None
    for tests, rule, answer in table:
        for kind, operand in tests:
            if kind == PATH_IN:
                if path not in operand:
                    break
            elif kind == PATH_PREFIX:
                if path != operand[0] and not path.startswith(operand[1]):
                    break
            elif kind == PATH_REGEX:
                if operand(path) is None:
                    break
            elif kind == PATHS:
                if (
                    path not in operand[0]
                    and not path.startswith(operand[1])
                    and (operand[2] is None or operand[2](path) is None)
                ):
                    break
            elif kind == AGENT:
                if agent is None:
                    if headers is None:
                        headers = view.headers
                    agent = headers.get(_USER_AGENT, "")
                if not operand[agent]:
                    break
            elif kind == HOST:
                if not operand[view.host_header]:
                    break
            elif kind == HEADER_PRESENT:
                if headers is None:
                    headers = view.headers
                if operand not in headers:
                    break
            elif kind == HEADER_ABSENT:
                if headers is None:
                    headers = view.headers
                if operand in headers:
                    break
            elif kind == HEADER_EQUALS:
                if headers is None:
                    headers = view.headers
                if operand[1] not in headers.getall(operand[0], ()):
                    break
            elif kind == FOR:
                if view.identity.authenticated is not operand:
                    break
            elif not operand(view):  # CALL
                break
        else:
            if rule.dry_run:
                if dry_runs is None:
                    dry_runs = []
                dry_runs.append(rule)
                continue
            return answer if dry_runs is None else (rule, dry_runs)
    return None, dry_runs


def _test(check: Any) -> Test:
    """One of a compiled rule's checks as a (kind, operand) test."""
    kind, data = check.kind, check.data
    if kind == "paths":
        exact, prefixes, pattern = data.exact, data.prefixes, data.pattern
        fullmatch = pattern.fullmatch if pattern is not None else None
        if not prefixes and fullmatch is None:
            return PATH_IN, exact
        if not exact and fullmatch is None and len(prefixes) == 1:
            return PATH_PREFIX, (prefixes[0], prefixes[0] + "/")
        if not exact and not prefixes:
            return PATH_REGEX, fullmatch
        return PATHS, (exact | frozenset(prefixes), tuple(p + "/" for p in prefixes), fullmatch)
    if kind == "for":
        return FOR, bool(data)
    if kind == "hosts":
        return HOST, data
    if kind == "agent":
        return AGENT, data
    if kind == "header-present":
        name, wanted = data
        return (HEADER_PRESENT if wanted else HEADER_ABSENT), name
    if kind == "header-equals":
        return HEADER_EQUALS, data
    return CALL, check.test


def table_of(rules: tuple[CompiledRule, ...]) -> Table:
    """A cell's rules as rows of tests (the method, settled by the index, left out)."""
    rows: list[Row] = []
    for rule in rules:
        tests = tuple(_test(check) for check in rule.checks[rule.methods is not None :])
        rows.append((tests, rule, (rule, None)))
        if not tests and not rule.dry_run:
            break  # nothing after an unconditional enforcing rule is ever reached
    return tuple(rows)


# ---------------------------------------------------------------------------------------------
# The rules and the requests.

ALICE = Identity(True, "alice", "bench")

# label: (method, path, extra headers, client ip, identity, the rule that must decide it)
Case = tuple[str, str, dict[str, str], str, Identity, str | None]
BENCH_CASES: dict[str, Case] = {
    "GET /2b (falls through to the last rule)": ("GET", "/2b", {}, "10.0.0.1", ANONYMOUS, "everything-else"),
    "GET /api/v1/reports/7/export (rule 14)": (
        "GET",
        "/api/v1/reports/7/export",
        {},
        "10.0.0.2",
        ANONYMOUS,
        "report-export",
    ),
    "POST /api/register (close, rule 1)": (
        "POST",
        "/api/register",
        {},
        "10.0.0.3",
        ANONYMOUS,
        "registration-closed",
    ),
    "GET /api/v1/items (rule 19)": ("GET", "/api/v1/items", {}, "10.0.0.4", ALICE, "api-anonymous"),
    "GET /wp-login.php (rule 9)": ("GET", "/wp-login.php", {}, "10.0.0.5", ANONYMOUS, "wordpress-probes"),
}
# Checked for agreement, not timed: every other kind of condition in the 20 rules.
BENCH_CHECKED: list[Case] = [
    ("GET", "/2b", {"X-Debug": "1"}, "10.0.0.1", ANONYMOUS, "debug-header"),
    ("GET", "/2b", {"User-Agent": "curl/8.5.0"}, "10.0.0.1", ANONYMOUS, "scrapers"),
    ("GET", "/2b", {"Host": "a.legacy.example.com"}, "10.0.0.1", ANONYMOUS, "legacy-host"),
    ("TRACE", "/2b", {}, "10.0.0.1", ANONYMOUS, "trace-connect"),
    ("GET", "/admin/users", {}, "10.0.0.1", ANONYMOUS, "admin"),
    ("GET", "/internal", {}, "10.0.0.1", ANONYMOUS, "internal"),
    ("GET", "/.git/config", {}, "10.0.0.1", ANONYMOUS, "dotfiles"),
    ("GET", "/.env", {}, "10.0.0.1", ANONYMOUS, "dotfiles"),
    ("GET", "/wp-admin", {}, "10.0.0.1", ANONYMOUS, "wordpress-probes"),
    ("GET", "/api/v1/search/books", {}, "10.0.0.1", ANONYMOUS, "search"),
    ("GET", "/api/v1/search", {}, "10.0.0.1", ANONYMOUS, "search"),
    ("POST", "/api/v1/search", {}, "10.0.0.1", ANONYMOUS, "api-anonymous"),
    ("POST", "/api/v1/auth/otp/42", {}, "10.0.0.1", ANONYMOUS, "otp-verify"),
    ("GET", "/api/v1/auth/login", {}, "10.0.0.1", ANONYMOUS, "login"),
    ("PUT", "/api/v1/uploads/a/b", {}, "10.0.0.1", ANONYMOUS, "uploads"),
    ("POST", "/graphql", {}, "10.0.0.1", ANONYMOUS, "graphql"),
    ("GET", "/api/partner/x", {"X-Api-Key": "k"}, "10.0.0.1", ANONYMOUS, "partner-api"),
    ("GET", "/api/partner/x", {}, "10.0.0.1", ANONYMOUS, "api-anonymous"),
    ("POST", "/api/v1/password/reset", {}, "10.0.0.1", ANONYMOUS, "password-reset-closed"),
]

DECISION_CASES: dict[str, Case] = {
    "GET /2b (falls through to the last rule)": ("GET", "/2b", {}, "10.0.0.1", ANONYMOUS, "everything"),
    "GET /api/v1/items (rule 14)": ("GET", "/api/v1/items", {}, "10.0.0.2", ANONYMOUS, "thr-1"),
    "POST /api/v0/register (close, rule 1)": (
        "POST",
        "/api/v0/register",
        {},
        "10.0.0.3",
        ANONYMOUS,
        "close-0",
    ),
    "GET /admin/x from 10/8 (CIDR test, rule 19)": ("GET", "/admin/x", {}, "10.0.0.4", ANONYMOUS, "admin"),
}
DECISION_CHECKED: list[Case] = [
    ("GET", "/admin/x", {}, "192.0.2.1", ANONYMOUS, "everything"),
    ("GET", "/internal3/y", {}, "10.0.0.1", ANONYMOUS, "block-3"),
    ("GET", "/2b", {"X-Debug": "1"}, "10.0.0.1", ANONYMOUS, "debug-header"),
    ("GET", "/2b", {"User-Agent": "sqlmap/1.7"}, "10.0.0.1", ANONYMOUS, "ua"),
    ("POST", "/api/v5/register", {}, "10.0.0.1", ANONYMOUS, "close-5"),
]

# Not timed either: a rule set with what the other two lack (dry runs, `for:`, header values
# and absence, cookies, query parameters), so every kind of test and the dry-run path are checked.
MIXED_RULES = """\
upstream: http://127.0.0.1:1
rules:
  - name: watch-admin
    mode: dry-run
    match: { paths: ["/admin/**"] }
    action: block
  - name: members
    for: authenticated
    match: { paths: ["/admin/**", /member] }
    action: allow
  - name: env
    match: { headers: { X-Env: staging, X-Tenant: absent } }
    action: block
  - name: watch-cookie
    mode: dry-run
    match: { cookies: { trial: present } }
    action: block
  - name: page
    match: { query: { page: { regex: "^[0-9]{3,}$" } } }
    action: block
  - name: admin-hosts
    match: { paths: ["/admin/*"], hosts: ["*.example.com"] }
    action: close
"""
MIXED_CHECKED: list[Case] = [
    ("GET", "/admin/x", {}, "10.0.0.1", ALICE, "members"),
    ("GET", "/admin/x", {"Host": "a.example.com"}, "10.0.0.1", ANONYMOUS, "admin-hosts"),
    ("GET", "/admin/x/y", {}, "10.0.0.1", ANONYMOUS, None),
    ("GET", "/member", {"X-Env": "staging"}, "10.0.0.1", ANONYMOUS, "env"),
    ("GET", "/member", {"X-Env": "staging", "X-Tenant": "t"}, "10.0.0.1", ANONYMOUS, None),
    ("GET", "/x?page=1234", {"Cookie": "trial=1"}, "10.0.0.1", ANONYMOUS, "page"),
    ("GET", "/x?page=12", {"Cookie": "trial=1"}, "10.0.0.1", ANONYMOUS, None),
]


def policy_of(text: str) -> Policy:
    path = Path(tempfile.mkdtemp()) / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    return Policy(config.rules, config.policy)


def view_of(case: Case) -> RequestView:
    method, target, extra, ip, identity, _ = case
    path, _, query = target.partition("?")
    headers = CIMultiDictProxy(
        CIMultiDict({"Host": "shop.example", "User-Agent": BROWSER, "Accept": "*/*", **extra})
    )
    return RequestView(method, path, headers.get("Host"), headers, query, ip, identity)


Match = Callable[[RequestView], object]


def matchers(policy: Policy, view: RequestView) -> tuple[Match, Table]:
    """The generated function and the table of ``view``'s cell, as ``decide`` finds the cell."""
    return policy.matcher(view.method, view.path), table_of(policy.candidates(view.method, view.path))


def check_agreement(
    policy: Policy, cases: list[Case], table_match: Callable[[Table, RequestView], object]
) -> int:
    """Both matchers give the same answer, and the one expected, for every case."""
    for case in cases:
        view = view_of(case)
        generated, table = matchers(policy, view)
        expected = generated(view)
        got = table_match(table, view)
        if got != expected:
            raise SystemExit(f"the table-driven matcher disagrees on {case}: {got} != {expected}")
        rule = expected[0]  # type: ignore[index]
        if (rule.name if rule is not None else None) != case[5]:
            raise SystemExit(f"{case[:2]} was decided by {rule and rule.name}, not {case[5]}")
    return len(cases)


def mypyc_evaluate(directory: Path) -> Callable[[Table, RequestView], object]:
    """``evaluate`` alone, compiled with mypyc in ``directory`` (compiled once, then reused)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = "matcher_table_mypyc"
    source = directory / f"{name}.py"
    kinds = "".join(f"{kind}: Final = {globals()[kind]}\n" for kind in KINDS)
    text = (
        "from __future__ import annotations\n\nfrom typing import Any, Final\n\n"
        "from multidict import istr\n\n"
        f"{kinds}_USER_AGENT: Final = istr('User-Agent')\n"
        "Table = tuple[tuple[tuple[tuple[int, Any], ...], Any, Any], ...]\n"
        "RequestView = Any\n\n\n" + inspect.getsource(evaluate)
    )
    if (
        not source.exists()
        or source.read_text(encoding="utf-8") != text
        or not list(directory.glob(f"{name}.*.so"))
    ):
        source.write_text(text, encoding="utf-8")
        mypyc = Path(sys.executable).with_name("mypyc")
        subprocess.run(["nice", "-n", "19", str(mypyc), source.name], cwd=directory, check=True)
    sys.path.insert(0, str(directory))
    module = importlib.import_module(name)
    assert module.__file__ is not None and not module.__file__.endswith(".py"), module.__file__
    compiled: Callable[[Table, RequestView], object] = module.evaluate
    return compiled


def nothing(view: RequestView) -> object:
    return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rules", choices=("bench", "decision"), default="bench")
    parser.add_argument("--number", type=int, default=200_000, help="calls per measurement")
    parser.add_argument("--repeat", type=int, default=7, help="measurements per matcher and request")
    parser.add_argument("--mypyc", metavar="DIR", help="also time evaluate compiled with mypyc in DIR")
    parser.add_argument("--only", choices=("generated", "table", "mypyc", "call"), help="one matcher")
    parser.add_argument("--case", default="GET /2b", help="with --loops: the request (a label's start)")
    parser.add_argument("--loops", type=int, help="call the matcher this many times, untimed (callgrind)")
    args = parser.parse_args()

    if args.rules == "bench":
        text = yaml.safe_dump({"upstream": "http://127.0.0.1:1", "rules": bench_rules()}, sort_keys=False)
        cases, checked = BENCH_CASES, BENCH_CHECKED
    else:
        text, cases, checked = twenty_rules(), DECISION_CASES, DECISION_CHECKED
    policy = policy_of(text)
    evaluators: dict[str, Callable[[Table, RequestView], object]] = {"table": evaluate}
    if args.mypyc or args.only == "mypyc":
        evaluators["mypyc"] = mypyc_evaluate(Path(args.mypyc or tempfile.mkdtemp()))
    agreed = 0
    for table_match in evaluators.values():
        agreed += check_agreement(policy, [*cases.values(), *checked], table_match)
        agreed += check_agreement(policy_of(MIXED_RULES), MIXED_CHECKED, table_match)

    if args.loops is not None:
        [case] = [c for label, c in cases.items() if label.startswith(args.case)]
        view = view_of(case)
        generated, table = matchers(policy, view)
        only = args.only or "generated"
        if only == "generated":
            for _ in range(args.loops):
                generated(view)
        elif only == "call":
            for _ in range(args.loops):
                nothing(view)
        else:
            evaluator = evaluators[only]
            for _ in range(args.loops):
                evaluator(table, view)
        return 0

    build = "pure Python" if os.environ.get("SHIELD_PURE_PYTHON") == "1" else "compiled"
    print(
        f"{build} build, {args.rules} rules: {agreed} requests agree; "
        f"ns per call, best / median of {args.repeat} x {args.number}"
    )
    names = ["generated", *evaluators, "call"] if args.only is None else [args.only]
    print(f"  {'request':<44}" + "".join(f"{name:>18}" for name in names))
    for label, case in cases.items():
        view = view_of(case)
        generated, table = matchers(policy, view)
        row = f"  {label:<44}"
        for name in names:
            if name == "generated":
                timer = timeit.Timer("match(view)", globals={"match": generated, "view": view})
            elif name == "call":
                timer = timeit.Timer("match(view)", globals={"match": nothing, "view": view})
            else:
                namespace = {"evaluate": evaluators[name], "table": table, "view": view}
                timer = timeit.Timer("evaluate(table, view)", globals=namespace)
            times = [t / args.number * 1e9 for t in timer.repeat(repeat=args.repeat, number=args.number)]
            row += f"{min(times):8.0f} /{statistics.median(times):5.0f}   "
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One function per index cell: the cell's rules, in file order, as straight-line Python.

``Policy`` indexes rules by method and first path segment; what is left is to test each
candidate rule's remaining conditions, in order, and stop at the first enforcing rule that
holds. Done with one closure per condition, that costs a Python call per condition and per
rule, and those calls were most of a request's matching cost. Here each cell's rules become the
body of one generated function: the common conditions are inlined as expressions (paths,
identity class, header presence or value; host and User-Agent as a lookup in the condition's
``Memo``), and the rest (CIDRs, cookies, query parameters, header regexes) call the condition's
own test, as before. The function takes the request's ``RequestView`` and reads each part it
tests into a local once.

The source is built only from this module's templates and names it makes up (``c0``, ``c1``...);
every value from the rule file reaches the function as a constant bound to such a name, never as
text, so nothing an operator writes becomes code. ``tests/test_matching.py`` checks the result
against the rules' own tests on random rule sets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from multidict import istr

if TYPE_CHECKING:
    from shield.decide.policy import Check, CompiledRule, RequestView

MatchResult = tuple["CompiledRule | None", "list[CompiledRule] | None"]
CellMatch = Callable[["RequestView"], MatchResult]

_USER_AGENT = istr("User-Agent")


class _Source:
    """The generated function's lines and the constants its names stand for."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {"_USER_AGENT": _USER_AGENT}
        self.computed: set[str] = set()  # locals already assigned (path, headers, agent...)

    def constant(self, value: object) -> str:
        name = f"c{len(self.constants)}"
        self.constants[name] = value
        return name

    def local(self, name: str, *statements: str) -> None:
        """Assign a local the first time a condition needs it (later rules reuse it)."""
        if name not in self.computed:
            self.computed.add(name)
            self.lines.extend(f"    {statement}" for statement in statements)


def _condition(check: Check, source: _Source) -> str:
    """``check`` as a Python expression over the request's parts, read into locals."""
    kind, data = check.kind, check.data
    if kind == "paths":
        source.local("path", "path = view.path")
        exact, prefixes, pattern = data.exact, data.prefixes, data.pattern
        parts = []
        if exact:
            parts.append(f"path in {source.constant(exact)}")
        for prefix in prefixes:
            parts.append(
                f"path == {source.constant(prefix)} or path.startswith({source.constant(prefix + '/')})"
            )
        if pattern is not None:
            parts.append(f"{source.constant(pattern.fullmatch)}(path) is not None")
        return "(" + " or ".join(parts) + ")" if parts else "False"
    if kind == "for":
        source.local("identity", "identity = view.identity")
        return f"identity.authenticated is {bool(data)}"
    if kind == "hosts":
        source.local("host_header", "host_header = view.host_header")
        return f"{source.constant(data)}[host_header]"
    if kind == "agent":
        source.local("headers", "headers = view.headers")
        source.local("agent", "agent = headers.get(_USER_AGENT, '')")
        return f"{source.constant(data)}[agent]"
    if kind in ("header-present", "header-equals"):
        source.local("headers", "headers = view.headers")
    if kind == "header-present":
        name, wanted = data
        return f"{source.constant(name)} {'in' if wanted else 'not in'} headers"
    if kind == "header-equals":
        name, expected = data
        return f"{source.constant(expected)} in headers.getall({source.constant(name)}, ())"
    return f"{source.constant(check.test)}(view)"


def compile_cell(rules: tuple[CompiledRule, ...]) -> CellMatch:
    """``Policy.match`` for requests whose method and first segment put them in this cell:
    the first enforcing rule of ``rules`` whose conditions (other than the method, which the
    index settled) hold, and the dry-run rules met before it."""
    source = _Source()
    body = source.lines
    dry_runs = any(rule.dry_run for rule in rules)
    body.append("def match(view):")
    if dry_runs:
        body.append("    dry_runs = None")
    for rule in rules:
        name = source.constant(rule)
        checks = rule.checks[rule.methods is not None :]
        conditions = [_condition(check, source) for check in checks]
        if rule.dry_run:
            action = [
                "        if dry_runs is None:",
                "            dry_runs = []",
                f"        dry_runs.append({name})",
            ]
        elif dry_runs:
            action = [f"        return {name}, dry_runs"]
        else:
            # The same answer every time: one tuple, made here.
            action = [f"        return {source.constant((rule, None))}"]
        if conditions:
            body.append(f"    if {' and '.join(conditions)}:")
            body.extend(action)
        else:
            body.extend(line[4:] for line in action)
            if not rule.dry_run:
                break  # nothing after an unconditional enforcing rule is ever reached
    else:
        body.append("    return None, dry_runs" if dry_runs else "    return None, None")
    namespace = dict(source.constants)
    exec(compile("\n".join(body), "<shield rules>", "exec"), namespace)  # the module docstring says why
    match: CellMatch = namespace["match"]
    return match

"""Checks that need the whole config at once: duplicate rule names, rules that can never match.

Each finding carries the location (keys and indexes) of the node it is about; the loader turns
that into a line and column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shield.config.model import ShieldConfig
from shield.config.rules import Rule

Location = tuple[int | str, ...]


@dataclass(frozen=True)
class Finding:
    loc: Location
    message: str
    severity: str = "error"


def duplicate_names(data: dict[str, Any]) -> list[Finding]:
    """Rule names used twice, read from the raw file so they show up beside any other error."""
    findings: list[Finding] = []
    rules = data.get("rules")
    if not isinstance(rules, list):
        return findings
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        name = rule.get("name") if isinstance(rule, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            findings.append(
                Finding(
                    ("rules", index, "name"),
                    f"{rule_place(index, name)}.name: duplicate rule name {name!r} "
                    f"(also {rule_place(seen[name], name)})",
                )
            )
        else:
            seen[name] = index
    return findings


def rule_place(index: int, name: object = None) -> str:
    """Where a rule is, as an operator counts: ``rules[2] 'login'`` (1-based, with its name)."""
    return f"rules[{index + 1}]" + (f" {name!r}" if isinstance(name, str) else "")


def place(loc: tuple[int | str, ...], data: object) -> str:
    """A location in the file as an operator reads it: ``rules[2] 'login'.match.paths[1]``.

    ``loc`` is a path of keys and 0-based indexes into ``data``, the file's plain values; a list
    item is counted from 1, and a rule (or any item) with a name is named."""
    text = ""
    node = data
    for step in loc:
        if isinstance(step, int):
            item = node[step] if isinstance(node, list) and 0 <= step < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            text += f"[{step + 1}]" + (f" {name!r}" if isinstance(name, str) else "")
            node = item
        else:
            text += f".{step}" if text else step
            node = node.get(step) if isinstance(node, dict) else None
    return text or "(top level)"


def lint(config: ShieldConfig) -> list[Finding]:
    """Findings that need the validated config: rules that can never match, limits multiplied."""
    findings: list[Finding] = per_worker_limits(config)
    for index, rule in enumerate(config.rules):
        for earlier_index, earlier in enumerate(config.rules[:index]):
            if shadows(earlier, rule):
                findings.append(
                    Finding(
                        ("rules", index),
                        f"{rule_place(index, rule.name)} can never match: "
                        f"{rule_place(earlier_index, earlier.name)} comes first and matches every "
                        "request it would",
                        "warning",
                    )
                )
                break
    return findings


def per_worker_limits(config: ShieldConfig) -> list[Finding]:
    """Workers with memory state count apart, so each would let the whole limit through."""
    state = config.state
    throttles = [rule.name for rule in config.rules if rule.action == "throttle"]
    if config.workers == 1 or state.backend != "memory" or state.per_worker_limits or not throttles:
        return []
    return [
        Finding(
            ("workers",),
            f"workers: {config.workers} with state.backend: memory gives each worker its own "
            f"counters, so throttle rule {throttles[0]!r} would let {config.workers} times its limit "
            "through; use state.backend: redis, or set state.per_worker_limits: true to accept it",
        )
    ]


def shadows(earlier: Rule, later: Rule) -> bool:
    """True when every request ``later`` matches is decided by ``earlier`` first."""
    if earlier.mode == "dry-run":
        return False  # dry-run rules decide nothing; matching goes on past them
    if earlier.for_ != "everyone" and earlier.for_ != later.for_:
        return False
    match = earlier.match
    if any(
        getattr(match, field) is not None
        for field in ("hosts", "headers", "cookies", "query", "client_cidrs", "user_agents")
    ):
        return False
    if match.methods is not None and (
        later.match.methods is None or not set(later.match.methods) <= set(match.methods)
    ):
        return False
    if match.paths is None:
        return True
    if later.match.paths is None:
        return False
    return all(_covered(path, match.paths) for path in later.match.paths)


def _covered(path: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if pattern == path or pattern == "/**":
            return True
        if pattern.endswith("/**") and "*" not in pattern[:-3]:
            prefix = pattern[:-3]
            literal = path.split("*", 1)[0]
            # '/api*' is not covered by '/api/**': the wildcard also matches '/apix'.
            if path == prefix or literal.startswith(prefix + "/"):
                return True
    return False

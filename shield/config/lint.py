"""Checks that need the whole config at once: duplicate rule names, rules that can never match,
rules that take part of a later rule's traffic, closures the status page would show by name.

Each finding carries the location (keys and indexes) of the node it is about; the loader turns
that into a line and column.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from shield.config.model import ShieldConfig
from shield.config.rules import FILTERS, Rule

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
        else:
            findings.extend(_moved_traffic(config.rules, index))
    findings.extend(_unnamed_on_status_page(config))
    findings.extend(network_sources_missing(config))
    return findings


def network_sources_missing(config: ShieldConfig) -> list[Finding]:
    """Rule conditions and keys on what no ``geo:`` database or ``lists:`` entry provides."""
    findings: list[Finding] = []
    databases = {"asn": ("asn_db", config.geo.asn_db), "country": ("country_db", config.geo.country_db)}
    needs = {"asns": "asn", "not_asns": "asn", "countries": "country", "not_countries": "country"}
    for index, rule in enumerate(config.rules):
        where = rule_place(index, rule.name)
        for field, kind in needs.items():
            database, path = databases[kind]
            if getattr(rule.match, field) is not None and path is None:
                message = f"{where}.match.{field}: needs geo.{database} (no database is set)"
                findings.append(Finding(("rules", index, "match", field), message))
        known = ", ".join(sorted(config.lists)) or "none is configured"
        for field in ("client_lists", "not_client_lists"):
            for position, name in enumerate(getattr(rule.match, field) or ()):
                if name not in config.lists:
                    message = f"{where}.match.{field}: no list named {name!r} in lists: ({known})"
                    findings.append(Finding(("rules", index, "match", field, position), message))
        parts = rule.key if isinstance(rule.key, list) else [rule.key]
        for kind, (database, path) in databases.items():
            if kind in parts and path is None:
                message = f"{where}.key: {kind} needs geo.{database} (no database is set)"
                findings.append(Finding(("rules", index, "key"), message))
    return findings


def _moved_traffic(rules: list[Rule], index: int) -> list[Finding]:
    """Earlier rules that take part of ``rules[index]``'s traffic: a partial shadow.

    Only rules that pick traffic by route (paths, and methods on them) are weighed: a rule on
    every path (``methods: [TRACE]``), or one that also filters by host, header, cookie, query,
    address or User-Agent, is a filter across routes on purpose, and warning about each rule it
    overlaps would bury the warnings that matter.
    """
    rule = rules[index]
    findings = []
    for earlier_index, earlier in enumerate(rules[:index]):
        moved = _overlap(earlier, rule)
        if moved is not None:
            findings.append(
                Finding(
                    ("rules", index),
                    f"{rule_place(index, rule.name)}: {moved} now goes to "
                    f"{rule_place(earlier_index, earlier.name)}, not {rule.name!r} "
                    f"({earlier.name!r} comes first and matches part of this rule's traffic)",
                    "warning",
                )
            )
    return findings


def _overlap(earlier: Rule, later: Rule) -> str | None:
    """The requests both rules match, said as an operator would (``POST /api/login``), or None."""
    if earlier.mode == "dry-run" or any(getattr(earlier.match, f) is not None for f in FILTERS):
        return None
    if earlier.match.paths is None:
        return None  # every path: a catch-all (shadows() or nothing) or a filter by method
    if "everyone" not in (earlier.for_, later.for_) and earlier.for_ != later.for_:
        return None
    methods = _both(earlier.match.methods, later.match.methods)
    if methods is not None and not methods:
        return None
    paths = _paths_of_both(earlier.match.paths, later.match.paths)
    if paths is not None and not paths:
        return None
    where = ", ".join(paths) if paths else "(any path)"
    said = f"{'|'.join(methods)} {where}" if methods else f"{where} (any method)"
    for_ = earlier.for_ if earlier.for_ != "everyone" else later.for_
    return said + (f" ({for_} clients)" if for_ != "everyone" else "")


def _both(first: list[str] | None, second: list[str] | None) -> list[str] | None:
    if first is None or second is None:
        return second if first is None else first
    return [method for method in second if method in first]


def _paths_of_both(earlier: list[str] | None, later: list[str] | None) -> list[str] | None:
    """The later rule's paths that the earlier one takes part of, as patterns; None for any.

    An earlier pattern strictly inside a later one (``/api/login`` before ``/api/**``) carves an
    exception out of a broad rule, the usual order and on purpose: not counted. What is counted
    is an earlier rule on the same route or a wider one (``POST /api/login`` before
    ``/api/login``), or one that crosses it (``/files/*.png`` before ``/files/a*``).
    """
    if earlier is None:
        return later
    if later is None:
        return []  # every earlier pattern is inside "any path": carved out
    found: list[str] = []
    for pattern in later:
        for other in earlier:
            if _patterns_overlap(pattern, other) and (other == pattern or not _within(other, pattern)):
                if _within(pattern, other):
                    narrower = pattern
                elif _within(other, pattern):
                    narrower = other
                else:
                    narrower = f"{pattern} matching {other}"
                if narrower not in found:
                    found.append(narrower)
    return found


def _segments(pattern: str) -> list[str]:
    """A pattern's segments, a trailing slash dropped as the matcher drops it."""
    if len(pattern) > 1:
        pattern = pattern.rstrip("/") or "/"
    return pattern.split("/")[1:]


def _within(inner: str, outer: str) -> bool:
    """Whether every path ``inner`` matches, ``outer`` matches too (False when unsure)."""
    a, b = _segments(inner), _segments(outer)
    if b[-1:] == ["**"]:
        b = b[:-1]
        if a[-1:] == ["**"]:
            a = a[:-1]
        return len(a) >= len(b) and all(_segment_within(x, y) for x, y in zip(a, b, strict=False))
    return len(a) == len(b) and "**" not in a and all(map(_segment_within, a, b))


def _segment_within(inner: str, outer: str) -> bool:
    if inner == outer:
        return True
    if "*" not in inner:
        return _glob_matches(inner, outer)
    if outer == "*":
        return True  # a glob segment with anything beside its stars is never empty
    if outer.count("*") != 1:
        return False
    head, tail = outer.split("*")
    inner_head, inner_tail = inner.split("*", 1)[0], inner.rsplit("*", 1)[1]
    return inner_head.startswith(head) and inner_tail.endswith(tail)


def _patterns_overlap(first: str, second: str) -> bool:
    """Whether some path matches both patterns (``*`` within a segment, ``/**`` a whole tail)."""
    a, b = _segments(first), _segments(second)
    a_tail, b_tail = a[-1:] == ["**"], b[-1:] == ["**"]
    if a_tail:
        a = a[:-1]
    if b_tail:
        b = b[:-1]
    if not a_tail and not b_tail and len(a) != len(b):
        return False
    if (a_tail and not b_tail and len(b) < len(a)) or (b_tail and not a_tail and len(a) < len(b)):
        return False
    return all(_segments_overlap(x, y) for x, y in zip(a, b, strict=False))


def _segments_overlap(first: str, second: str) -> bool:
    """Whether one segment matches both globs: with a ``*`` in each, their literal heads and
    tails must agree (the stars take up the rest); with one literal, the other must match it."""
    if "*" not in first or "*" not in second:
        literal, glob = (first, second) if "*" not in first else (second, first)
        return _glob_matches(literal, glob)
    head_a, head_b = first.split("*", 1)[0], second.split("*", 1)[0]
    tail_a, tail_b = first.rsplit("*", 1)[1], second.rsplit("*", 1)[1]
    heads = head_a.startswith(head_b) or head_b.startswith(head_a)
    tails = tail_a.endswith(tail_b) or tail_b.endswith(tail_a)
    return heads and tails


def _glob_matches(segment: str, glob: str) -> bool:
    """The matcher's reading of one segment: ``*`` is any run of characters, but a segment that
    is only ``*`` is never empty; ``?`` and ``[`` are themselves."""
    if glob == "*":
        return segment != ""
    return fnmatch.fnmatchcase(segment, glob.replace("[", "[[]").replace("?", "[?]"))


def _unnamed_on_status_page(config: ShieldConfig) -> list[Finding]:
    """Rules the status page would list by their rule name, an internal word, when they close."""
    if not config.status_page.enabled:
        return []
    return [
        Finding(
            ("rules", index),
            f"{rule_place(index, rule.name)} closes, and the status page would show it by its rule "
            "name: give it a public_name (what your users call the feature)",
            "warning",
        )
        for index, rule in enumerate(config.rules)
        if (rule.action == "close" or rule.auto_close is not None) and rule.public_name is None
    ]


def per_worker_limits(config: ShieldConfig) -> list[Finding]:
    """Workers with memory state count apart, so each would let the whole limit through (a
    throttle's limit, a waiting room's admit rate: each worker keeps its own line)."""
    state = config.state
    counted = [rule for rule in config.rules if rule.action in ("throttle", "queue")]
    if config.workers == 1 or state.backend != "memory" or state.per_worker_limits or not counted:
        return []
    rule = counted[0]
    what = "its limit" if rule.action == "throttle" else "its admit rate"
    return [
        Finding(
            ("workers",),
            f"workers: {config.workers} with state.backend: memory gives each worker its own "
            f"counters, so {rule.action} rule {rule.name!r} would let {config.workers} times {what} "
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
    if any(getattr(match, field) is not None for field in FILTERS):
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

"""Compiled rules and the policy that picks the rule for a request.

Everything an operator wrote is compiled once per load: path patterns into exact sets, prefixes
and one regex per rule; CIDRs into networks; header, cookie and query tests into small
predicates. Rules are indexed by method and first path segment, so a request is checked only
against rules that could match it, in file order (first match wins).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Callable, Sequence
from http.cookies import CookieError, SimpleCookie
from operator import attrgetter
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qs

from multidict import MultiMapping, istr

from shield.config.rules import Match, PolicyOptions, Rule, ValueMatch
from shield.decide.admission import priority_class
from shield.decide.gcra import Gcra
from shield.decide.header_memo import Memo
from shield.decide.host import host_name
from shield.decide.identity import Identity
from shield.decide.matcher import CellMatch, MatchResult, compile_cell
from shield.decide.network_facts import NO_NETWORKS, Directory
from shield.decide.paths import fold_case
from shield.decide.remembered import remember
from shield.decide.trigger import Trigger

_BY_IP: Final = ("ip",)
# Header names as istr: a case-insensitive multidict looks an istr up without folding it first.
_COOKIE: Final = istr("Cookie")
_USER_AGENT: Final = istr("User-Agent")
ANY: Final = ""  # index key for "any method" / "any first segment"
# Bounds of the table of matchers by method and path (``Policy.known``).
_KNOWN_ENTRIES: Final = 8192
_KNOWN_LENGTH: Final = 256


class RequestView:
    """The parts of a request rules look at. ``headers`` is case-insensitive."""

    __slots__ = (
        "_cookies",
        "_host",
        "_query",
        "client_ip",
        "client_key",
        "headers",
        "host_header",
        "identity",
        "method",
        "path",
        "query_string",
    )

    def __init__(
        self,
        method: str,
        path: str,
        host_header: str | None,
        headers: MultiMapping[str],
        query_string: str,
        client_ip: str,
        identity: Identity,
        client_key: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.host_header = host_header
        self.headers = headers
        self.query_string = query_string
        self.client_ip = client_ip
        # The throttle key of the address: an IPv6 client's prefix (see policy.client_ip).
        self.client_key = client_key or client_ip
        self.identity = identity
        # Worked out when a rule first asks (host rules are common, so checked without raising).
        self._host: str | None = None
        # _cookies and _query stay unset until a rule asks: most requests parse neither.

    @property
    def host(self) -> str:
        """The host name the request is for (``host.host_name`` of its Host header)."""
        host = self._host
        if host is None:
            host = self._host = host_name(self.host_header)
        return host

    @property
    def cookies(self) -> dict[str, str]:
        try:
            return self._cookies
        except AttributeError:
            pass
        jar = SimpleCookie()
        with contextlib.suppress(CookieError):
            jar.load(self.headers.get(_COOKIE, ""))
        self._cookies: dict[str, str] = {name: morsel.value for name, morsel in jar.items()}
        return self._cookies

    @property
    def query(self) -> dict[str, list[str]]:
        try:
            return self._query
        except AttributeError:
            pass
        self._query: dict[str, list[str]] = parse_qs(self.query_string, keep_blank_values=True)
        return self._query


def _value_test(test: ValueMatch) -> Callable[[str | None], bool]:
    if test.present is not None:
        want = test.present
        return lambda value: (value is not None) is want
    if test.equals is not None:
        expected = test.equals
        return lambda value: value == expected
    assert test.regex is not None
    pattern = re.compile(test.regex)
    return lambda value: value is not None and pattern.search(value) is not None


def _describe(test: ValueMatch) -> str:
    if test.present is not None:
        return "present" if test.present else "absent"
    return f"= {test.equals!r}" if test.equals is not None else f"~ /{test.regex}/"


Test = Callable[["RequestView"], bool]


class Check(NamedTuple):
    """One condition of a rule: ``test`` decides it, ``explain`` says why it failed. ``kind``
    and ``data`` describe it for ``shield.decide.matcher``, which inlines the common kinds."""

    test: Test
    explain: Callable[[RequestView], str]
    kind: str = "call"
    data: Any = None


def _cookie_values(view: RequestView, name: str) -> list[str]:
    value = view.cookies.get(name)
    return [] if value is None else [value]


# Every occurrence is tested, and one that passes is enough: with ?action=login&action=register
# some frameworks see the first value and others the last, so a rule must see both.
_readers: Final[dict[str, Callable[[RequestView, str], Sequence[str]]]] = {
    "cookie": _cookie_values,
    "query parameter": lambda view, name: view.query.get(name, ()),
}


def _any_value(test: Callable[[str | None], bool], values: Sequence[str]) -> bool:
    if not values:
        return test(None)
    return any(test(value) for value in values)


class PathMatcher:
    """Exact paths, segment-bounded prefixes ('/api/**') and wildcard patterns of one rule."""

    __slots__ = ("exact", "pattern", "prefixes")

    def __init__(self, patterns: list[str], *, case_insensitive: bool) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        regexes: list[str] = []
        for raw in patterns:
            pattern = fold_case(raw) if case_insensitive else raw
            if len(pattern) > 1:
                pattern = pattern.rstrip("/") or "/"
            if pattern.endswith("/**") and "*" not in pattern[:-3]:
                prefixes.append(pattern[:-3])
            elif "*" not in pattern:
                exact.add(pattern)
            else:
                regexes.append(_glob_regex(pattern))
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.pattern = re.compile("|".join(f"(?:{r})" for r in regexes)) if regexes else None

    def matches(self, path: str) -> bool:
        if path in self.exact:
            return True
        for prefix in self.prefixes:
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                return True
        return self.pattern is not None and self.pattern.fullmatch(path) is not None

    def view_test(self) -> Callable[[RequestView], bool]:
        """``matches`` on a view's path, specialized for the common shapes of a rule's paths."""
        exact, prefixes, pattern = self.exact, self.prefixes, self.pattern
        if not prefixes and pattern is None:
            return lambda v: v.path in exact
        if not exact and pattern is None and len(prefixes) == 1:
            prefix = prefixes[0]
            slashed = prefix + "/"
            return lambda v: v.path == prefix or v.path.startswith(slashed)
        if not exact and not prefixes and pattern is not None:
            fullmatch = pattern.fullmatch
            return lambda v: fullmatch(v.path) is not None
        matches = self.matches
        return lambda v: matches(v.path)


def _glob_regex(pattern: str) -> str:
    parts = []
    segments = pattern.split("/")[1:]
    for index, segment in enumerate(segments):
        if segment == "**":
            parts.append("(?:/.*)?" if index == len(segments) - 1 else "(?:/[^/]+)*")
            continue
        if segment == "*":
            parts.append("/[^/]+")
        else:
            parts.append("/" + "[^/]*".join(re.escape(piece) for piece in segment.split("*")))
    return "".join(parts)


def first_segments(patterns: list[str] | None, *, case_insensitive: bool) -> frozenset[str] | None:
    """First path segments a rule can match, or None when any first segment can."""
    if not patterns:  # no paths, or an empty list: no path condition at all
        return None
    segments: set[str] = set()
    for pattern in patterns:
        first = pattern.split("/")[1] if pattern.count("/") else ""
        if case_insensitive:
            first = fold_case(first)
        if "*" in first or first == "":
            return None
        segments.add(first)
    return frozenset(segments)


class CompiledRule:
    __slots__ = (
        "action",
        "admission",
        "authenticated",
        "by_ip",
        "checks",
        "cidrs",
        "config",
        "cookie_tests",
        "count_statuses",
        "dry_run",
        "first_segments",
        "forward",
        "forwarded_labels",
        "hosts",
        "key_parts",
        "methods",
        "name",
        "networks",
        "outcome",
        "paths",
        "query_tests",
        "ranks",
        "rate",
        "rates",
        "state_prefix",
        "state_prefixes",
        "throttles",
        "trigger",
        "user_agents",
    )

    def __init__(self, rule: Rule, options: PolicyOptions, networks: Directory = NO_NETWORKS) -> None:
        """``networks``: where the network conditions and keys (asns, countries, client_lists,
        key asn and country) learn what network a client is in."""
        match: Match = rule.match
        ci = options.case_insensitive_paths
        self.config = rule
        self.networks = networks
        self.name = rule.name
        self.action = rule.action
        self.dry_run = rule.mode == "dry-run"
        self.authenticated = {"anonymous": False, "authenticated": True, "everyone": None}[rule.for_]
        self.methods = frozenset(match.methods) if match.methods else None
        # '/**' matches every path: no path check at all.
        self.paths = (
            PathMatcher(match.paths, case_insensitive=ci)
            if match.paths and "/**" not in match.paths
            else None
        )
        self.first_segments = first_segments(match.paths, case_insensitive=ci)
        self.hosts = tuple(match.hosts) if match.hosts else None
        self.cookie_tests = tuple((n, _value_test(t)) for n, t in (match.cookies or {}).items())
        self.query_tests = tuple((n, _value_test(t)) for n, t in (match.query or {}).items())
        self.cidrs = tuple(ipaddress.ip_network(c, strict=False) for c in match.client_cidrs or ())
        self.user_agents = tuple(re.compile(p) for p in match.user_agents or ())
        rate, authenticated_rate = rule.rate, rule.authenticated_rate
        self.rate = Gcra(rate.count, rate.period, rule.burst) if rate is not None else None
        other = (
            Gcra(authenticated_rate.count, authenticated_rate.period, rule.burst)
            if authenticated_rate is not None and authenticated_rate != rate
            else self.rate
        )
        # Indexed by ``identity.authenticated``: (anonymous rate, authenticated rate).
        self.rates = (self.rate, other)
        # queue: the admit rate as a bucket, for a dry run's estimate of who would have waited.
        admit = rule.admission
        self.admission = Gcra(admit.count, admit.period, rule.burst) if admit is not None else None
        self.key_parts = tuple(rule.key if isinstance(rule.key, list) else [rule.key])
        self.by_ip = self.key_parts == _BY_IP
        self.count_statuses = frozenset(rule.count.status) if rule.count else None
        # Throttle state survives a reload only while name and rate stay the same.
        self.state_prefix = f"{rule.name}|{'/'.join(map(str, self.rate.signature())) if self.rate else ''}|"
        self.state_prefixes = (
            self.state_prefix,
            self.state_prefix
            if other is self.rate or other is None
            else f"{rule.name}|{'/'.join(map(str, other.signature()))}|",
        )
        outcome = {"allow": "forwarded", "block": "blocked", "close": "closed", "throttle": "throttled"}
        outcome["challenge"] = "challenged"
        outcome["queue"] = "queued"
        self.outcome = outcome[rule.action]  # what an enforced match answers (a throttle may forward)
        self.checks = self._compile_checks()
        # The request counter's labels of a forwarded request, by ``identity.authenticated``:
        # the same tuple every time, so the counter finds it by identity.
        self.forwarded_labels = (
            (rule.name, rule.action, "forwarded", "anonymous"),
            (rule.name, rule.action, "forwarded", "authenticated"),
        )
        # overload: the admission class, indexed by ``identity.authenticated``.
        self.ranks = (priority_class(rule.priority, False), priority_class(rule.priority, True))
        self.trigger = Trigger(rule.auto_close) if rule.auto_close is not None else None
        # Decisions that are the same for every request, made once: what this rule decides
        # when it lets a request through, and a throttle's, by ``identity.authenticated``.
        # Imported here, not at the top: the decisions name CompiledRule in their fields, which
        # compiled code (mypyc) resolves when shield.decide.decision loads.
        from shield.decide.decision import Forward, Throttle

        self.forward = Forward(self)
        self.throttles: tuple[Throttle, ...] = (
            (Throttle(self, self.rate), Throttle(self, other))
            if rule.action == "throttle" and self.rate is not None and other is not None
            else ()
        )

    def _compile_checks(self) -> tuple[Check, ...]:
        """One condition per thing the rule asks of a request, cheapest first."""
        match = self.config.match
        checks: list[Check] = []
        if (methods := self.methods) is not None:
            listed = sorted(methods)
            checks.append(
                Check(lambda v: v.method in methods, lambda v: f"method {v.method} is not one of {listed}")
            )
        if (paths := self.paths) is not None:
            checks.append(
                Check(
                    paths.view_test(),
                    lambda v: f"path {v.path} matches none of {match.paths}",
                    "paths",
                    paths,
                )
            )
        if (wanted := self.authenticated) is not None:
            checks.append(
                Check(
                    lambda v: v.identity.authenticated is wanted,
                    lambda v: f"rule is for {self.config.for_} clients; this one is {v.identity.label}",
                    "for",
                    wanted,
                )
            )
        if (hosts := self.hosts) is not None:
            host_holds = _host_memo(*_host_sets(hosts))
            checks.append(
                Check(
                    lambda v: host_holds[v.host_header],
                    lambda v: f"host {v.host!r} is not one of {match.hosts}",
                    "hosts",
                    host_holds,
                )
            )
        if cidrs := self.cidrs:
            checks.append(
                Check(
                    lambda v: _in_cidrs(v.client_ip, cidrs),
                    lambda v: f"client {v.client_ip} is outside {match.client_cidrs}",
                )
            )
        if agents := self.user_agents:
            checks.append(_user_agent_check(agents))
        checks.extend(_network_checks(match, self.networks))
        for name, spec in (match.headers or {}).items():
            why = f"header {name} is not {_describe(spec)}"
            test = _header_test(name, spec)
            explain: Callable[[RequestView], str] = lambda v, w=why: w  # type: ignore[misc]  # noqa: E731
            if spec.present is not None:
                checks.append(Check(test, explain, "header-present", (istr(name), spec.present)))
            elif spec.equals is not None:
                checks.append(Check(test, explain, "header-equals", (istr(name), spec.equals)))
            else:
                checks.append(Check(test, explain))
        for kind, tests, specs in (
            ("cookie", self.cookie_tests, match.cookies),
            ("query parameter", self.query_tests, match.query),
        ):
            for name, value_test in tests:
                why = f"{kind} {name} is not {_describe((specs or {})[name])}"
                read = _readers[kind]
                checks.append(
                    Check(
                        lambda v, n=name, t=value_test, r=read: _any_value(t, r(v, n)),  # type: ignore[misc]
                        lambda v, w=why: w,  # type: ignore[misc]
                    )
                )
        return tuple(checks)

    def matches(self, view: RequestView) -> bool:
        # An explicit loop: all() over a generator costs a frame per call on the hot path.
        for check in self.checks:  # noqa: SIM110
            if not check.test(view):
                return False
        return True

    def mismatch(self, view: RequestView) -> str | None:
        """Why this rule does not apply to ``view``, or None when it does."""
        for check in self.checks:
            if not check.test(view):
                return check.explain(view)
        return None

    def state_key(self, view: RequestView) -> str:
        """The throttle bucket of ``view``; a missing header, cookie or user falls back to the IP."""
        prefix = self.state_prefixes[view.identity.authenticated]
        if self.by_ip:
            return prefix + view.client_key
        parts = []
        for part in self.key_parts:
            if part == "ip":
                parts.append(view.client_key)
            elif part == "route":
                parts.append("*")
            elif part == "user":
                parts.append("u:" + view.identity.user if view.identity.user else view.client_key)
            elif part == "asn":
                asn = self.networks.facts(view.client_ip).asn
                parts.append(f"asn:{asn}" if asn is not None else view.client_key)
            elif part == "country":
                country = self.networks.facts(view.client_ip).country
                parts.append("cc:" + country if country is not None else view.client_key)
            else:
                kind, _, name = part.partition(":")
                value = view.headers.get(name) if kind == "header" else view.cookies.get(name)
                parts.append(f"{kind[0]}:{value}" if value else view.client_key)
        return prefix + "|".join(parts)


# A pattern's leading global flags that can become a scoped group; "x" cannot (a comment would
# swallow the group's closing parenthesis).
_LEADING_FLAGS: Final = re.compile(r"\(\?([ims]+)\)")
# What ties a pattern to its own group numbers or its position: back-references, conditionals,
# global flags after the start.
_UNJOINABLE: Final = re.compile(r"\\[1-9]|\(\?P=|\(\?\(|\(\?[aiLmsux]+\)")


def joined_search(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One regex whose ``search`` finds a match exactly when one of ``patterns``' would, or None
    when they cannot be joined safely (then each is searched in turn).

    Alternation keeps the meaning: a search tries every branch at every position. A leading
    ``(?i)`` becomes a scoped ``(?i:...)``, so it still applies to its own pattern only.
    """
    branches = []
    for pattern in patterns:
        flags = _LEADING_FLAGS.match(pattern)
        body = pattern[flags.end() :] if flags else pattern
        if _UNJOINABLE.search(body):
            return None
        branches.append(f"(?{flags.group(1)}:{body})" if flags else f"(?:{body})")
    try:
        return re.compile("|".join(branches))
    except re.error:
        return None


AgentSearch = Callable[[str], object]  # a match (anything but None) or None


# No character with a meaning in a regex (outside a class, without the verbose flag).
_PLAIN: Final = re.compile(r"[^.^$*+?{}\[\]\\|()]*")

Texts = tuple[tuple[str, ...], tuple[str, ...]]


def plain_texts(patterns: Sequence[str]) -> Texts | None:
    """The text of each pattern when every one is plain ASCII text (no character with a meaning
    in a regex), as (case-sensitive texts, lower-cased texts of those under a leading ``(?i)``);
    else None."""
    exact: list[str] = []
    folded: list[str] = []
    for pattern in patterns:
        flags = _LEADING_FLAGS.match(pattern)
        body = pattern[flags.end() :] if flags else pattern
        if not body.isascii() or _PLAIN.fullmatch(body) is None:
            return None
        if flags is not None and "i" in flags.group(1):
            folded.append(body.lower())
        else:
            exact.append(body)
    return tuple(exact), tuple(folded)


def text_search(texts: Texts, fallback: AgentSearch) -> AgentSearch:
    """``fallback`` (the patterns' regex search) done with substring tests on ``plain_texts``.

    Python's ``re`` has no fast path for case-insensitive text: ``(?i)sqlmap`` took 1.5 us to
    search a browser's User-Agent, against 0.2 us without the flag, and three such patterns 4 us,
    more than the rest of a 20-rule decision. An ASCII User-Agent, lower-cased, holds the
    lower-cased text exactly when the pattern matches it (for ASCII, ignoring case is comparing
    lower-case forms); anything else goes to ``fallback``.
    """
    exact_texts, folded_texts = texts

    def search(agent: str) -> object:
        if not agent.isascii():
            return fallback(agent)
        for text in exact_texts:
            if text in agent:
                return True
        if folded_texts:
            lowered = agent.lower()
            for text in folded_texts:
                if text in lowered:
                    return True
        return None

    return search


def _user_agent_check(agents: tuple[re.Pattern[str], ...]) -> Check:
    """The User-Agent condition, remembered by User-Agent (``Memo``): as text where every
    pattern is plain text, else by one regex where the patterns join into one, else by each
    regex in turn."""
    patterns = [agent.pattern for agent in agents]
    regex = agents[0] if len(agents) == 1 else joined_search(patterns)
    if regex is None:
        searches = tuple(agent.search for agent in agents)

        def holds(agent: str | None) -> bool:
            return any(search(agent or "") is not None for search in searches)

    else:
        texts = plain_texts(patterns)
        found = regex.search if texts is None else text_search(texts, regex.search)

        def holds(agent: str | None) -> bool:
            return found(agent or "") is not None

    agent_holds = Memo(holds)
    return Check(
        lambda v: agent_holds[v.headers.get(_USER_AGENT, "")],
        lambda v: "User-Agent does not match",
        "agent",
        agent_holds,
    )


def _header_test(name: str, test: ValueMatch) -> Callable[[RequestView], bool]:
    """``_value_test`` over every line of a header; a missing header is tested as None."""
    name = istr(name)
    if test.present is not None:
        want = test.present
        return lambda v: (name in v.headers) is want
    if test.equals is not None:
        expected = test.equals
        return lambda v: expected in v.headers.getall(name, ())
    assert test.regex is not None
    search = re.compile(test.regex).search
    return lambda v: any(search(value) is not None for value in v.headers.getall(name, ()))


# Each network condition: the fact of ``NetworkFacts`` it reads, and whether the client must
# be among its values (asns) or not (not_asns).
_NETWORK_CONDITIONS: Final = {
    "asns": ("asn", True),
    "not_asns": ("asn", False),
    "countries": ("country", True),
    "not_countries": ("country", False),
    "client_lists": ("lists", True),
    "not_client_lists": ("lists", False),
}


def _network_checks(match: Match, networks: Directory) -> list[Check]:
    """The rule's conditions on the client's network (``shield.decide.network_facts``): its
    ASN, country and address lists, each wanted or refused. An address no source knows is in
    no ASN, country or list: ``asns`` fails for it and ``not_asns`` holds."""
    checks: list[Check] = []
    for field, (fact, wanted) in _NETWORK_CONDITIONS.items():
        listed = getattr(match, field)
        if listed is not None:
            checks.append(_network_check(networks, field, listed, fact, wanted))
    return checks


def _network_check(networks: Directory, field: str, listed: list[Any], fact: str, wanted: bool) -> Check:
    facts = networks.facts
    values = frozenset(listed)
    test: Test
    if fact == "lists":  # the client's lists, a set: on one of ours?
        test = lambda v: facts(v.client_ip).lists.isdisjoint(values) is not wanted  # noqa: E731
    else:
        read = attrgetter(fact)
        test = lambda v: (read(facts(v.client_ip)) in values) is wanted  # noqa: E731
    which = "none" if wanted else "one"
    return Check(
        test,
        lambda v: f"client {v.client_ip} ({facts(v.client_ip).describe()}) is in {which} of {field} {listed}",
    )


def _host_sets(hosts: Sequence[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """Exact names, and ``*.example.com`` as the suffix ".example.com": any name below
    example.com (not itself)."""
    exact = frozenset(h.lower() for h in hosts if not h.startswith("*."))
    suffixes = tuple(h[1:].lower() for h in hosts if h.startswith("*."))
    return exact, suffixes


def _host_memo(exact: frozenset[str], suffixes: tuple[str, ...]) -> Memo:
    """Whether a Host header names one of the hosts, by the header's value."""

    def holds(host_header: str | None) -> bool:
        host = host_name(host_header)
        return host in exact or host.endswith(suffixes)

    return Memo(holds)


def _in_cidrs(ip: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks if network.version == address.version)


class Cell(NamedTuple):
    """The rules a request with a given method and first path segment could match, in file
    order, and the function that picks among them."""

    rules: tuple[CompiledRule, ...]
    match: CellMatch


class Policy:
    """The compiled rule list: ``match`` returns the rules that apply, in order."""

    def __init__(
        self,
        rules: list[Rule],
        options: PolicyOptions,
        previous: Policy | None = None,
        networks: Directory = NO_NETWORKS,
    ) -> None:
        self.options = options
        self.networks = networks
        self.rules = tuple(CompiledRule(rule, options, networks) for rule in rules)
        if previous is not None:
            self._keep_triggers(previous)
        methods = {m for r in self.rules if r.methods for m in r.methods}
        segments = {s for r in self.rules if r.first_segments for s in r.first_segments}
        # method -> first segment -> the rules that could apply, and their matcher (one per
        # distinct list of rules); ANY stands for a method or a segment that no rule names.
        self._index: dict[str, dict[str, Cell]] = {}
        compiled: dict[tuple[int, ...], CellMatch] = {}
        for method in (*methods, ANY):
            by_segment = self._index[method] = {}
            for segment in (*segments, ANY):
                cell_rules = tuple(
                    r
                    for r in self.rules
                    if (r.methods is None or method in r.methods)
                    and (r.first_segments is None or segment in r.first_segments)
                )
                ids = tuple(map(id, cell_rules))
                if ids not in compiled:
                    compiled[ids] = compile_cell(cell_rules)
                by_segment[segment] = Cell(cell_rules, compiled[ids])
        # (method, canonical path) -> ``matcher(method, path)``; filled only by ``matcher``. A
        # plain dict: ``match`` subscripts it, and ``[]`` on a dict subclass goes through a
        # generic slot that costs several times a dict's own lookup.
        self.known: dict[tuple[str, str], CellMatch] = {}
        self.case_insensitive = options.case_insensitive_paths
        self.has_dry_run = any(r.dry_run for r in self.rules)
        self.has_challenge = any(r.action == "challenge" or r.config.challenge_first for r in self.rules)

    def _keep_triggers(self, previous: Policy) -> None:
        """An auto-close trigger survives a reload while its rule's name and auto_close stay the same."""
        old = {r.name: r for r in previous.rules if r.trigger is not None}
        for rule in self.rules:
            before = old.get(rule.name)
            same = before is not None and before.config.auto_close == rule.config.auto_close
            if same and rule.trigger is not None and before is not None:
                rule.trigger = before.trigger

    @property
    def triggers(self) -> list[tuple[CompiledRule, Trigger]]:
        return [(rule, rule.trigger) for rule in self.rules if rule.trigger is not None]

    def _cell(self, method: str, path: str) -> Cell:
        by_segment = self._index.get(method)
        if by_segment is None:
            by_segment = self._index[ANY]
        end = path.find("/", 1)
        cell = by_segment.get(path[1:] if end < 0 else path[1:end])
        return by_segment[ANY] if cell is None else cell

    def candidates(self, method: str, path: str) -> tuple[CompiledRule, ...]:
        return self._cell(method, path).rules

    def match(self, view: RequestView) -> MatchResult:
        """The first enforcing rule that applies, and the dry-run rules met before it."""
        try:
            match = self.known[view.method, view.path]
        except KeyError:
            match = self.matcher(view.method, view.path)
        return match(view)

    def matcher(self, method: str, path: str) -> CellMatch:
        """The function that matches requests with this method and path, kept in ``known`` as
        most requests ask for a path seen moments ago. Bounded like the canonical-path table: a
        flood of distinct paths costs a rebuild now and then, never memory."""
        match = self._cell(method, path).match
        return remember(self.known, (method, path), match, _KNOWN_ENTRIES, fits=len(path) <= _KNOWN_LENGTH)

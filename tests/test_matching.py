"""Rule matching: each kind of condition, first match wins, `for:`, dry-run, and the index."""

from __future__ import annotations

import random
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError

from shield.config.rules import PolicyOptions, Rule
from shield.decide import policy as policy_module
from shield.decide.header_memo import MAX_ENTRIES, MAX_LENGTH
from shield.decide.identity import ANONYMOUS, Identity
from shield.decide.paths import canonical_path
from shield.decide.policy import CompiledRule, PathMatcher, Policy, RequestView

ALICE = Identity(True, "alice", "test resolver")


def make_policy(*rules: dict[str, Any], **options: Any) -> Policy:
    return Policy([Rule.model_validate(r) for r in rules], PolicyOptions.model_validate(options))


def view(
    method: str = "GET",
    path: str = "/",
    *,
    host: str = "shop.example",
    headers: dict[str, str] | None = None,
    query: str = "",
    ip: str = "192.0.2.1",
    identity: Identity = ANONYMOUS,
) -> RequestView:
    return RequestView(method, path, host, CIMultiDictProxy(CIMultiDict(headers or {})), query, ip, identity)


def decided(policy: Policy, request: RequestView) -> str | None:
    rule, _ = policy.match(request)
    return rule.name if rule is not None else None


def one_rule(**match: Any) -> Policy:
    return make_policy({"name": "r", "match": match, "action": "block"})


def matches(policy: Policy, request: RequestView) -> bool:
    result = decided(policy, request) == "r"
    # The explanation `shield explain` prints must agree with the decision.
    assert (policy.rules[0].mismatch(request) is None) is result
    return result


def test_methods() -> None:
    policy = one_rule(methods=["post", "PUT"])
    assert matches(policy, view("POST", "/x"))
    assert matches(policy, view("PUT", "/x"))
    assert not matches(policy, view("GET", "/x"))
    assert not matches(policy, view("PATCH", "/x"))


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("/api/register", ["/api/register"], ["/api/registered", "/api/register/x", "/api", "/api/regist"]),
        ("/api/register/", ["/api/register"], ["/api/registered"]),
        ("/api/*", ["/api/login", "/api/x"], ["/api", "/api/x/y", "/apix/y", "/other/x"]),
        ("/api/**", ["/api", "/api/x", "/api/x/y/z"], ["/apix", "/apix/y", "/ap", "/", "/other/api"]),
        ("/api/reg*", ["/api/reg", "/api/register", "/api/registered"], ["/api/re", "/api/register/x"]),
        ("/users/*/posts", ["/users/7/posts"], ["/users/posts", "/users/7/8/posts", "/users/7/posts/1"]),
        ("/users/*/posts/**", ["/users/7/posts", "/users/7/posts/1/2"], ["/users/7/postsx"]),
        ("/*.php", ["/index.php", "/.php"], ["/a/index.php", "/index.phpx"]),
        ("/", ["/"], ["/x"]),
        ("/**", ["/", "/x", "/x/y"], []),
    ],
)
def test_paths(pattern: str, yes: list[str], no: list[str]) -> None:
    policy = one_rule(paths=[pattern])
    for path in yes:
        assert matches(policy, view("GET", path)), path
    for path in no:
        assert not matches(policy, view("GET", path)), path


def test_any_of_several_paths() -> None:
    policy = one_rule(paths=["/a", "/b/**", "/c/*"])
    assert [matches(policy, view("GET", p)) for p in ("/a", "/b/1/2", "/c/1", "/c", "/d")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_case_insensitive_paths() -> None:
    policy = make_policy(
        {"name": "r", "match": {"paths": ["/API/Register", "/Static/**"]}, "action": "block"},
        case_insensitive_paths=True,
    )
    for raw in ("/api/register", "/API/REGISTER", "/Api/register/", "/STATIC/x/Y"):
        path = canonical_path(raw, case_insensitive=True).match
        assert decided(policy, view("POST", path)) == "r", raw
    sensitive = one_rule(paths=["/API/Register"])
    assert not matches(sensitive, view("POST", "/api/register"))
    assert matches(sensitive, view("POST", "/API/Register"))


def test_hosts() -> None:
    policy = one_rule(hosts=["Shop.Example", "*.example.com"])
    assert matches(policy, view(host="shop.example"))
    assert matches(policy, view(host="a.example.com"))
    assert matches(policy, view(host="a.b.example.com"))
    assert not matches(policy, view(host="example.com"))
    assert not matches(policy, view(host="badexample.com"))
    assert not matches(policy, view(host="shop.example.org"))
    assert not matches(policy, view(host=""))


@pytest.mark.parametrize(
    ("test", "yes", "no"),
    [
        ("present", ["", "x"], [None]),
        ({"present": True}, ["x"], [None]),
        ("absent", [None], ["", "x"]),
        ({"present": False}, [None], ["x"]),
        ("secret", ["secret"], [None, "Secret", "secret2", ""]),
        ({"equals": "present"}, ["present"], [None, "x"]),
        ({"regex": "^Bearer [a-z]+$"}, ["Bearer abc"], [None, "bearer abc", "Bearer ABC", "xBearer abc"]),
        ({"regex": "bot"}, ["a bot b", "bot"], [None, "BOT"]),
    ],
)
def test_headers_cookies_and_query(test: Any, yes: list[str | None], no: list[str | None]) -> None:
    by_header = one_rule(headers={"X-Token": test})
    by_cookie = one_rule(cookies={"session": test})
    by_query = one_rule(query={"page": test})

    def requests(value: str | None) -> list[tuple[Policy, RequestView]]:
        if value is None:
            return [
                (by_header, view(headers={"X-Other": "1"})),
                (by_cookie, view(headers={"Cookie": "other=1"})),
                (by_query, view(query="other=1")),
            ]
        return [
            (by_header, view(headers={"x-token": value})),
            (by_cookie, view(headers={"Cookie": f'other=1; session="{value}"'})),
            (by_query, view(query="other=1&page=" + value.replace(" ", "+"))),
        ]

    for value in yes:
        for policy, request in requests(value):
            assert matches(policy, request), (value, request.headers, request.query_string)
    for value in no:
        for policy, request in requests(value):
            assert not matches(policy, request), (value, request.headers, request.query_string)


def test_query_values_are_decoded() -> None:
    policy = one_rule(query={"action": "register"})
    assert matches(policy, view(query="action=%72egister"))
    assert not matches(policy, view(query="ACTION=register"))


def test_a_repeated_query_parameter_matches_on_any_of_its_values() -> None:
    # Frameworks disagree on which of ?action=login&action=register counts; the rule sees both.
    policy = one_rule(query={"action": "register"})
    assert matches(policy, view(query="action=login&action=register"))
    assert matches(policy, view(query="action=register&action=login"))
    assert not matches(one_rule(query={"action": "absent"}), view(query="action=login"))


def test_a_repeated_header_matches_on_any_of_its_lines() -> None:
    headers = CIMultiDict([("X-Role", "user"), ("X-Role", "admin")])
    request = RequestView("GET", "/", "shop.example", CIMultiDictProxy(headers), "", "192.0.2.1", ANONYMOUS)
    assert matches(one_rule(headers={"X-Role": "admin"}), request)


def test_all_conditions_must_hold() -> None:
    policy = one_rule(methods=["POST"], paths=["/api/**"], headers={"X-A": "1"}, query={"b": "present"})
    assert matches(policy, view("POST", "/api/x", headers={"X-A": "1"}, query="b"))
    assert not matches(policy, view("GET", "/api/x", headers={"X-A": "1"}, query="b"))
    assert not matches(policy, view("POST", "/x", headers={"X-A": "1"}, query="b"))
    assert not matches(policy, view("POST", "/api/x", headers={"X-A": "2"}, query="b"))
    assert not matches(policy, view("POST", "/api/x", headers={"X-A": "1"}, query="c"))


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.1.2.3", True),
        ("11.0.0.1", False),
        ("192.0.2.77", True),
        ("192.0.2.1", False),
        ("2001:db8::1", True),
        ("2001:db8:ffff::1", True),
        ("2001:db9::1", False),
        ("::ffff:10.9.9.9", True),  # IPv4-mapped: a dual-stack listener reports v4 clients this way
        ("::ffff:11.9.9.9", False),
        ("::1", False),
        ("unknown", False),
        ("", False),
    ],
)
def test_client_cidrs(ip: str, expected: bool) -> None:
    policy = one_rule(client_cidrs=["10.0.0.0/8", "192.0.2.64/26", "2001:db8::/32"])
    assert matches(policy, view(ip=ip)) is expected


def test_user_agents() -> None:
    policy = one_rule(user_agents=["(?i)python-requests", "^curl/"])
    assert matches(policy, view(headers={"User-Agent": "Python-Requests/2.31"}))
    assert matches(policy, view(headers={"user-agent": "curl/8.0"}))
    assert not matches(policy, view(headers={"User-Agent": "Mozilla/5.0 curl/8.0"}))
    assert not matches(policy, view(headers={}))


def test_user_agent_flags_stay_with_their_own_pattern() -> None:
    """Several patterns are searched as one regex; a leading (?i) must not spread to the others."""
    policy = one_rule(user_agents=["(?i)scrapy", "curl/", "(?s)bot.x"])
    assert matches(policy, view(headers={"User-Agent": "SCRAPY/2"}))
    assert matches(policy, view(headers={"User-Agent": "curl/8"}))
    assert not matches(policy, view(headers={"User-Agent": "Curl/8"}))
    assert matches(policy, view(headers={"User-Agent": "bot\nx"}))


@pytest.mark.parametrize(
    ("patterns", "agent", "expected"),
    [
        ([r"(a)\1", "zz"], "xaa", True),  # a back-reference: searched one by one
        ([r"(a)\1", "zz"], "xab", False),
        (["(?x) a b  # spaced", "zz"], "ab", True),  # verbose flag: cannot be scoped
        (["(?x) a b  # spaced", "zz"], "zz", True),
        (["(?P<v>a)(?P=v)", "(?P<v>b)"], "bb", True),  # the same group name twice
    ],
)
def test_user_agent_patterns_that_cannot_be_joined(patterns: list[str], agent: str, expected: bool) -> None:
    policy = one_rule(user_agents=patterns)
    assert matches(policy, view(headers={"User-Agent": agent})) is expected


def test_first_match_wins() -> None:
    policy = make_policy(
        {
            "name": "close-register",
            "match": {"methods": ["POST"], "paths": ["/api/register"]},
            "action": "close",
        },
        {"name": "api", "match": {"paths": ["/api/**"]}, "action": "throttle", "limit": "60/minute"},
        {"name": "all", "action": "block"},
    )
    assert decided(policy, view("POST", "/api/register")) == "close-register"
    assert decided(policy, view("GET", "/api/register")) == "api"
    assert decided(policy, view("POST", "/api/login")) == "api"
    assert decided(policy, view("GET", "/home")) == "all"


def test_allow_skips_later_rules() -> None:
    policy = make_policy(
        {"name": "office", "match": {"client_cidrs": ["203.0.113.0/24"]}, "action": "allow"},
        {"name": "closed", "match": {"paths": ["/api/**"]}, "action": "close"},
    )
    assert decided(policy, view("POST", "/api/register", ip="203.0.113.9")) == "office"
    assert decided(policy, view("POST", "/api/register", ip="198.51.100.9")) == "closed"


def test_no_rule_matches() -> None:
    policy = one_rule(paths=["/internal/**"])
    assert policy.match(view("GET", "/public")) == (None, None)


@pytest.mark.parametrize(
    ("for_", "anonymous", "authenticated"),
    [("anonymous", True, False), ("authenticated", False, True), ("everyone", True, True)],
)
def test_for_identity(for_: str, anonymous: bool, authenticated: bool) -> None:
    policy = make_policy({"name": "r", "match": {"paths": ["/api/**"]}, "for": for_, "action": "block"})
    assert matches(policy, view("GET", "/api/x")) is anonymous
    assert matches(policy, view("GET", "/api/x", identity=ALICE)) is authenticated


def test_for_defaults_to_everyone() -> None:
    policy = one_rule(paths=["/x"])
    assert matches(policy, view("GET", "/x"))
    assert matches(policy, view("GET", "/x", identity=ALICE))


def test_dry_run_rules_do_not_stop_matching() -> None:
    policy = make_policy(
        {"name": "watch-bots", "match": {"user_agents": ["bot"]}, "action": "block", "mode": "dry-run"},
        {"name": "watch-api", "match": {"paths": ["/api/**"]}, "action": "close", "mode": "dry-run"},
        {"name": "login", "match": {"paths": ["/api/login"]}, "action": "throttle", "limit": "5/minute"},
    )
    rule, dry_runs = policy.match(view("POST", "/api/login", headers={"User-Agent": "a bot"}))
    assert rule is not None and rule.name == "login"
    assert [r.name for r in dry_runs or ()] == ["watch-bots", "watch-api"]

    rule, dry_runs = policy.match(view("GET", "/home", headers={"User-Agent": "a bot"}))
    assert rule is None
    assert [r.name for r in dry_runs or ()] == ["watch-bots"]


def test_dry_run_rules_after_the_deciding_rule_are_not_reported() -> None:
    policy = make_policy(
        {"name": "closed", "match": {"paths": ["/x"]}, "action": "close"},
        {"name": "watch", "match": {"paths": ["/x"]}, "action": "block", "mode": "dry-run"},
    )
    rule, dry_runs = policy.match(view("GET", "/x"))
    assert rule is not None and rule.name == "closed"
    assert dry_runs is None


# --- the index never changes the answer -------------------------------------------------------

PATTERNS = [
    "/",
    "/api",
    "/api/**",
    "/api/*",
    "/api/register",
    "/api/reg*",
    "/API/Login",
    "/**",
    "/static/**",
    "/static/*/x",
    "/a*",
    "/users/*/posts/**",
    "/*/register",
    "/Caf\u00e9/**",
]
REQUEST_PATHS = [
    "/",
    "/api",
    "/apix",
    "/api/register",
    "/api/registered",
    "/api/login",
    "/API/LOGIN",
    "/api/x/y",
    "/static/a/x",
    "/static",
    "/a",
    "/abc/d",
    "/users/1/posts",
    "/users/1/posts/2",
    "/v1/register",
    "/caf\u00e9/x",
    "/CAF\u00c9",
    "/other",
]
METHODS = ["GET", "POST", "PUT", "DELETE"]


def _random_rule(rng: random.Random, index: int) -> dict[str, Any]:
    match: dict[str, Any] = {}
    if rng.random() < 0.5:
        match["methods"] = rng.sample(METHODS, rng.randint(1, 2))
    if rng.random() < 0.8:
        match["paths"] = rng.sample(PATTERNS, rng.choice([1, 1, 1, 2, 3]))
    if rng.random() < 0.15:
        match["hosts"] = rng.sample(["shop.example", "*.example.com", "other.example"], 1)
    if rng.random() < 0.15:
        match["headers"] = {"X-Token": rng.choice(["present", "absent", "a", {"regex": "^b"}])}
    if rng.random() < 0.1:
        match["cookies"] = {"session": rng.choice(["present", "absent", "s1"])}
    if rng.random() < 0.1:
        match["query"] = {"page": rng.choice(["present", "2", {"regex": "^[0-9]{3,}$"}])}
    if rng.random() < 0.1:
        match["client_cidrs"] = rng.sample(["10.0.0.0/8", "2001:db8::/32", "192.0.2.0/24"], 1)
    if rng.random() < 0.15:
        # one pattern; two joined into one search; two that cannot be joined (a back-reference)
        match["user_agents"] = rng.choice([["(?i)bot"], ["(?i)bot", "Mozilla"], ["(G)oo\\1?d", "^Moz"]])
    rule: dict[str, Any] = {
        "name": f"r{index}",
        "match": match,
        "action": rng.choice(["allow", "block", "close"]),
    }
    rule["for"] = rng.choice(["everyone", "everyone", "anonymous", "authenticated"])
    if rng.random() < 0.2:
        rule["mode"] = "dry-run"
    return rule


def _random_request(rng: random.Random, case_insensitive: bool) -> RequestView:
    path = rng.choice(REQUEST_PATHS)
    if case_insensitive:
        path = canonical_path(path, case_insensitive=True).match
    headers = {}
    if rng.random() < 0.5:
        headers["X-Token"] = rng.choice(["a", "b1", ""])
    if rng.random() < 0.3:
        headers["Cookie"] = rng.choice(["session=s1", "session=s2", "other=1"])
    if rng.random() < 0.3:
        headers["User-Agent"] = rng.choice(["GoodBot/1", "Mozilla/5.0", "curl/8", "\u212a-B\u00f6t"])
    return view(
        rng.choice([*METHODS, "PATCH", "HEAD"]),
        path,
        host=rng.choice(["shop.example", "a.example.com", "other.example", ""]),
        headers=headers,
        query=rng.choice(["", "page=2", "page=1234", "x=1"]),
        ip=rng.choice(["10.1.1.1", "192.0.2.5", "2001:db8::5", "::ffff:10.0.0.1", "198.51.100.1"]),
        identity=rng.choice([ANONYMOUS, ALICE]),
    )


def linear_scan(
    policy: Policy, request: RequestView
) -> tuple[CompiledRule | None, list[CompiledRule] | None]:
    dry_runs: list[CompiledRule] = []
    for rule in policy.rules:
        if rule.mismatch(request) is None:
            if not rule.dry_run:
                return rule, dry_runs or None
            dry_runs.append(rule)
    return None, dry_runs or None


@pytest.mark.parametrize("case_insensitive", [False, True])
def test_the_index_and_the_compiled_matchers_never_change_the_answer(case_insensitive: bool) -> None:
    rng = random.Random(20260303 + case_insensitive)
    checked = decided_by_a_rule = 0
    for _ in range(300):
        rules = [_random_rule(rng, i) for i in range(rng.randint(1, 20))]
        policy = make_policy(*rules, case_insensitive_paths=case_insensitive)
        for _ in range(40):
            request = _random_request(rng, case_insensitive)
            expected = linear_scan(policy, request)
            assert policy.match(request) == expected, (rules, request.method, request.path)
            checked += 1
            decided_by_a_rule += expected[0] is not None
    # The generator is not degenerate: rules decide some requests and not others.
    assert checked * 0.2 < decided_by_a_rule < checked * 0.95


@pytest.mark.parametrize("condition", ["paths", "methods", "hosts", "client_cidrs", "user_agents"])
def test_an_empty_list_is_refused_rather_than_guessed(condition: str) -> None:
    # Does "paths: []" mean "no path" or "any path"? The file must say; an empty list is an error.
    with pytest.raises(ValidationError, match="at least 1 item"):
        Rule.model_validate({"name": "empty", "match": {condition: []}, "action": "block"})


@pytest.mark.parametrize("case_insensitive", [False, True])
def test_the_compiled_path_test_agrees_with_the_path_matcher(case_insensitive: bool) -> None:
    rng = random.Random(20260304 + case_insensitive)
    shapes = [[p] for p in PATTERNS] + [rng.sample(PATTERNS, rng.randint(2, 4)) for _ in range(40)]
    for patterns in shapes:
        matcher = PathMatcher(patterns, case_insensitive=case_insensitive)
        test = matcher.view_test()
        for path in [*REQUEST_PATHS, "*", ""]:
            assert test(view(path=path)) is matcher.matches(path), (patterns, path)


def test_rule_values_reach_the_compiled_matcher_as_data_never_as_code() -> None:
    sneaky = "') or True or ('"
    policy = make_policy(
        {
            "name": "quoted",
            "match": {"paths": [f"/q{sneaky}"], "headers": {"X-A": sneaky}},
            "action": "block",
        },
        {"name": "hosted", "match": {"hosts": ["x.example')or('"]}, "action": "block"},
        {"name": "agent", "match": {"user_agents": ["\\x27\\)\\s*or\\s*True"]}, "action": "block"},
    )
    assert decided(policy, view("GET", "/q", headers={"X-A": "x"})) is None
    assert decided(policy, view("GET", f"/q{sneaky}", headers={"X-A": "x"})) is None
    assert decided(policy, view("GET", f"/q{sneaky}", headers={"X-A": sneaky})) == "quoted"
    assert decided(policy, view("GET", "/", host="x.example')or('")) == "hosted"
    assert decided(policy, view("GET", "/", headers={"User-Agent": "') or True"})) == "agent"
    assert decided(policy, view("GET", "/", headers={"User-Agent": "curl"})) is None


def test_matchers_kept_by_method_and_path_stay_bounded() -> None:
    policy = make_policy({"name": "r", "match": {"paths": ["/api/**"]}, "action": "block"})
    for i in range(3 * policy_module._KNOWN_ENTRIES):
        assert decided(policy, view("GET", f"/api/{i}")) == "r"
        assert decided(policy, view(f"M{i % 200}", f"/x/{i}")) is None
        assert len(policy.known) <= policy_module._KNOWN_ENTRIES
    assert decided(policy, view("GET", "/api/" + "x" * 300)) == "r"  # too long to keep, still matched
    assert all(len(path) <= policy_module._KNOWN_LENGTH for _, path in policy.known)


# What ignoring case matches besides the ASCII letter: the long s, the Kelvin sign.
LOOK_ALIKES = {"s": "\u017f", "k": "\u212a"}


@pytest.mark.parametrize(
    "patterns",
    [
        ["(?i)sqlmap"],
        ["(?i)python-requests", "Scrapy", "(?i)curl/"],
        ["(?im)Bot"],
        ["Go-http-client", "(?i)okhttp"],
    ],
)
def test_plain_text_user_agent_patterns_are_searched_as_their_regexes_would(patterns: list[str]) -> None:
    regex = policy_module.joined_search(patterns)
    assert regex is not None
    texts = policy_module.plain_texts(patterns)
    assert texts is not None
    search = policy_module.text_search(texts, regex.search)
    rng = random.Random(11)
    # ASCII of both cases, and look-alikes that ignoring case treats specially: the Kelvin sign
    # matches "k", the long s matches "s", dotted capital I lowers to two code points.
    alphabet = "sqlmapSQLMAPbotBOTcurl/-ythonreqsuScrapyGohtpcient \u212a\u017f\u0130\u00df"
    pieces = [p.split(")")[-1] for p in patterns]
    for _ in range(3000):
        agent = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        if rng.random() < 0.3:
            piece = rng.choice(pieces)
            piece = "".join(rng.choice([c, c.upper(), LOOK_ALIKES.get(c, c)]) for c in piece)
            agent = agent[: len(agent) // 2] + piece + agent[len(agent) // 2 :]
        assert (search(agent) is not None) is (regex.search(agent) is not None), agent


@pytest.mark.parametrize("patterns", [["(?i)sql.*map"], ["curl/[0-9]"], ["(?i)caf\u00e9"], ["(?x)bot"]])
def test_user_agent_patterns_that_are_not_plain_text_keep_their_regex(patterns: list[str]) -> None:
    assert policy_module.plain_texts(patterns) is None


def test_user_agent_and_host_answers_are_remembered_within_bounds() -> None:
    """A rotating User-Agent or Host gets the right answer every time and never grows memory."""
    policy = one_rule(user_agents=["(?i)sqlmap"], hosts=["*.example.com"])
    memos = [check.data for check in policy.rules[0].checks if check.kind in ("agent", "hosts")]
    assert len(memos) == 2
    for i in range(3 * MAX_ENTRIES):
        agent = f"SQLMap/{i}" if i % 3 else f"Mozilla/{i}"
        host = f"h{i}.example.com" if i % 2 else f"h{i}.example.org"
        for _ in range(2):  # worked out, then remembered
            assert matches(policy, view(host=host, headers={"User-Agent": agent})) is bool(i % 3 and i % 2)
        assert all(len(memo) <= MAX_ENTRIES for memo in memos)
    long_agent = "x" * MAX_LENGTH + "sqlmap"
    assert matches(policy, view(host="a.example.com", headers={"User-Agent": long_agent}))
    assert not matches(policy, view(host="a.example.com", headers={"User-Agent": long_agent[:-1]}))
    assert all(long_agent not in memo and long_agent[:-1] not in memo for memo in memos)

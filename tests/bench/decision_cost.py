"""Per-request cost of Shield's decision: canonical path, ``decide``, throttle, RateLimit headers.

Runs the same functions the gatekeeper runs per request, in-process and without sockets, for a
20-rule policy (or the one given with --config), and prints nanoseconds per decision for a few
kinds of request. Usage:

    .venv/bin/python tests/bench/decision_cost.py [--config FILE] [--number 200000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

from multidict import CIMultiDict, CIMultiDictProxy

from shield.clock import MonotonicClock
from shield.config import load_config
from shield.decide.decision import Rulebook, Throttle, after_throttle, decide
from shield.decide.identity import NoIdentity
from shield.decide.paths import canonical_raw_path
from shield.decide.policy import Policy, RequestView
from shield.enforce.answers import ratelimit_lines
from shield.feeds.network_feeds import NetworkFeeds
from shield.http.target import request_target
from shield.state.memory_throttle import MemoryLimiter


def twenty_rules() -> str:
    rules = []
    for i in range(6):
        rules.append(
            f"  - name: close-{i}\n    match: {{ methods: [POST], paths: [/api/v{i}/register] }}\n"
            "    action: close\n    message: closed"
        )
    for i in range(6):
        rules.append(f'  - name: block-{i}\n    match: {{ paths: ["/internal{i}/**"] }}\n    action: block')
    for i in range(4):
        rules.append(
            f'  - name: thr-{i}\n    match: {{ paths: ["/api/v{i}/*"] }}\n    action: throttle\n'
            "    limit: 100/second\n    key: ip"
        )
    rules.append("  - name: debug-header\n    match: { headers: { X-Debug: present } }\n    action: block")
    rules.append('  - name: ua\n    match: { user_agents: ["(?i)sqlmap"] }\n    action: block')
    rules.append(
        '  - name: admin\n    match: { methods: [GET], paths: ["/admin/**"], client_cidrs: [10.0.0.0/8] }\n'
        "    action: allow"
    )
    rules.append(
        '  - name: everything\n    match: { paths: ["/**"] }\n    action: throttle\n'
        "    limit: 1000000/second\n    key: ip"
    )
    return "upstream: http://127.0.0.1:1\nrules:\n" + "\n".join(rules) + "\n"


Decide = Callable[[str, str, str], object]

# What most requests carry: a User-Agent rule searches all of it.
BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)

CASES = {
    "GET /2b (20 rules, ends in a throttle)": ("GET", "/2b", "10.0.0.1"),
    "GET /api/v1/items (throttle rule 14)": ("GET", "/api/v1/items", "10.0.0.2"),
    "POST /api/v0/register (close, rule 1)": ("POST", "/api/v0/register", "10.0.0.3"),
    "GET /internal3/x/../y (block, dot segments)": ("GET", "/internal3/x/../y", "10.0.0.4"),
}


def decider(path: Path | None = None) -> tuple[Decide, int, Path]:
    """What the gatekeeper runs per request, for the rule file at ``path`` (default: twenty rules)."""
    if path is None:
        path = Path(tempfile.mkdtemp()) / "twenty.yaml"
        path.write_text(twenty_rules(), encoding="utf-8")
    config = load_config(path)
    policy = Policy(config.rules, config.policy, networks=NetworkFeeds(config.geo, config.lists).directory)
    limiter = MemoryLimiter()
    clock = MonotonicClock()
    identities = NoIdentity()
    headers = CIMultiDictProxy(CIMultiDict({"Host": "shop.example", "User-Agent": BROWSER, "Accept": "*/*"}))

    rulebook = Rulebook(policy, config.policy.default_retry_after, now=clock.now)

    def decide_one(method: str, raw_path: str, client_ip: str) -> object:
        target = request_target(raw_path, headers.get("Host"), "GET")
        assert target is not None
        path, _, query = target.partition(b"?")
        match_path, _ = canonical_raw_path(path, case_insensitive=False)
        identity = identities.identify(headers, client_ip)
        view = RequestView(
            method, match_path, headers.get("Host"), headers, query.decode("latin-1"), client_ip, identity
        )
        decision = decide(view, rulebook)
        if isinstance(decision, Throttle):
            # What the gatekeeper's act does with it: the state, the verdict, the RateLimit lines.
            rule, rate = decision
            limit = limiter.hit(rule.state_key(view), rate, clock.now())
            verdict = after_throttle(rule, limit, deny_on_error=False)
            return ratelimit_lines(limit, rule.name, rate) if verdict is rule.forward else verdict
        return decision

    return decide_one, len(config.rules), path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="a rule file (default: a generated 20-rule policy)")
    parser.add_argument("--number", type=int, default=200_000, help="decisions per measurement")
    args = parser.parse_args()
    decide, count, path = decider(Path(args.config) if args.config else None)
    print(f"{count} rules from {path}; {args.number} decisions per measurement, best of 5")
    for label, (method, raw_path, ip) in CASES.items():
        times = timeit.repeat(
            lambda m=method, p=raw_path, i=ip: decide(m, p, i), number=args.number, repeat=5
        )
        best = min(times) / args.number * 1e9
        median = statistics.median(times) / args.number * 1e9
        print(f"  {label:<46} {best:7.0f} ns best   {median:7.0f} ns median")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The throttle maths (GCRA) and its bounded in-memory state, driven by a fake clock."""

from __future__ import annotations

import random
from math import ceil
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from shield.clock import FakeClock
from shield.config.rules import PolicyOptions, Rule, parse_limit
from shield.decide.gcra import Gcra, RateLimitResult
from shield.decide.identity import ANONYMOUS, Identity
from shield.decide.policy import CompiledRule, RequestView
from shield.enforce import answers
from shield.enforce.answers import ratelimit_headers, ratelimit_lines
from shield.state.memory_throttle import MemoryLimiter


def rate(limit: str, burst: int | None = None) -> Gcra:
    count, period = parse_limit(limit)
    return Gcra(count, period, burst)


def allowed_now(limiter: MemoryLimiter, key: str, gcra: Gcra, clock: FakeClock, n: int) -> int:
    return sum(limiter.hit(key, gcra, clock.now()).allowed for _ in range(n))


def test_burst_then_one_every_six_seconds() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter()
    login = rate("10/minute", burst=5)
    assert allowed_now(limiter, "ip", login, clock, 50) == 5
    for _ in range(20):
        clock.advance(5.9)
        assert allowed_now(limiter, "ip", login, clock, 10) == 0
        clock.advance(0.1)
        assert allowed_now(limiter, "ip", login, clock, 10) == 1


def test_quiet_time_refills_the_bucket_up_to_burst_only() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter()
    login = rate("10/minute", burst=5)
    assert allowed_now(limiter, "ip", login, clock, 5) == 5
    clock.advance(12)  # two intervals
    assert allowed_now(limiter, "ip", login, clock, 10) == 2
    clock.advance(3600)
    assert allowed_now(limiter, "ip", login, clock, 10) == 5


def test_headers_values_are_exact() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter()
    login = rate("10/minute", burst=5)

    first = limiter.hit("ip", login, clock.now())
    assert first.allowed
    assert ratelimit_headers(first) == [
        ("RateLimit-Limit", "5"),
        ("RateLimit-Remaining", "4"),
        ("RateLimit-Reset", "6"),
    ]
    for remaining in (3, 2, 1, 0):
        assert limiter.hit("ip", login, clock.now()).remaining == remaining

    denied = limiter.hit("ip", login, clock.now())
    assert not denied.allowed
    assert ratelimit_headers(denied) == [
        ("RateLimit-Limit", "5"),
        ("RateLimit-Remaining", "0"),
        ("RateLimit-Reset", "30"),  # the bucket is full again in 30 s
        ("Retry-After", "6"),
    ]
    clock.advance(4.5)
    later = limiter.hit("ip", login, clock.now())
    assert dict(ratelimit_headers(later))["Retry-After"] == "2"  # 1.5 s, rounded up
    assert dict(ratelimit_headers(later))["RateLimit-Reset"] == "26"
    clock.advance(1.5)
    again = limiter.hit("ip", login, clock.now())
    assert again.allowed
    assert again.remaining == 0
    assert "Retry-After" not in dict(ratelimit_headers(again))


@pytest.mark.parametrize(
    "result",
    [
        RateLimitResult(True, 10, 9, 0.1, 0.0),
        RateLimitResult(True, 1_000_000, 999_999, 1e-6, 0.0),
        RateLimitResult(False, 5, 0, 59.0, 11.5),
        RateLimitResult(True, 5, 4, 12.0, 0.0),
    ],
)
def test_ratelimit_lines_are_the_headers_a_client_sees(result: RateLimitResult) -> None:
    quota = Gcra(10, 60.0, result.limit)
    fields = [(n, v) for n, v in ratelimit_headers(result, "api", quota) if n != "Retry-After"]
    expected = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in fields)
    assert ratelimit_lines(result, "api", quota) == expected


def test_retry_after_is_never_zero() -> None:
    fast = rate("1000/second", burst=1)
    limiter = MemoryLimiter()
    assert limiter.hit("k", fast, 0.0).allowed
    denied = limiter.hit("k", fast, 0.0)
    assert not denied.allowed
    assert dict(ratelimit_headers(denied))["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("10/minute", 10, 60.0),
        ("5/10s", 5, 10.0),
        ("100/10s", 100, 10.0),
        ("3/second", 3, 1.0),
        ("2/hour", 2, 3600.0),
        ("1/day", 1, 86400.0),
        ("7/5m", 7, 300.0),
        (" 10 / minutes ", 10, 60.0),
        *((f"10/{unit}", 10, 1.0) for unit in ("s", "sec", "second", "seconds")),
        *((f"10/{unit}", 10, 60.0) for unit in ("m", "min", "minute", "minutes")),
        *((f"10/{unit}", 10, 3600.0) for unit in ("h", "hr", "hour", "hours")),
        *((f"10/{unit}", 10, 86400.0) for unit in ("d", "day", "days")),
        ("10/2hr", 10, 7200.0),
    ],
)
def test_limit_strings(text: str, count: int, period: float) -> None:
    assert parse_limit(text) == (count, period)


# Each of these read as something once: "10/ms" as ten a minute, "10/secs" and "10/mins" by a
# trailing s the pattern allowed after any unit. Only the documented units are taken now.
@pytest.mark.parametrize(
    "text",
    [
        *("10/fortnight", "ten/minute", "10", "0/minute", "10/0s", "-1/minute", ""),
        *("10/ms", "10/secs", "10/mins", "10/hs", "10/hrs", "10/ds", "10/dayss", "10/sec s"),
    ],
)
def test_bad_limit_strings(text: str) -> None:
    with pytest.raises(ValueError, match="invalid limit"):
        parse_limit(text)


def test_ten_seconds_limit() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter()
    gcra = rate("5/10s")
    assert allowed_now(limiter, "k", gcra, clock, 20) == 5  # burst defaults to N
    clock.advance(1.99)
    assert allowed_now(limiter, "k", gcra, clock, 5) == 0
    clock.advance(0.01)
    assert allowed_now(limiter, "k", gcra, clock, 5) == 1
    clock.advance(10)
    assert allowed_now(limiter, "k", gcra, clock, 20) == 5


def test_no_double_burst_at_a_window_edge() -> None:
    # A fixed one-minute window would let 10 through just before the minute and 10 more just after.
    clock = FakeClock(start=0.0)
    limiter = MemoryLimiter()
    gcra = rate("10/minute")
    clock.advance(59.5)
    assert allowed_now(limiter, "k", gcra, clock, 10) == 10
    clock.advance(1.0)
    assert allowed_now(limiter, "k", gcra, clock, 10) == 0


def test_no_window_holds_more_than_burst_plus_rate() -> None:
    clock = FakeClock(start=0.0)
    limiter = MemoryLimiter()
    gcra = rate("10/minute")
    passed: list[float] = []
    for _ in range(1200):  # a request every 0.5 s for 10 minutes
        if limiter.hit("k", gcra, clock.now()).allowed:
            passed.append(clock.now())
        clock.advance(0.5)
    # The burst of 10, then one every 6 s from t=6 to t=594.
    assert len(passed) == 10 + 99
    for start in passed:
        in_window = sum(start <= t < start + 60 for t in passed)
        assert in_window <= 20
        if start >= 60:
            assert in_window <= 10


def test_cost() -> None:
    limiter = MemoryLimiter()
    gcra = rate("10/minute")
    result = limiter.hit("k", gcra, 0.0, cost=3)
    assert (result.allowed, result.remaining) == (True, 7)
    assert limiter.hit("k", gcra, 0.0, cost=7).remaining == 0
    assert not limiter.hit("k", gcra, 0.0, cost=1).allowed
    assert limiter.hit("k", gcra, 18.0, cost=3).allowed  # three intervals later
    assert not limiter.hit("other", gcra, 0.0, cost=11).allowed  # more than the bucket holds


def test_a_denied_request_changes_nothing() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter()
    login = rate("10/minute", burst=5)
    assert allowed_now(limiter, "ip", login, clock, 5) == 5
    before = limiter.peek("ip", login, clock.now())
    assert allowed_now(limiter, "ip", login, clock, 1000) == 0
    assert limiter.peek("ip", login, clock.now()) == before
    clock.advance(6)
    assert allowed_now(limiter, "ip", login, clock, 10) == 1


def test_remembered_ratelimit_lines_stay_bounded_and_right() -> None:
    quota = Gcra(1_000_000, 1.0)
    for remaining in range(2 * answers._REMEMBERED_LINES):
        result = RateLimitResult(True, 1_000_000, remaining, 0.5, 0.0)
        fields = ratelimit_headers(result, "api", quota)
        expected = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in fields)
        assert ratelimit_lines(result, "api", quota) == expected
        assert ratelimit_lines(result, "api", quota) == expected  # remembered
    assert len(answers._known_lines) <= answers._REMEMBERED_LINES


def test_the_ietf_fields_name_the_rule_and_say_its_quota_as_written() -> None:
    # 10/minute with a burst of 5: a reader of RateLimit-Limit sees the burst (what may come at
    # once); RateLimit-Policy says the rule's own figures, and RateLimit what is left of them.
    login = Gcra(10, 60.0, 5)
    result = MemoryLimiter().hit("k", login, 1000.0)
    assert dict(ratelimit_headers(result, "login", login)) == {
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "4",
        "RateLimit-Reset": "6",
        "RateLimit-Policy": '"login";q=10;w=60',
        "RateLimit": '"login";r=4;t=6',
    }


def test_a_rule_name_is_always_a_valid_structured_field_string() -> None:
    fields = dict(ratelimit_headers(RateLimitResult(True, 1, 0, 1.0, 0.0), 'a "b" \\ ü', Gcra(1, 1.0)))
    assert fields["RateLimit-Policy"] == '"a \\"b\\" \\\\ ?";q=1;w=1'


def test_peek_does_not_charge() -> None:
    limiter = MemoryLimiter()
    gcra = rate("2/minute")
    for _ in range(10):
        assert limiter.peek("k", gcra, 0.0).allowed
    assert len(limiter) == 0
    assert allowed_now(limiter, "k", gcra, FakeClock(0.0), 5) == 2
    assert not limiter.peek("k", gcra, 0.0).allowed


def test_keys_are_independent() -> None:
    limiter = MemoryLimiter()
    gcra = rate("1/minute")
    assert limiter.hit("a", gcra, 0.0).allowed
    assert not limiter.hit("a", gcra, 0.0).allowed
    assert limiter.hit("b", gcra, 0.0).allowed


def test_memory_is_bounded() -> None:
    limiter = MemoryLimiter(max_keys=1000)
    gcra = rate("10/minute")
    largest = 0
    for i in range(100_000):
        limiter.hit(f"client-{i}", gcra, i * 0.001)
        largest = max(largest, len(limiter))
    assert largest == 1000
    # The most recent clients keep their state.
    assert limiter.peek("client-99999", gcra, 100.0).remaining == 8


def test_eviction_drops_expired_keys_first() -> None:
    limiter = MemoryLimiter(max_keys=100)
    short = rate("1/second", burst=1)
    long = rate("1/hour", burst=1)
    for i in range(50):
        limiter.hit(f"hot-{i}", long, 0.0)  # denied for an hour after this
    for i in range(50):
        limiter.hit(f"idle-{i}", short, 0.0)  # full again after 1 s
    for i in range(200):
        limiter.hit(f"new-{i}", short, 10.0 + i)  # each one's bucket is full again a second later
        assert len(limiter) <= 100
    # Every hot key is still throttled: idle and expired new keys made room, though the hot
    # ones were charged first.
    assert all(not limiter.peek(f"hot-{i}", long, 300.0).allowed for i in range(50))
    assert not limiter.peek("new-199", short, 209.5).allowed


def test_eviction_without_expired_keys_drops_the_least_recently_charged() -> None:
    limiter = MemoryLimiter(max_keys=100)
    long = rate("1/hour", burst=1)
    for i in range(100):
        limiter.hit(f"k{i}", long, float(i))
    limiter.hit("k0", long, 100.0)  # denied: a denial is not a charge
    limiter.hit("newcomer", long, 100.0)
    assert len(limiter) <= 100
    assert limiter.peek("k0", long, 100.0).allowed  # evicted: the oldest charge
    assert not limiter.peek("k99", long, 100.0).allowed
    assert not limiter.peek("newcomer", long, 100.0).allowed


# --- which bucket a request is charged to ----------------------------------------------------


def compiled(key: Any) -> CompiledRule:
    rule = Rule.model_validate({"name": "t", "action": "throttle", "limit": "10/minute", "key": key})
    return CompiledRule(rule, PolicyOptions())


def req(ip: str = "192.0.2.1", headers: dict[str, str] | None = None, user: str | None = None) -> RequestView:
    identity = Identity(True, user) if user else ANONYMOUS
    return RequestView("GET", "/", "h", CIMultiDictProxy(CIMultiDict(headers or {})), "", ip, identity)


def test_key_ip() -> None:
    rule = compiled("ip")
    assert rule.state_key(req("10.0.0.1")) == rule.state_key(req("10.0.0.1", {"X-Api-Key": "a"}))
    assert rule.state_key(req("10.0.0.1")) != rule.state_key(req("10.0.0.2"))


def test_key_route_is_one_shared_bucket() -> None:
    rule = compiled("route")
    assert rule.state_key(req("10.0.0.1")) == rule.state_key(req("10.0.0.2", user="bob"))


def test_key_user_falls_back_to_ip() -> None:
    rule = compiled("user")
    assert rule.state_key(req("10.0.0.1", user="alice")) == rule.state_key(req("10.0.0.2", user="alice"))
    assert rule.state_key(req("10.0.0.1", user="alice")) != rule.state_key(req("10.0.0.1", user="bob"))
    # Anonymous: keyed by address, and never shares a bucket with a user.
    assert rule.state_key(req("10.0.0.1")) != rule.state_key(req("10.0.0.2"))
    assert rule.state_key(req("10.0.0.1")) != rule.state_key(req("10.0.0.1", user="10.0.0.1"))


@pytest.mark.parametrize(
    ("key", "with_a", "with_b"),
    [
        ("header:X-Api-Key", {"x-api-key": "a"}, {"X-Api-Key": "b"}),
        ("cookie:sid", {"Cookie": "sid=a; x=1"}, {"Cookie": "sid=b"}),
    ],
)
def test_key_header_and_cookie_fall_back_to_ip(
    key: str, with_a: dict[str, str], with_b: dict[str, str]
) -> None:
    rule = compiled(key)
    assert rule.state_key(req("10.0.0.1", with_a)) == rule.state_key(req("10.0.0.2", with_a))
    assert rule.state_key(req("10.0.0.1", with_a)) != rule.state_key(req("10.0.0.1", with_b))
    # Missing: the client's address is the key.
    assert rule.state_key(req("10.0.0.1")) == rule.state_key(req("10.0.0.1", {"Other": "1"}))
    assert rule.state_key(req("10.0.0.1")) != rule.state_key(req("10.0.0.2"))
    # A value that looks like an address does not land in that address's bucket.
    assert rule.state_key(req("10.0.0.1", {"X-Api-Key": "10.0.0.2", "Cookie": "sid=10.0.0.2"})) != (
        rule.state_key(req("10.0.0.2"))
    )


def test_key_list_combines_parts() -> None:
    rule = compiled(["ip", "header:X-Api-Key"])
    a1, a2 = req("10.0.0.1", {"X-Api-Key": "a"}), req("10.0.0.2", {"X-Api-Key": "a"})
    assert rule.state_key(a1) != rule.state_key(a2)
    assert rule.state_key(a1) == rule.state_key(req("10.0.0.1", {"X-Api-Key": "a"}))
    assert rule.state_key(a1) != rule.state_key(req("10.0.0.1", {"X-Api-Key": "b"}))


def test_buckets_belong_to_a_rule_and_its_limit() -> None:
    a = CompiledRule(
        Rule.model_validate({"name": "a", "action": "throttle", "limit": "10/minute"}), PolicyOptions()
    )
    b = CompiledRule(
        Rule.model_validate({"name": "b", "action": "throttle", "limit": "10/minute"}), PolicyOptions()
    )
    a_faster = CompiledRule(
        Rule.model_validate({"name": "a", "action": "throttle", "limit": "20/minute"}), PolicyOptions()
    )
    request = req("10.0.0.1")
    assert len({a.state_key(request), b.state_key(request), a_faster.state_key(request)}) == 3


def test_a_full_bucket_answers_exactly_whatever_the_clock_reads() -> None:
    # With float arithmetic on a clock days past boot, "burst - 1 remain" used to come out one
    # short for short intervals, and a 6 s reset as 7 s now and then.
    rng = random.Random(3)
    for gcra in (Gcra(1_000_000, 1.0), Gcra(10, 60.0, 5)):
        limiter = MemoryLimiter()
        for i in range(20_000):
            now = rng.uniform(1e3, 1e7)
            result = limiter.hit(f"hit-{i}", gcra, now)
            assert (result.remaining, ceil(result.reset_after)) == (gcra.burst - 1, ceil(gcra.interval))

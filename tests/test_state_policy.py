"""The pure parts of shared state: the circuit breaker, the over-limit cache, the config checks."""

from __future__ import annotations

import pytest

from shield.config import parse_config
from shield.config.state import parse_seed_url
from shield.decide.gcra import Gcra
from shield.errors import ConfigError
from shield.state.breaker import CircuitBreaker
from shield.state.overlimit import OverLimitCache


def test_the_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failures_to_open=3, open_for=2.0)
    breaker.failed(0.0)
    breaker.failed(0.1)
    breaker.succeeded()  # a success in between resets the count
    breaker.failed(0.2)
    breaker.failed(0.3)
    assert breaker.allows(0.3)
    breaker.failed(0.4)
    assert breaker.state(0.4) == "open"
    assert not breaker.allows(1.0)


def test_an_open_breaker_lets_one_probe_through_after_its_pause() -> None:
    breaker = CircuitBreaker(failures_to_open=1, open_for=2.0)
    breaker.failed(10.0)
    assert not breaker.allows(11.9)
    assert breaker.allows(12.0)  # the probe
    assert not breaker.allows(12.0)  # everyone else waits for its outcome
    assert breaker.state(12.0) == "half-open"
    breaker.failed(12.5)  # the probe failed: another full pause
    assert not breaker.allows(14.0)
    assert breaker.allows(14.5)
    breaker.succeeded()
    assert breaker.state(14.5) == "closed"
    assert breaker.allows(14.5) and breaker.allows(14.5)
    assert breaker.times_opened == 1


def test_a_denied_key_is_answered_locally_until_its_retry_time() -> None:
    cache = OverLimitCache(max_keys=10)
    rate = Gcra(10, 60.0)
    denial = rate.result(False, reset_after=60.0, retry_after=6.0)
    cache.add("client", 100.0, denial)
    later = cache.get("client", 104.0)
    assert later is not None
    assert not later.allowed
    assert later.retry_after == pytest.approx(2.0)
    assert later.reset_after == pytest.approx(56.0)
    assert cache.get("client", 106.0) is None
    assert len(cache) == 0
    assert cache.get("someone else", 100.0) is None


def test_the_over_limit_cache_is_bounded() -> None:
    cache = OverLimitCache(max_keys=100)
    denial = Gcra(1, 60.0).result(False, reset_after=60.0, retry_after=60.0)
    for i in range(10_000):
        cache.add(f"client-{i}", 0.0, denial)
    assert len(cache) == 100
    assert cache.get("client-9999", 1.0) is not None


def test_results_from_redis_read_like_results_from_memory() -> None:
    rate = Gcra(10, 60.0, burst=5)
    # After three of five: the bucket refills in 18 s, two requests remain.
    assert rate.result(True, reset_after=18.0, retry_after=0.0) == rate.apply(None, 0.0, 3)[0]


def test_sentinel_and_cluster_urls_name_every_seed() -> None:
    seeds = parse_seed_url("redis+sentinel://:s%40cret@10.0.0.1:26380,[::1],sentinel-3/mymaster/2", 26379)
    assert seeds.hosts == [("10.0.0.1", 26380), ("::1", 26379), ("sentinel-3", 26379)]
    assert seeds.path == ["mymaster", "2"]
    assert seeds.password == "s@cret"
    assert not seeds.tls
    assert parse_seed_url("rediss+cluster://a:7000,b:7001", 6379).tls


CONFIG = "upstream: http://127.0.0.1:8000\n"
THROTTLE = "rules:\n  - {name: api, action: throttle, limit: 10/minute}\n"


def check(text: str) -> str:
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "shield.yaml")
    return str(refused.value)


def test_workers_with_memory_state_and_a_throttle_are_refused_at_the_workers_line() -> None:
    message = check(CONFIG + "workers: 4\n" + THROTTLE)
    assert message.startswith("shield.yaml:2:10: workers: 4 with state.backend: memory")
    assert "4 times its limit" in message


def test_workers_with_memory_state_and_a_waiting_room_are_refused_too() -> None:
    queue = (
        "rules:\n  - name: registration\n    match: { paths: [/signup] }\n"
        "    action: queue\n    admit: 30/minute\n"
    )
    message = check(CONFIG + "workers: 2\n" + queue)
    assert "queue rule 'registration' would let 2 times its admit rate through" in message


@pytest.mark.parametrize(
    "accepted",
    [
        "workers: 4\nstate: {per_worker_limits: true}\n" + THROTTLE,
        "workers: 4\nstate: {backend: redis, url: 'redis://127.0.0.1:6379/0'}\n" + THROTTLE,
        "workers: 4\n",  # no throttle, nothing to multiply
    ],
)
def test_workers_are_fine_when_limits_are_shared_or_knowingly_per_worker(accepted: str) -> None:
    assert parse_config(CONFIG + accepted).workers == 4


def test_redis_state_needs_a_url_it_understands() -> None:
    assert "backend: redis needs a url" in check(CONFIG + "state: {backend: redis}\n")
    message = check(CONFIG + "state: {backend: redis, url: 'http://redis:6379'}\n")
    assert message.startswith("shield.yaml:2:")
    assert "state.url must start with one of redis://" in message


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://10.0.0.1:26379", "redis+sentinel://s1:26379/mymaster/zero", "redis+cluster://n1:70o0"],
)
def test_sentinel_and_cluster_urls_are_checked_before_they_are_used(url: str) -> None:
    message = check(CONFIG + f"state: {{backend: redis, url: '{url}'}}\n")
    assert message.startswith("shield.yaml:2:")
    assert "state.url" in message

"""Auto-close: a rule closes itself while its trigger holds and reopens after a cool-down.

The trigger is a state machine on a fake clock; the end-to-end tests drive a real Shield whose
clock is fake too, so minutes of cool-down pass in microseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shield.app.server import Shield
from shield.clock import FakeClock
from shield.config import load_config
from shield.config.auto_close import AutoClose
from shield.decide.trigger import Trigger
from tests.conftest import shield_config, url_of


def trigger(**settings: Any) -> Trigger:
    return Trigger(AutoClose.model_validate(settings))


def idle(t: Trigger, clock: FakeClock, seconds: int) -> bool:
    """No traffic for ``seconds``, the watcher ticking once a second; closed at the end?"""
    for _ in range(seconds):
        clock.advance(1)
        closed = t.update(clock.now())
    return closed


def steady(t: Trigger, clock: FakeClock, per_second: int, seconds: float) -> list[bool]:
    """``per_second`` requests a second for ``seconds``; whether each found the rule closed."""
    closed = []
    for _ in range(round(per_second * seconds)):
        clock.advance(1 / per_second)
        closed.append(t.hit(clock.now()))
    return closed


def test_closes_once_the_rate_has_held_for_the_whole_duration() -> None:
    clock = FakeClock()
    t = trigger(when="rate > 50/second", **{"for": "30s"}, reopen_after="10m")
    assert not any(steady(t, clock, 80, 29))
    assert steady(t, clock, 80, 2)[-1] is True
    assert t.closed
    assert t.transitions == [("closed", pytest.approx(clock.now(), abs=1.5))]


def test_a_short_spike_closes_nothing() -> None:
    clock = FakeClock()
    t = trigger(when="rate > 50/second", **{"for": "30s"})
    assert not any(steady(t, clock, 500, 10))  # ten seconds at ten times the threshold
    assert not any(steady(t, clock, 10, 60))
    assert not any(steady(t, clock, 500, 10))  # the clock of `for` started again
    assert t.transitions == []


def test_traffic_just_under_the_threshold_never_closes() -> None:
    clock = FakeClock()
    t = trigger(when="rate > 50/second", **{"for": "5s"})
    assert not any(steady(t, clock, 45, 120))


def test_reopens_after_the_cool_down_once_quiet() -> None:
    clock = FakeClock()
    t = trigger(when="rate > 50/second", **{"for": "30s"}, reopen_after="10m")
    steady(t, clock, 100, 31)
    assert t.closed
    closed_at = clock.now()
    assert idle(t, clock, 599) is True  # quiet, but the cool-down is not over
    assert idle(t, clock, 1) is False
    assert [state for state, _ in t.transitions] == ["closed", "open"]
    assert t.transitions[1][1] == pytest.approx(closed_at + 600)


def test_hysteresis_keeps_it_closed_while_the_flood_goes_on() -> None:
    clock = FakeClock()
    t = trigger(when="rate > 50/second", **{"for": "30s"}, reopen_after="10m")
    steady(t, clock, 100, 31)
    assert all(steady(t, clock, 100, 700))  # still flooding well past the cool-down
    assert all(steady(t, clock, 10, 29))  # calm, but not yet for `for`
    assert steady(t, clock, 10, 2)[-1] is False
    assert [state for state, _ in t.transitions] == ["closed", "open"]


def test_retry_after_counts_down_to_the_end_of_the_cool_down() -> None:
    clock = FakeClock()
    t = trigger(when="rate > 5/second", **{"for": 0}, reopen_after="10m")
    steady(t, clock, 10, 1)
    assert t.retry_after(clock.now()) == pytest.approx(600, abs=1)
    clock.advance(540)
    assert t.retry_after(clock.now()) == pytest.approx(60, abs=1)


def test_the_error_trigger_needs_enough_answers_and_a_high_enough_share() -> None:
    clock = FakeClock()
    t = trigger(when="errors > 20%", **{"for": "10s"}, window="10s", min_requests=20, reopen_after="1m")
    for _ in range(5):  # 5 failures of 5 answers: too few to judge
        clock.advance(0.1)
        t.answered(clock.now(), failed=True)
        assert t.hit(clock.now()) is False
    for second in range(30):  # then 30% errors, steadily
        for n in range(10):
            clock.advance(0.1)
            t.answered(clock.now(), failed=n < 3)
        if second < 9:
            assert t.hit(clock.now()) is False
    assert t.hit(clock.now()) is True
    # Closed, nothing reaches the upstream: no answers, no errors; it reopens after the cool-down.
    assert idle(t, clock, 59) is True
    assert idle(t, clock, 2) is False


# End to end ------------------------------------------------------------------------------------

REGISTRATION = {
    "name": "registration",
    "public_name": "Sign-up",
    "match": {"methods": ["POST"], "paths": ["/api/register"]},
    "action": "allow",
    "auto_close": {
        "when": "rate > 5/second",
        "for": 0,
        "reopen_after": "10m",
        "message": "Sign-up is paused while we deal with a flood of fake accounts.",
    },
}


async def register(client: aiohttp.ClientSession, shield: Shield) -> tuple[int, str]:
    async with client.post(url_of(shield, "/api/register"), headers={"Accept": "application/json"}) as r:
        return r.status, await r.text()


async def metrics(client: aiohttp.ClientSession, shield: Shield) -> str:
    async with client.get(f"http://127.0.0.1:{shield.admin_port}/metrics") as response:
        return await response.text()


async def test_a_flooded_rule_closes_with_its_message_and_reopens_after_the_cool_down(
    upstream_url: str, client: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    shield = Shield(shield_config(upstream_url, rules=[REGISTRATION]), clock=clock)
    await shield.start()
    try:
        statuses = [(await register(client, shield))[0] for _ in range(5)]
        assert statuses == [200] * 5
        status, body = await register(client, shield)
        assert status == 503
        assert "flood of fake accounts" in body
        async with client.get(url_of(shield, "/api/other")) as response:
            assert response.status == 200  # the rest of the service is untouched

        shield.auto_close.tick()
        text = await metrics(client, shield)
        assert 'shield_auto_close_transitions_total{rule="registration",state="closed"} 1.0' in text
        assert 'shield_rule_closed{rule="registration",source="auto"} 1.0' in text
        assert (
            'shield_requests_total{action="allow",decision="closed",identity="anonymous",'
            'rule="registration"} 1.0' in text
        )

        clock.advance(601)
        assert (await register(client, shield))[0] == 200
        shield.auto_close.tick()
        text = await metrics(client, shield)
        assert 'shield_auto_close_transitions_total{rule="registration",state="open"} 1.0' in text
        assert 'shield_rule_closed{rule="registration",source="auto"} 0.0' in text
    finally:
        await shield.stop(grace=1.0)


async def test_a_throttle_rule_with_auto_close_still_throttles(
    upstream_url: str, client: aiohttp.ClientSession
) -> None:
    """The auto-close trigger must not take the rule off the limiter's books: its bucket is
    charged like any throttle's (a regression the gatekeeper's fast path once invited)."""
    rule = {
        "name": "login",
        "match": {"paths": ["/api/login"]},
        "action": "throttle",
        "limit": "3/minute",
        "key": "ip",
        "auto_close": {"when": "rate > 1000/second", "for": "1m", "reopen_after": "1m"},
    }
    clock = FakeClock()
    shield = Shield(shield_config(upstream_url, rules=[rule]), clock=clock)
    await shield.start()
    try:
        statuses = []
        for _ in range(5):
            async with client.get(url_of(shield, "/api/login")) as response:
                statuses.append(response.status)
        assert statuses == [200, 200, 200, 429, 429]
    finally:
        await shield.stop(grace=1.0)


async def test_transitions_are_logged(
    upstream_url: str, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    shield = Shield(shield_config(upstream_url, rules=[REGISTRATION]), clock=clock)
    await shield.start()
    try:
        for _ in range(6):
            await register(client, shield)
        shield.auto_close.tick()
        clock.advance(601)
        shield.auto_close.tick()
    finally:
        await shield.stop(grace=1.0)
    lines = [r.getMessage() for r in caplog.records if r.name == "shield.auto_close"]
    assert lines[0].startswith("rule registration auto-closed: rate > 5/1s held for 0s")
    assert lines[1] == "rule registration reopened: rate > 5/1s no longer holds"


HEAD = "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nupstream: {url}\nrules:\n"
RULE = """\
  - name: registration
    match: {{ methods: [POST], paths: [/api/register] }}
    action: allow
    auto_close: {{ when: "rate > 5/second", for: 0, reopen_after: {reopen} }}
"""
OTHER = """\
  - name: internal
    match: { paths: [/internal/**] }
    action: block
"""


async def test_a_closed_trigger_survives_a_reload_that_leaves_it_unchanged(
    upstream_url: str, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = tmp_path / "shield.yaml"
    head = HEAD.format(url=upstream_url)
    path.write_text(head + RULE.format(reopen="10m"))
    shield = Shield(load_config(path), config_path=str(path), clock=FakeClock())
    await shield.start()
    try:
        for _ in range(6):
            await register(client, shield)
        assert (await register(client, shield))[0] == 503

        path.write_text(head + OTHER + RULE.format(reopen="10m"))
        assert shield.reload()
        assert (await register(client, shield))[0] == 503  # still closed after the reload

        path.write_text(head + RULE.format(reopen="20m"))  # a changed trigger starts afresh
        assert shield.reload()
        assert (await register(client, shield))[0] == 200
    finally:
        await shield.stop(grace=1.0)

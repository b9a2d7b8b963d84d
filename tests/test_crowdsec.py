"""Shield follows a CrowdSec Local API as a bouncer: the ``crowdsec:`` section, the table of
decisions in force (hand-written stream answers, a fake wall clock), and the bouncer against a
real LAPI (``tests/crowdsec_lapi.py``): added, deleted, expired, the LAPI killed and restarted or
rebuilt, a wrong key."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from pydantic import ValidationError

from shield.clock import FakeClock
from shield.config.crowdsec import Crowdsec
from shield.enforce.crowdsec_bouncer import (
    CrowdsecAnswerError,
    CrowdsecBouncer,
    CrowdsecDecisions,
    CrowdsecVerdict,
    parse_go_duration,
)
from tests.conftest import free_port
from tests.crowdsec_lapi import Lapi, running_lapi

NOW = 1_700_000_000.0
KEY_ENV = "SHIELD_TEST_CROWDSEC_KEY"


# The section


def test_the_bouncer_key_is_read_from_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROWDSEC_BOUNCER_KEY", "0123456789abcdef")
    config = Crowdsec.model_validate(
        {
            "url": "http://127.0.0.1:8080",
            "api_key_env": "CROWDSEC_BOUNCER_KEY",
            "poll": "10s",
            "timeout": "5s",
        }
    )
    assert (config.api_key, config.poll, config.timeout) == ("0123456789abcdef", 10.0, 5.0)
    assert "0123456789abcdef" not in repr(config) + str(config.model_dump())


def test_a_missing_or_empty_key_variable_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CROWDSEC_BOUNCER_KEY", raising=False)
    with pytest.raises(ValidationError, match="CROWDSEC_BOUNCER_KEY"):
        Crowdsec.model_validate({"api_key_env": "CROWDSEC_BOUNCER_KEY"})
    monkeypatch.setenv("CROWDSEC_BOUNCER_KEY", "")
    with pytest.raises(ValidationError, match="CROWDSEC_BOUNCER_KEY"):
        Crowdsec.model_validate({"api_key_env": "CROWDSEC_BOUNCER_KEY"})


def test_the_key_may_be_in_a_file_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("0123456789abcdef\n")
    assert Crowdsec.model_validate({"api_key_file": str(key_file)}).api_key == "0123456789abcdef"
    monkeypatch.setenv("CROWDSEC_BOUNCER_KEY", "x")
    for both_or_neither in ({}, {"api_key_env": "CROWDSEC_BOUNCER_KEY", "api_key_file": str(key_file)}):
        with pytest.raises(ValidationError, match="exactly one of api_key_env, api_key_file"):
            Crowdsec.model_validate(both_or_neither)
    with pytest.raises(ValidationError, match="cannot read"):
        Crowdsec.model_validate({"api_key_file": str(tmp_path / "missing")})


def test_the_section_rejects_what_it_cannot_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROWDSEC_BOUNCER_KEY", "0123456789abcdef")
    base = {"api_key_env": "CROWDSEC_BOUNCER_KEY"}
    for bad, message in [
        ({"url": "127.0.0.1:8080"}, "http:// or https:// URL"),
        ({"poll": "0s"}, "greater than 0"),
        ({"timeout": "soon"}, "invalid duration"),
        ({"api_key": "inline"}, "Extra inputs are not permitted"),
    ]:
        with pytest.raises(ValidationError, match=message):
            Crowdsec.model_validate({**base, **bad})
    monkeypatch.setenv("CROWDSEC_BOUNCER_KEY", "has space")
    with pytest.raises(ValidationError, match="whitespace"):
        Crowdsec.model_validate(base)


def test_every_field_is_described_in_the_schema() -> None:
    properties = Crowdsec.model_json_schema()["properties"]
    assert set(properties) == {"url", "api_key_env", "api_key_file", "poll", "timeout", "answer"}
    assert all(field.get("description") for field in properties.values())


# The table of decisions in force, fed by hand-written stream answers


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3h59m58.123s", 14398.123), ("-1s", -1.0), ("0", 0.0), ("1m", 60.0), ("250ms", 0.25), ("1.5h", 5400.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "1d", "h", "1s1", "3 h"])
def test_what_is_not_a_go_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a Go duration"):
        parse_go_duration(text)


def decision(
    value: str,
    type: str = "ban",
    *,
    scope: str | None = None,
    duration: str = "4h",
    id: int | None = None,
    scenario: str = "crowdsecurity/http-probing",
) -> dict[str, Any]:
    """One decision as the stream writes it."""
    item: dict[str, Any] = {
        "duration": duration,
        "origin": "crowdsec",
        "scenario": scenario,
        "scope": scope or ("Range" if "/" in value else "Ip"),
        "type": type,
        "value": value,
    }
    if id is not None:
        item["id"] = id
    return item


def stream(new: Sequence[object] | None = None, deleted: Sequence[object] | None = None) -> dict[str, Any]:
    return {"new": None if new is None else list(new), "deleted": None if deleted is None else list(deleted)}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def table(clock: FakeClock) -> CrowdsecDecisions:
    return CrowdsecDecisions(wall=clock.now)


def types(table: CrowdsecDecisions, *ips: str) -> list[str | None]:
    return [verdict.type if (verdict := table.verdict(ip)) else None for ip in ips]


def test_ips_and_ranges_of_both_families_are_in_force(table: CrowdsecDecisions) -> None:
    table.apply(
        stream(
            [
                decision("192.0.2.1", id=1),
                decision("2001:db8::1", "captcha", id=2),
                decision("198.51.100.0/24", id=3),
                decision("2001:db8:1::/48", "captcha", id=4),
            ]
        ),
        startup=True,
    )
    assert table.verdict("192.0.2.1") == CrowdsecVerdict(
        "ban", NOW + 4 * 3600, "crowdsecurity/http-probing", "crowdsec", "192.0.2.1"
    )
    assert types(table, "2001:db8::1", "2001:0db8:0:0::1", "198.51.100.200", "2001:db8:1:ffff::9") == [
        "captcha",
        "captcha",
        "ban",
        "captcha",
    ]
    verdict = table.verdict("198.51.100.7")
    assert verdict is not None and verdict.value == "198.51.100.0/24"
    assert types(table, "192.0.2.2", "198.51.101.1", "2001:db8::2", "2001:db8:2::1", "junk") == [None] * 5
    assert (len(table), table.counts()) == (4, {"ban": 2, "captcha": 2})


def test_ipv4_mapped_addresses_are_their_ipv4_address(table: CrowdsecDecisions) -> None:
    table.apply(
        stream([decision("::ffff:192.0.2.1"), decision("::ffff:198.51.100.0/120", "captcha")]), startup=True
    )
    assert types(table, "192.0.2.1", "::ffff:192.0.2.1", "198.51.100.9") == ["ban", "ban", "captcha"]
    table.apply(stream([decision("192.0.2.5")]), startup=True)
    assert types(table, "::ffff:192.0.2.5", "::ffff:c000:205") == ["ban", "ban"]


def test_a_ban_wins_over_a_captcha_on_the_same_address(table: CrowdsecDecisions) -> None:
    table.apply(
        stream(
            [
                decision("192.0.2.1", "captcha", duration="9h", id=1),
                decision("192.0.2.1", "ban", duration="1h", id=2),
                decision("198.51.100.0/24", "ban", id=3),
                decision("198.51.100.7", "captcha", id=4),
                decision("203.0.113.0/24", "captcha", id=5),
                decision("203.0.0.0/8", "ban", id=6),
                decision("10.0.0.0/8", "captcha", id=7),
                decision("10.1.2.3", "ban", id=8),
            ]
        ),
        startup=True,
    )
    assert types(table, "192.0.2.1", "198.51.100.7", "203.0.113.9", "10.1.2.3", "10.9.9.9") == [
        "ban",
        "ban",
        "ban",
        "ban",
        "captcha",
    ]


def test_deleted_decisions_are_lifted_by_id(table: CrowdsecDecisions) -> None:
    table.apply(
        stream(
            [
                decision("192.0.2.1", id=1),
                decision("192.0.2.1", "captcha", id=2),
                decision("10.0.0.0/8", id=3),
            ]
        ),
        startup=True,
    )
    assert types(table, "192.0.2.1", "10.2.3.4") == ["ban", "ban"]  # remembered now
    assert table.apply(
        stream(deleted=[decision("192.0.2.1", id=1), decision("10.0.0.0/8", id=3)]), startup=False
    )
    assert types(table, "192.0.2.1", "10.2.3.4") == ["captcha", None]
    # The LAPI tells the same deletions again later; a decision under a new id stays.
    table.apply(stream([decision("10.0.0.0/8", id=9)]), startup=False)
    assert not table.apply(stream(deleted=[decision("10.0.0.0/8", id=3)]), startup=False)
    assert types(table, "10.2.3.4") == ["ban"]


def test_deleted_decisions_without_ids_are_lifted_by_scope_value_and_type(table: CrowdsecDecisions) -> None:
    table.apply(
        stream(
            [decision("192.0.2.1", id=1), decision("192.0.2.1", "captcha", id=2), decision("198.51.100.0/24")]
        ),
        startup=True,
    )
    table.apply(
        stream(deleted=[decision("192.0.2.1"), decision("198.51.100.0/24", "captcha")]), startup=False
    )
    assert types(table, "192.0.2.1", "198.51.100.1") == ["captcha", "ban"]
    table.apply(stream(deleted=[decision("198.51.100.0/24")]), startup=False)
    assert types(table, "198.51.100.1") == [None]


def test_a_decision_said_new_and_deleted_at_once_is_not_in_force(table: CrowdsecDecisions) -> None:
    table.apply(stream([decision("192.0.2.1", id=5)], deleted=[decision("192.0.2.1", id=5)]), startup=False)
    assert table.verdict("192.0.2.1") is None


def test_decisions_end_on_the_wall_clock(table: CrowdsecDecisions, clock: FakeClock) -> None:
    table.apply(
        stream(
            [
                decision("192.0.2.1", duration="-1s", id=1),
                decision("192.0.2.2", duration="10s", id=2),
                decision("192.0.2.3", duration="10s", id=3),
                decision("192.0.2.3", "captcha", duration="1h", id=4),
                decision("198.51.100.0/24", duration="20s", id=5),
            ]
        ),
        startup=True,
    )
    assert types(table, "192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.1") == [None, "ban", "ban", "ban"]
    clock.advance(9.9)
    assert types(table, "192.0.2.2") == ["ban"]
    clock.advance(0.1)
    assert types(table, "192.0.2.2", "192.0.2.3", "198.51.100.1") == [None, "captcha", "ban"]
    assert table.counts() == {"ban": 1, "captcha": 1}
    clock.advance(10)
    assert types(table, "198.51.100.1") == [None]
    # A decision the LAPI reports as run out (negative duration) ends one held here.
    table.apply(stream([decision("192.0.2.3", "captcha", duration="-5ms", id=4)]), startup=False)
    assert (len(table), table.verdict("192.0.2.3")) == (0, None)


def test_the_whole_set_replaces_the_table(table: CrowdsecDecisions) -> None:
    table.apply(stream([decision("192.0.2.1", id=1), decision("10.0.0.0/8", id=2)]), startup=True)
    assert types(table, "192.0.2.1", "10.0.0.1") == ["ban", "ban"]
    table.apply(stream([decision("192.0.2.9", id=1)]), startup=True)
    assert types(table, "192.0.2.1", "10.0.0.1", "192.0.2.9") == [None, None, "ban"]


def test_other_scopes_types_and_malformed_entries_are_ignored_and_counted(table: CrowdsecDecisions) -> None:
    table.apply(
        stream(
            [
                decision("192.0.2.1", "custom"),
                decision("FR", scope="Country"),
                decision("AS64496", scope="AS"),
                decision("192.0.2.300"),
                decision("192.0.2.2", duration="forever"),
                {"value": "192.0.2.3"},
                "nonsense",
                decision("192.0.2.4", "Ban", scope="ip"),
            ]
        ),
        startup=True,
    )
    assert table.ignored == 7
    assert types(table, "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4") == [None, None, None, "ban"]


@pytest.mark.parametrize("answer", [[], "x", {"new": {"a": 1}}, {"new": [], "deleted": 3}])
def test_a_malformed_answer_changes_nothing(table: CrowdsecDecisions, answer: object) -> None:
    table.apply(stream([decision("192.0.2.1", id=1)]), startup=True)
    with pytest.raises(CrowdsecAnswerError):
        table.apply(answer, startup=True)
    assert types(table, "192.0.2.1") == ["ban"]


def test_many_ranges_cost_one_probe_per_prefix_length(clock: FakeClock) -> None:
    """A lookup's cost follows the distinct prefix lengths, not the number of ranges."""

    def ranges(count: int) -> list[dict[str, Any]]:
        nets = ipaddress.ip_network("10.0.0.0/8").subnets(new_prefix=24)
        v6 = ipaddress.ip_network("2001:db8::/32").subnets(new_prefix=64)
        items = [decision(str(next(nets)), id=n) for n in range(count)]
        items += [decision(str(next(v6)), "captcha", id=count + n) for n in range(count)]
        items += [decision("172.16.0.0/12", "captcha", id=2 * count), decision("10.255.0.0/16", "captcha")]
        return items

    def cost(count: int) -> float:
        table = CrowdsecDecisions(wall=clock.now, memo_entries=1)  # remember nothing: every lookup searches
        table.apply(stream(ranges(count)), startup=True)
        last = ipaddress.IPv4Address("10.0.0.1") + 256 * (count - 1)
        assert types(table, "10.0.3.9", str(last), str(last + 256)) == ["ban", "ban", None]
        assert types(table, "172.20.1.1", "10.255.1.1", "2001:db8:0:5::1", "11.0.0.1") == ["captcha"] * 3 + [
            None
        ]
        lookups = [f"11.0.{n // 256}.{n % 256}" for n in range(2000)]
        started = time.perf_counter()
        for ip in lookups:
            table.verdict(ip)
        return time.perf_counter() - started

    few, many = min(cost(10) for _ in range(3)), min(cost(3000) for _ in range(3))
    assert many < 3 * few, (few, many)  # a scan per request would be some thousand times slower


def test_the_memory_of_verdicts_is_bounded_and_forgets_on_change(clock: FakeClock) -> None:
    table = CrowdsecDecisions(wall=clock.now, memo_entries=100)
    table.apply(stream([decision("10.0.0.0/8", id=1)]), startup=True)
    assert all(table.verdict(f"10.0.{n // 256}.{n % 256}") for n in range(1000))
    assert len(table._memo) <= 100
    table.apply(stream(deleted=[decision("10.0.0.0/8", id=1)]), startup=False)
    assert table._memo == {} and table.verdict("10.0.0.1") is None


# The bouncer against a real LAPI


@pytest.fixture
async def lapi(tmp_path: Path) -> AsyncIterator[Lapi]:
    async with running_lapi(tmp_path / "lapi") as lapi:
        yield lapi


MakeBouncer = Callable[..., Awaitable[CrowdsecBouncer]]


@pytest.fixture
def log_records(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[int], list[str]]]:
    caplog.set_level(logging.DEBUG, logger="shield.crowdsec")

    def records(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "shield.crowdsec" and r.levelno == level]

    yield records


@pytest.fixture
async def make_bouncer(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MakeBouncer]:
    """``await make_bouncer(url, key, poll=..., wall=...)``: a started bouncer, closed after."""
    started: list[CrowdsecBouncer] = []

    async def make(
        url: str, key: str, *, poll: float = 60.0, timeout: float = 2.0, wall: Callable[[], float] = time.time
    ) -> CrowdsecBouncer:
        monkeypatch.setenv(KEY_ENV, key)
        config = Crowdsec.model_validate(
            {"url": url, "api_key_env": KEY_ENV, "poll": poll, "timeout": timeout}
        )
        bouncer = CrowdsecBouncer(config, wall=wall)
        started.append(bouncer)
        await bouncer.start()
        return bouncer

    yield make
    for bouncer in started:
        await bouncer.close()


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.02)


async def test_the_first_poll_takes_the_whole_set(lapi: Lapi, make_bouncer: MakeBouncer) -> None:
    await lapi.add_decision(ip="192.0.2.1")
    await lapi.add_decision(range="198.51.100.0/24", type="captcha")
    bouncer = await make_bouncer(lapi.url, await lapi.add_bouncer("shield"))
    assert (bouncer.polls, bouncer.errors, bouncer.bans, bouncer.captchas) == (1, 0, 1, 1)
    assert bouncer.last_success == pytest.approx(time.time(), abs=5)
    assert types(bouncer.decisions, "192.0.2.1", "198.51.100.9") == ["ban", "captcha"]


async def test_decisions_added_with_cscli_are_in_force_after_one_poll(
    lapi: Lapi, make_bouncer: MakeBouncer
) -> None:
    bouncer = await make_bouncer(lapi.url, await lapi.add_bouncer("shield"))
    assert len(bouncer.decisions) == 0
    await lapi.add_decision(ip="192.0.2.1", type="ban")
    await lapi.add_decision(ip="192.0.2.2", type="captcha")
    await lapi.add_decision(range="198.51.100.0/24", type="ban")
    await lapi.add_decision(range="203.0.113.0/24", type="captcha")
    await lapi.add_decision(ip="2001:db8::1", type="ban")
    await lapi.add_decision(range="2001:db8:1::/48", type="captcha")
    assert await bouncer.poll_once()
    verdict = bouncer.decisions.verdict("192.0.2.1")
    assert verdict is not None
    assert (verdict.type, verdict.value, verdict.origin) == ("ban", "192.0.2.1", "cscli")
    assert verdict.scenario.startswith("manual 'ban'")
    assert verdict.until == pytest.approx(time.time() + 3600, abs=10)
    assert types(
        bouncer.decisions,
        "192.0.2.2",
        "198.51.100.77",
        "203.0.113.5",
        "2001:db8::1",
        "2001:db8:1:2::3",
        "::ffff:192.0.2.1",
    ) == ["captcha", "ban", "captcha", "ban", "captcha", "ban"]
    assert types(bouncer.decisions, "192.0.2.3", "198.51.101.1", "2001:db8::2", "2001:db8:2::1") == [None] * 4
    assert (bouncer.bans, bouncer.captchas, bouncer.polls, bouncer.errors) == (3, 3, 2, 0)


async def test_a_deleted_decision_is_lifted_after_the_next_poll(
    lapi: Lapi, make_bouncer: MakeBouncer
) -> None:
    await lapi.add_decision(ip="192.0.2.1")
    await lapi.add_decision(range="2001:db8:1::/48", type="captcha")
    await lapi.add_decision(ip="192.0.2.2")
    bouncer = await make_bouncer(lapi.url, await lapi.add_bouncer("shield"))
    assert types(bouncer.decisions, "192.0.2.1", "2001:db8:1::9", "192.0.2.2") == ["ban", "captcha", "ban"]
    await lapi.delete_decisions(ip="192.0.2.1")
    await lapi.delete_decisions(range="2001:db8:1::/48")
    assert await bouncer.poll_once()
    assert types(bouncer.decisions, "192.0.2.1", "2001:db8:1::9", "192.0.2.2") == [None, None, "ban"]
    assert await bouncer.poll_once()  # the LAPI may tell the deletions again: nothing else goes
    assert types(bouncer.decisions, "192.0.2.2") == ["ban"]


async def test_decisions_run_out_on_the_wall_clock(lapi: Lapi, make_bouncer: MakeBouncer) -> None:
    clock = FakeClock(time.time())
    bouncer = await make_bouncer(lapi.url, await lapi.add_bouncer("shield"), wall=clock.now)
    await lapi.add_decision(ip="192.0.2.1", duration="30s")
    await lapi.add_decision(ip="192.0.2.1", type="captcha", duration="1h")
    assert await bouncer.poll_once()
    assert types(bouncer.decisions, "192.0.2.1") == ["ban"]
    clock.advance(31)
    assert types(bouncer.decisions, "192.0.2.1") == ["captcha"]
    assert (bouncer.bans, bouncer.captchas) == (0, 1)


async def test_a_stopped_lapi_keeps_the_decisions_and_the_bouncer_recovers_by_itself(
    lapi: Lapi, make_bouncer: MakeBouncer, log_records: Callable[[int], list[str]]
) -> None:
    await lapi.add_decision(ip="192.0.2.1")
    bouncer = await make_bouncer(lapi.url, await lapi.add_bouncer("shield"), poll=0.05)
    await lapi.stop()
    await eventually(lambda: bouncer.errors >= 5)
    assert types(bouncer.decisions, "192.0.2.1") == ["ban"]
    assert bouncer.last_error is not None and "unreachable" in bouncer.last_error
    [error] = log_records(logging.ERROR)  # once per outage, not per poll
    assert lapi.url in error and "unreachable" in error and "the decisions in force (1) are kept" in error
    failed_since = bouncer.last_success

    await lapi.start()
    await lapi.add_decision(ip="192.0.2.2", type="captcha")
    await eventually(lambda: bouncer.decisions.verdict("192.0.2.2") is not None)
    assert (
        bouncer.last_success is not None and failed_since is not None and bouncer.last_success > failed_since
    )
    assert types(bouncer.decisions, "192.0.2.1", "192.0.2.2") == ["ban", "captcha"]
    [recovered] = log_records(logging.WARNING)
    assert "answers again after" in recovered and "failed polls" in recovered
    assert len(log_records(logging.ERROR)) == 1 and bouncer.last_error is None


async def test_after_an_outage_the_whole_set_replaces_what_was_held(
    lapi: Lapi, make_bouncer: MakeBouncer
) -> None:
    """The LAPI comes back rebuilt (its database lost, the bouncer's key registered again): no
    delta will ever say the old decisions were deleted, the whole set does."""
    key = await lapi.add_bouncer("shield")
    await lapi.add_decision(ip="192.0.2.1")
    bouncer = await make_bouncer(lapi.url, key)
    await lapi.stop()
    assert not await bouncer.poll_once()
    lapi.wipe()
    await lapi.start()
    await lapi.add_bouncer("shield", key)
    await lapi.add_decision(ip="192.0.2.2")
    assert await bouncer.poll_once()
    assert types(bouncer.decisions, "192.0.2.1", "192.0.2.2") == [None, "ban"]


async def test_a_lapi_that_hangs_times_out_and_keeps_the_decisions(
    lapi: Lapi, make_bouncer: MakeBouncer, log_records: Callable[[int], list[str]]
) -> None:
    await lapi.add_decision(ip="192.0.2.1")
    bouncer = await make_bouncer(lapi.url, await lapi.add_bouncer("shield"), timeout=0.3)
    assert lapi.process is not None
    lapi.process.send_signal(signal.SIGSTOP)  # the port still accepts; nothing answers
    try:
        assert not await bouncer.poll_once()
    finally:
        lapi.process.send_signal(signal.SIGCONT)
    assert bouncer.last_error is not None and "did not answer within 0.3s" in bouncer.last_error
    assert types(bouncer.decisions, "192.0.2.1") == ["ban"]
    assert await bouncer.poll_once() and bouncer.errors == 1
    assert len(log_records(logging.ERROR)) == 1 and len(log_records(logging.WARNING)) == 1


async def test_error_answers_and_nonsense_are_failed_polls(
    aiohttp_server: AiohttpServer, make_bouncer: MakeBouncer, log_records: Callable[[int], list[str]]
) -> None:
    answers = [
        web.json_response({"new": [decision("192.0.2.1", id=1)], "deleted": None}),
        web.json_response({"message": "database is locked"}, status=500),
        web.Response(text="<html>bad gateway</html>", status=502),
        web.Response(text="not json"),
        web.json_response({"new": "everyone"}),
        web.json_response({"new": None, "deleted": None}),
    ]

    async def stream_answer(request: web.Request) -> web.Response:
        assert request.headers["X-Api-Key"] == "0123456789abcdef"
        return answers.pop(0)

    app = web.Application()
    app.router.add_get("/v1/decisions/stream", stream_answer)
    server = await aiohttp_server(app)
    bouncer = await make_bouncer(str(server.make_url("")), "0123456789abcdef")
    results = [await bouncer.poll_once() for _ in range(5)]
    assert results == [False, False, False, False, True]
    assert (bouncer.polls, bouncer.errors) == (6, 4)
    assert types(bouncer.decisions, "192.0.2.1") == [None]  # the whole set after the outage: empty
    errors = log_records(logging.ERROR)
    # A new kind of failure is logged again; the same one (nonsense twice) is not.
    assert [error.split("; ")[0].split(" ", 3)[3] for error in errors] == [
        "answered HTTP 500: database is locked",
        "answered HTTP 502: <html>bad gateway</html>",
        "answered something that is not JSON (Expecting value: line 1 column 1 (char 0))",
    ]
    assert all(
        error.endswith("the decisions in force (1) are kept, polling again every 60s") for error in errors
    )
    assert bouncer.last_error is None


async def test_a_wrong_key_is_a_clear_error(
    lapi: Lapi, make_bouncer: MakeBouncer, log_records: Callable[[int], list[str]]
) -> None:
    bouncer = await make_bouncer(lapi.url, "not-a-key-the-lapi-knows")
    assert (bouncer.polls, bouncer.errors, bouncer.last_success) == (1, 1, None)
    [error] = log_records(logging.ERROR)
    assert "refused the bouncer key (HTTP 403: access forbidden)" in error
    assert f"environment variable {KEY_ENV}" in error
    assert not await bouncer.poll_once()
    assert bouncer.errors == 2 and len(log_records(logging.ERROR)) == 1


async def test_a_lapi_down_at_start_does_not_stop_the_start(
    make_bouncer: MakeBouncer, log_records: Callable[[int], list[str]]
) -> None:
    bouncer = await make_bouncer(f"http://127.0.0.1:{free_port()}", "0123456789abcdef")
    assert (bouncer.polls, bouncer.errors, len(bouncer.decisions)) == (1, 1, 0)
    assert bouncer.decisions.verdict("192.0.2.1") is None
    [error] = log_records(logging.ERROR)
    assert "unreachable" in error


async def test_a_reload_with_another_key_or_url_takes_the_whole_set_again(
    lapi: Lapi, make_bouncer: MakeBouncer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await lapi.add_decision(ip="192.0.2.1")
    bouncer = await make_bouncer(lapi.url, await lapi.add_bouncer("shield"))
    stale = stream([decision("10.9.9.9", id=999)])  # held here, unknown to the LAPI
    bouncer.decisions.apply(stale, startup=False)
    bouncer.follow(bouncer.config.model_copy(update={"poll": 30.0}))
    assert await bouncer.poll_once() and bouncer.config.poll == 30.0
    assert types(bouncer.decisions, "192.0.2.1", "10.9.9.9") == ["ban", "ban"]  # deltas went on
    monkeypatch.setenv("SHIELD_TEST_OTHER_KEY", await lapi.add_bouncer("shield-2"))
    bouncer.follow(Crowdsec.model_validate({"url": lapi.url, "api_key_env": "SHIELD_TEST_OTHER_KEY"}))
    assert await bouncer.poll_once()
    assert types(bouncer.decisions, "192.0.2.1", "10.9.9.9") == ["ban", None]


# Through a running Shield: CrowdSec's decisions are answered before any rule.


async def test_shield_answers_crowdsec_bans_and_challenges_its_captchas(
    lapi: Lapi, tmp_path: Path, aiohttp_server: AiohttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiohttp

    from shield.app.server import Shield
    from shield.decide.challenge_tokens import solve
    from tests.conftest import metrics_text, serve, shield_config, url_of
    from tests.test_challenge import form_fields

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="upstream")

    monkeypatch.setenv(KEY_ENV, await lapi.add_bouncer("shield"))
    await lapi.add_decision(ip="192.0.2.1", type="ban")
    config = shield_config(
        await serve(aiohttp_server, ok),
        clients={"trusted_proxies": ["127.0.0.1/32"]},
        crowdsec={"url": lapi.url, "api_key_env": KEY_ENV, "poll": 0.2},
        challenge={"difficulty": 8},
        rules=[{"name": "everyone-in", "action": "allow"}],
    )
    shield = Shield(config)
    await shield.start()
    try:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as client:

            async def status(address: str) -> int:
                headers = {"X-Forwarded-For": address, "Accept": "text/html"}
                async with client.get(url_of(shield, "/signup"), headers=headers) as response:
                    return response.status

            async def eventually(address: str, wanted: int) -> None:
                deadline = time.monotonic() + 5
                while await status(address) != wanted:
                    assert time.monotonic() < deadline, f"{address} never got {wanted}"
                    await asyncio.sleep(0.05)

            # The decision made before Shield started is in force from the first request.
            assert [await status("192.0.2.1"), await status("192.0.2.2")] == [403, 200]
            await lapi.add_decision(range="198.51.100.0/24", type="captcha")
            await eventually("198.51.100.7", 429)  # the challenge page, within a poll
            # A challenged client that solves the puzzle walks in, as with a challenge rule.
            headers = {"X-Forwarded-For": "198.51.100.7", "Accept": "text/html"}
            async with client.get(url_of(shield, "/signup"), headers=headers) as page:
                fields = form_fields(await page.text())
            fields["counter"] = solve(fields["token"], 8)
            async with client.post(
                url_of(shield, "/.shield/challenge"), data=fields, headers=headers, allow_redirects=False
            ) as solved:
                assert solved.status == 303
            assert await status("198.51.100.7") == 200
            jar.clear()
            await lapi.delete_decisions(ip="192.0.2.1")
            await eventually("192.0.2.1", 200)
        metrics = await metrics_text(shield)
        counted = {
            line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
            for line in metrics.splitlines()
            if line.startswith("shield_requests_total{") and 'rule="crowdsec"' in line
        }
        # The ban and the challenge are counted as rule "crowdsec", by what they did.
        assert any('decision="banned"' in labels and n >= 1 for labels, n in counted.items()), counted
        assert any('decision="challenged"' in labels and n >= 1 for labels, n in counted.items()), counted
        assert 'shield_crowdsec_decisions{type="captcha"} 1.0' in metrics
    finally:
        await shield.stop(grace=0.5)

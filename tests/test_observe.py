"""Per-request accounting: request ids, duration histograms, the access log line."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families

from shield.app.server import Shield
from shield.http.answer import ShieldAnswer
from shield.http.connection import EMPTY_BODY, Http1Connection, Http1Server, Request
from shield.http.request_id import RequestIds
from shield.ops.access_log import format_line
from shield.ops.metrics import FOLD_INTERVAL, Histogram, ProxyStats, build_registry
from tests.conftest import MakeShield, url_of

RULES: list[dict[str, Any]] = [
    {"name": "closed", "match": {"paths": ["/closed"]}, "action": "close"},
    {"name": "blocked", "match": {"paths": ["/blocked"]}, "action": "block"},
    {"name": "api", "match": {"paths": ["/api/**"]}, "action": "throttle", "limit": "2/minute"},
]


async def recording_upstream(aiohttp_server: AiohttpServer) -> tuple[str, list[web.Request]]:
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        if request.path == "/slow":
            await asyncio.sleep(0.05)
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), seen


async def scrape(client: aiohttp.ClientSession, shield: Shield) -> dict[str, list[Any]]:
    async with client.get(f"http://127.0.0.1:{shield.admin_port}/metrics") as response:
        text = await response.text()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


async def get_each(client: aiohttp.ClientSession, shield: Shield, *paths: str) -> None:
    for path in paths:
        async with client.get(url_of(shield, path)) as response:
            await response.read()


# -- request ids --------------------------------------------------------------------------------


def test_a_sane_client_request_id_is_kept_and_anything_else_replaced() -> None:
    ids = RequestIds(prefix="abc")
    assert ids.of("0f8c-42.trace:7") == "0f8c-42.trace:7"
    assert ids.of(None) == "abc-1"
    assert ids.of("") == "abc-2"
    assert ids.of("x" * 129) == "abc-3"
    assert ids.of('evil"\r\nSet-Cookie: a=b') == "abc-4"
    assert ids.of("ünïcode") == "abc-5"


def test_the_request_id_line_carries_the_same_ids_and_never_a_line_break() -> None:
    ids = RequestIds(prefix="abc")
    offered = ["0f8c-42.trace:7", None, "", "x" * 129, 'evil"\r\nSet-Cookie: a=b', "ünïcode"]
    lines = [ids.line_of(value) for value in offered]
    assert lines[0] == b"X-Request-ID: 0f8c-42.trace:7\r\n"
    assert lines[1:] == [b"X-Request-ID: abc-%d\r\n" % n for n in range(1, 6)]
    assert all(line.count(b"\r\n") == 1 and line.endswith(b"\r\n") for line in lines)


async def test_a_request_reports_the_id_its_line_carries() -> None:
    async def never_called(request: Request) -> ShieldAnswer:
        raise AssertionError("no request is served here")

    server = Http1Server(
        never_called, header_timeout=10, keepalive_timeout=10, max_line=8190, max_headers=100
    )
    request = Request(
        Http1Connection(server),
        "GET",
        b"/",
        "1.1",
        [],
        CIMultiDictProxy(CIMultiDict()),
        True,
        None,
        EMPTY_BODY,
        False,
    )
    request.id_line = RequestIds(prefix="abc").line_of("")
    assert request.request_id == "abc-1"


def test_generated_ids_count_in_hex_after_the_prefix_whatever_it_holds() -> None:
    ids = RequestIds(prefix="50%x")
    assert [ids.new() for _ in range(17)][-2:] == ["50%x-10", "50%x-11"]
    assert ids.line_of(None) == b"X-Request-ID: 50%x-12\r\n"


def test_generated_ids_differ_between_processes() -> None:
    assert RequestIds().new() != RequestIds().new()


async def test_the_request_id_goes_upstream_and_back_to_the_client(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    upstream_url, seen = await recording_upstream(aiohttp_server)
    shield = await make_shield(upstream_url, rules=RULES)
    async with aiohttp.ClientSession() as client:
        async with client.get(url_of(shield, "/a"), headers={"X-Request-ID": "client-7"}) as response:
            assert response.headers["X-Request-ID"] == "client-7"
        assert seen[-1].headers.getall("X-Request-ID") == ["client-7"]

        async with client.get(url_of(shield, "/a"), headers={"X-Request-ID": "bad id\t!"}) as response:
            generated = response.headers["X-Request-ID"]
        assert generated != "bad id\t!"
        assert seen[-1].headers.getall("X-Request-ID") == [generated]

        # Shield's own answers carry one too.
        async with client.get(url_of(shield, "/closed")) as response:
            assert response.status == 503
            assert response.headers["X-Request-ID"]


# -- histograms ---------------------------------------------------------------------------------


def test_a_histogram_counts_a_value_in_the_first_bucket_that_holds_it() -> None:
    histogram = Histogram((0.1, 1.0))
    histogram.observe_all([0.5, 0.1, 7.0, 0.05])
    assert histogram.cumulative() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert histogram.total == pytest.approx(7.65)


def test_a_batch_of_durations_lands_in_the_first_bucket_that_holds_each() -> None:
    bounds = (0.001, 0.01, 0.1, 1.0)
    rng = random.Random(7)
    values = [rng.lognormvariate(-5, 2) for _ in range(2000)] + [*bounds, 0.0, 99.0, 0.001]
    histogram = Histogram(bounds)
    histogram.observe_all(list(values[:700]))
    histogram.observe_all([])
    histogram.observe_all(list(values[700:]))
    expected = [0] * (len(bounds) + 1)
    for value in values:
        expected[next((i for i, bound in enumerate(bounds) if value <= bound), len(bounds))] += 1
    assert histogram.counts == expected
    assert histogram.counts[0] >= 3  # 0.0 and both 0.001s: a bound belongs to its own bucket
    assert histogram.total == pytest.approx(sum(values))


def test_recorded_durations_become_counts_and_buckets_and_the_lists_empty() -> None:
    stats = ProxyStats()
    forwarded = ("api", "throttle", "forwarded", "anonymous")
    for elapsed in (0.0001, 0.0002, 0.2):
        stats.durations_of(forwarded).append(elapsed)
    stats.upstream_durations.extend([0.0001, 0.15])
    stats.count(("live", "allow", "forwarded", "anonymous"))  # a WebSocket session: not timed
    registry = build_registry(stats)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert (
        sample(
            "shield_requests_total", rule="api", action="throttle", decision="forwarded", identity="anonymous"
        )
        == 3
    )
    assert sample("shield_request_duration_seconds_bucket", rule="api", le="0.0005") == 2
    assert sample("shield_request_duration_seconds_bucket", rule="api", le="0.25") == 3
    assert sample("shield_request_duration_seconds_sum", rule="api") == pytest.approx(0.2003)
    assert (
        sample(
            "shield_requests_total", rule="live", action="allow", decision="forwarded", identity="anonymous"
        )
        == 1
    )
    assert sample("shield_request_duration_seconds_count", rule="live") is None
    assert sample("shield_upstream_duration_seconds_count") == 2
    assert stats.durations[forwarded] == [] and stats.upstream_durations == []
    # Folding again adds nothing.
    assert sample("shield_request_duration_seconds_count", rule="api") == 3


def test_stats_survive_a_snapshot_round_trip_and_add_up() -> None:
    stats = ProxyStats()
    stats.requests["api", "throttle", "throttled", "anonymous"] = 3
    stats.rule_histogram("api").observe_all([0.002])
    stats.upstream_seconds.observe_all([0.03])
    stats.upstream_errors["timeout"] += 1
    stats.dry_run["watch", "blocked"] += 2
    copy = ProxyStats.from_snapshot(json.loads(json.dumps(stats.snapshot())))
    copy.add(stats)
    assert copy.requests["api", "throttle", "throttled", "anonymous"] == 6
    assert copy.rule_histogram("api").counts == [2 * c for c in stats.rule_histogram("api").counts]
    assert copy.upstream_seconds.total == pytest.approx(0.06)
    assert (copy.upstream_errors["timeout"], copy.dry_run["watch", "blocked"]) == (2, 4)


def test_peers_are_added_to_the_scrape() -> None:
    own, peer = ProxyStats(), ProxyStats()
    own.requests["default", "allow", "forwarded", "anonymous"] = 2
    peer.requests["default", "allow", "forwarded", "anonymous"] = 5
    peer.in_flight = lambda: 3.0
    own.peers = lambda: [peer]
    registry = build_registry(own)
    assert (
        registry.get_sample_value(
            "shield_requests_total",
            {"rule": "default", "action": "allow", "decision": "forwarded", "identity": "anonymous"},
        )
        == 7
    )
    assert registry.get_sample_value("shield_in_flight_requests") == 3


async def test_durations_are_recorded_by_rule_and_for_the_upstream(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    upstream_url, _ = await recording_upstream(aiohttp_server)
    shield = await make_shield(upstream_url, rules=RULES)
    async with aiohttp.ClientSession() as client:
        await get_each(client, shield, "/slow", "/api/x", "/blocked", "/closed")
        families = await scrape(client, shield)

    counts = {
        sample.labels["rule"]: sample.value
        for sample in families["shield_request_duration_seconds"]
        if sample.name.endswith("_count")
    }
    assert counts == {"default": 1, "api": 1, "blocked": 1, "closed": 1}
    upstream = {s.name: s.value for s in families["shield_upstream_duration_seconds"] if not s.labels}
    assert upstream["shield_upstream_duration_seconds_count"] == 2
    # The slow answer took 50 ms upstream, and Shield's answer took at least as long.
    assert upstream["shield_upstream_duration_seconds_sum"] >= 0.05
    default_sum = [
        s.value
        for s in families["shield_request_duration_seconds"]
        if s.name.endswith("_sum") and s.labels["rule"] == "default"
    ]
    assert default_sum[0] >= 0.05


async def test_durations_are_folded_without_a_scrape_so_they_never_pile_up(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    upstream_url, _ = await recording_upstream(aiohttp_server)
    shield = await make_shield(upstream_url, rules=RULES)
    async with aiohttp.ClientSession() as client:
        await get_each(client, shield, "/a", "/b", "/api/x", "/closed")
    await asyncio.sleep(2.5 * FOLD_INTERVAL)
    stats = shield.stats
    assert all(durations == [] for durations in stats.durations.values())
    assert stats.upstream_durations == []
    assert stats.requests == {
        ("default", "allow", "forwarded", "anonymous"): 2,
        ("api", "throttle", "forwarded", "anonymous"): 1,
        ("closed", "close", "closed", "anonymous"): 1,
    }
    assert sum(stats.upstream_seconds.counts) == 3


# -- the access log -----------------------------------------------------------------------------


def test_an_access_log_line_is_json_with_untrusted_text_escaped() -> None:
    line = format_line(
        stamp="2026-11-29T05:50:00.123Z",
        request_id="r-1",
        client_ip="203.0.113.9",
        identity="anonymous",
        method="GET",
        path='/a"b\n\\c',
        rule=None,
        decision=None,
        status=400,
        size=12,
        duration=0.0015,
        upstream=None,
    )
    assert line.endswith("}\n") and line.count("\n") == 1
    assert json.loads(line) == {
        "time": "2026-11-29T05:50:00.123Z",
        "request_id": "r-1",
        "client_ip": "203.0.113.9",
        "identity": "anonymous",
        "method": "GET",
        "path": '/a"b\n\\c',
        "rule": None,
        "decision": None,
        "status": 400,
        "bytes": 12,
        "duration_ms": 1.5,
        "upstream_ms": None,
    }


async def access_lines(capfd: pytest.CaptureFixture[str], shield: Shield) -> list[dict[str, Any]]:
    assert shield.access_log is not None
    shield.access_log.close()
    out = capfd.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def test_every_request_gets_one_access_log_line(
    aiohttp_server: AiohttpServer, make_shield: MakeShield, capfd: pytest.CaptureFixture[str]
) -> None:
    upstream_url, _ = await recording_upstream(aiohttp_server)
    shield = await make_shield(upstream_url, rules=RULES, access_log={"enabled": True})
    async with aiohttp.ClientSession() as client:
        for path in ("/a/./b//c?secret=1", "/blocked", "/api/x", "/api/x", "/api/x"):
            async with client.get(url_of(shield, path), headers={"X-Request-ID": "t-1"}) as response:
                await response.read()

    lines = await access_lines(capfd, shield)
    summary = [(x["path"], x["rule"], x["decision"], x["status"], x["bytes"]) for x in lines]
    assert summary == [
        ("/a/b/c", "default", "forwarded", 200, 5),
        ("/blocked", "blocked", "blocked", 403, lines[1]["bytes"]),
        ("/api/x", "api", "forwarded", 200, 5),
        ("/api/x", "api", "forwarded", 200, 5),
        ("/api/x", "api", "throttled", 429, lines[4]["bytes"]),
    ]
    first = lines[0]
    assert (first["request_id"], first["client_ip"], first["identity"], first["method"]) == (
        "t-1",
        "127.0.0.1",
        "anonymous",
        "GET",
    )
    assert first["upstream_ms"] >= 0 and first["duration_ms"] >= first["upstream_ms"]
    assert lines[1]["upstream_ms"] is None and lines[1]["bytes"] > 0


async def test_the_access_log_samples_and_is_off_by_default(
    aiohttp_server: AiohttpServer, make_shield: MakeShield, capfd: pytest.CaptureFixture[str]
) -> None:
    upstream_url, _ = await recording_upstream(aiohttp_server)
    quiet = await make_shield(upstream_url)
    assert quiet.access_log is None
    sampled = await make_shield(upstream_url, access_log={"enabled": True, "sample": 0.2})
    async with aiohttp.ClientSession() as client:
        for _ in range(200):
            async with client.get(url_of(sampled, "/")) as response:
                await response.read()
    assert 10 <= len(await access_lines(capfd, sampled)) <= 80

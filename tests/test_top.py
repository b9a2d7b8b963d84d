"""``shield ctl top``: the heaviest clients, networks, agents, paths and rules of the last minutes.

What an operator relies on: on a skewed stream the true heavy hitters are listed, each count
low by no more than the error the answer states (at most N / (capacity + 1)); old slots leave
the window; refused requests are counted apart; replicas' tables add up, through Redis too;
memory stays fixed under a million rotating addresses; and the table reaches the CLI.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError

from shield import cli
from shield.app.server import Shield
from shield.clock import FakeClock
from shield.config.offenders import Top
from shield.config.state import StateConfig
from shield.http.answer import ShieldAnswer
from shield.http.connection import EMPTY_BODY, Http1Connection, Http1Server, Request
from shield.ops.metrics import ProxyStats
from shield.ops.observer import Observer
from shield.ops.top import MAX_KEY_LENGTH, TopTables, merge, summarize
from shield.state.connect import connect
from shield.state.records import RedisChannel
from shield.state.top_share import TopShare
from tests.conftest import StartShield, children_of, serve, shield_config, url_of
from tests.redis_servers import SHARED_REDIS_URL

TOKEN = "correct-horse-battery-staple"


# Per table: the (ASN, country) of each address a test gave one, as the geo databases would.
NETWORKS: dict[int, dict[str, tuple[int | None, str | None]]] = {}


def tables(clock: FakeClock, capacity: int = 64) -> TopTables:
    top = TopTables(capacity=capacity, clock=clock.now)
    known = NETWORKS[id(top)] = {}
    top.networks = lambda address: known.get(address, (None, None))
    return top


def hit(top: TopTables, ip: str, *, refused: bool = False, **fields: Any) -> None:
    """One request from ``ip`` (its key and address), in ``asn`` and ``country`` if given."""
    if "asn" in fields or "country" in fields:
        NETWORKS[id(top)][ip] = (fields.get("asn"), fields.get("country"))
    top.record(
        ip, ip, fields.get("ua", "curl/8"), fields.get("path", "/"), fields.get("rule", "default"), refused
    )


def counts(entries: list[Any]) -> dict[Any, int]:
    return {e.key: e.count for e in entries}


# -- accuracy ---------------------------------------------------------------------------------------


def zipf_stream(events: int = 200_000, keys: int = 50_000, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    names = [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(keys)]
    return rng.choices(names, [1 / (rank + 1) ** 1.1 for rank in range(keys)], k=events)


@pytest.mark.parametrize("refused", [False, True], ids=["all", "refused"])
def test_on_a_skewed_stream_the_true_top_ten_are_found_within_the_stated_error(refused: bool) -> None:
    clock = FakeClock()
    top = tables(clock)
    stream = zipf_stream()
    for n, ip in enumerate(stream):
        if n and n % 10_000 == 0:
            clock.advance(15)  # 20 slots: the answer adds them up
        hit(top, ip, refused=n % 3 == 0)
    exact: Counter[str | int] = Counter(ip for n, ip in enumerate(stream) if not refused or n % 3 == 0)
    report = top.report("ip", refused=refused, window=900, limit=20)

    assert report.requests == sum(exact.values())
    assert 0 < report.error <= report.requests / 65  # the guarantee: N / (capacity + 1)
    found = [e.key for e in report.entries]
    assert {ip for ip, _ in exact.most_common(10)} <= set(found[:10])
    for entry in report.entries:
        assert exact[entry.key] - report.error <= entry.count <= exact[entry.key]
        assert entry.error == report.error and entry.share == entry.count / report.requests
    # A key not listed had at most the last listed count plus the error.
    assert max(n for ip, n in exact.items() if ip not in found) <= report.entries[-1].count + report.error


def test_few_keys_are_counted_exactly() -> None:
    top = tables(FakeClock())
    for n in range(300):
        hit(top, "a" if n % 3 else "b", rule="api" if n % 2 else "login", asn=64500, country="NL")
    assert counts(top.top("ip")) == {"a": 200, "b": 100}
    assert counts(top.top("rule")) == {"api": 150, "login": 150}
    assert top.top("asn") == top.top("asn", limit=1)  # one key
    assert [(e.key, e.count, e.error, e.share) for e in top.top("asn")] == [(64500, 300, 0, 1.0)]
    assert counts(top.top("country")) == {"NL": 300}


def test_unknown_networks_are_skipped_and_long_keys_cut() -> None:
    top = tables(FakeClock())
    hit(top, "a", ua=None, path="/" + "x" * 5000)
    hit(top, "b", ua="A" * 9000, asn=64500)
    assert top.top("asn")[0].count == 1 and top.top("country") == []
    assert counts(top.top("ua")) == {"": 1, "A" * MAX_KEY_LENGTH: 1}
    assert sorted(len(str(e.key)) for e in top.top("path")) == [1, MAX_KEY_LENGTH]


def test_bad_queries_are_refused() -> None:
    top = tables(FakeClock())
    with pytest.raises(ValueError, match="by must be one of ip, asn"):
        top.top("referer")
    with pytest.raises(ValueError, match="at most 900s"):
        top.top("ip", window=901)
    with pytest.raises(ValueError, match="limit must be between 1 and 64"):
        top.top("ip", limit=65)


# -- the window -------------------------------------------------------------------------------------


def test_old_slots_leave_the_window_and_then_the_ring() -> None:
    clock = FakeClock(0.0)
    top = tables(clock)
    hit(top, "early")
    top.flush()  # as the metrics fold does every quarter of a second: into the slot of its time
    clock.advance(20)  # slot 1
    hit(top, "late")
    assert counts(top.top("ip", window=900)) == {"early": 1, "late": 1}
    # 30 s back from t=20 starts at t=-10: slot 0 ([0, 15)) overlaps it, so it is in.
    assert counts(top.top("ip", window=30)) == {"early": 1, "late": 1}
    assert counts(top.top("ip", window=5)) == {"late": 1}  # rounded up to slot 1 only
    clock.advance(10)  # t=30: slot 0 ended 15 s ago
    assert counts(top.top("ip", window=15)) == {"late": 1}
    assert counts(top.top("ip", window=16)) == {"early": 1, "late": 1}
    clock.advance(885)  # t=915: the window starts where slot 0 ended
    assert counts(top.top("ip", window=900)) == {"late": 1}
    clock.advance(900)
    assert top.top("ip", window=900) == []
    hit(top, "now")
    for _ in range(70):
        top.flush()
        clock.advance(15)
        hit(top, "now")
    assert len(top.sizes()) == 61 * 12  # the current slot and 60 complete ones, 12 tables each
    assert top.report("ip", window=900).requests == 61


def test_refused_requests_are_counted_apart_and_within_all() -> None:
    top = tables(FakeClock())
    for _ in range(5):
        hit(top, "scraper", refused=True, rule="api", path="/api/items")
    for _ in range(3):
        hit(top, "user", rule="api", path="/api/items")
    hit(top, "user", refused=True, rule="login", path="/login")
    assert counts(top.top("ip")) == {"scraper": 5, "user": 4}
    assert counts(top.top("ip", refused=True)) == {"scraper": 5, "user": 1}
    assert counts(top.top("path", refused=True)) == {"/api/items": 5, "/login": 1}
    assert top.report("rule", refused=True).requests == 6
    assert top.top("ip", refused=True)[0].share == 5 / 6
    assert top.report("ip").requests == 9


# -- memory -----------------------------------------------------------------------------------------


def test_a_million_rotating_addresses_keep_every_table_bounded() -> None:
    clock = FakeClock()
    top = tables(clock)
    attacker = 0
    for n in range(1_000_000):
        if n % 20 == 0:
            hit(top, "203.0.113.9", refused=True)
            attacker += 1
        else:
            hit(top, f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}")
        if n % 5000 == 0:
            clock.advance(3)  # 600 s: 40 slots
    sizes = top.sizes()
    assert max(sizes) <= 2 * 64 and len(sizes) <= 61 * 12
    assert sum(sizes) <= 41 * 12 * 128
    report = top.report("ip", window=900, limit=5)
    assert report.entries[0].key == "203.0.113.9"
    assert attacker - report.error <= report.entries[0].count <= attacker
    assert report.error <= report.requests / 65


# -- replicas ---------------------------------------------------------------------------------------


def test_two_replicas_snapshots_merge_as_if_one() -> None:
    one, two = tables(FakeClock()), tables(FakeClock())
    for n in range(40_000):
        hit(one, f"10.{n % 3}.{n % 200}.{n % 7}", asn=64500 + n % 3)
        hit(two, f"10.{n % 4}.{n % 300}.{n % 5}", asn=64500 + n % 4, refused=n % 2 == 0)
    for _ in range(3000):
        hit(one, "198.51.100.1", asn=13335)
        hit(two, "198.51.100.1", asn=13335, refused=True)
    # Through JSON, as between replicas: an ASN stays an int.
    snapshots = [json.loads(json.dumps(t.snapshot(300))) for t in (one, two)]
    report = summarize(snapshots, "ip", refused=False, limit=5)
    assert report.requests == 86_000
    assert report.entries[0].key == "198.51.100.1" and 6000 - report.error <= report.entries[0].count
    assert report.error <= report.requests / 65
    assert merge(snapshots, "asn", False, 1)[0].key in (64500, 64501, 64502, 64503)
    assert counts(merge(snapshots, "asn", True, 5))[13335] == 3000
    assert summarize(snapshots, "rule", True, 1).requests == 23_000
    with pytest.raises(ValueError, match="not a top snapshot"):
        summarize([{"v": 1, "tables": {}}], "ip", False, 5)


@pytest.fixture
async def channels(prefix: str) -> Any:
    """``channels(url)``: a RedisChannel under the test's own key prefix; its keys go after."""
    opened: dict[RedisChannel, str] = {}

    def channel(url: str = SHARED_REDIS_URL) -> RedisChannel:
        state = StateConfig(backend="redis", url=url, connect_timeout=0.2)
        made = RedisChannel(connect(state), key_prefix=prefix, timeout=1.0)
        opened[made] = url
        return made

    yield channel
    shared = [each for each, url in opened.items() if url == SHARED_REDIS_URL]
    if shared:
        keys = [key async for key in shared[0].client.scan_iter(match=prefix + "*")]
        if keys:
            await shared[0].client.delete(*keys)
    for each in opened:
        await each.close()


async def test_through_redis_a_query_on_either_replica_adds_both(channels: Any) -> None:
    wall = FakeClock(1_700_000_000.0)
    clocks = FakeClock(500.0), FakeClock(9000.0)  # monotonic clocks differ between hosts
    one, two = (tables(clock) for clock in clocks)
    stats = ProxyStats()
    shares = [
        TopShare(t, channel=channels(), wall=wall, stats=stats, replica=name)
        for t, name in ((one, "one"), (two, "two"))
    ]
    for _ in range(10):
        hit(one, "198.51.100.1", refused=True)
    for _ in range(4):
        hit(two, "198.51.100.1")
        hit(two, "203.0.113.5", refused=True)
    for share in shares:
        await share.publish()
    for share in shares:
        answer = await share.report("ip", refused=False, window=300, limit=5)
        assert counts(answer.report.entries) == {"198.51.100.1": 14, "203.0.113.5": 4}
        assert answer.report.requests == 18 and answer.partial is None
        assert sorted(answer.replicas) == ["one", "two"] and answer.replicas[0] == share.replica
    refused = await shares[1].report("ip", refused=True, window=300, limit=5)
    assert counts(refused.report.entries) == {"198.51.100.1": 10, "203.0.113.5": 4}

    # A slot's last seconds reach Redis once it ended, and old slots leave the window.
    hit(one, "198.51.100.1")
    one.flush()
    for clock in (*clocks, wall):
        clock.advance(15)
    await shares[0].publish()
    assert (await shares[1].report("ip", refused=False, window=300, limit=1)).report.entries[0].count == 15
    for clock in (*clocks, wall):
        clock.advance(300)
    assert (await shares[1].report("ip", refused=False, window=300, limit=1)).report.entries == []
    assert stats.state_errors["redis"] == 0


async def test_without_redis_the_answer_is_this_replicas_and_says_so(channels: Any) -> None:
    top = tables(FakeClock())
    hit(top, "198.51.100.1")
    stats = ProxyStats()
    share = TopShare(top, channel=channels("redis://127.0.0.1:1/0"), wall=FakeClock(), stats=stats)
    answer = await share.report("ip", refused=False, window=60, limit=5)
    assert counts(answer.report.entries) == {"198.51.100.1": 1}
    assert answer.partial is not None and "redis did not answer" in answer.partial
    assert stats.state_errors["redis"] == 1


# -- the observer -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "refused"),
    [
        ("forwarded", False),
        ("passed", False),
        ("error", False),
        ("throttled", True),
        ("blocked", True),
        ("closed", True),
        ("banned", True),
        ("challenged", True),
        ("shed", True),
    ],
)
async def test_the_observer_counts_each_decided_request_with_its_network(
    decision: str, refused: bool
) -> None:
    async def gatekeeper(request: Request) -> ShieldAnswer:
        request.client_ip = request.client_key = "198.51.100.7"
        request.path = "/api/items"
        request.decided("api", "throttle", decision, "anonymous")
        return ShieldAnswer(status=200)

    server = Http1Server(gatekeeper, header_timeout=10, keepalive_timeout=10, max_line=8190, max_headers=100)
    headers = CIMultiDictProxy(CIMultiDict({"User-Agent": "bad-bot/1"}))
    request = Request(Http1Connection(server), "GET", b"/", "1.1", [], headers, True, None, EMPTY_BODY, False)
    top = tables(FakeClock())
    asked = []

    def networks(ip: str) -> tuple[int | None, str | None]:
        asked.append(ip)
        return 64500, None

    top.networks = networks
    observer = Observer(gatekeeper, stats=ProxyStats(), access_log=None, top=top)
    await observer.handle(request)
    assert asked == []  # not yet: addresses are looked up when the requests noted are counted
    assert counts(top.top("ip", refused=refused)) == {"198.51.100.7": 1}
    assert asked == ["198.51.100.7"]
    assert counts(top.top("ua")) == {"bad-bot/1": 1} and counts(top.top("path")) == {"/api/items": 1}
    assert counts(top.top("asn")) == {64500: 1} and top.top("country") == []
    assert top.report("ip").requests == 1 and top.report("ip", refused=True).requests == int(refused)


# -- through a running Shield ------------------------------------------------------------------------

RULES = [
    {"name": "blocked", "match": {"paths": ["/wp-login.php"]}, "action": "block"},
    {"name": "api", "match": {"paths": ["/api/**"]}, "action": "allow"},
]


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> str:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="upstream")

    return await serve(aiohttp_server, answer)


async def start(
    shields: list[Shield], upstream: str, monkeypatch: pytest.MonkeyPatch, **sections: Any
) -> Shield:
    monkeypatch.setenv("SHIELD_TEST_CTL_TOKEN", TOKEN)
    admin = {"listen": {"host": "127.0.0.1", "port": 0}, "ctl": {"token_env": "SHIELD_TEST_CTL_TOKEN"}}
    shield = Shield(shield_config(upstream, admin=admin, rules=RULES, **sections))
    await shield.start()
    shields.append(shield)
    return shield


async def traffic(shield: Shield) -> None:
    async with aiohttp.ClientSession() as client:
        for path, agent in [("/api/items", "curl/8")] * 5 + [("/wp-login.php", "bad-bot/1")] * 3:
            async with client.get(url_of(shield, path), headers={"User-Agent": agent}) as response:
                await response.read()


async def ctl_top(shield: Shield, query: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            f"http://127.0.0.1:{shield.admin_port}/ctl/top?{query}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response,
    ):
        return response.status, await response.json()


async def test_the_ctl_endpoint_ranks_what_shield_saw(
    shields: list[Shield], upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shield = await start(shields, upstream, monkeypatch)
    await traffic(shield)
    status, answer = await ctl_top(shield, "by=path&refused=1&window=1m&limit=5")
    assert status == 200
    assert answer["entries"] == [{"key": "/wp-login.php", "count": 3, "share": 1.0, "error": 0}]
    assert (answer["requests"], answer["window"], answer["refused"], answer["partial"]) == (
        3,
        60.0,
        True,
        None,
    )
    _, by_ua = await ctl_top(shield, "by=ua")
    assert [(e["key"], e["count"]) for e in by_ua["entries"]] == [("curl/8", 5), ("bad-bot/1", 3)]
    _, by_ip = await ctl_top(shield, "")  # by ip, all requests, the last 5 minutes
    assert [(e["key"], e["count"], e["share"]) for e in by_ip["entries"]] == [("127.0.0.1", 8, 1.0)]
    assert (await ctl_top(shield, "by=asn"))[1]["entries"] == []  # no geo: nothing known
    status, error = await ctl_top(shield, "by=referer")
    assert status == 400 and "by must be one of" in error["error"]
    assert (await ctl_top(shield, "window=1h"))[0] == 400
    assert (await ctl_top(shield, "limit=x"))[0] == 400


async def test_the_cli_prints_an_aligned_table_or_the_json(
    shields: list[Shield], upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shield = await start(shields, upstream, monkeypatch)
    await traffic(shield)
    admin = ["ctl", "--admin", f"http://127.0.0.1:{shield.admin_port}", "top"]

    def run(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = cli.main([*admin, *args])
        return code, out.getvalue()

    monkeypatch.setenv("SHIELD_CTL_TOKEN", TOKEN)
    code, out = await asyncio.to_thread(run, "--by", "rule")
    assert code == 0
    assert out.splitlines() == [
        "top rule over the last 5m: 8 requests; a count is low by at most 0 (ERROR)",
        "COUNT  SHARE  ERROR  RULE",
        "    5  62.5%     +0  api",
        "    3  37.5%     +0  blocked",
    ]
    code, out = await asyncio.to_thread(run, "--by", "ua", "--refused", "--window", "30s", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["entries"] == [{"key": "bad-bot/1", "count": 3, "share": 1.0, "error": 0}]
    code, out = await asyncio.to_thread(run, "--by", "country")
    assert out.splitlines()[-1] == "no requests in the window"


async def test_with_two_workers_and_memory_state_ctl_top_adds_up_both_workers(
    upstream: str, run_shield: StartShield, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIELD_TEST_CTL_TOKEN", TOKEN)
    shield = await run_shield(upstream, "workers: 2\n", admin="ctl: {token_env: SHIELD_TEST_CTL_TOKEN}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while len(children_of(shield.pid)) < 2:
        assert loop.time() < deadline, "the workers never came up"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # worker 1 has published its first stats
    # A new connection per request, so SO_REUSEPORT spreads them over both workers.
    sent = 40
    for _ in range(sent):
        async with aiohttp.ClientSession() as fresh, fresh.get(shield.url("/api/items")) as response:
            assert response.status == 200
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as client:
        while True:  # worker 1 publishes its stats, its slots with them, every second
            async with client.get(shield.admin_url("/ctl/top?by=rule"), headers=headers) as response:
                answer = await response.json()
            if answer["requests"] == sent:
                break
            assert answer["requests"] < sent and loop.time() < deadline, answer
            await asyncio.sleep(0.2)
    assert answer["entries"] == [{"key": "default", "count": sent, "share": 1.0, "error": 0}]
    assert len(answer["replicas"]) == 2  # this worker and the other one


async def test_top_can_be_turned_off(
    shields: list[Shield], upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shield = await start(shields, upstream, monkeypatch, top={"enabled": False})
    await traffic(shield)
    assert shield.top is None
    assert await ctl_top(shield, "") == (200, {"enabled": False, "entries": []})


# -- the config and the module ----------------------------------------------------------------------


def test_the_section_is_on_by_default_and_bounds_its_slots() -> None:
    config = shield_config("http://127.0.0.1:1")
    assert config.top.enabled and config.top.capacity == 64 and config.top.slots == 60
    assert Top.model_validate({"window_max": "30m", "slot": "30s"}).slots == 60
    assert Top.model_validate({"window_max": "1h", "capacity": 64}).slots == 240
    with pytest.raises(ValidationError, match=r"must be at most 16384 \(memory\): 64 x 481 is more"):
        Top.model_validate({"window_max": "2h"})
    with pytest.raises(ValidationError, match="at least one slot"):
        Top.model_validate({"window_max": "10s"})
    with pytest.raises(ValidationError, match="capacit"):
        shield_config("http://127.0.0.1:1", top={"capacity": 2})


def test_the_counting_does_no_io() -> None:
    source = Path(__file__).resolve().parent.parent / "shield" / "ops" / "top.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {
        "__future__",
        "heapq",
        "collections",
        "collections.abc",
        "dataclasses",
        "math",
        "operator",
        "typing",
    }

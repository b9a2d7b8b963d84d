"""The Grafana dashboard and the alert rules, evaluated by a real Prometheus scraping Shield.

A Prometheus server (Debian's ``prometheus`` binary, tmp storage, 1 s scrapes) scrapes a Shield
serving a short mixed load: forwarded, blocked, closed, throttled, dry-run, upstream failures,
challenge pages and their solutions, a rule whose auto-close trigger flaps closed and open, and
bursts the overload gate sheds. Then every PromQL expression of the dashboard and of the alert
rules is run through Prometheus' HTTP API; a query that errors, or returns no series with a
number in it, fails the test. A ratio or an ``increase`` is a number even when nothing happened,
so the test also checks that the load did reach each of those panels.

Alert expressions compare against a threshold, and a healthy load rightly makes most of them
return nothing, so the test runs each one's left-hand side (the expression without its final
comparison) and requires data there, and separately requires that Prometheus loaded every rule
and evaluated it without error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.app.server import Shield
from shield.decide.challenge_tokens import solve
from tests.conftest import MakeShield, free_port, url_of
from tests.crowdsec_lapi import running_lapi

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "shield.json"
ALERTS = DEPLOY / "prometheus" / "shield-alerts.yml"

# What Grafana would substitute: the "All" rule, and intervals that fit 1 s scrapes.
VARIABLES = {"$__rate_interval": "10s", "$__interval": "2s", "$__range": "1m", "$rule": ".*"}
RULES: list[dict[str, Any]] = [
    {"name": "registration-closed", "match": {"paths": ["/api/register"]}, "action": "close"},
    {"name": "internal", "match": {"paths": ["/internal/**"]}, "action": "block"},
    {"name": "scraper-watch", "match": {"paths": ["/api/**"]}, "action": "block", "mode": "dry-run"},
    {"name": "api", "match": {"paths": ["/api/**"]}, "action": "throttle", "limit": "5/second"},
    {"name": "signup", "match": {"paths": ["/signup/**"]}, "action": "challenge"},
    # A burst of FLAP requests closes it; a second of quiet after the 1 s cool-down reopens it.
    {
        "name": "search",
        "match": {"paths": ["/search"]},
        "action": "allow",
        "auto_close": {"when": "rate > 3/second", "for": 0, "reopen_after": "1s"},
    },
]
SETTINGS: dict[str, Any] = {
    "rules": RULES,
    "challenge": {"difficulty": 4},  # a few dozen hashes: solved in Python in no time
    # Two requests upstream at once and one waiting: a BURST of /slow requests gets some shed.
    "overload": {"max_concurrency": 2, "queue_size": 1, "queue_timeout": "50ms"},
}
LOAD = ["/", "/slow", "/api/register", "/internal/x", "/api/a", "/api/a", "/api/a", "/boom", "/signup/x"]
BURST = 6
CROWDSEC_BANNED = "192.0.2.66"
CROWDSEC_CAPTCHA = "192.0.2.77"
FLAP = 6
_COMPARISON = re.compile(r"(?s)^(.*?\S)\s*(?:>=|<=|==|!=|>|<)\s*[-+0-9.e]+\s*$")


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def without_comparison(expr: str) -> str:
    match = _COMPARISON.match(expr.strip())
    return match.group(1) if match else expr


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) for every PromQL expression in the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    for annotation in dashboard["annotations"]["list"]:
        queries.append((f"annotation {annotation['name']!r}", without_comparison(annotation["expr"])))
    return queries


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_the_dashboard_is_importable_json_with_datasource_and_rule_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["rule"]["definition"] == "label_values(shield_requests_total, rule)"
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("decision", "refusing", "anonymous", "shield latency", "upstream latency",
                  "upstream errors", "reloads", "state backend", "in flight", "closed now",
                  "bans", "auto-close", "challenge", "shed"):  # fmt: skip
        assert topic in titles


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/test.sh installs Debian's prometheus package"
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in check.stdout


@contextlib.asynccontextmanager
async def prometheus_scraping(admin_port: int, tmp_path: Path) -> AsyncIterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: scripts/test.sh installs Debian's prometheus package"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {"job_name": "shield", "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}]}
                ],
            }
        )
    )
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with client.get(f"{url}/-/ready") as response:
                        if response.status == 200:
                            break
                assert process.returncode is None, (tmp_path / "prometheus.log").read_text()
                await asyncio.sleep(0.1)
            else:
                pytest.fail("prometheus never became ready:\n" + (tmp_path / "prometheus.log").read_text())
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def upstream_app(aiohttp_server: AiohttpServer) -> str:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            await asyncio.sleep(0.02)
        if request.path == "/boom":
            assert request.transport is not None
            request.transport.abort()  # Shield sees a reset: a 502 and an upstream error
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def drive(shield_url: str, stop: asyncio.Event) -> int:
    """The mixed load, each round ending with a burst of /slow requests at once."""
    sent = 0
    async with aiohttp.ClientSession() as client:

        async def get(path: str) -> None:
            async with client.get(shield_url + path) as response:
                await response.read()

        while not stop.is_set():
            for path in LOAD:
                await get(path)
            await asyncio.gather(*(get("/slow") for _ in range(BURST)))
            sent += len(LOAD) + BURST
            await asyncio.sleep(0.02)
    return sent


async def flap(shield_url: str, stop: asyncio.Event) -> None:
    """Every 2.5 s a burst that closes the search rule; it reopens in the quiet that follows."""
    async with aiohttp.ClientSession() as client:
        while not stop.is_set():
            for _ in range(FLAP):
                async with client.get(shield_url + "/search") as response:
                    await response.read()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.5)


async def solve_challenges(shield_url: str, stop: asyncio.Event) -> None:
    """About twice a second a client solves the challenge page, and one posts a wrong answer."""
    difficulty = SETTINGS["challenge"]["difficulty"]
    async with aiohttp.ClientSession() as client:
        while not stop.is_set():
            async with client.get(shield_url + "/signup/form", headers={"Accept": "text/html"}) as page:
                assert page.status == 429
                fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', await page.text()))
            for counter in (solve(fields["token"], difficulty), "not-a-number"):
                data = {**fields, "counter": counter}
                async with client.post(
                    shield_url + "/.shield/challenge", data=data, allow_redirects=False
                ) as response:
                    assert response.status == (303 if counter.isdigit() else 403)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def query(client: aiohttp.ClientSession, url: str, expr: str) -> list[dict[str, Any]]:
    async with client.get(f"{url}/api/v1/query", params={"query": expr}) as response:
        body = await response.json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


# What the load must have shown Prometheus (each value above 0): the panels of auto-close
# transitions, challenges and shedding would read 0, still a number, without it.
REACHED = {
    "auto-close closing": 'increase(shield_auto_close_transitions_total{state="closed"}[1m])',
    "auto-close reopening": 'increase(shield_auto_close_transitions_total{state="open"}[1m])',
    "challenge pages": 'sum(increase(shield_requests_total{decision="challenged"}[1m]))',
    "challenges solved": 'sum(increase(shield_requests_total{rule="challenge", decision="passed"}[1m]))',
    "challenges refused": 'sum(increase(shield_requests_total{rule="challenge", decision="refused"}[1m]))',
    "shed requests": 'sum(increase(shield_requests_total{decision="shed"}[1m]))',
    "crowdsec answers": 'sum(increase(shield_requests_total{rule="crowdsec"}[1m]))',
}


def has_a_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


async def not_reached(client: aiohttp.ClientSession, url: str) -> list[str]:
    """What of ``REACHED`` the load has not shown Prometheus yet."""
    missing = []
    for what, expr in REACHED.items():
        result = await query(client, url, expr)
        if not any(float(series["value"][1]) > 0 for series in result):
            missing.append(what)
    return missing


async def listed_clients(shield_url: str, stop: asyncio.Event) -> None:
    """About five times a second a client CrowdSec banned, and one it sent to the captcha."""
    async with aiohttp.ClientSession() as client:
        while not stop.is_set():
            for address in (CROWDSEC_BANNED, CROWDSEC_CAPTCHA):
                async with client.get(shield_url + "/", headers={"X-Forwarded-For": address}) as response:
                    await response.read()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


async def test_every_dashboard_query_and_alert_rule_returns_data_from_a_real_prometheus(
    aiohttp_server: AiohttpServer, make_shield: MakeShield, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_lapi(tmp_path / "lapi") as lapi:
        monkeypatch.setenv("SHIELD_TEST_CROWDSEC_KEY", await lapi.add_bouncer("shield"))
        await lapi.add_decision(ip=CROWDSEC_BANNED, type="ban")
        await lapi.add_decision(ip=CROWDSEC_CAPTCHA, type="captcha")
        blocklist = tmp_path / "abusers.txt"
        blocklist.write_text("203.0.113.0/24\n")
        shield = await make_shield(
            await upstream_app(aiohttp_server),
            **SETTINGS,
            # The load comes from 127.0.0.1 itself; the listed clients through it, as a proxy.
            clients={"trusted_proxies": ["127.0.0.1/32"]},
            crowdsec={"url": lapi.url, "api_key_env": "SHIELD_TEST_CROWDSEC_KEY", "poll": 1},
            lists={"abusers": {"file": str(blocklist)}},
        )
        await scraped_by_prometheus(shield, tmp_path)


async def scraped_by_prometheus(shield: Shield, tmp_path: Path) -> None:
    async with prometheus_scraping(shield.admin_port, tmp_path) as prometheus:
        stop = asyncio.Event()
        load = asyncio.create_task(drive(url_of(shield, ""), stop))
        others = [
            asyncio.create_task(flap(url_of(shield, ""), stop)),
            asyncio.create_task(solve_challenges(url_of(shield, ""), stop)),
            asyncio.create_task(listed_clients(url_of(shield, ""), stop)),
        ]
        try:
            async with aiohttp.ClientSession() as client:
                # Enough scrapes under load for 10 s rates and the alert rules' first evaluations,
                # and until the load has reached every panel that would show a 0 otherwise.
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while True:
                    await asyncio.sleep(1)
                    scraped = await query(client, prometheus, "count_over_time(up[20s])")
                    missing = await not_reached(client, prometheus)
                    if scraped and float(scraped[0]["value"][1]) >= 6 and not missing:
                        break
                    assert loop.time() < deadline, f"scraped {scraped}; the load never showed: {missing}"

                empty = []
                for where, expr in dashboard_queries():
                    result = await query(client, prometheus, substitute(expr))
                    if not has_a_number(result):
                        empty.append(f"{where}: {expr} -> {result}")
                for rule in alert_rules():
                    inner = without_comparison(rule["expr"])
                    assert inner != rule["expr"].strip(), f"{rule['alert']}: no threshold to strip"
                    if not has_a_number(await query(client, prometheus, inner)):
                        empty.append(f"alert {rule['alert']}: {inner}")
                assert not empty, "queries without data:\n" + "\n".join(empty)

                async with client.get(
                    f"{prometheus}/api/v1/label/rule/values", params={"match[]": "shield_requests_total"}
                ) as response:
                    rule_values = (await response.json())["data"]
                assert {"registration-closed", "internal", "api", "default"} <= set(rule_values)

                async with client.get(f"{prometheus}/api/v1/rules") as response:
                    groups = (await response.json())["data"]["groups"]
                loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
                assert set(loaded) == {rule["alert"] for rule in alert_rules()}
                for name, rule in loaded.items():
                    assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
        finally:
            stop.set()
            sent = await load
            await asyncio.gather(*others)
    assert sent > 0

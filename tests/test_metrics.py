"""The /metrics page as Prometheus' own tooling sees it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import aiohttp
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import MakeShield, free_port, scraped, url_of

RULES = [
    {"name": "closed", "match": {"paths": ["/closed"]}, "action": "close"},
    {"name": "blocked", "match": {"paths": ["/blocked"]}, "action": "block"},
    {"name": "watch", "match": {"paths": ["/**"]}, "action": "block", "mode": "dry-run"},
    {"name": "api", "match": {"paths": ["/api/**"]}, "action": "throttle", "limit": "1/minute"},
]


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/test.sh installs Debian's prometheus package"
    return found


async def test_a_real_scrape_passes_promtool_check_metrics(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    upstream = await aiohttp_server(app)
    shield = await make_shield(str(upstream.make_url("")).rstrip("/"), rules=RULES)
    dead = await make_shield(f"http://127.0.0.1:{free_port()}")
    async with aiohttp.ClientSession() as client:
        for target in (shield, dead):
            for path in ("/", "/closed", "/blocked", "/api/a", "/api/a"):
                async with client.get(url_of(target, path)) as response:
                    await response.read()
        async with client.get(f"http://127.0.0.1:{shield.admin_port}/metrics") as response:
            text = await response.text()

    for name in (
        "shield_requests_total",
        "shield_request_duration_seconds_bucket",
        "shield_upstream_duration_seconds_count",
        "shield_dry_run_decisions_total",
        "shield_config_info",
    ):
        assert name in text
    check = await asyncio.to_thread(
        subprocess.run, [promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout + check.stderr == ""


async def test_the_upstreams_answers_are_counted_by_status_class(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    # Its 5xx answers are failures too, beside connect, timeout and reset errors: the error
    # ratio of the dashboard and the alert counts both.
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["status"]), text="as asked")

    app = web.Application()
    app.router.add_get("/{status}", answer)
    upstream = await aiohttp_server(app)
    shield = await make_shield(str(upstream.make_url("")).rstrip("/"))
    async with aiohttp.ClientSession() as client:
        for status in (200, 204, 302, 404, 503, 500, 200):
            async with client.get(url_of(shield, f"/{status}"), allow_redirects=False) as response:
                assert response.status == status
                await response.read()
    assert await scraped(shield, "shield_upstream_responses") == {
        "1xx": 0,
        "2xx": 3,
        "3xx": 1,
        "4xx": 1,
        "5xx": 2,
        "other": 0,
    }

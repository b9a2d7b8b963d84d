"""The public status page: what is closed and when it is expected back, nothing more."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.app.server import Shield
from shield.clock import FakeClock
from shield.decide.closures import Closure
from shield.ops.status_page import StatusPage
from tests.conftest import MakeShield, serve, shield_config, url_of

CLOSED = {
    "name": "registration-closed",
    "public_name": "Sign-up",
    "match": {"methods": ["POST"], "paths": ["/api/register"]},
    "action": "close",
    "message": "Registration is paused. Please try again later.",
}
SECRET_ROUTE = {
    "name": "legacy-export-x9",
    "match": {"paths": ["/internal/export/**"], "client_cidrs": ["10.1.2.0/24"]},
    "action": "close",
}
AUTO = {
    "name": "search",
    "match": {"paths": ["/search"]},
    "action": "throttle",
    "limit": "100/second",
    "auto_close": {"when": "rate > 2/second", "for": 0, "reopen_after": "10m", "message": "Search rests."},
}
EVERYTHING = {"name": "everything", "match": {"paths": ["/**"]}, "action": "block"}


async def echo_path(request: web.Request) -> web.Response:
    return web.Response(text=f"upstream {request.path}")


@pytest.fixture
async def upstream_url(aiohttp_server: AiohttpServer) -> str:
    return await serve(aiohttp_server, echo_path)


async def get(client: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str, Any]:
    async with client.get(url, headers=headers) as response:
        return response.status, await response.text(), response.headers


async def test_lists_closed_features_by_public_name_with_their_message(
    upstream_url: str, make_shield: MakeShield, client: aiohttp.ClientSession
) -> None:
    shield = await make_shield(upstream_url, rules=[CLOSED], status_page={"enabled": True})
    status, page, headers = await get(client, url_of(shield, "/status"))
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "Some features are temporarily unavailable." in page
    assert "<h2>Sign-up</h2>" in page
    assert "Registration is paused. Please try again later." in page
    assert "Until further notice" in page
    assert "registration-closed" not in page
    assert "/api/register" not in page


async def test_answers_json_to_api_clients(
    upstream_url: str, make_shield: MakeShield, client: aiohttp.ClientSession
) -> None:
    shield = await make_shield(upstream_url, rules=[CLOSED], status_page={"enabled": True})
    async with client.get(url_of(shield, "/status"), headers={"Accept": "application/json"}) as response:
        assert await response.json() == {
            "status": "degraded",
            "closed": [
                {
                    "name": "Sign-up",
                    "message": "Registration is paused. Please try again later.",
                    "source": "file",
                    "until": None,
                }
            ],
            "queued": [],
        }


async def test_all_clear_and_no_internal_details(
    upstream_url: str, make_shield: MakeShield, client: aiohttp.ClientSession
) -> None:
    shield = await make_shield(upstream_url, rules=[SECRET_ROUTE], status_page={"enabled": True})
    _, page, _ = await get(client, url_of(shield, "/status"))
    assert "/internal/export" not in page and "10.1.2.0" not in page
    assert "This feature is temporarily unavailable." in page  # the default message

    clear = await make_shield(upstream_url, status_page={"enabled": True})
    _, page, _ = await get(client, url_of(clear, "/status"))
    assert "All systems operational." in page


async def test_is_answered_before_any_rule_and_only_when_enabled(
    upstream_url: str, make_shield: MakeShield, client: aiohttp.ClientSession
) -> None:
    shield = await make_shield(
        upstream_url, rules=[EVERYTHING], status_page={"enabled": True, "path": "/incidents"}
    )
    assert (await get(client, url_of(shield, "/incidents")))[0] == 200
    assert (await get(client, url_of(shield, "/incidents/")))[0] == 200  # the normalized path
    assert (await get(client, url_of(shield, "/status")))[0] == 403
    async with client.post(url_of(shield, "/incidents")) as response:
        assert response.status == 405

    off = await make_shield(upstream_url)
    status, body, _ = await get(client, url_of(off, "/status"))
    assert (status, body) == (200, "upstream /status")


async def test_shows_auto_closed_rules_with_their_reopening_time_as_the_close_page_does(
    upstream_url: str, client: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    shield = Shield(shield_config(upstream_url, rules=[AUTO], status_page={"enabled": True}), clock=clock)
    await shield.start()
    try:
        for _ in range(3):
            status, close_page, _ = await get(client, url_of(shield, "/search"))
        async with client.get(url_of(shield, "/status"), headers={"Accept": "application/json"}) as response:
            (closure,) = (await response.json())["closed"]
        assert closure["name"] == "search"
        assert closure["message"] == "Search rests."
        assert closure["source"] == "auto"
        assert closure["until"].endswith("Z")
        _, page, _ = await get(client, url_of(shield, "/status"))
        assert "Expected back in about 10 minutes" in page
        # The close page says the same of the same closure, and names no rule.
        assert status == 503
        assert "Expected back in about 10 minutes." in close_page
        assert "This feature is temporarily unavailable" in close_page
    finally:
        await shield.stop(grace=1.0)


def test_reads_closures_from_any_provider() -> None:
    """A later source (``shield ctl`` switches) plugs in as one more provider."""

    def switches() -> list[Closure]:
        return [Closure("checkout", "Checkout", "Back soon <b>promise</b>", "ctl", 1_000_600.0)]

    page = StatusPage([lambda: [], switches], wall=lambda: 1_000_000.0)
    body = page.answer("GET", None).text or ""
    assert "<h2>Checkout</h2>" in body
    assert "Back soon &lt;b&gt;promise&lt;/b&gt;" in body
    assert (
        "Expected back in about 10 minutes "
        '(<time datetime="1970-01-12T13:56:40Z">12 Jan 1970, 13:56 UTC</time>)' in body
    )


async def test_the_close_page_and_the_status_page_say_the_same_of_a_closure(
    upstream_url: str, make_shield: MakeShield, client: aiohttp.ClientSession
) -> None:
    # A close rule lasts until the file changes: both pages say "until further notice" (the
    # close page used to promise "about 10 minutes"), and the close page names the feature and
    # links the status page.
    shield = await make_shield(
        upstream_url, rules=[{**CLOSED, "retry_after": "10m"}], status_page={"enabled": True}
    )
    async with client.post(url_of(shield, "/api/register")) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "600"  # still the client's polling hint
        close_page = await response.text()
    _, status_page, _ = await get(client, url_of(shield, "/status"))
    assert "Until further notice" in status_page
    assert "Closed until further notice; check back in about 10 minutes." in close_page
    assert "Sign-up is temporarily unavailable" in close_page
    assert '<a href="/status">' in close_page

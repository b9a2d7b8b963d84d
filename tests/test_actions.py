"""What clients see for each action, end to end through Shield, and what reaches the upstream."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.app.server import Shield
from shield.clock import FakeClock
from shield.decide.identity import ANONYMOUS, Identity
from tests.conftest import serve, shield_config, url_of

CLOSED = "Registration may be busy. Please try again later."
REGISTRATION_CLOSED = {
    "name": "registration-closed",
    "match": {"methods": ["POST"], "paths": ["/api/register"]},
    "action": "close",
    "retry_after": "10m",
    "message": CLOSED,
}


@dataclass
class Upstream:
    url: str
    hits: list[str] = field(default_factory=list)  # raw request-targets, as received


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> Upstream:
    """Answers 200 'ok'; /login answers 401 unless X-Password is right; /status/N answers N."""
    recorded = Upstream("")

    async def handler(request: web.Request) -> web.Response:
        if request.method == "HEAD" and request.raw_path == "/":
            return web.Response()  # Shield's readiness probe
        recorded.hits.append(request.raw_path)
        await request.read()
        if request.path == "/api/login" and request.headers.get("X-Password") != "right":
            return web.Response(status=401, text="wrong password")
        if request.path.startswith("/status/"):
            return web.Response(status=int(request.path.rsplit("/", 1)[1]), text="as asked")
        return web.Response(text="ok")

    recorded.url = await serve(aiohttp_server, handler)
    return recorded


StartShield = Callable[..., Awaitable[Shield]]


@pytest.fixture
async def start() -> AsyncIterator[StartShield]:
    """``await start(upstream_url, rules=[...], clock=FakeClock())``: a Shield, stopped after."""
    started: list[Shield] = []

    async def make(upstream_url: str, *, clock: FakeClock | None = None, **sections: Any) -> Shield:
        shield = Shield(shield_config(upstream_url, **sections), clock=clock or FakeClock())
        await shield.start()
        started.append(shield)
        return shield

    yield make
    for shield in started:
        await shield.stop(grace=1.0)


async def raw_exchange(port: int, head: bytes, *, body: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send bytes as they are (no client-side URL normalization); read one whole response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = 0
        for line in response.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return response + await asyncio.wait_for(reader.readexactly(length), timeout)
    finally:
        writer.close()


async def raw_status(port: int, method: str, target: str, *extra: str) -> tuple[int, bytes]:
    lines = [f"{method} {target} HTTP/1.1", "Host: shop.example", "Content-Length: 0", "Connection: close"]
    head = ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    response = await raw_exchange(port, head)
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest


async def metric_lines(client: aiohttp.ClientSession, shield: Shield, name: str) -> list[str]:
    async with client.get(f"http://127.0.0.1:{shield.admin_port}/metrics") as response:
        text = await response.text()
    return [line for line in text.splitlines() if line.startswith(name)]


async def test_block_answers_403_and_never_forwards(
    upstream: Upstream, start: StartShield, client: aiohttp.ClientSession
) -> None:
    shield = await start(
        upstream.url, rules=[{"name": "internal", "match": {"paths": ["/internal/**"]}, "action": "block"}]
    )
    async with client.get(url_of(shield, "/internal/users")) as response:
        assert response.status == 403
        assert await response.text() == "Forbidden.\n"
        assert "X-Shield-Rule" not in response.headers
    async with client.get(url_of(shield, "/internal"), headers={"Accept": "application/json"}) as response:
        assert response.status == 403
        assert await response.json() == {"error": "Forbidden."}
    async with client.get(url_of(shield, "/internalx")) as response:
        assert response.status == 200
    assert upstream.hits == ["/internalx"]


async def test_close_answers_503_with_a_friendly_page(
    upstream: Upstream, start: StartShield, client: aiohttp.ClientSession
) -> None:
    rule = {**REGISTRATION_CLOSED, "message": "Registration <b>busy</b> & closed"}
    shield = await start(upstream.url, rules=[rule])
    async with client.post(url_of(shield, "/api/register"), data=b"name=x") as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "600"
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.headers["Cache-Control"] == "no-store"
        page = await response.text()
    assert "<p>Registration &lt;b&gt;busy&lt;/b&gt; &amp; closed</p>" in page
    assert "<b>busy</b>" not in page
    assert "about 10 minutes" in page
    # Login and everything else keep working.
    async with client.post(url_of(shield, "/api/login"), headers={"X-Password": "right"}) as response:
        assert response.status == 200
    async with client.get(url_of(shield, "/api/register")) as response:
        assert response.status == 200
    assert upstream.hits == ["/api/login", "/api/register"]


@pytest.mark.parametrize(
    ("accept", "json_answer"),
    [
        ("application/json", True),
        ("application/problem+json", True),
        ("text/html,application/json;q=0.9", False),
        ("*/*", False),
        (None, False),
    ],
)
async def test_close_answers_json_to_api_clients(
    upstream: Upstream,
    start: StartShield,
    client: aiohttp.ClientSession,
    accept: str | None,
    json_answer: bool,
) -> None:
    shield = await start(upstream.url, rules=[REGISTRATION_CLOSED])
    headers = {"Accept": accept} if accept else {}
    async with client.post(url_of(shield, "/api/register"), headers=headers) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "600"
        if json_answer:
            assert response.headers["Content-Type"].startswith("application/json")
            assert await response.json() == {"error": CLOSED, "retry_after": 600}
        else:
            assert response.headers["Content-Type"].startswith("text/html")
            assert CLOSED in await response.text()
    assert upstream.hits == []


async def test_close_defaults(upstream: Upstream, start: StartShield, client: aiohttp.ClientSession) -> None:
    shield = await start(
        upstream.url,
        rules=[{"name": "closed", "match": {"paths": ["/x"]}, "action": "close"}],
        policy={"default_retry_after": "90s"},
    )
    async with client.get(url_of(shield, "/x"), headers={"Accept": "application/json"}) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "90"
        body = await response.json()
    assert body["retry_after"] == 90
    assert body["error"]  # a default message, never empty


async def test_close_page_template_from_a_file(
    upstream: Upstream, start: StartShield, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    template = tmp_path / "closed.html"
    template.write_text("<html><h1>Down</h1><p>$message</p><p>Back in $retry_after. $other</p></html>\n")
    rule = {**REGISTRATION_CLOSED, "message": "Busy <now>", "retry_after": "90s"}
    shield = await start(upstream.url, rules=[rule], policy={"close_page": str(template)})
    async with client.post(url_of(shield, "/api/register")) as response:
        assert response.status == 503
        assert (
            await response.text()
            == "<html><h1>Down</h1><p>Busy &lt;now&gt;</p><p>Back in 2 minutes. $other</p></html>\n"
        )


async def test_throttle_answers_429_with_ratelimit_headers(
    upstream: Upstream, start: StartShield, client: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    rule = {"name": "api", "match": {"paths": ["/api/**"]}, "action": "throttle", "limit": "2/minute"}
    shield = await start(upstream.url, rules=[rule], clock=clock)
    seen = []
    for _ in range(3):
        async with client.get(url_of(shield, "/api/items")) as response:
            await response.read()
            seen.append(
                (
                    response.status,
                    {k: v for k, v in response.headers.items() if k.startswith(("RateLimit", "Retry"))},
                )
            )
    policy = {"RateLimit-Policy": '"api";q=2;w=60'}
    assert seen[0] == (
        200,
        {"RateLimit-Limit": "2", "RateLimit-Remaining": "1", "RateLimit-Reset": "30", **policy}
        | {"RateLimit": '"api";r=1;t=30'},
    )
    assert seen[1] == (
        200,
        {"RateLimit-Limit": "2", "RateLimit-Remaining": "0", "RateLimit-Reset": "60", **policy}
        | {"RateLimit": '"api";r=0;t=60'},
    )
    assert seen[2] == (
        429,
        {"RateLimit-Limit": "2", "RateLimit-Remaining": "0", "RateLimit-Reset": "60", **policy}
        | {"RateLimit": '"api";r=0;t=60', "Retry-After": "30"},
    )
    async with client.get(url_of(shield, "/api/items"), headers={"Accept": "application/json"}) as response:
        assert response.status == 429
        assert await response.json() == {"error": "Too many requests.", "retry_after": 30}
    clock.advance(30)
    async with client.get(url_of(shield, "/api/items")) as response:
        assert response.status == 200
        assert response.headers["RateLimit-Remaining"] == "0"
    async with client.get(url_of(shield, "/home")) as response:
        assert response.status == 200
        assert "RateLimit-Limit" not in response.headers
    assert upstream.hits == ["/api/items"] * 3 + ["/home"]


async def test_login_scenario_fifty_rapid_requests(
    upstream: Upstream, start: StartShield, client: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    rule = {
        "name": "login",
        "match": {"paths": ["/api/login"]},
        "action": "throttle",
        "limit": "10/minute",
        "burst": 5,
    }
    shield = await start(upstream.url, rules=[REGISTRATION_CLOSED, rule], clock=clock)

    async def login() -> int:
        async with client.post(url_of(shield, "/api/login"), headers={"X-Password": "right"}) as response:
            return response.status

    statuses = [await login() for _ in range(50)]
    assert statuses.count(200) == 5
    assert statuses.count(429) == 45
    clock.advance(6)
    assert [await login() for _ in range(3)] == [200, 429, 429]


async def test_dry_run_forwards_and_counts_the_would_be_decision(
    upstream: Upstream, start: StartShield, client: aiohttp.ClientSession
) -> None:
    rules = [
        {**REGISTRATION_CLOSED, "mode": "dry-run"},
        {
            "name": "api-watch",
            "match": {"paths": ["/api/**"]},
            "action": "throttle",
            "limit": "1/minute",
            "mode": "dry-run",
        },
        {"name": "bots", "match": {"user_agents": ["bot"]}, "action": "block"},
    ]
    shield = await start(upstream.url, rules=rules, policy={"debug_header": True})
    for _ in range(2):
        async with client.post(url_of(shield, "/api/register")) as response:
            assert response.status == 200
            assert "RateLimit-Limit" not in response.headers
            assert "X-Shield-Rule" not in response.headers  # dry-run decides nothing
    # Dry-run rules do not stop later rules from deciding.
    async with client.post(url_of(shield, "/api/register"), headers={"User-Agent": "a bot"}) as response:
        assert response.status == 403
    assert upstream.hits == ["/api/register"] * 2
    lines = await metric_lines(client, shield, "shield_dry_run_decisions_total")
    assert sorted(lines) == [
        'shield_dry_run_decisions_total{decision="closed",rule="registration-closed"} 3.0',
        'shield_dry_run_decisions_total{decision="forwarded",rule="api-watch"} 1.0',
        'shield_dry_run_decisions_total{decision="throttled",rule="api-watch"} 2.0',
    ]


async def test_counting_only_failed_logins(
    upstream: Upstream, start: StartShield, client: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    rule = {
        "name": "login-failures",
        "match": {"methods": ["POST"], "paths": ["/api/login"]},
        "action": "throttle",
        "limit": "2/minute",
        "count": {"status": [401]},
    }
    shield = await start(upstream.url, rules=[rule], clock=clock)

    async def login(password: str) -> int:
        async with client.post(url_of(shield, "/api/login"), headers={"X-Password": password}) as response:
            return response.status

    # Good logins are not charged, however many.
    assert [await login("right") for _ in range(10)] == [200] * 10
    # Two failures empty the bucket; then even the right password waits.
    assert [await login("wrong"), await login("wrong")] == [401, 401]
    assert await login("right") == 429
    assert await login("wrong") == 429
    assert len(upstream.hits) == 12  # refused requests never reached the upstream
    clock.advance(30)
    assert await login("right") == 200
    assert await login("right") == 200  # still not charged
    assert await login("wrong") == 401
    assert await login("right") == 429


async def test_counted_statuses_from_the_upstream_are_charged(
    upstream: Upstream, start: StartShield, client: aiohttp.ClientSession
) -> None:
    rule = {
        "name": "bad-gateway",
        "match": {"paths": ["/status/**"]},
        "action": "throttle",
        "limit": "1/minute",
        "count": {"status": [502]},
    }
    shield = await start(upstream.url, rules=[rule])
    statuses = []
    for _ in range(2):
        async with client.get(url_of(shield, "/status/502")) as response:
            statuses.append(response.status)
    assert statuses == [502, 429]


async def test_shields_own_502_is_never_counted(start: StartShield, client: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    rule = {
        "name": "errors",
        "match": {"paths": ["/**"]},
        "action": "throttle",
        "limit": "1/minute",
        "count": {"status": [502]},
    }
    shield = await start(dead, rules=[rule])
    for _ in range(4):
        async with client.get(url_of(shield, "/x")) as response:
            assert response.status == 502


async def test_debug_header(upstream: Upstream, start: StartShield, client: aiohttp.ClientSession) -> None:
    rules = [
        REGISTRATION_CLOSED,
        {"name": "internal", "match": {"paths": ["/internal/**"]}, "action": "block"},
        {"name": "api", "match": {"paths": ["/api/**"]}, "action": "throttle", "limit": "1/minute"},
        {"name": "office", "match": {"paths": ["/office"]}, "action": "allow"},
    ]
    expected = [
        ("POST", "/api/register", 503, "registration-closed; closed"),
        ("GET", "/internal/x", 403, "internal; blocked"),
        ("GET", "/api/x", 200, "api; forwarded"),
        ("GET", "/api/x", 429, "api; throttled"),
        ("GET", "/office", 200, "office; forwarded"),
        ("GET", "/other", 200, None),
    ]
    on = await start(upstream.url, rules=rules, policy={"debug_header": True})
    off = await start(upstream.url, rules=rules)
    for method, path, status, header in expected:
        async with client.request(method, url_of(on, path)) as response:
            assert (response.status, response.headers.get("X-Shield-Rule")) == (status, header)
        async with client.request(method, url_of(off, path)) as response:
            assert (response.status, response.headers.get("X-Shield-Rule")) == (status, None)


async def test_authenticated_clients_skip_the_anonymous_throttle(
    upstream: Upstream, start: StartShield, client: aiohttp.ClientSession
) -> None:
    class HeaderIdentity:
        def identify(self, headers: Any, client_ip: str) -> Identity:
            user = headers.get("X-Test-User")
            return Identity(True, user, "test") if user else ANONYMOUS

    rule = {
        "name": "anon",
        "match": {"paths": ["/api/**"]},
        "for": "anonymous",
        "action": "throttle",
        "limit": "1/minute",
    }
    shield = await start(upstream.url, rules=[rule])
    assert shield.gatekeeper is not None
    shield.gatekeeper.identities = HeaderIdentity()
    statuses = []
    for headers in ({}, {}, {"X-Test-User": "alice"}, {"X-Test-User": "alice"}):
        async with client.get(url_of(shield, "/api/x"), headers=headers) as response:
            statuses.append(response.status)
    assert statuses == [200, 429, 200, 200]


BYPASS_ATTEMPTS = [
    "/api/register",
    "/api//register/",
    "/api/./register",
    "/api/x/../register",
    "/api/%72egister",
    "//api/register",
    "/api/register;x=1",
    "/static/%2e%2e/api/register",
    "/api/%2E%2E/api/register",
    "/api/register;jsessionid=1/",
    "/api/register?next=/home",
    "/api/register#frag",
    "http://shop.example/api//register",
]


@pytest.mark.parametrize("target", BYPASS_ATTEMPTS)
async def test_bypass_attempts_get_the_close_answer(
    upstream: Upstream, start: StartShield, target: str
) -> None:
    shield = await start(upstream.url, rules=[REGISTRATION_CLOSED])
    status, rest = await raw_status(shield.port, "POST", target)
    assert status == 503
    assert CLOSED.encode() in rest
    assert upstream.hits == []


@pytest.mark.parametrize(
    "target",
    [
        "/api%2fregister",
        "/api/register%2F",
        "/api%5cregister",
        "/api/register%00",
        "/api\\register",
        "/api/register%3b",
        "/api/%252e%252e/register",
        "/api/reg%c0%afister",
    ],
)
async def test_ambiguous_paths_get_400(upstream: Upstream, start: StartShield, target: str) -> None:
    shield = await start(upstream.url, rules=[REGISTRATION_CLOSED])
    for method in ("POST", "GET"):
        status, _ = await raw_status(shield.port, method, target)
        assert status == 400
    assert upstream.hits == []


@pytest.mark.parametrize(
    ("target", "received"),
    [
        ("/a//b/./c/../d/", "/a/b/d/"),
        ("/static/%2e%2e/api/x;jsessionid=1?q=%2F&r=a+b", "/api/x?q=%2F&r=a+b"),
        ("/api/%72egister%20now", "/api/register%20now"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("//x", "/x"),
        ("/x?", "/x?"),
        ("http://shop.example/y//z?q=1", "/y/z?q=1"),
        ("http://SHOP.example./y", "/y"),
    ],
)
async def test_upstream_receives_the_canonical_path(
    upstream: Upstream, start: StartShield, target: str, received: str
) -> None:
    shield = await start(upstream.url, rules=[REGISTRATION_CLOSED])
    status, _ = await raw_status(shield.port, "GET", target)
    assert status == 200
    assert upstream.hits == [received]


@pytest.mark.parametrize(
    "target",
    [
        "http://other.example/api/register",
        "http://user@shop.example/x",
        "https://other.example/",
        "ftp://shop.example/x",
    ],
)
async def test_absolute_form_with_another_authority_gets_400(
    upstream: Upstream, start: StartShield, target: str
) -> None:
    shield = await start(upstream.url, rules=[REGISTRATION_CLOSED])
    status, _ = await raw_status(shield.port, "GET", target)
    assert status == 400
    assert upstream.hits == []


async def test_expect_100_continue_on_a_closed_route_gets_503_without_100(
    upstream: Upstream, start: StartShield
) -> None:
    shield = await start(upstream.url, rules=[REGISTRATION_CLOSED])
    head = (
        b"POST /api/register HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/json\r\n"
        b"Content-Length: 17\r\nExpect: 100-continue\r\n\r\n"
    )
    # The body is never sent: a client waits for 100 Continue first. Shield must answer at once.
    response = await raw_exchange(shield.port, head)
    assert response.startswith(b"HTTP/1.1 503 ")
    assert b"100 Continue" not in response
    assert b"\r\nConnection: close\r\n" in response
    assert CLOSED.encode() in response
    assert upstream.hits == []


async def test_a_refused_expect_100_continue_closes_at_once_instead_of_waiting_for_the_body(
    upstream: Upstream, start: StartShield
) -> None:
    shield = await start(upstream.url, rules=[REGISTRATION_CLOSED])
    reader, writer = await asyncio.open_connection("127.0.0.1", shield.port)
    try:
        writer.write(
            b"POST /api/register HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 1000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        started = asyncio.get_running_loop().time()
        # read() returns at EOF: the connection must close now, not after aiohttp's lingering time.
        response = await asyncio.wait_for(reader.read(), 5)
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        writer.close()
    assert response.startswith(b"HTTP/1.1 503 ")
    assert elapsed < 2.0


async def test_expect_100_continue_on_an_open_route_is_forwarded(
    upstream: Upstream, start: StartShield
) -> None:
    shield = await start(upstream.url, rules=[REGISTRATION_CLOSED])
    reader, writer = await asyncio.open_connection("127.0.0.1", shield.port)
    try:
        writer.write(
            b"POST /api/login HTTP/1.1\r\nHost: shop.example\r\nX-Password: right\r\nContent-Length: 2\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"{}")
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert response.startswith(b"HTTP/1.1 200 ")
    assert json.dumps(upstream.hits) == '["/api/login"]'

"""Identity end to end through a running Shield: rules for anonymous and authenticated clients,
per-user throttles, introspection against a test upstream, and the X-Shield-* headers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.app.server import Shield
from shield.clock import FakeClock
from shield.decide.identity import Identity
from shield.enforce.introspection import BoundedMemoryCache
from tests.conftest import MakeShield, shield_config, url_of

SECRET = "test-only-secret-" + "x" * 48
JWT_AUTH = {"jwt": {"keys": [{"algorithms": ["HS256"], "secret_env": "SHIELD_TEST_JWT"}]}}
CLOSED_FOR_ANONYMOUS = {
    "name": "registration-closed",
    "match": {"methods": ["POST"], "paths": ["/api/register"]},
    "for": "anonymous",
    "action": "close",
}


@pytest.fixture(autouse=True)
def jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIELD_TEST_JWT", SECRET)


def token(user: str = "alice", **extra: Any) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600, **extra}, SECRET, algorithm="HS256")


def as_user(user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


@dataclass
class Upstream:
    url: str = ""
    headers: list[dict[str, str]] = field(default_factory=list)
    me_calls: int = 0
    me_delay: float = 0.0
    sessions: dict[str, str] = field(default_factory=dict)  # session id -> user


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> AsyncIterator[Upstream]:
    recorded = Upstream()

    async def me(request: web.Request) -> web.Response:
        recorded.me_calls += 1
        await asyncio.sleep(recorded.me_delay)
        user = recorded.sessions.get(request.cookies.get("sid", ""))
        if user is None:
            return web.json_response({"error": "not logged in"}, status=401)
        return web.json_response({"id": user, "name": user.title()})

    async def handler(request: web.Request) -> web.Response:
        if request.method != "HEAD":
            recorded.headers.append(dict(request.headers))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/api/me", me)
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app)
    recorded.url = str(server.make_url("")).rstrip("/")
    yield recorded


async def post(shield: Shield, path: str, headers: dict[str, str] | None = None) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url_of(shield, path), headers=headers or {}) as response,
    ):
        return response.status


async def test_a_logged_in_user_gets_through_registration_closed_for_anonymous(
    upstream: Upstream, make_shield: MakeShield
) -> None:
    shield = await make_shield(upstream.url, auth=JWT_AUTH, rules=[CLOSED_FOR_ANONYMOUS])
    assert await post(shield, "/api/register") == 503
    assert await post(shield, "/api/register", as_user()) == 200
    forged = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, "y" * 64, algorithm="HS256")
    assert await post(shield, "/api/register", {"Authorization": f"Bearer {forged}"}) == 503
    expired = token(exp=int(time.time()) - 3600)
    assert await post(shield, "/api/register", {"Authorization": f"Bearer {expired}"}) == 503


async def test_a_user_keyed_throttle_counts_each_user_and_anonymous_clients_by_ip(
    upstream: Upstream, make_shield: MakeShield
) -> None:
    rule = {"name": "per-user", "action": "throttle", "limit": "2/minute", "key": "user"}
    shield = await make_shield(upstream.url, auth=JWT_AUTH, rules=[rule])
    sequence = [as_user("alice")] * 3 + [as_user("bob")] * 2 + [{}] * 3
    statuses = [await post(shield, "/x", headers) for headers in sequence]
    assert statuses == [200, 200, 429, 200, 200, 200, 200, 429]


async def test_per_identity_limits_in_one_rule(upstream: Upstream, make_shield: MakeShield) -> None:
    rule = {
        "name": "api",
        "action": "throttle",
        "limit": {"anonymous": "2/minute", "authenticated": "5/minute"},
        "key": "ip",
    }
    shield = await make_shield(upstream.url, auth=JWT_AUTH, rules=[rule])
    async with aiohttp.ClientSession() as session:
        async with session.get(url_of(shield, "/x")) as response:
            assert response.headers["RateLimit-Limit"] == "2"
        async with session.get(url_of(shield, "/x"), headers=as_user()) as response:
            assert response.headers["RateLimit-Limit"] == "5"
        anonymous = []
        for _ in range(2):
            async with session.get(url_of(shield, "/x")) as response:
                anonymous.append(response.status)
        assert anonymous == [200, 429]
        # The same address, logged in: its own, larger allowance.
        async with session.get(url_of(shield, "/x"), headers=as_user()) as response:
            assert (response.status, response.headers["RateLimit-Remaining"]) == (200, "3")


FORGED = {"X-Shield-User": "admin", "X-Shield-Authenticated": "true", "X-Shield-Client-IP": "10.0.0.1"}


async def test_client_identity_headers_are_always_stripped(
    upstream: Upstream, make_shield: MakeShield
) -> None:
    shield = await make_shield(upstream.url, auth=JWT_AUTH)
    assert await post(shield, "/x", FORGED) == 200
    assert not {name.lower() for name in upstream.headers[-1]} & {name.lower() for name in FORGED}


async def test_identity_headers_tell_the_upstream_who_shield_saw(
    upstream: Upstream, make_shield: MakeShield
) -> None:
    shield = await make_shield(upstream.url, auth=JWT_AUTH, forwarding={"identity_headers": True})
    assert await post(shield, "/x", {**FORGED, **as_user("zoë\r\nX-Evil: 1")}) == 200
    seen = upstream.headers[-1]
    assert seen["X-Shield-User"] == "zo%C3%AB%0D%0AX-Evil:%201"
    assert (seen["X-Shield-Authenticated"], seen["X-Shield-Client-IP"]) == ("true", "127.0.0.1")
    assert "X-Evil" not in seen
    assert await post(shield, "/x", FORGED) == 200
    seen = upstream.headers[-1]
    assert (seen["X-Shield-Authenticated"], seen["X-Shield-Client-IP"]) == ("false", "127.0.0.1")
    assert "X-Shield-User" not in seen


def introspection(**options: Any) -> dict[str, Any]:
    return {
        "introspection": {"path": "/api/me", "cookie": "sid", "ttl": "60s", "negative_ttl": "5s", **options}
    }


async def start_with_introspection(upstream: Upstream, clock: FakeClock, **options: Any) -> Shield:
    config = shield_config(upstream.url, auth=introspection(**options), rules=[CLOSED_FOR_ANONYMOUS])
    shield = Shield(config, clock=clock)
    await shield.start()
    return shield


async def test_introspection_asks_the_upstream_once_and_caches_the_answer(upstream: Upstream) -> None:
    clock = FakeClock()
    upstream.sessions["s-1"] = "erin"
    shield = await start_with_introspection(upstream, clock)
    try:
        cookie = {"Cookie": "sid=s-1"}
        assert [await post(shield, "/api/register", cookie) for _ in range(3)] == [200, 200, 200]
        assert upstream.me_calls == 1
        # Logged out upstream: the cached answer holds until its TTL is over.
        del upstream.sessions["s-1"]
        clock.advance(59)
        assert await post(shield, "/api/register", cookie) == 200
        clock.advance(2)
        assert await post(shield, "/api/register", cookie) == 503
        assert upstream.me_calls == 2
        # Requests without the cookie never cause a call.
        assert await post(shield, "/api/register") == 503
        assert upstream.me_calls == 2
    finally:
        await shield.stop(grace=1.0)


async def test_a_negative_answer_is_cached_for_the_shorter_ttl(upstream: Upstream) -> None:
    clock = FakeClock()
    shield = await start_with_introspection(upstream, clock)
    try:
        cookie = {"Cookie": "sid=s-2"}
        assert await post(shield, "/api/register", cookie) == 503
        assert await post(shield, "/api/register", cookie) == 503
        assert upstream.me_calls == 1
        upstream.sessions["s-2"] = "frank"  # logged in meanwhile
        clock.advance(6)
        assert await post(shield, "/api/register", cookie) == 200
        assert upstream.me_calls == 2
    finally:
        await shield.stop(grace=1.0)


async def test_concurrent_requests_with_one_unknown_credential_make_one_upstream_call(
    upstream: Upstream,
) -> None:
    upstream.sessions["s-3"] = "gina"
    upstream.me_delay = 0.2
    shield = await start_with_introspection(upstream, FakeClock())
    try:
        statuses = await asyncio.gather(
            *(post(shield, "/api/register", {"Cookie": "sid=s-3"}) for _ in range(20))
        )
        assert statuses == [200] * 20
        assert upstream.me_calls == 1
        assert shield.introspector is not None and shield.introspector.calls == 1
    finally:
        await shield.stop(grace=1.0)


async def test_an_introspection_failure_is_anonymous_and_not_cached(upstream: Upstream) -> None:
    upstream.sessions["s-4"] = "hal"
    upstream.me_delay = 1.0
    shield = await start_with_introspection(upstream, FakeClock(), timeout="100ms")
    try:
        assert await post(shield, "/api/register", {"Cookie": "sid=s-4"}) == 503
        upstream.me_delay = 0.0
        assert await post(shield, "/api/register", {"Cookie": "sid=s-4"}) == 200
    finally:
        await shield.stop(grace=1.0)


async def test_the_introspection_cache_is_bounded_and_arms_no_timers() -> None:
    clock = FakeClock()
    cache = BoundedMemoryCache(3, clock)
    for n in range(10):
        await cache.set(str(n), Identity(True, str(n)), 60)
    assert len(cache) == 3
    assert await cache.get("0") is None
    assert await cache.get("9") == Identity(True, "9")
    assert cache._cache._handlers == {}  # aiocache's per-key TTL timers are not used
    clock.advance(61)
    assert await cache.get("9") is None
    await cache.close()

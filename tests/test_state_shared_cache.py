"""Introspection answers shared through Redis: a session one replica looked up, the next knows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import MakeShield, url_of
from tests.redis_servers import RedisServer

REGISTRATION_CLOSED_FOR_ANONYMOUS = {
    "name": "registration-closed",
    "match": {"paths": ["/api/register"]},
    "for": "anonymous",
    "action": "close",
}


class SessionApp:
    """An upstream whose /api/me knows one session, counting how often it is asked."""

    def __init__(self) -> None:
        self.me_calls = 0
        self.url = ""

    async def me(self, request: web.Request) -> web.Response:
        self.me_calls += 1
        if request.cookies.get("sid") == "s-erin":
            return web.json_response({"id": "erin"})
        return web.json_response({"error": "no session"}, status=401)

    async def anything(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


@pytest.fixture
async def app(aiohttp_server: AiohttpServer) -> SessionApp:
    sessions = SessionApp()
    application = web.Application()
    application.router.add_get("/api/me", sessions.me)
    application.router.add_route("*", "/{tail:.*}", sessions.anything)
    server = await aiohttp_server(application)
    sessions.url = str(server.make_url("")).rstrip("/")
    return sessions


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


async def test_a_session_one_replica_looked_up_is_known_to_the_other(
    app: SessionApp, redis_server: RedisServer, make_shield: MakeShield
) -> None:
    settings = {
        "auth": {"introspection": {"path": "/api/me", "cookie": "sid", "ttl": "60s", "negative_ttl": "5s"}},
        "state": {
            "backend": "redis",
            "url": redis_server.url,
            "key_prefix": f"t:{uuid4().hex}:",
            "timeout": "500ms",
        },
        "rules": [REGISTRATION_CLOSED_FOR_ANONYMOUS],
    }
    first = await make_shield(app.url, **settings)
    second = await make_shield(app.url, **settings)
    async with aiohttp.ClientSession() as session:
        for replica in (first, second, first, second):
            async with session.post(
                url_of(replica, "/api/register"), headers={"Cookie": "sid=s-erin"}
            ) as reply:
                assert reply.status == 200
        assert app.me_calls == 1
        # A refused session is shared too, for its shorter time.
        for replica in (first, second):
            async with session.post(
                url_of(replica, "/api/register"), headers={"Cookie": "sid=forged"}
            ) as reply:
                assert reply.status == 503
        assert app.me_calls == 2


async def test_with_redis_gone_sessions_are_still_looked_up_upstream(
    app: SessionApp, redis_server: RedisServer, make_shield: MakeShield
) -> None:
    shield = await make_shield(
        app.url,
        auth={"introspection": {"path": "/api/me", "cookie": "sid"}},
        state={"backend": "redis", "url": redis_server.url, "timeout": "100ms"},
        rules=[REGISTRATION_CLOSED_FOR_ANONYMOUS],
    )
    redis_server.kill()
    async with (
        aiohttp.ClientSession() as session,
        session.post(url_of(shield, "/api/register"), headers={"Cookie": "sid=s-erin"}) as reply,
    ):
        assert reply.status == 200
    assert app.me_calls == 1
    assert shield.stats.state_errors["redis"] >= 1

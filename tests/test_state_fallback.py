"""on_error: local covers every way a throttle touches state, including charges made after the
upstream answered (count: {status: [...]}), while Redis is down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import MakeShield, url_of
from tests.redis_servers import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


async def refuse_login(request: web.Request) -> web.Response:
    return web.Response(status=401, text="wrong password")


async def test_failed_logins_are_counted_locally_while_redis_is_down(
    aiohttp_server: AiohttpServer, redis_server: RedisServer, make_shield: MakeShield
) -> None:
    app = web.Application()
    app.router.add_post("/api/login", refuse_login)
    upstream = await aiohttp_server(app)
    shield = await make_shield(
        str(upstream.make_url("")).rstrip("/"),
        state={"backend": "redis", "url": redis_server.url, "on_error": "local", "timeout": "100ms"},
        rules=[
            {
                "name": "failed-logins",
                "match": {"paths": ["/api/login"]},
                "action": "throttle",
                "limit": "2/minute",
                "count": {"status": [401]},
            }
        ],
    )
    redis_server.kill()
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(4):
            async with session.post(url_of(shield, "/api/login")) as reply:
                statuses.append(reply.status)
    assert statuses == [401, 401, 429, 429]
    assert shield.stats.state_errors["redis"] >= 2

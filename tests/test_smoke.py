from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import MakeShield, url_of


async def test_forwards_a_request_and_its_answer(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    seen: list[web.Request] = []

    async def hello(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(text="hello", headers={"X-Upstream": "yes"})

    app = web.Application()
    app.router.add_get("/hello", hello)
    upstream = await aiohttp_server(app)
    shield = await make_shield(str(upstream.make_url("/")).rstrip("/"))

    async with aiohttp.ClientSession() as client, client.get(url_of(shield, "/hello?x=1")) as response:
        assert response.status == 200
        assert await response.text() == "hello"
        assert response.headers["X-Upstream"] == "yes"
    assert seen[0].query_string == "x=1"
    assert seen[0].headers["X-Forwarded-For"] == "127.0.0.1"

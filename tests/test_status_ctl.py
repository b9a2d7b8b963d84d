"""The incident page lists what an operator closed with `shield ctl`, beside the file's closures."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import MakeShield, url_of


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_a_ctl_closure_shows_on_the_status_page_with_its_reopening(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    upstream = await aiohttp_server(app)
    shield = await make_shield(
        str(upstream.make_url("")).rstrip("/"),
        status_page={"enabled": True},
        rules=[
            {
                "name": "register",
                "public_name": "Sign-ups",
                "match": {"paths": ["/api/register"]},
                "action": "allow",
            }
        ],
    )
    await shield.switches.close("register", 600.0, "Sign-ups are paused for maintenance.")
    async with (
        aiohttp.ClientSession() as session,
        session.get(url_of(shield, "/status"), headers={"Accept": "application/json"}) as reply,
    ):
        page = await reply.json()
    assert reply.status == 200
    assert page["status"] == "degraded"
    [closure] = page["closed"]
    assert (closure["name"], closure["source"]) == ("Sign-ups", "ctl")
    assert closure["message"] == "Sign-ups are paused for maintenance."
    assert closure["until"] is not None

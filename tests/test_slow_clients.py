"""Slow clients that are healthy get served: each wait belongs to one phase of the exchange.

A streamed upload is its own phase: the wait for the upstream's answer starts once the whole
body went up, so an upload longer than ``timeouts.upstream_headers`` is not cut off by it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import MakeShield, serve, url_of

PIECE = 16 * 1024


async def test_a_slow_upload_longer_than_the_header_wait_completes(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    received: list[int] = []

    async def upload(request: web.Request) -> web.Response:
        if request.method == "POST":  # (not Shield's readiness probe)
            received.append(len(await request.read()))
        return web.Response(text="stored")

    shield = await make_shield(
        await serve(aiohttp_server, upload),
        timeouts={"upstream_headers": 0.3, "upstream_idle": 2.0, "client_idle": 2.0},
    )

    async def slowly() -> AsyncIterator[bytes]:
        for _ in range(8):  # 128 KiB over about 1.2 s: a streamed body (over 64 KiB)
            yield b"x" * PIECE
            await asyncio.sleep(0.15)

    async with (
        aiohttp.ClientSession() as client,
        client.post(url_of(shield, "/upload"), data=slowly()) as answer,
    ):
        assert (answer.status, await answer.text()) == (200, "stored")
    assert received == [8 * PIECE]


async def test_the_header_wait_still_holds_once_the_body_is_up(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    async def never_answers(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(5)
        return web.Response(text="late")

    shield = await make_shield(
        await serve(aiohttp_server, never_answers),
        timeouts={"upstream_headers": 0.3, "upstream_idle": 2.0},
    )

    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * PIECE

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with (
        aiohttp.ClientSession() as client,
        client.post(url_of(shield, "/upload"), data=body()) as answer,
    ):
        assert answer.status == 504
    assert loop.time() - started < 2.0

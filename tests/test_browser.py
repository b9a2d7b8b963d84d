"""Real browser: headless Chromium (Debian's package, driven by Playwright) solves the challenge
page's puzzle with its own script and reaches the upstream, and renders the closed page."""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import MakeShield, serve, url_of

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")

MESSAGE = "Registration is paused while we deal with a flood of sign-ups."


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        await browser.close()


async def welcome(request: web.Request) -> web.Response:
    return web.Response(text=f"<h1>Welcome to {request.path}</h1>", content_type="text/html")


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> str:
    return await serve(aiohttp_server, welcome)


async def test_chromium_solves_the_challenge_and_reaches_the_upstream(
    browser: Any, upstream: str, make_shield: MakeShield
) -> None:
    rules = [{"name": "signup", "match": {"paths": ["/signup/**"]}, "action": "challenge"}]
    shield = await make_shield(upstream, rules=rules, challenge={"difficulty": 14})
    page = await browser.new_page()
    first = await page.goto(url_of(shield, "/signup/start?plan=free"))
    assert first.status == 429
    await page.wait_for_url("**/signup/start?plan=free", wait_until="load")
    await page.get_by_text("Welcome to /signup/start").wait_for(timeout=30_000)
    assert [c["name"] for c in await page.context.cookies()] == ["shield_pass"]
    again = await page.goto(url_of(shield, "/signup/other"))
    assert again.status == 200 and "Welcome to /signup/other" in await page.inner_text("body")


def distinct_rows(png: bytes) -> int:
    """How many different scanlines a PNG has: a blank or one-colour page has very few."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    offset, data = 8, b""
    width = height = 0
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        chunk = png[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            data += chunk
        offset += 12 + length
    raw = zlib.decompress(data)
    stride = len(raw) // height
    assert stride >= width * 3
    return len({raw[i * stride + 1 : (i + 1) * stride] for i in range(height)})


async def test_the_closed_registration_page_renders_with_its_message(
    browser: Any, upstream: str, make_shield: MakeShield, tmp_path: Path
) -> None:
    rules = [
        {
            "name": "registration-closed",
            "match": {"paths": ["/register"]},
            "action": "close",
            "retry_after": "10m",
            "message": MESSAGE,
        }
    ]
    shield = await make_shield(upstream, rules=rules)
    page = await browser.new_page(viewport={"width": 800, "height": 600})
    response = await page.goto(url_of(shield, "/register"))
    assert response.status == 503
    text = await page.inner_text("body")
    assert MESSAGE in text and "about 10 minutes" in text
    assert await page.title() == "Temporarily unavailable"
    shot = tmp_path / "closed.png"
    await page.screenshot(path=str(shot))
    png = shot.read_bytes()
    assert len(png) > 5_000
    assert distinct_rows(png) > 20  # text and a card on a background, not a blank page

"""The waiting room in Debian's Chromium, on the real clock: a visitor arrives behind a few others,
watches its place fall on a page that refreshes itself, and reaches the upstream's page on its
own, with scripts on and with scripts off (the meta refresh alone does it). Screenshots of the
page at two places are kept in the test's tmp_path, as tests/test_browser.py keeps its own, and
copied to build/screenshots/ (or $SHIELD_SCREENSHOTS) for the README; ``-s`` prints where."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import CHROMIUM, MakeShield, serve, url_of
from tests.test_browser import distinct_rows

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")

SCREENSHOTS = Path(os.environ.get("SHIELD_SCREENSHOTS", Path(__file__).parents[1] / "build" / "screenshots"))
UPSTREAM_PAGE = "Create your account"
MESSAGE = "So many of you are signing up at once that we let you in in turn."
SIGNUP: dict[str, Any] = {
    "name": "signup",
    "public_name": "Sign-up",
    "match": {"paths": ["/signup"]},
    "action": "queue",
    "admit": "60/minute",  # one a second
    "burst": 1,
    "message": MESSAGE,
}
OTHERS = 4  # the first walks in on the burst; three abandoned tickets stay ahead of the browser
# The line moves on whole seconds after the first ticket; the page reloads a little over a
# second apart. Arriving a quarter second in keeps each load well inside one place's second.
ARRIVE_AFTER = 0.25
WITHIN = 20.0


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> tuple[str, list[str]]:
    """The sign-up form, and who asked for it (X-Forwarded-For as Shield passes it on); Shield's
    own probe of the upstream and the browser's favicon are not counted."""
    asked: list[str] = []

    async def signup(request: web.Request) -> web.Response:
        if request.path == "/signup":
            asked.append(request.headers["X-Forwarded-For"])
        page = f"<!doctype html><title>Sign up</title><h1>{UPSTREAM_PAGE}</h1><form><input name=email></form>"
        return web.Response(text=page, content_type="text/html")

    return await serve(aiohttp_server, signup), asked


async def draw_tickets(url: str, count: int) -> list[int | None]:
    """``count`` visitors, each at its own address with its own cookies, ask once (as API clients,
    for the JSON) and never come back; how many were ahead of each (None: let in)."""
    ahead: list[int | None] = []
    for n in range(1, count + 1):
        headers = {"X-Forwarded-For": f"198.51.100.{n}", "Accept": "application/json"}
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as visitor,
            visitor.get(url, headers=headers) as response,
        ):
            ahead.append(None if response.status == 200 else (await response.json())["position"])
    return ahead


def keep(shots: Iterable[Path]) -> list[Path]:
    """Copies of ``shots`` in SCREENSHOTS, where the README finds them."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(shot, SCREENSHOTS / shot.name)) for shot in shots]


def place_shown(text: str) -> int | None:
    """The place in line the page says (1: next), or None for any other page."""
    if "You're next" in text:
        return 1
    found = re.search(r"You're number ([\d,]+) in line", text)
    return int(found.group(1).replace(",", "")) if found else None


@pytest.mark.parametrize("scripts", [True, False], ids=["scripts-on", "scripts-off"])
async def test_a_visitor_waits_its_turn_and_reaches_the_upstream_by_itself(
    browser: Any,
    upstream: tuple[str, list[str]],
    make_shield: MakeShield,
    tmp_path: Path,
    scripts: bool,
) -> None:
    upstream_url, asked = upstream
    shield = await make_shield(
        upstream_url,
        rules=[SIGNUP],
        queue={"refresh": "1s"},
        clients={"trusted_proxies": ["127.0.0.1/32"]},
    )
    context = await browser.new_context(java_script_enabled=scripts, viewport={"width": 800, "height": 640})
    page = await context.new_page()
    loop = asyncio.get_running_loop()
    loads: asyncio.Queue[float] = asyncio.Queue()
    page.on("load", lambda _: loads.put_nowait(loop.time()))
    signup = url_of(shield, "/signup")

    started = loop.time()
    assert await draw_tickets(signup, OTHERS) == [None, 0, 1, 2]
    await asyncio.sleep(max(0.0, started + ARRIVE_AFTER - loop.time()))
    first = await page.goto(signup)
    assert first.status == 200

    # From here the test only watches: each load, what the page says.
    suffix = "" if scripts else "-noscript"
    seen: list[tuple[float, int | None]] = []
    shots: dict[int, Path] = {}
    deadline = started + WITHIN
    while True:
        at = await asyncio.wait_for(loads.get(), deadline - loop.time())
        text = await page.inner_text("body")
        place = place_shown(text)
        seen.append((round(at - started, 2), place))
        if place is None:
            break
        if place in (4, 1) and place not in shots:
            shots[place] = tmp_path / f"waiting-room-{'next' if place == 1 else place}{suffix}.png"
            await page.screenshot(path=str(shots[place]))
    places = [place for _, place in seen]
    print(f"\nscripts {'on' if scripts else 'off'}: (seconds after the first ticket, place shown): {seen}")

    assert UPSTREAM_PAGE in text and page.url == signup
    waited = places[:-1]
    assert waited == sorted(waited, reverse=True)  # never a place back
    assert set(waited) == {4, 3, 2, 1}  # from number 4 in line to next, one place a second
    # The upstream saw the one let in on the burst, then the browser once, when it was let in.
    assert asked == ["198.51.100.1, 127.0.0.1", "127.0.0.1"]
    cookies = {cookie["name"] for cookie in await context.cookies()}
    assert cookies == {"shield_admitted_signup"}  # the ticket is spent, the admission kept
    again = await page.reload()
    assert again.status == 200 and UPSTREAM_PAGE in await page.inner_text("body")
    assert asked == ["198.51.100.1, 127.0.0.1", "127.0.0.1", "127.0.0.1"]
    await context.close()

    for shot in shots.values():
        assert distinct_rows(shot.read_bytes()) > 20  # the card and its text, not a blank page
    print("screenshots:", *keep(shots.values()))

"""Real browser: headless Chromium (Debian's package, driven by Playwright) solves the challenge
page's puzzle with its own script and reaches the upstream, and renders the closed page, the
status page and the challenge page as a user sees them (screenshots kept in the test's tmp_path)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import CHROMIUM, MakeShield, serve, url_of

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")

MESSAGE = "Registration is paused while we deal with a flood of sign-ups."


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


SEARCH_MESSAGE = "Search is resting while we handle a flood of automated queries."
STATUS_RULES = [
    {
        "name": "registration-closed",
        "public_name": "Sign-up",
        "match": {"paths": ["/register"]},
        "action": "close",
        "message": MESSAGE,
    },
    {
        "name": "search-flood-7",
        "public_name": "Search",
        "match": {"paths": ["/search"]},
        "action": "allow",
        "auto_close": {"when": "rate > 2/second", "for": 0, "reopen_after": "10m", "message": SEARCH_MESSAGE},
    },
    {
        "name": "checkout-v2",
        "public_name": "Checkout",
        "match": {"paths": ["/checkout"]},
        "action": "allow",
        "auto_close": {"when": "rate > 1000/second", "for": "1m", "reopen_after": "10m"},
    },
]


async def test_the_status_page_lists_what_is_closed_by_its_public_name(
    browser: Any, upstream: str, make_shield: MakeShield, tmp_path: Path
) -> None:
    shield = await make_shield(upstream, rules=STATUS_RULES, status_page={"enabled": True})
    page = await browser.new_page(viewport={"width": 800, "height": 600})
    for _ in range(4):  # a flood of searches auto-closes Search; Checkout stays open
        await page.request.get(url_of(shield, "/search"))
    assert (await page.request.get(url_of(shield, "/checkout"))).status == 200
    response = await page.goto(url_of(shield, "/status"))
    assert response.status == 200
    assert await page.title() == "Service status"
    text = await page.inner_text("body")
    assert "Some features are temporarily unavailable." in text
    features = [await item.inner_text() for item in await page.locator("li").all()]
    assert len(features) == 2
    search, signup = features  # the one expected back soonest first
    assert search.startswith("Search\n") and SEARCH_MESSAGE in search
    assert "Expected back in about 10 minutes" in search
    assert signup.startswith("Sign-up\n") and MESSAGE in signup and "Until further notice" in signup
    assert "Checkout" not in text  # open: not listed
    for internal in ("registration-closed", "search-flood-7", "checkout-v2", "/register", "/search"):
        assert internal not in text
    shot = tmp_path / "status.png"
    await page.screenshot(path=str(shot))
    assert distinct_rows(shot.read_bytes()) > 20


# Holds the page at each step long enough to look at it (the puzzle is solved in well under a
# second): hashing waits for window.startSolving(), the form's submission for window.submitNow().
HOLD_THE_STEPS = """
const started = new Promise((resolve) => { window.startSolving = resolve; });
const submitted = new Promise((resolve) => { window.submitNow = resolve; });
const digest = SubtleCrypto.prototype.digest;
SubtleCrypto.prototype.digest = async function (...args) {
  await started;
  return digest.apply(this, args);
};
const submit = HTMLFormElement.prototype.submit;
HTMLFormElement.prototype.submit = function () {
  submitted.then(() => submit.call(this));
};
"""


async def test_the_challenge_page_explains_itself_then_moves_on_by_itself(
    browser: Any, upstream: str, make_shield: MakeShield, tmp_path: Path
) -> None:
    rules = [{"name": "signup", "match": {"paths": ["/signup/**"]}, "action": "challenge"}]
    shield = await make_shield(upstream, rules=rules, challenge={"difficulty": 12})
    page = await browser.new_page(viewport={"width": 800, "height": 600})
    await page.add_init_script(HOLD_THE_STEPS)

    first = await page.goto(url_of(shield, "/signup/start"))
    assert first.status == 429
    assert await page.title() == "Checking your browser"
    text = await page.inner_text("body")
    assert "Checking your browser" in text
    assert "This takes a moment and happens only once in a while." in text
    assert "The site is under unusual load; this check keeps automated floods out." in text
    assert "enable JavaScript" not in text  # the <noscript> note stays hidden
    shot = tmp_path / "challenge.png"
    await page.screenshot(path=str(shot))
    assert distinct_rows(shot.read_bytes()) > 20

    await page.evaluate("window.startSolving()")
    await page.get_by_text("Done, continuing…").wait_for(timeout=30_000)
    assert "This takes a moment" not in await page.inner_text("body")
    await page.screenshot(path=str(tmp_path / "challenge-solved.png"))

    await page.evaluate("window.submitNow()")
    await page.get_by_text("Welcome to /signup/start").wait_for(timeout=10_000)
    assert page.url == url_of(shield, "/signup/start")
    assert [c["name"] for c in await page.context.cookies()] == ["shield_pass"]

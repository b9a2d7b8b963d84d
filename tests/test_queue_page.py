"""The waiting room of ``action: queue``: a page for browsers that says the place in line and the
wait in words and refreshes itself, JSON for API clients; and, in Debian's Chromium, how the page
looks (screenshots kept in the test's tmp_path, as tests/test_browser.py keeps its own) and that
it reaches the upstream by itself with scripts off."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.enforce.queue_page import queued
from shield.http.answer import ShieldAnswer
from tests.conftest import CHROMIUM
from tests.test_browser import distinct_rows

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
MESSAGE = "Sign-ups are open again! So many of you came at once that we let people in in turn."


def waiting(**given: Any) -> ShieldAnswer:
    arguments: dict[str, Any] = {
        "position": 41,
        "wait": 300.0,
        "refresh": 30.0,
        "message": MESSAGE,
        "title": None,
        "accept": BROWSER,
    }
    return queued(**{**arguments, **given})


def meta_refresh(page: str) -> str:
    found = re.search(r'<meta http-equiv="refresh" content="([^"]*)">', page)
    assert found is not None
    return found.group(1)


def test_a_browser_gets_a_page_that_refreshes_itself() -> None:
    answer = waiting()
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Refresh"] == "30"
    assert "Retry-After" not in answer.headers
    page = answer.text
    assert meta_refresh(page) == "30"
    assert '<html lang="en">' in page
    assert "<h1>You're in line</h1>" in page
    assert MESSAGE in page
    assert "refreshes itself every 30 seconds" in page
    assert "Keep this tab open to keep your place" in page
    assert "coming back later in the same browser\n  keeps it too, for a while." in page


@pytest.mark.parametrize("accept", [None, "", "*/*", BROWSER, "application/json, text/html"])
def test_anything_but_a_json_client_gets_the_page(accept: str | None) -> None:
    answer = waiting(accept=accept)
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("accept", ["application/json", "application/problem+json", "application/json, */*"])
def test_an_api_client_gets_json_with_retry_after(accept: str) -> None:
    answer = waiting(accept=accept, position=1234, wait=2400.4, refresh=29.2)
    assert answer.status == 429
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert answer.headers["Retry-After"] == "30"
    assert answer.headers["Cache-Control"] == "no-store"
    assert "Refresh" not in answer.headers
    assert json.loads(answer.text) == {
        "error": "queued",
        "message": MESSAGE,
        "position": 1234,
        "wait_seconds": 2401,
        "retry_after": 30,
    }


@pytest.mark.parametrize("accept", [BROWSER, "application/json"])
def test_extra_headers_and_cookies_come_with_either(accept: str) -> None:
    cookies = ["shield_queue=t1.sig; Max-Age=1800; Path=/; HttpOnly; SameSite=Lax", "other=1; Path=/"]
    extra = {"X-Shield-Rule": "signup-queue", "X-Shield-Position": "41"}
    answer = waiting(accept=accept, extra=extra, cookies=cookies)
    assert answer.headers["X-Shield-Rule"] == "signup-queue"
    assert answer.headers["X-Shield-Position"] == "41"
    assert answer.cookies == cookies
    assert "Set-Cookie" not in answer.headers  # written apart, one line each


def test_the_operators_message_and_the_title_are_escaped() -> None:
    hostile = '<script>alert("you are first")</script>'
    page = waiting(message=hostile, title="<img src=x onerror=alert(1)>", status_path='/s"><script>').text
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;you are first&quot;)&lt;/script&gt;" in page
    assert "<img" not in page and "<h1>&lt;img src=x onerror=alert(1)&gt;</h1>" in page
    assert 'href="/s&quot;&gt;&lt;script&gt;"' in page
    assert page.count("<script>") == 1  # the page's own countdown only


def test_the_message_is_raw_text_in_json() -> None:
    hostile = '<script>alert("x")</script>'
    assert json.loads(waiting(message=hostile, accept="application/json").text)["message"] == hostile


@pytest.mark.parametrize(
    ("position", "place", "ahead", "tab"),
    [
        (0, "<strong>You're next</strong>", "Nobody is ahead of you.", "You're next"),
        (
            1,
            "You're number <strong>2</strong> in line",
            "1 person is ahead of you.",
            "You're number 2 in line",
        ),
        (
            1234,
            "You're number <strong>1,235</strong> in line",
            "1,234 people are ahead of you.",
            "You're number 1,235 in line",
        ),
    ],
)
def test_the_place_in_line_in_words(position: int, place: str, ahead: str, tab: str) -> None:
    page = waiting(position=position).text
    live = re.search(r'<div class="place" role="status" aria-live="polite"[^>]*>(.*?)</div>', page, re.S)
    assert live is not None
    assert place in live.group(1) and ahead in live.group(1)
    assert f"<title>{tab}</title>" in page


def test_the_title_heads_the_page_and_names_the_tab() -> None:
    page = waiting(title="Sign-up", position=3).text
    assert "<h1>Sign-up</h1>" in page
    assert "<title>You're number 4 in line · Sign-up</title>" in page


@pytest.mark.parametrize(
    ("wait", "words"),
    [
        (20, "about 20 seconds"),
        (90, "about 2 minutes"),
        (40 * 60, "about 40 minutes"),
        (3 * 3600, "about 3 hours"),
    ],
)
def test_the_wait_in_words(wait: float, words: str) -> None:
    assert f"Estimated wait: <strong>{words}</strong>." in waiting(wait=wait).text


@pytest.mark.parametrize(
    ("refresh", "header", "every"), [(0.2, "1", "second"), (12.3, "13", "13 seconds"), (60, "60", "minute")]
)
def test_the_meta_refresh_is_the_refresh_header(refresh: float, header: str, every: str) -> None:
    answer = waiting(refresh=refresh)
    assert answer.headers["Refresh"] == header
    assert meta_refresh(answer.text) == header
    assert f"refreshes itself every {every} and" in answer.text
    assert f'data-seconds="{header}"' in answer.text


def test_the_status_page_is_linked_when_it_is_on() -> None:
    assert '<a href="/status">' in waiting(status_path="/status").text
    assert "<a " not in waiting().text


# In the browser.

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")


def as_response(answer: ShieldAnswer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
    for cookie in answer.cookies:
        response.headers.add("Set-Cookie", cookie)
    return response


@needs_chromium
async def test_the_waiting_room_as_a_visitor_sees_it(
    browser: Any, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    line_at = {"/far": (1234, 2470.0), "/near": (3, 12.0), "/next": (0, 5.0)}  # (ahead, wait)

    async def line(request: web.Request) -> web.Response:
        position, wait = line_at[request.path]
        answer = queued(
            position=position,
            wait=wait,
            refresh=min(wait, 30.0),
            message=MESSAGE,
            title="Sign-up",
            accept=request.headers.get("Accept"),
            status_path="/status",
        )
        return as_response(answer)

    app = web.Application()
    app.router.add_get("/{where}", line)
    server = await aiohttp_server(app)
    page = await browser.new_page(viewport={"width": 800, "height": 640})
    seen = [
        ("far", "You're number 1,235 in line", "1,234 people are ahead of you.", "about 41 minutes", 28),
        ("near", "You're number 4 in line", "3 people are ahead of you.", "about 12 seconds", 9),
        ("next", "You're next", "Nobody is ahead of you.", "about 5 seconds", 4),
    ]
    for where, place, ahead, wait, left in seen:
        response = await page.goto(str(server.make_url(f"/{where}")))
        assert response.status == 200
        assert await page.title() == f"{place} · Sign-up"  # the place shows on a tab in the background
        assert await page.get_by_role("heading", level=1).inner_text() == "Sign-up"
        status = await page.get_by_role("status").inner_text()
        assert place in status and ahead in status and f"Estimated wait: {wait}." in status
        # The countdown runs (and the page has not refreshed yet): a moment in, for the screenshot.
        await page.get_by_text(f"Checking again in {left} s").wait_for()
        shot = tmp_path / f"queue-{where}.png"
        await page.screenshot(path=str(shot))
        assert distinct_rows(shot.read_bytes()) > 20


@needs_chromium
async def test_with_scripts_off_the_page_refreshes_itself_into_the_upstream(
    browser: Any, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    asked: list[str] = []

    async def line(request: web.Request) -> web.Response:
        asked.append(request.path)
        if len(asked) < 3:
            position = 2 - len(asked)
            answer = queued(
                position=position,
                wait=1.0,
                refresh=1.0,
                message=MESSAGE,
                title=None,
                accept=request.headers.get("Accept"),
            )
            return as_response(answer)
        return web.Response(text="<h1>Welcome to sign-up</h1>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/signup", line)
    server = await aiohttp_server(app)
    context = await browser.new_context(java_script_enabled=False, viewport={"width": 800, "height": 700})
    page = await context.new_page()
    await page.goto(str(server.make_url("/signup")))
    assert "You're number 2 in line" in await page.inner_text("body")
    assert not await page.locator("#countdown").is_visible()  # the script's part stays hidden
    await page.screenshot(path=str(tmp_path / "queue-noscript.png"))
    await page.get_by_text("Welcome to sign-up").wait_for(timeout=10_000)
    assert asked == ["/signup"] * 3 and page.url == str(server.make_url("/signup"))
    await context.close()


@needs_chromium
async def test_without_its_style_the_page_still_reads_in_order(browser: Any, tmp_path: Path) -> None:
    page_html = waiting(position=3, title="Sign-up", status_path="/status").text
    unstyled = re.sub(r"<style>.*?</style>", "", page_html, flags=re.S)
    page = await browser.new_page(viewport={"width": 800, "height": 700})
    await page.set_content(unstyled)
    text = await page.inner_text("body")
    order = ["Sign-up", MESSAGE, "You're number 4 in line", "3 people are ahead of you.", "Estimated wait"]
    assert [text.index(part) for part in order] == sorted(text.index(part) for part in order)
    await page.screenshot(path=str(tmp_path / "queue-unstyled.png"))

"""``action: challenge``: a proof-of-work page, and the signed pass cookie that solving it earns.

A client that computes the puzzle (here in Python, as the page's script does in the browser)
reaches the upstream; forged, expired and other clients' passes are refused, a solution is
redirected back only to this site, and JSON clients get a 429 JSON answer instead of the page.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.app.server import Shield
from shield.clock import FakeClock
from shield.decide.challenge_tokens import Challenger, binding, leading_zero_bits, solve, solves
from shield.enforce.challenge_gate import safe_next
from tests.conftest import serve, shield_config, url_of
from tests.test_ctl import metric

RULES = [{"name": "signup", "match": {"paths": ["/signup/**"]}, "action": "challenge"}]
NOW = 1_700_000_000.0


def test_puzzles_are_bound_to_a_client_and_expire() -> None:
    challenger = Challenger(b"k" * 32, difficulty=8, solve_within=300, pass_for=3600)
    token = challenger.puzzle("203.0.113.9", NOW)
    counter = solve(token, 8)
    assert solves(token, counter, 8)
    assert challenger.check_solution(token, counter, "203.0.113.9", NOW + 299) is None
    assert challenger.check_solution(token, counter, "203.0.113.9", NOW + 301) == "puzzle expired"
    assert (
        challenger.check_solution(token, counter, "198.51.100.1", NOW) == "puzzle not issued to this client"
    )
    wrong = next(str(n) for n in range(1000) if not solves(token, str(n), 8))
    assert challenger.check_solution(token, wrong, "203.0.113.9", NOW) == "wrong solution"
    easier = token.replace(".8.", ".1.", 1)  # the difficulty is signed: lowering it breaks the token
    assert challenger.check_solution(easier, solve(easier, 1), "203.0.113.9", NOW) == (
        "puzzle not issued to this client"
    )


def test_passes_are_signed_bound_and_expiring() -> None:
    challenger = Challenger(b"k" * 32, difficulty=8, solve_within=300, pass_for=3600)
    cookie, max_age = challenger.pass_cookie("203.0.113.9", NOW)
    assert max_age == 3600
    assert challenger.passes(cookie, "203.0.113.9", NOW + 3599)
    assert not challenger.passes(cookie, "203.0.113.9", NOW + 3601)
    assert not challenger.passes(cookie, "198.51.100.1", NOW)
    expires, _, signature = cookie.partition(".")
    assert not challenger.passes(f"{int(expires) + 86400}.{signature}", "203.0.113.9", NOW)
    other_key = Challenger(b"x" * 32, difficulty=8, solve_within=300, pass_for=3600)
    assert not challenger.passes(other_key.pass_cookie("203.0.113.9", NOW)[0], "203.0.113.9", NOW)
    assert not challenger.passes("", "203.0.113.9", NOW) and not challenger.passes("junk", "203.0.113.9", NOW)


def test_zero_bits_and_bindings() -> None:
    assert leading_zero_bits(bytes([0, 0, 0x1F])) == 19
    assert leading_zero_bits(bytes([0x80])) == 0
    assert binding("203.0.113.9", 24) == "203.0.113.0/24"
    assert binding("203.0.113.9", 32) == "203.0.113.9"
    assert binding("2001:db8::/64", 24) == "2001:db8::/64"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/signup/form?x=1", "/signup/form?x=1"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/ok\r\nSet-Cookie: x=1", "/"),
        ("", "/"),
    ],
)
def test_the_redirect_after_a_solution_stays_on_this_site(target: str, expected: str) -> None:
    assert safe_next(target) == expected


async def echo_path(request: web.Request) -> web.Response:
    return web.Response(text=f"upstream {request.path_qs}")


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> str:
    return await serve(aiohttp_server, echo_path)


@pytest.fixture
async def shield(upstream: str) -> AsyncIterator[Shield]:
    shield = Shield(
        shield_config(upstream, rules=RULES, challenge={"difficulty": 10, "pass_for": "1h"}),
        wall=FakeClock(NOW),
    )
    await shield.start()
    yield shield
    await shield.stop(grace=0.5)


def form_fields(page: str) -> dict[str, str]:
    return dict(re.findall(r'name="(\w+)" value="([^"]*)"', page))


async def solve_page(client: aiohttp.ClientSession, shield: Shield, path: str) -> aiohttp.ClientResponse:
    async with client.get(url_of(shield, path), headers={"Accept": "text/html"}) as page:
        assert page.status == 429
        fields = form_fields(await page.text())
    fields["counter"] = solve(fields["token"], 10)
    return await client.post(url_of(shield, "/.shield/challenge"), data=fields, allow_redirects=False)


async def test_a_client_that_solves_the_puzzle_reaches_the_upstream(shield: Shield) -> None:
    # unsafe=True: aiohttp's jar otherwise keeps no cookies for an IP-address host like 127.0.0.1.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.get(url_of(shield, "/signup/form?x=1")) as page:
            text = await page.text()
            assert page.status == 429 and page.headers["Cache-Control"] == "no-store"
            assert "crypto.subtle.digest" in text and form_fields(text)["next"] == "/signup/form?x=1"
        async with await solve_page(client, shield, "/signup/form?x=1") as solved:
            assert solved.status == 303 and solved.headers["Location"] == "/signup/form?x=1"
            cookie = solved.cookies["shield_pass"]
            assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["max-age"] == "3600"
        async with client.get(url_of(shield, "/signup/form?x=1")) as passed:
            assert (passed.status, await passed.text()) == (200, "upstream /signup/form?x=1")
        async with client.get(url_of(shield, "/elsewhere")) as other:
            assert other.status == 200
    requests = await metric(shield, "shield_requests_total")
    assert (
        requests[
            (
                ("action", "challenge"),
                ("decision", "challenged"),
                ("identity", "anonymous"),
                ("rule", "signup"),
            )
        ]
        == 2
    )
    assert (
        requests[
            (
                ("action", "challenge"),
                ("decision", "passed"),
                ("identity", "anonymous"),
                ("rule", "challenge"),
            )
        ]
        == 1
    )
    assert (
        requests[
            (
                ("action", "challenge"),
                ("decision", "forwarded"),
                ("identity", "anonymous"),
                ("rule", "signup"),
            )
        ]
        == 1
    )


async def test_forged_expired_and_other_clients_passes_are_refused(shield: Shield) -> None:
    async def status_with(cookie: str) -> int:
        async with (
            aiohttp.ClientSession() as client,
            client.get(url_of(shield, "/signup/"), headers={"Cookie": f"shield_pass={cookie}"}) as response,
        ):
            return response.status

    gate = shield.gatekeeper.challenge if shield.gatekeeper else None
    assert gate is not None
    own, _ = gate.challenger.pass_cookie("127.0.0.1", NOW)
    assert await status_with(own) == 200
    assert await status_with(f"{int(NOW) + 3600}.{'0' * 32}") == 429  # forged signature
    assert await status_with(gate.challenger.pass_cookie("198.51.100.7", NOW)[0]) == 429  # another client's
    assert isinstance(shield.wall, FakeClock)
    shield.wall.advance(3601)
    assert await status_with(own) == 429  # expired


async def test_wrong_replayed_after_expiry_and_foreign_solutions_are_refused(shield: Shield) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(url_of(shield, "/signup/")) as page:
            fields = form_fields(await page.text())
        wrong = {
            **fields,
            "counter": next(str(n) for n in range(10**4) if not solves(fields["token"], str(n), 10)),
        }
        async with client.post(url_of(shield, "/.shield/challenge"), data=wrong) as refused:
            assert refused.status == 403 and "wrong solution" in await refused.text()
        fields["counter"] = solve(fields["token"], 10)
        fields["next"] = "https://evil.example/"
        async with client.post(
            url_of(shield, "/.shield/challenge"), data=fields, allow_redirects=False
        ) as ok:
            assert ok.status == 303 and ok.headers["Location"] == "/"
        assert isinstance(shield.wall, FakeClock)
        shield.wall.advance(301)
        async with client.post(url_of(shield, "/.shield/challenge"), data=fields) as late:
            assert late.status == 403 and "puzzle expired" in await late.text()


async def test_a_browser_whose_solution_is_refused_gets_a_page_with_a_way_back(shield: Shield) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(url_of(shield, "/signup/form?x=1")) as page:
            fields = form_fields(await page.text())
        assert isinstance(shield.wall, FakeClock)
        shield.wall.advance(301)  # the visitor's laptop slept through the check
        fields["counter"] = solve(fields["token"], 10)
        posted = client.post(
            url_of(shield, "/.shield/challenge"), data=fields, headers={"Accept": "text/html"}
        )
        async with posted as refused:
            text = await refused.text()
            assert refused.status == 403 and refused.content_type == "text/html"
    assert "<h1>The check did not complete</h1>" in text
    assert '<a class="again" href="/signup/form?x=1">Try again</a>' in text
    assert "expired" not in text  # the reason is for the log, not the visitor


async def test_api_clients_get_json_instead_of_the_page(shield: Shield) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.get(url_of(shield, "/signup/"), headers={"Accept": "application/json"}) as response,
    ):
        assert response.status == 429 and response.headers["Retry-After"] == "60"
        body: dict[str, Any] = await response.json()
        assert body["error"].startswith("Too many requests")


async def test_the_challenge_path_is_an_ordinary_path_without_challenge_rules(
    upstream: str, make_shield: Any
) -> None:
    shield = await make_shield(upstream)
    async with (
        aiohttp.ClientSession() as client,
        client.post(url_of(shield, "/.shield/challenge")) as response,
    ):
        assert (response.status, await response.text()) == (200, "upstream /.shield/challenge")

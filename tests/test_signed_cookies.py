"""The cookies Shield signs (the challenge pass, the waiting room's ticket and admission) are
the client's to write back: whatever a client puts in one, checking it answers yes or no, never
an exception (an exception is a 500 on the request path)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shield.decide.challenge_tokens import Challenger
from shield.decide.queue_tickets import QueueTickets
from tests.conftest import MakeShield, serve, url_of

KEY = b"k" * 32
# Texts shaped like the tokens (digits, dots) as well as anything: '²' passes str.isdigit and
# not int(); 5,000 digits pass isdigit and not int() either.
DIGITS = st.sampled_from(["0", "9", "\xb2", "\u0663", "1" * 5000, ""])
SHAPED = st.lists(st.one_of(DIGITS, st.text(max_size=20)), min_size=1, max_size=4).map(".".join)
ANY_COOKIE = st.one_of(SHAPED, st.text(max_size=60))


@given(ANY_COOKIE)
@example("0.0.0.\x80")  # a signature that is not ASCII: compare_digest refuses it with a TypeError
@example("\xb2.abc")
@settings(max_examples=500, deadline=None)
def test_checking_a_pass_never_raises(cookie: str) -> None:
    challenger = Challenger(KEY, difficulty=8, solve_within=60, pass_for=60)
    assert challenger.passes(cookie, "192.0.2.1", 1_800_000_000.0) is False
    assert isinstance(challenger.check_solution(cookie, cookie, "192.0.2.1", 1_800_000_000.0), str)


@given(ANY_COOKIE)
@example("1.1.\x80")
@example("\x80.\x80")
@settings(max_examples=500, deadline=None)
def test_checking_a_ticket_or_an_admission_never_raises(cookie: str) -> None:
    tickets = QueueTickets(KEY, ticket_for=3600)
    assert tickets.admitted(cookie, "signup", "192.0.2.1", 1_800_000_000.0) is False
    assert tickets.read_ticket(cookie, "signup", "192.0.2.1", 1_800_000_000.0) is None


async def test_a_pass_or_ticket_a_client_made_up_gets_the_page_not_a_500(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="upstream")

    rules: list[dict[str, Any]] = [
        {"name": "forum", "match": {"paths": ["/forum"]}, "action": "challenge"},
        {
            "name": "signup",
            "match": {"paths": ["/signup"]},
            "action": "queue",
            "admit": "1/minute",
            "burst": 1,
        },
    ]
    shield = await make_shield(await serve(aiohttp_server, ok), rules=rules)
    huge = "9" * 5000
    async with aiohttp.ClientSession() as client:
        await client.get(url_of(shield, "/signup"))  # (the line's one banked admission)
        for path, cookie in (
            ("/forum", f"shield_pass={huge}.abc"),
            ("/signup", f"shield_admitted_signup={huge}.abc"),
            ("/signup", f"shield_ticket_signup=1.{huge}.abc"),
        ):
            async with client.get(url_of(shield, path), headers={"Cookie": cookie}) as response:
                assert response.status in (200, 429), (path, response.status)  # the page, refused
    # Bytes that are not ASCII in a signature, as a raw client sends them.
    for path, cookie in (
        (b"/forum", b"shield_pass=9.\xb2\xb2"),
        (b"/signup", b"shield_admitted_signup=9.\xe9"),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", shield.port)
        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: shop\r\nCookie: " + cookie + b"\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] in (b"200", b"429", b"400"), (path, status_line)

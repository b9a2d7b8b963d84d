"""The waiting room (``action: queue``) through a running Shield: first come first served at the
admit rate, places that cannot be forged, traded or kept forever, logged-in users never queued,
and the line shared by every Shield on one Redis."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.app.server import Shield
from shield.clock import FakeClock
from tests.conftest import metrics_text, serve, shield_config, url_of

NOW = 1_800_000_000.0
SECRET = "test-queue-signing-key-" * 3
JWT_SECRET = "test-jwt-secret-for-the-queue-" * 3
XFF = "X-Forwarded-For"

REGISTRATION: dict[str, Any] = {
    "name": "registration",
    "match": {"paths": ["/signup/**"]},
    "for": "anonymous",
    "action": "queue",
    "admit": "6/minute",  # one every 10 s
    "burst": 2,
    "session": "15m",
    "message": "Lots of people are signing up right now. You're in line.",
}


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> str:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=f"upstream {request.path}")

    return await serve(aiohttp_server, answer)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("SHIELD_TEST_QUEUE_KEY", SECRET)
    monkeypatch.setenv("SHIELD_TEST_JWT", JWT_SECRET)
    return {
        "clients": {"trusted_proxies": ["127.0.0.1/32"]},
        "challenge": {"secret_env": "SHIELD_TEST_QUEUE_KEY"},
        "auth": {"jwt": {"keys": [{"algorithms": ["HS256"], "secret_env": "SHIELD_TEST_JWT"}]}},
        "rules": [REGISTRATION],
    }


@pytest.fixture
async def started() -> AsyncIterator[list[Shield]]:
    shields: list[Shield] = []
    yield shields
    for shield in shields:
        await shield.stop(grace=0.5)


async def start(shields: list[Shield], upstream: str, wall: FakeClock, **settings: Any) -> Shield:
    shield = Shield(shield_config(upstream, **settings), wall=wall)
    await shield.start()
    shields.append(shield)
    return shield


class Visitor:
    """A browser at one address, with its own cookies."""

    def __init__(self, shield: Shield, address: str) -> None:
        self.shield = shield
        self.address = address
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def visit(
        self, path: str = "/signup/form", shield: Shield | None = None, **headers: str
    ) -> tuple[int, str, Any]:
        async with self.session.get(
            url_of(shield or self.shield, path), headers={XFF: self.address, **headers}
        ) as response:
            return response.status, await response.text(), response.headers

    def cookie(self, prefix: str) -> str | None:
        return next((c.value for c in self.session.cookie_jar if c.key.startswith(prefix)), None)

    async def close(self) -> None:
        await self.session.close()


async def position(visitor: Visitor, shield: Shield | None = None, **headers: str) -> int | None:
    """How many are ahead of ``visitor`` (asking as an API client: the JSON form), or None once
    it is let in (the upstream's answer)."""
    status, text, headers = await visitor.visit(shield=shield, Accept="application/json", **headers)
    if status == 200:
        return None
    assert status == 429 and headers["Retry-After"], text
    body = json.loads(text)
    assert body["error"] == "queued" and body["wait_seconds"] >= 0
    return int(body["position"])


async def test_first_come_first_served_at_the_admit_rate(
    upstream: str, settings: dict[str, Any], started: list[Shield]
) -> None:
    wall = FakeClock(NOW)
    shield = await start(started, upstream, wall, **settings)
    visitors = [Visitor(shield, f"198.51.100.{n}") for n in range(1, 6)]
    try:
        # After a quiet spell the line banks two admissions (burst): the first two walk in.
        first, second = [await v.visit() for v in visitors[:2]]
        assert (first[0], first[1], second[0]) == (200, "upstream /signup/form", 200)
        assert visitors[0].cookie("shield_admitted_registration") is not None
        # The others wait, in the order they came, on a page that asks again by itself.
        status, page, headers = await visitors[2].visit()
        assert status == 200 and "upstream" not in page
        assert headers["Cache-Control"] == "no-store" and headers["Refresh"] == "5"
        assert '<meta http-equiv="refresh" content="5">' in page
        assert visitors[2].cookie("shield_ticket_registration") is not None
        assert [await position(v) for v in visitors[2:]] == [0, 1, 2]
        # One admission every 10 s, in ticket order, however often the later ones ask.
        wall.advance(10)
        assert [await position(v) for v in (visitors[4], visitors[3], visitors[2])] == [1, 0, None]
        wall.advance(9)
        assert [await position(v) for v in (visitors[4], visitors[3])] == [1, 0]
        wall.advance(1)
        assert [await position(v) for v in (visitors[4], visitors[3])] == [0, None]
        # Admitted visitors stay in for the session, without a ticket.
        assert (await visitors[2].visit())[0] == 200
        assert visitors[2].cookie("shield_ticket_registration") in (None, "")
        admission = visitors[0].cookie("shield_admitted_registration")
        wall.advance(15 * 60 + 1)
        # The session is over: a new ticket, at the back of a line that has emptied meanwhile.
        assert await position(visitors[0]) is None
        assert visitors[0].cookie("shield_admitted_registration") != admission
    finally:
        for visitor in visitors:
            await visitor.close()


async def test_a_forged_traded_or_expired_ticket_is_worth_nothing(
    upstream: str, settings: dict[str, Any], started: list[Shield]
) -> None:
    wall = FakeClock(NOW)
    shield = await start(started, upstream, wall, **settings, queue={"ticket_for": "30s"})
    early, spender, late, thief, forger, other = (Visitor(shield, f"203.0.113.{n}") for n in range(1, 7))
    try:
        assert [(await early.visit())[0], (await early.visit(path="/signup/done"))[0]] == [200, 200]
        assert await position(spender) is None  # (the burst is spent)
        assert await position(late) == 0
        ticket = late.cookie("shield_ticket_registration")
        assert ticket is not None and ticket.split(".")[0] == "3"
        # Another client with that ticket: not theirs, so a new one, at the back.
        assert await position(thief, Cookie=f"shield_ticket_registration={ticket}") == 1
        assert thief.cookie("shield_ticket_registration") not in (None, ticket)
        # A ticket with a lower number and the signature of another: the same.
        _, issued, signature = ticket.split(".")
        assert await position(forger, Cookie=f"shield_ticket_registration=1.{issued}.{signature}") == 2
        # An admission cookie is no better: another client's.
        admission = early.cookie("shield_admitted_registration")
        assert admission is not None
        assert await position(other, Cookie=f"shield_admitted_registration={admission}") == 3
        # A ticket kept past queue.ticket_for no longer holds its place: its turn came meanwhile
        # (ticket 3 is below "admitted up to" now) but it draws a new one, at the back.
        wall.advance(31)
        assert await position(late) == 1
        assert late.cookie("shield_ticket_registration") not in (None, ticket)
    finally:
        for visitor in (early, spender, late, thief, forger, other):
            await visitor.close()


async def test_logged_in_users_are_never_queued(
    upstream: str, settings: dict[str, Any], started: list[Shield]
) -> None:
    wall = FakeClock(NOW)
    shield = await start(started, upstream, wall, **settings)
    crowd = [Visitor(shield, f"192.0.2.{n}") for n in range(1, 6)]
    user = Visitor(shield, "192.0.2.100")
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256")
    try:
        for visitor in crowd:
            await visitor.visit()
        assert await position(crowd[-1]) == 2  # a line has formed
        status, text, _ = await user.visit(Authorization=f"Bearer {token}")
        assert (status, text) == (200, "upstream /signup/form")
        # A token that does not verify is no login: that client queues like the rest.
        status, text, _ = await user.visit(Authorization=f"Bearer {token[:-4]}AAAA")
        assert status == 200 and text != "upstream /signup/form"
    finally:
        for visitor in (*crowd, user):
            await visitor.close()


async def test_a_client_drawing_ticket_after_ticket_is_stopped(
    upstream: str, settings: dict[str, Any], started: list[Shield]
) -> None:
    wall = FakeClock(NOW)
    shield = await start(started, upstream, wall, **settings, queue={"draw_limit": "3/minute"})
    statuses = []
    for _ in range(6):  # dropping its cookies each time, for a better place
        visitor = Visitor(shield, "198.51.100.66")
        statuses.append((await visitor.visit(Accept="application/json"))[0])
        await visitor.close()
    # Two admitted from the burst, one ticket; then no more tickets for a while.
    assert statuses == [200, 200, 429, 429, 429, 429]
    visitor = Visitor(shield, "198.51.100.66")
    status, text, headers = await visitor.visit(Accept="application/json")
    assert status == 429 and "Too many tickets" in text and headers["Retry-After"] == "60"
    await visitor.close()


async def test_two_shields_on_one_redis_admit_the_rate_in_total(
    upstream: str, settings: dict[str, Any], started: list[Shield], prefix: str
) -> None:
    from tests.redis_servers import SHARED_REDIS_URL

    wall = FakeClock(NOW)
    rule = {**REGISTRATION, "admit": "30/minute", "burst": 1}
    state = {"backend": "redis", "url": SHARED_REDIS_URL, "key_prefix": prefix}
    shields = [
        await start(started, upstream, wall, **{**settings, "rules": [rule]}, state=state) for _ in range(2)
    ]
    visitors = [Visitor(shields[n % 2], f"198.51.100.{n}") for n in range(1, 36)]
    try:
        waiting = [v for v in visitors if await position(v) is not None]
        assert len(waiting) == len(visitors) - 1  # the one banked admission
        order = []
        for step in range(20):  # a minute, 3 s at a time; each asks one Shield, then the other
            wall.advance(3)
            for visitor in list(waiting):
                if await position(visitor, shield=shields[step % 2]) is None:
                    waiting.remove(visitor)
                    order.append(visitors.index(visitor))
        # 30 a minute between the two Shields, not 30 each; and in the order they came.
        assert len(order) == 30 and order == sorted(order)
        assert len(waiting) == len(visitors) - 1 - 30
    finally:
        for visitor in visitors:
            await visitor.close()


async def test_the_metrics_say_who_waits_who_got_in_and_how_long_it_took(
    upstream: str, settings: dict[str, Any], started: list[Shield]
) -> None:
    wall = FakeClock(NOW)
    shield = await start(started, upstream, wall, **settings)
    visitors = [Visitor(shield, f"192.0.2.{n}") for n in range(1, 6)]
    try:
        for visitor in visitors:
            await visitor.visit()
        wall.advance(25)
        for visitor in visitors:
            await visitor.visit()  # two more in: they waited 25 s
        metrics = await metrics_text(shield)
    finally:
        for visitor in visitors:
            await visitor.close()
    assert 'shield_queue_admitted_total{rule="registration"} 4.0' in metrics
    assert 'shield_queue_waiting{rule="registration"} 1.0' in metrics
    assert 'shield_queue_wait_seconds_bucket{le="15.0",rule="registration"} 2.0' in metrics
    assert 'shield_queue_wait_seconds_bucket{le="30.0",rule="registration"} 4.0' in metrics
    assert (
        'shield_requests_total{action="queue",decision="queued",identity="anonymous",rule="registration"}'
        in metrics
    )


async def test_the_status_page_lists_busy_features_and_their_wait(
    upstream: str, settings: dict[str, Any], started: list[Shield]
) -> None:
    wall = FakeClock(NOW)
    rule = {**REGISTRATION, "public_name": "Sign-up"}
    shield = await start(
        started, upstream, wall, **{**settings, "rules": [rule]}, status_page={"enabled": True}
    )
    visitors = [Visitor(shield, f"192.0.2.{n}") for n in range(1, 6)]
    client = Visitor(shield, "192.0.2.200")
    try:
        _, text, _ = await client.visit(path="/status", Accept="application/json")
        assert json.loads(text)["queued"] == []
        for visitor in visitors:
            await visitor.visit()
        _, text, _ = await client.visit(path="/status", Accept="application/json")
        status = json.loads(text)
        # Three in line at one a 10 s: the back of the line waits 30 s. No rule names or rates.
        assert status["status"] == "degraded"
        assert status["queued"] == [
            {"name": "Sign-up", "message": REGISTRATION["message"], "wait_seconds": 30}
        ]
        _, page, _ = await client.visit(path="/status")
        assert "Sign-up" in page and "wait in line, about 30 seconds" in page and "registration" not in page
    finally:
        for visitor in (*visitors, client):
            await visitor.close()


async def test_with_challenge_first_a_visitor_solves_then_queues(
    upstream: str, settings: dict[str, Any], started: list[Shield]
) -> None:
    from shield.decide.challenge_tokens import solve
    from tests.test_challenge import form_fields

    wall = FakeClock(NOW)
    rule = {**REGISTRATION, "challenge_first": True}
    shield = await start(
        started,
        upstream,
        wall,
        **{**settings, "rules": [rule], "challenge": {**settings["challenge"], "difficulty": 8}},
    )
    script, person = Visitor(shield, "198.51.100.1"), Visitor(shield, "198.51.100.2")
    try:
        # A client that does not solve the puzzle gets the challenge page, and no ticket.
        status, page, _ = await script.visit(Accept="text/html")
        assert status == 429 and "crypto.subtle.digest" in page
        assert script.cookie("shield_ticket_registration") is None
        # One that solves it walks in on the line's burst, as any visitor would.
        fields = form_fields((await person.visit(Accept="text/html"))[1])
        fields["counter"] = solve(fields["token"], 8)
        async with person.session.post(
            url_of(shield, "/.shield/challenge"),
            data=fields,
            headers={XFF: person.address},
            allow_redirects=False,
        ) as solved:
            assert solved.status == 303
        assert (await person.visit())[:2] == (200, "upstream /signup/form")
    finally:
        for visitor in (script, person):
            await visitor.close()


async def test_one_network_cannot_fill_the_line_with_draw_limit_per_asn(
    upstream: str, settings: dict[str, Any], started: list[Shield], tmp_path: Any
) -> None:
    from tests.network_databases import write_asn_db

    wall = FakeClock(NOW)
    geo = {"asn_db": str(write_asn_db(tmp_path / "asn.mmdb"))}
    shield = await start(
        started, upstream, wall, **settings, geo=geo, queue={"draw_limit_per_asn": "3/minute"}
    )
    # A provider's addresses, one ticket each (as a rotating flood draws): three between them.
    hosting = [Visitor(shield, f"203.0.113.{n}") for n in range(1, 7)]
    elsewhere = Visitor(shield, "198.51.100.9")  # another network
    try:
        answers = [await v.visit(Accept="application/json") for v in hosting]
        said = ["in" if status == 200 else json.loads(text)["error"] for status, text, _ in answers]
        # Two on the burst, one in line, then no more places for that network.
        assert said == ["in", "in", "queued", *["Too many tickets drawn: keep the one you have."] * 3]
        assert await position(elsewhere) == 1  # behind the provider's one place, not refused
    finally:
        for visitor in (*hosting, elsewhere):
            await visitor.close()


async def test_explain_says_where_a_ticket_stands_in_the_running_line(
    upstream: str,
    settings: dict[str, Any],
    started: list[Shield],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import contextlib
    import io

    import yaml

    from shield import cli

    monkeypatch.setenv("SHIELD_TEST_CTL", "walkthrough-ctl-token")
    admin = {"listen": {"host": "127.0.0.1", "port": 0}, "ctl": {"token_env": "SHIELD_TEST_CTL"}}
    shield = Shield(shield_config(upstream, **settings, admin=admin))  # the real clock, as explain's
    await shield.start()
    started.append(shield)
    visitors = [Visitor(shield, f"198.51.100.{n}") for n in range(1, 6)]
    try:
        for visitor in visitors:
            await visitor.visit()
        ticket = visitors[4].cookie("shield_ticket_registration")
        assert ticket is not None and ticket.startswith("5.")
    finally:
        for visitor in visitors:
            await visitor.close()
    path = tmp_path / "shield.yaml"
    admin["listen"] = {"host": "127.0.0.1", "port": shield.admin_port}
    path.write_text(yaml.safe_dump({"upstream": upstream, "admin": admin, **settings}))

    def explain(cookie: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            args = ["explain", "-c", str(path), "GET", "/signup/form", "--ip", "198.51.100.5"]
            assert cli.main([*args, "--cookie", cookie]) == 0
        return out.getvalue()

    said = await asyncio.to_thread(explain, f"shield_ticket_registration={ticket}")
    assert "its ticket, number 5" in said
    assert "2 ahead of it, as the running Shield last saw the line (up to ticket 2 let in)" in said


async def test_a_dry_run_queue_counts_who_would_have_waited_and_lets_everyone_in(
    upstream: str, settings: dict[str, Any], started: list[Shield]
) -> None:
    wall = FakeClock(NOW)
    rule = {**REGISTRATION, "mode": "dry-run"}
    shield = await start(started, upstream, wall, **{**settings, "rules": [rule]})
    visitors = [Visitor(shield, f"192.0.2.{n}") for n in range(1, 6)]
    try:
        seen = [await visitor.visit() for visitor in visitors]
        metrics = await metrics_text(shield)
    finally:
        for visitor in visitors:
            await visitor.close()
    # Everyone reached the form, without a ticket; past the burst of 2, three would have waited.
    assert [(status, text) for status, text, _ in seen] == [(200, "upstream /signup/form")] * 5
    assert all(visitor.cookie("shield_ticket") is None for visitor in visitors)
    assert 'shield_dry_run_decisions_total{decision="queued",rule="registration"} 3.0' in metrics
    assert 'shield_dry_run_decisions_total{decision="forwarded",rule="registration"} 2.0' in metrics

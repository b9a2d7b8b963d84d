"""``shield ctl queue``: any rule put through a waiting room at runtime, as ``ctl close`` closes one.

What an operator sees: new visitors beyond the burst wait in line and walk in at the rate given,
first come first served; the rule's own action still applies to those let in; ``ctl open`` lifts
the waiting room and it ends by itself; ``ctl status``, the CLI, the metrics and ``shield
explain`` show it; and with Redis state a waiting room opened on one Shield holds on every Shield,
with one line between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield import cli
from shield.app.server import Shield
from shield.clock import FakeClock
from tests.conftest import serve, shield_config, url_of
from tests.redis_servers import SHARED_REDIS_URL

TOKEN = "correct-horse-battery-staple"
SECRET = "test-ctl-queue-signing-key-" * 3
NOW = 1_800_000_000.0
XFF = "X-Forwarded-For"
RULES: list[dict[str, Any]] = [
    {"name": "register", "match": {"paths": ["/signup/**"]}, "action": "allow"},
    {"name": "search", "match": {"paths": ["/search"]}, "action": "throttle", "limit": "3/minute"},
    {"name": "forum", "match": {"paths": ["/forum"]}, "action": "challenge"},
    {
        "name": "tickets",
        "match": {"paths": ["/tickets"]},
        "action": "queue",
        "admit": "6/minute",
        "burst": 2,
    },
    {"name": "bots", "match": {"paths": ["/wp-login.php"]}, "action": "block"},
    {"name": "watch", "match": {"paths": ["/watched"]}, "action": "block", "mode": "dry-run"},
]


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> str:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=f"upstream {request.path}")

    return await serve(aiohttp_server, answer)


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SHIELD_TEST_CTL_TOKEN", TOKEN)
    monkeypatch.setenv("SHIELD_TEST_QUEUE_KEY", SECRET)
    return "SHIELD_TEST_CTL_TOKEN"


@pytest.fixture
async def visitors() -> AsyncIterator[list[Visitor]]:
    made: list[Visitor] = []
    yield made
    for visitor in made:
        await visitor.session.close()


async def start(
    shields: list[Shield], upstream: str, token_env: str, wall: FakeClock | None = None, **sections: Any
) -> Shield:
    admin = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "ctl": {"token_env": token_env, "max_duration": "2h"},
    }
    config = shield_config(
        upstream,
        admin=admin,
        rules=RULES,
        clients={"trusted_proxies": ["127.0.0.1/32"]},
        challenge={"secret_env": "SHIELD_TEST_QUEUE_KEY"},
        **sections,
    )
    shield = Shield(config, wall=wall)
    await shield.start()
    shields.append(shield)
    return shield


async def ctl(shield: Shield, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as client,
        client.request(
            method,
            f"http://127.0.0.1:{shield.admin_port}/ctl{path}",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response,
    ):
        return response.status, await response.json()


class Visitor:
    """A browser at one address, with its own cookies."""

    def __init__(self, shield: Shield, address: str) -> None:
        self.shield = shield
        self.address = address
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def visit(
        self, path: str = "/signup/form", shield: Shield | None = None, accept: str = "text/html"
    ) -> tuple[int, str]:
        async with self.session.get(
            url_of(shield or self.shield, path), headers={XFF: self.address, "Accept": accept}
        ) as response:
            return response.status, await response.text()

    async def place(self, path: str = "/signup/form", shield: Shield | None = None) -> int | None:
        """How many are ahead of this visitor in line (as an API client asks), or None once it
        is let in."""
        status, text = await self.visit(path, shield, accept="application/json")
        if status == 200:
            assert text.startswith("upstream"), text
            return None
        assert status == 429, text
        body = json.loads(text)
        assert body["error"] == "queued", body
        return int(body["position"])

    def cookie(self, prefix: str) -> str | None:
        return next((c.value for c in self.session.cookie_jar if c.key.startswith(prefix)), None)


def crowd(made: list[Visitor], shield: Shield, count: int, net: str = "198.51.100") -> list[Visitor]:
    new = [Visitor(shield, f"{net}.{len(made) + n}") for n in range(1, count + 1)]
    made.extend(new)
    return new


async def requests_total(shield: Shield) -> str:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{shield.admin_port}/metrics") as response,
    ):
        return await response.text()


async def test_an_allow_rule_queued_by_ctl_admits_at_the_rate_until_opened(
    shields: list[Shield], upstream: str, token_env: str, visitors: list[Visitor]
) -> None:
    wall = FakeClock(NOW)
    shield = await start(shields, upstream, token_env, wall)
    before = crowd(visitors, shield, 3)
    assert [await v.visit() for v in before] == [(200, "upstream /signup/form")] * 3

    status, body = await ctl(
        shield,
        "POST",
        "/rules/register/queue",
        {"admit": "2/minute", "for": "1h", "message": "Busy: you are in line."},
    )
    assert status == 200
    assert body["queued"] == {
        "admitted_up_to": None,  # (no line seen yet)
        "rule": "register",
        "admit": "2/minute",
        "message": "Busy: you are in line.",
        "source": "ctl",
        "until": NOW + 3600,
        "remaining": 3600.0,
        "waiting": 0.0,
        "wait_seconds": 0.0,
    }
    # New visitors: two walk in on the burst (as many as the rate lets in a minute), the rest wait.
    first, second, third, fourth, fifth = crowd(visitors, shield, 5)
    assert [await v.place() for v in (first, second)] == [None, None]
    status, page = await third.visit()
    assert status == 200 and "Busy: you are in line." in page and "upstream" not in page
    assert third.cookie("shield_ticket_register") is not None
    assert [await v.place() for v in (third, fourth, fifth)] == [0, 1, 2]
    # Those who came before the waiting room hold no admission: they queue like anyone new.
    assert await before[0].place() == 3
    # One every 30 s, in the order they came.
    wall.advance(30)
    assert [await v.place() for v in (fifth, fourth, third)] == [1, 0, None]
    assert await third.place() is None  # in for the session

    status, state = await ctl(shield, "GET", "/status")
    assert status == 200
    [queued] = state["queues"]
    assert (queued["rule"], queued["admit"], queued["until"], queued["remaining"]) == (
        "register",
        "2/minute",
        NOW + 3600,
        3570.0,
    )
    assert (queued["waiting"], queued["wait_seconds"]) == (3.0, 90.0)
    assert [q["rule"] for q in state["queued_by_file"]] == ["tickets"]
    metrics = await requests_total(shield)
    assert (
        'shield_requests_total{action="ctl-queue",decision="queued",identity="anonymous",rule="register"}'
        in metrics
    )
    assert 'shield_queue_admitted_total{rule="register"} 3.0' in metrics

    assert await ctl(shield, "POST", "/rules/register/open") == (
        200,
        {"opened": "register", "was_closed": False, "was_queued": True},
    )
    assert [await v.place() for v in (fourth, fifth, before[1])] == [None, None, None]
    assert (await ctl(shield, "GET", "/status"))[1]["queues"] == []


async def test_a_ctl_waiting_room_ends_by_itself_when_its_duration_is_over(
    shields: list[Shield], upstream: str, token_env: str, visitors: list[Visitor]
) -> None:
    wall = FakeClock(NOW)
    shield = await start(shields, upstream, token_env, wall)
    assert (await ctl(shield, "POST", "/rules/register/queue", {"admit": "1/hour", "for": "10m"}))[0] == 200
    first, second = crowd(visitors, shield, 2)
    assert [await first.place(), await second.place()] == [None, 0]
    wall.advance(599)
    assert await second.place() == 0
    wall.advance(1)
    assert await second.place() is None
    assert (await ctl(shield, "GET", "/status"))[1]["queues"] == []


async def test_a_queue_is_refused_for_unknown_rules_bad_rates_and_rules_it_cannot_pace(
    shields: list[Shield], upstream: str, token_env: str
) -> None:
    shield = await start(shields, upstream, token_env)
    status, body = await ctl(shield, "POST", "/rules/registr/queue", {"admit": "20/minute"})
    assert status == 404 and body["error"].startswith("no rule named 'registr' in the rule file")
    status, body = await ctl(shield, "POST", "/rules/register/queue", {"admit": "20/fortnight"})
    assert status == 400 and body["error"].startswith("invalid limit '20/fortnight': write N/PERIOD")
    status, body = await ctl(shield, "POST", "/rules/register/queue", {"for": "1m"})
    assert status == 400 and body["error"] == "admit is required: the visitors let in, e.g. 20/minute"
    status, body = await ctl(shield, "POST", "/rules/register/queue", {"admit": "20/minute", "for": "3h"})
    assert status == 400 and "at most 7200s" in body["error"]
    status, body = await ctl(shield, "POST", "/rules/bots/queue", {"admit": "20/minute"})
    assert status == 409 and "blocks every request it matches" in body["error"]
    status, body = await ctl(shield, "POST", "/rules/watch/queue", {"admit": "20/minute"})
    assert status == 409 and "dry-run" in body["error"]
    # Without --for the default duration applies (admin.ctl.default_duration: 1h).
    status, body = await ctl(shield, "POST", "/rules/register/queue", {"admit": "20/minute"})
    assert status == 200 and 3599 <= body["queued"]["remaining"] <= 3600
    assert [q["rule"] for q in (await ctl(shield, "GET", "/status"))[1]["queues"]] == ["register"]


async def test_the_rules_own_action_still_applies_to_those_let_in(
    shields: list[Shield], upstream: str, token_env: str, visitors: list[Visitor]
) -> None:
    wall = FakeClock(NOW)
    shield = await start(shields, upstream, token_env, wall)
    for rule in ("search", "forum"):
        assert (await ctl(shield, "POST", f"/rules/{rule}/queue", {"admit": "1/minute"}))[0] == 200
    walker, waiter, reader = crowd(visitors, shield, 3)
    # The throttle still counts the requests of a visitor let in, the one that walks in too:
    # 3 a minute.
    statuses = [(await walker.visit("/search", accept="application/json"))[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert await waiter.place("/search") == 0
    # A challenge still asks for its pass first: no place in line for a client without one.
    status, page = await reader.visit("/forum")
    assert status == 429 and "crypto.subtle.digest" in page
    assert reader.cookie("shield_ticket_forum") is None


async def test_a_throttle_refusing_the_walk_in_leaves_the_visitor_admitted(
    shields: list[Shield], upstream: str, token_env: str, visitors: list[Visitor]
) -> None:
    wall = FakeClock(NOW)
    shield = await start(shields, upstream, token_env, wall)
    (visitor,) = crowd(visitors, shield, 1)
    # The visitor spends its throttle bucket (3 a minute) before ctl puts the rule in a queue.
    assert [(await visitor.visit("/search"))[0] for _ in range(3)] == [200] * 3
    assert (await ctl(shield, "POST", "/rules/search/queue", {"admit": "1/minute"}))[0] == 200
    # Its turn comes at once (the line is empty) but the throttle refuses that request: a 429 of
    # the throttle's, and the admission kept, so the next request is the throttle's again and
    # not the waiting room's.
    status, text = await visitor.visit("/search", accept="application/json")
    assert status == 429 and json.loads(text)["error"] == "Too many requests."
    assert visitor.cookie("shield_admitted_search") is not None
    status, text = await visitor.visit("/search", accept="application/json")
    assert status == 429 and json.loads(text)["error"] == "Too many requests."
    assert visitor.cookie("shield_ticket_search") is None  # never drew a second ticket


async def test_a_queue_rule_of_the_file_takes_the_ctl_pace(
    shields: list[Shield], upstream: str, token_env: str, visitors: list[Visitor]
) -> None:
    wall = FakeClock(NOW)
    shield = await start(shields, upstream, token_env, wall)
    assert (await ctl(shield, "POST", "/rules/tickets/queue", {"admit": "1/minute"}))[0] == 200
    first, second = crowd(visitors, shield, 2)
    assert [await first.place("/tickets"), await second.place("/tickets")] == [None, 0]
    wall.advance(10)  # the file's pace (6/minute) would have let it in
    assert await second.place("/tickets") == 0
    metrics = await requests_total(shield)
    assert 'action="ctl-queue",decision="queued",identity="anonymous",rule="tickets"' in metrics
    wall.advance(50)
    assert await second.place("/tickets") is None


async def test_a_ctl_closure_wins_over_a_ctl_queue_and_open_lifts_both(
    shields: list[Shield], upstream: str, token_env: str, visitors: list[Visitor]
) -> None:
    shield = await start(shields, upstream, token_env)
    await ctl(shield, "POST", "/rules/register/queue", {"admit": "1/hour"})
    await ctl(shield, "POST", "/rules/register/close", {"message": "Sign-ups are paused."})
    [visitor] = crowd(visitors, shield, 1)
    status, page = await visitor.visit()
    assert status == 503 and "Sign-ups are paused." in page
    assert await ctl(shield, "POST", "/rules/register/open") == (
        200,
        {"opened": "register", "was_closed": True, "was_queued": True},
    )
    assert await visitor.place() is None
    assert await ctl(shield, "POST", "/rules/register/open") == (
        200,
        {"opened": "register", "was_closed": False, "was_queued": False},
    )


async def test_the_status_page_lists_a_busy_ctl_waiting_room(
    shields: list[Shield], upstream: str, token_env: str, visitors: list[Visitor]
) -> None:
    wall = FakeClock(NOW)
    shield = await start(shields, upstream, token_env, wall, status_page={"enabled": True})
    await ctl(shield, "POST", "/rules/register/queue", {"admit": "2/minute"})
    for visitor in crowd(visitors, shield, 5):
        await visitor.visit()
    [reader] = crowd(visitors, shield, 1, net="192.0.2")
    status, text = await reader.visit("/status", accept="application/json")
    assert status == 200
    # Three in line at one every 30 s: the back of the line waits 90 s.
    assert [(q["name"], q["wait_seconds"]) for q in json.loads(text)["queued"]] == [("register", 90)]


async def test_the_cli_queues_lists_and_opens(
    shields: list[Shield], upstream: str, token_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shield = await start(shields, upstream, token_env)
    admin = ["ctl", "--admin", f"http://127.0.0.1:{shield.admin_port}"]

    def run(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([*admin, *args])
        return code, out.getvalue(), err.getvalue()

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHIELD_CTL_TOKEN", TOKEN)
        code, out, _ = await asyncio.to_thread(
            run, "queue", "register", "--admit", "20/minute", "--for", "30m", "--message", "In line."
        )
        assert code == 0 and out.startswith("queued register at 20/minute until ") and "'In line.'" in out
        assert "(1800s left)" in out
        code, out, _ = await asyncio.to_thread(run, "status")
        lines = out.splitlines()
        assert code == 0 and "queued by ctl (temporary waiting rooms):" in lines
        [line] = [line for line in lines if line.startswith("  register ")]
        assert "20/minute until " in line and line.endswith(", nobody waiting: 'In line.'")
        assert "queued by the rule file:" in lines
        assert any(line.startswith("  tickets ") and "6/minute, nobody waiting" in line for line in lines)
        code, _, err = await asyncio.to_thread(run, "queue", "register", "--admit", "lots")
        assert code == 1 and "400: invalid limit 'lots'" in err
        code, _, err = await asyncio.to_thread(run, "queue", "nope", "--admit", "1/minute")
        assert code == 1 and "404: no rule named 'nope'" in err
        code, out, _ = await asyncio.to_thread(run, "open", "register")
        assert (code, out) == (0, "opened register: its ctl waiting room is lifted\n")
        code, out, _ = await asyncio.to_thread(run, "status")
        assert "queued by ctl: none" in out.splitlines()
        code, out, _ = await asyncio.to_thread(run, "open", "register")
        assert out == "register had no ctl closure or waiting room; nothing changed\n"


async def test_explain_shows_a_ctl_waiting_room_and_decides_as_the_proxy(
    shields: list[Shield], upstream: str, token_env: str, tmp_path: Path, visitors: list[Visitor]
) -> None:
    shield = await start(shields, upstream, token_env)
    await ctl(shield, "POST", "/rules/register/queue", {"admit": "1/hour", "message": "In line."})
    first, second = crowd(visitors, shield, 2)  # (on the real clock: explain compares each)
    assert [await first.place(), await second.place()] == [None, 0]

    def explain() -> list[str]:
        path = tmp_path / "shield.yaml"
        path.write_text(
            f"upstream: {upstream}\n"
            f"admin: {{listen: 127.0.0.1:{shield.admin_port}, ctl: {{token_env: {token_env}}}}}\n"
            "rules:\n  - {name: register, match: {paths: ['/signup/**']}, action: allow}\n"
        )
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["explain", "-c", str(path), "GET", "/signup/form"]) == 0
        return out.getvalue().splitlines()

    lines = await asyncio.to_thread(explain)
    assert lines[-2].startswith("override: rule 'register' is queued by ctl at 1/hour for 3")
    assert lines[-2].endswith("s more: 'In line.'")
    assert lines[-1].startswith(
        "decision: waiting room of rule 'register' (queued by ctl, 1/hour let in): no ticket yet"
    )
    await ctl(shield, "POST", "/rules/register/open")
    lines = await asyncio.to_thread(explain)
    assert lines[-2] == (
        "overrides: no ctl closure or waiting room applies (closed by ctl: none; queued by ctl: none)"
    )
    assert lines[-1] == "decision: forwarded by rule 'register'"


async def test_a_waiting_room_opened_on_one_shield_holds_on_another_with_one_line(
    shields: list[Shield], upstream: str, token_env: str, visitors: list[Visitor], prefix: str
) -> None:
    wall = FakeClock(NOW)
    state = {"backend": "redis", "url": SHARED_REDIS_URL, "key_prefix": prefix, "timeout": "500ms"}
    first = await start(shields, upstream, token_env, wall, state=state)
    second = await start(shields, upstream, token_env, wall, state=state)

    assert (await ctl(first, "POST", "/rules/register/queue", {"admit": "2/minute"}))[0] == 200
    loop = asyncio.get_running_loop()
    queued = loop.time()
    while second.switches.queued("register") is None:
        assert loop.time() - queued < 1.0, "the second Shield did not see the waiting room within a second"
        await asyncio.sleep(0.02)
    # One line between them: the burst of two is spent once, whichever Shield a visitor asks.
    people = crowd(visitors, first, 4)
    assert [await v.place(shield=(first, second)[n % 2]) for n, v in enumerate(people)] == [None, None, 0, 1]
    wall.advance(30)
    assert [await people[3].place(shield=first), await people[2].place(shield=second)] == [0, None]
    [listed] = (await ctl(second, "GET", "/status"))[1]["queues"]
    assert (listed["rule"], listed["admit"], listed["waiting"]) == ("register", "2/minute", 1.0)

    await ctl(second, "POST", "/rules/register/open")
    opened = loop.time()
    while first.switches.queued("register") is not None:
        assert loop.time() - opened < 1.0, "the first Shield did not see the opening within a second"
        await asyncio.sleep(0.02)
    assert await people[3].place(shield=first) is None

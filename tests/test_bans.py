"""Ban escalation: clients that keep getting throttled or blocked are banned, longer each time.

The arithmetic is pure and tested with plain numbers; end to end a Shield bans a client after
``after`` violations, answers it before any rule, lists and lifts the ban through ctl, and with
Redis state a ban issued by one Shield is answered by another.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.app.server import Shield
from shield.clock import FakeClock
from shield.decide.ban_escalation import Offenses, Violations, ban_duration
from tests.conftest import serve, shield_config, url_of
from tests.redis_servers import SHARED_REDIS_URL
from tests.test_ctl import TOKEN, ctl, metric

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


def test_each_ban_lasts_factor_times_the_one_before_up_to_the_cap() -> None:
    durations = [ban_duration(n, base=10 * MINUTE, factor=2, cap=DAY) for n in range(1, 10)]
    assert durations == [600, 1200, 2400, 4800, 9600, 19200, 38400, 76800, 86400]
    assert ban_duration(5000, base=10 * MINUTE, factor=2, cap=DAY) == DAY  # no float overflow
    assert ban_duration(7, base=10 * MINUTE, factor=1, cap=DAY) == 600


def test_a_ban_is_earned_by_enough_violations_inside_the_window_only() -> None:
    violations = Violations(after=3, within=60, max_entries=100)
    assert [violations.add("a", t) for t in (0, 30, 61)] == [False, False, False]  # 61 s for 3
    assert violations.add("a", 62)  # 30, 61, 62: three within a minute
    assert not violations.add("a", 63)  # a ban starts the count afresh
    assert not violations.add("b", 63)


def test_violations_and_ban_counts_stay_bounded() -> None:
    violations = Violations(after=5, within=60, max_entries=100)
    offenses = Offenses(remember=DAY, max_entries=100)
    for n in range(10_000):
        violations.add(f"10.0.{n // 256}.{n % 256}", float(n))
        offenses.next_level(f"10.0.{n // 256}.{n % 256}", float(n))
    assert len(violations) == 100
    assert len(offenses._bans) == 100


def test_the_ban_count_is_forgotten_after_remember() -> None:
    offenses = Offenses(remember=DAY, max_entries=100)
    assert [offenses.next_level("a", t) for t in (0, HOUR, 2 * HOUR)] == [1, 2, 3]
    assert offenses.next_level("a", 2 * HOUR + DAY + 1) == 1


async def answer_upstream(request: web.Request) -> web.Response:
    return web.Response(text="upstream")


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> str:
    return await serve(aiohttp_server, answer_upstream)


BANS = {"after": 3, "within": "1m", "duration": "10m", "factor": 2, "max_duration": "1h", "answer": 429}
RULES = [
    {"name": "login", "match": {"paths": ["/login"]}, "action": "throttle", "limit": "1/minute"},
    {"name": "admin", "match": {"paths": ["/admin"]}, "action": "block"},
]


async def start(
    started: list[Shield], upstream: str, monkeypatch: pytest.MonkeyPatch, wall: Any = None, **sections: Any
) -> Shield:
    monkeypatch.setenv("SHIELD_TEST_CTL_TOKEN", TOKEN)
    admin = {"listen": {"host": "127.0.0.1", "port": 0}, "ctl": {"token_env": "SHIELD_TEST_CTL_TOKEN"}}
    sections.setdefault("bans", BANS)
    shield = Shield(shield_config(upstream, admin=admin, rules=RULES, **sections), wall=wall)
    await shield.start()
    started.append(shield)
    return shield


async def get(shield: Shield, path: str) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as client, client.get(url_of(shield, path)) as response:
        await response.read()
        return response.status, dict(response.headers)


async def test_a_client_that_keeps_getting_throttled_is_banned_longer_each_time(
    shields: list[Shield], upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall = FakeClock(1_700_000_000.0)
    shield = await start(shields, upstream, monkeypatch, wall=wall)
    assert [(await get(shield, "/login"))[0] for _ in range(4)] == [200, 429, 429, 429]
    status, headers = await get(shield, "/anything")  # no rule here: the ban comes first
    assert status == 429 and headers["Retry-After"] == "600"
    _, listed = await ctl(shield, "GET", "/bans")
    assert [(b["client"], b["level"], b["remaining"]) for b in listed["bans"]] == [("127.0.0.1", 1, 600.0)]

    wall.advance(600)
    assert (await get(shield, "/anything"))[0] == 200
    for _ in range(3):
        await get(shield, "/admin")  # blocked answers are violations too
    status, headers = await get(shield, "/anything")
    assert status == 429 and headers["Retry-After"] == "1200"

    assert await metric(shield, "shield_bans_total") == {(): 2.0}
    requests = await metric(shield, "shield_requests_total")
    assert (
        requests[(("action", "ban"), ("decision", "banned"), ("identity", "anonymous"), ("rule", "ban"))] == 2
    )
    assert await metric(shield, "shield_bans_active") == {(): 1.0}


async def test_a_ban_is_lifted_through_ctl(
    shields: list[Shield], upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shield = await start(shields, upstream, monkeypatch, bans={**BANS, "answer": 403})
    for _ in range(3):
        await get(shield, "/admin")
    assert (await get(shield, "/anything"))[0] == 403
    assert await ctl(shield, "DELETE", "/bans/127.0.0.1") == (200, {"unbanned": "127.0.0.1"})
    assert (await get(shield, "/anything"))[0] == 200
    assert await ctl(shield, "DELETE", "/bans/127.0.0.1") == (404, {"error": "127.0.0.1 is not banned"})


async def test_without_a_bans_section_nobody_is_banned(
    shields: list[Shield], upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shield = await start(shields, upstream, monkeypatch, bans=None)
    for _ in range(50):
        await get(shield, "/admin")
    assert (await get(shield, "/anything"))[0] == 200


async def test_a_ban_issued_by_one_shield_is_answered_by_another_on_the_same_redis(
    shields: list[Shield], upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {
        "backend": "redis",
        "url": SHARED_REDIS_URL,
        "key_prefix": f"test-{uuid4()}:",
        "timeout": "500ms",
    }
    first = await start(shields, upstream, monkeypatch, state=state)
    second = await start(shields, upstream, monkeypatch, state=state)
    for _ in range(3):
        await get(first, "/admin")
    loop = asyncio.get_running_loop()
    banned = loop.time()
    while (await get(second, "/anything"))[0] != 429:
        assert loop.time() - banned < 1.0, "the second Shield did not see the ban within a second"
        await asyncio.sleep(0.02)
    _, listed = await ctl(second, "GET", "/bans")
    assert [b["client"] for b in listed["bans"]] == ["127.0.0.1"]

    await ctl(second, "DELETE", "/bans/127.0.0.1")
    while (await get(first, "/anything"))[0] != 200:
        assert loop.time() - banned < 2.0, "the first Shield did not see the ban lifted"
        await asyncio.sleep(0.02)
    # The ban count lives in Redis: a relapse seen by the *second* Shield is ban number 2.
    for _ in range(3):
        await get(second, "/admin")
    while not (bans := (await ctl(first, "GET", "/bans"))[1]["bans"]) or bans[0]["level"] != 2:
        assert loop.time() - banned < 3.0, f"no second ban shared: {bans}"
        await asyncio.sleep(0.02)
    assert bans[0]["remaining"] > 1000

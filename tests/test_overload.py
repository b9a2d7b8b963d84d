"""Priority load shedding: when the upstream is full, users with accounts go first.

The pure admission queue and saturation detector are tested on their own; the end-to-end test is
a synthetic overload: an upstream that serves N requests at once (slowly) and refuses the rest,
ten times that many anonymous clients hammering it, and a steady trickle of logged-in users.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.clock import FakeClock
from shield.decide.admission import (
    CRITICAL,
    LOW,
    NORMAL,
    USER,
    Admission,
    Saturation,
    Verdict,
    priority_class,
)
from tests.conftest import MakeShield, url_of

SECRET = "test-only-secret-" + "x" * 48
JWT_AUTH = {"jwt": {"keys": [{"algorithms": ["HS256"], "secret_env": "SHIELD_TEST_JWT"}]}}


@pytest.fixture(autouse=True)
def jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIELD_TEST_JWT", SECRET)


def as_user(user: str) -> dict[str, str]:
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


# The pure core ---------------------------------------------------------------------------------


def test_classes_put_users_first_then_critical_routes() -> None:
    assert priority_class("normal", authenticated=True) == USER
    assert priority_class("critical", authenticated=True) == USER
    assert priority_class("critical", authenticated=False) == CRITICAL
    assert priority_class("normal", authenticated=False) == NORMAL
    assert priority_class("low", authenticated=True) == NORMAL
    assert priority_class("low", authenticated=False) == LOW
    assert USER < CRITICAL < NORMAL < LOW


def test_admits_up_to_the_limit_then_queues_then_sheds() -> None:
    admission: Admission[str] = Admission(limit=2, queue_size=1)
    assert admission.decide(NORMAL) is Verdict.ADMIT
    assert admission.decide(NORMAL) is Verdict.ADMIT
    assert admission.decide(NORMAL) is Verdict.QUEUE
    assert admission.enqueue(NORMAL, "a") is None
    assert admission.decide(NORMAL) is Verdict.SHED  # queue full of its own class
    assert admission.release() == "a"  # the slot passes straight to the waiter
    assert admission.in_flight == 2
    assert admission.release() is None
    assert admission.in_flight == 1


def test_a_user_pushes_the_worst_waiter_out_of_a_full_queue_and_goes_first() -> None:
    admission: Admission[str] = Admission(limit=1, queue_size=3)
    admission.decide(NORMAL)
    for name, rank in (("anon-1", NORMAL), ("low", LOW), ("login", CRITICAL)):
        assert admission.decide(rank) is Verdict.QUEUE
        admission.enqueue(rank, name)
    assert admission.decide(USER) is Verdict.QUEUE
    assert admission.enqueue(USER, "alice") == "low"
    assert admission.decide(LOW) is Verdict.SHED
    assert [admission.release() for _ in range(3)] == ["alice", "login", "anon-1"]


def test_a_waiter_that_leaves_is_not_handed_a_slot() -> None:
    admission: Admission[str] = Admission(limit=1, queue_size=2)
    admission.decide(USER)
    admission.enqueue(NORMAL, "gone")
    assert admission.leave("gone") is True
    assert admission.leave("gone") is False
    assert admission.release() is None
    assert admission.in_flight == 0


def test_a_degraded_upstream_sheds_anonymous_traffic_at_once_but_not_users_or_login() -> None:
    admission: Admission[str] = Admission(limit=10, queue_size=10)
    assert admission.decide(NORMAL, degraded=True) is Verdict.SHED
    assert admission.decide(LOW, degraded=True) is Verdict.SHED
    assert admission.decide(CRITICAL, degraded=True) is Verdict.ADMIT
    assert admission.decide(USER, degraded=True) is Verdict.ADMIT


def test_saturation_follows_latency_with_hysteresis() -> None:
    clock = FakeClock()
    detector = Saturation(latency=0.5, error_ratio=None, window=10, min_samples=5)

    def answers(seconds: float, count: int = 20) -> bool:
        for _ in range(count):
            clock.advance(0.1)
            detector.observe(clock.now(), seconds, failed=False)
        return detector.saturated(clock.now())

    assert answers(0.1) is False
    assert answers(2.0, count=3) is False  # a few slow answers do not move a window of 23
    assert answers(2.0, count=100) is True
    assert answers(0.45, count=100) is True  # under the threshold but not under 80% of it
    assert answers(0.3, count=100) is False


def test_saturation_follows_the_error_share_and_needs_enough_answers() -> None:
    clock = FakeClock()
    detector = Saturation(latency=None, error_ratio=0.2, window=10, min_samples=20)
    for _ in range(10):
        clock.advance(0.1)
        detector.observe(clock.now(), None, failed=True)
    assert detector.saturated(clock.now()) is False  # 10 answers: too few to judge
    for n in range(100):
        clock.advance(0.05)
        detector.observe(clock.now(), 0.01, failed=n % 3 == 0)
    assert detector.saturated(clock.now()) is True
    clock.advance(30)  # nothing answered for a while: the window is empty again
    assert detector.saturated(clock.now()) is False


# End to end ------------------------------------------------------------------------------------

CAPACITY = 4  # requests the upstream serves at once
SERVICE_TIME = 0.05


async def small_upstream(aiohttp_server: AiohttpServer) -> str:
    """An upstream that serves CAPACITY requests at once, slowly, and refuses the rest with 503."""
    active = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal active
        if active >= CAPACITY:
            return web.Response(status=503, text="upstream overloaded")
        active += 1
        try:
            await asyncio.sleep(SERVICE_TIME)
            return web.Response(text="ok")
        finally:
            active -= 1

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


Flood = Callable[[str], Awaitable[dict[str, Counter[int]]]]


async def flood(base: str, seconds: float = 3.0) -> dict[str, Counter[int]]:
    """10x CAPACITY anonymous clients in a loop, a user every 25 ms, an anonymous login every 100 ms."""
    results: dict[str, Counter[int]] = {"user": Counter(), "anonymous": Counter(), "login": Counter()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

        async def one(kind: str, path: str, headers: dict[str, str] | None = None) -> None:
            async with client.get(base + path, headers=headers) as response:
                await response.read()
                results[kind][response.status] += 1

        async def attacker() -> None:
            while loop.time() < deadline:
                await one("anonymous", "/feed")
                await asyncio.sleep(0.01)

        async def trickle(kind: str, path: str, every: float, headers: Any = None) -> None:
            tasks = []
            n = 0
            while loop.time() < deadline:
                n += 1
                tasks.append(asyncio.create_task(one(kind, path, headers(n) if headers else None)))
                await asyncio.sleep(every)
            await asyncio.gather(*tasks)

        await asyncio.gather(
            *(attacker() for _ in range(10 * CAPACITY)),
            trickle("user", "/feed", 0.025, lambda n: as_user(f"user-{n % 50}")),
            trickle("login", "/api/login", 0.1),
        )
    return results


def rate(counts: Counter[int]) -> float:
    return counts[200] / max(1, sum(counts.values()))


OVERLOAD = {"max_concurrency": CAPACITY, "queue_size": 2 * CAPACITY, "queue_timeout": "1s"}
LOGIN = {"name": "login", "match": {"paths": ["/api/login"]}, "action": "allow", "priority": "critical"}


async def test_under_a_flood_users_keep_getting_through_and_anonymous_traffic_is_shed(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    upstream = await small_upstream(aiohttp_server)
    unprotected = await make_shield(upstream, auth=JWT_AUTH, rules=[LOGIN])
    shielded = await make_shield(upstream, auth=JWT_AUTH, rules=[LOGIN], overload=OVERLOAD)

    before = await flood(url_of(unprotected, ""))
    after = await flood(url_of(shielded, ""))

    for name, results in (("without overload:", before), ("with overload:   ", after)):
        print(
            f"\n{name} users {rate(results['user']):.1%} ok of {sum(results['user'].values())}, "
            f"anonymous logins {rate(results['login']):.1%} ok of {sum(results['login'].values())}, "
            f"anonymous {rate(results['anonymous']):.1%} ok of {sum(results['anonymous'].values())} "
            f"(statuses {dict(results['anonymous'])})"
        )
    assert rate(after["user"]) >= 0.99
    assert rate(after["login"]) >= 0.9
    assert after["anonymous"][503] > sum(after["anonymous"].values()) / 2
    assert rate(after["user"]) > rate(before["user"])

    metrics = f"http://127.0.0.1:{shielded.admin_port}/metrics"
    async with aiohttp.ClientSession() as client, client.get(metrics) as response:
        text = await response.text()
    shed = 'shield_requests_total{action="allow",decision="shed",identity="anonymous",rule="default"}'
    assert float(text.split(shed)[1].split()[0]) == after["anonymous"][503]


async def test_a_shed_request_is_told_when_to_come_back(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    server = await aiohttp_server(app)
    overload = {"max_concurrency": 1, "queue_size": 0, "retry_after": "7s"}
    shield = await make_shield(str(server.make_url("")).rstrip("/"), overload=overload)
    async with aiohttp.ClientSession() as client:
        first = asyncio.create_task(client.get(url_of(shield, "/a")))
        await asyncio.sleep(0.1)
        async with client.get(url_of(shield, "/b"), headers={"Accept": "application/json"}) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "7"
            assert (await response.json())["retry_after"] == 7
        release.set()
        async with await first as response:
            assert response.status == 200

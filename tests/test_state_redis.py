"""Throttles counted in Redis, end to end: a real Shield in front of a test upstream, a real Redis.

What a user notices: the same limits and headers as with memory state, one limit shared by every
replica, keys that expire, denied floods that cost Redis nothing, and a failure policy that holds
when Redis dies, restarts, forgets its scripts or turns slow.

Every test uses Redis servers of its own (``tests.redis_servers``) and a unique key prefix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.asyncio.connection import Connection as RedisConnection

from shield.app.server import Shield
from shield.state.redis_throttle import SCRIPT_SHA, RedisThrottle, _evalsha_command
from tests.conftest import MakeShield, StartShield, serve, url_of
from tests.redis_servers import RedisServer

# Generous: these tests count exactly, so a loaded CI machine must not turn a decision into an
# on_error answer. The tests about timeouts set their own.
TIMEOUT = "500ms"


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]  # RateLimit-* and Retry-After only

    @property
    def remaining(self) -> int | None:
        value = self.headers.get("RateLimit-Remaining")
        return None if value is None else int(value)


@dataclass
class Upstream:
    url: str
    hits: list[str] = field(default_factory=list)


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> Upstream:
    """Answers 200 'ok' to everything, recording which client each request came from."""
    recorded = Upstream("")

    async def handler(request: web.Request) -> web.Response:
        if request.method == "GET":
            recorded.hits.append(request.headers.get("X-Client", "-"))
        return web.Response(text="ok")

    recorded.url = await serve(aiohttp_server, handler)
    return recorded


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the tests that only read and write their own keys."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server this test may stop, restart, flush or count the commands of."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
async def redis_of() -> AsyncIterator[Any]:
    """``redis_of(server)``: an asyncio client of a test server, closed after the test."""
    clients: list[Redis] = []

    def make(server: RedisServer) -> Redis:
        clients.append(Redis(port=server.port, decode_responses=True))
        return clients[-1]

    yield make
    for redis in clients:
        await redis.aclose()


def throttle(
    limit: str, burst: int | None = None, *, name: str = "api", path: str = "/api/**"
) -> dict[str, Any]:
    """A throttle rule counting per X-Client header, so one test can play many clients."""
    rule: dict[str, Any] = {
        "name": name,
        "match": {"paths": [path]},
        "action": "throttle",
        "limit": limit,
        "key": "header:X-Client",
    }
    if burst is not None:
        rule["burst"] = burst
    return rule


def redis_state(url: str, prefix: str, **settings: Any) -> dict[str, Any]:
    return {"backend": "redis", "url": url, "key_prefix": prefix, "timeout": TIMEOUT, **settings}


def throttle_of(shield: Shield) -> RedisThrottle:
    assert shield.state.redis is not None
    return shield.state.redis


async def hit(session: aiohttp.ClientSession, url: str, who: str) -> Reply:
    async with session.get(url, headers={"X-Client": who}) as response:
        await response.read()
        headers = {k: v for k, v in response.headers.items() if k.startswith(("RateLimit-", "Retry-After"))}
        return Reply(response.status, headers)


async def admin_text(session: aiohttp.ClientSession, admin_port: int, path: str) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{admin_port}{path}") as response:
        return response.status, await response.text()


async def redis_metric(session: aiohttp.ClientSession, admin_port: int, name: str) -> float:
    """``name{backend="redis"}``, as the admin listener's /metrics shows it."""
    _, text = await admin_text(session, admin_port, "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == {"backend": "redis"}:
                return sample.value
    raise AssertionError(f"no {name}{{backend=redis}} on /metrics")


async def state_errors(session: aiohttp.ClientSession, shield: Shield) -> float:
    return await redis_metric(session, shield.admin_port, "shield_state_errors_total")


async def prefixed_keys(redis: Redis, prefix: str) -> list[str]:
    return sorted([key async for key in redis.scan_iter(match=prefix + "*")])


async def evalsha_calls(redis: Redis) -> int:
    """How many EVALSHA commands the server has run (INFO commandstats)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


# The same limits and headers as memory state ----------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_five_per_minute_lets_five_through_with_the_same_headers_on_either_backend(
    backend: str,
    upstream: Upstream,
    make_shield: MakeShield,
    shared_redis: RedisServer,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    state = {"backend": "memory"} if backend == "memory" else redis_state(shared_redis.url, prefix)
    shield = await make_shield(upstream.url, state=state, rules=[throttle("5/minute", burst=5)])
    url = url_of(shield, "/api/items")

    replies = [await hit(client, url, "alice") for _ in range(6)]
    assert [reply.status for reply in replies] == [200] * 5 + [429]
    assert [reply.remaining for reply in replies] == [4, 3, 2, 1, 0, 0]
    assert {reply.headers["RateLimit-Limit"] for reply in replies} == {"5"}
    assert replies[0].headers["RateLimit-Reset"] == "12"  # one request costs 60 s / 5
    assert replies[5].headers["Retry-After"] == "12"  # the next slot frees in 12 s
    assert replies[5].headers["RateLimit-Reset"] == "60"  # the bucket is full again in 60 s
    assert "Retry-After" not in replies[4].headers

    # Fired all at once, another client's burst is cut at exactly five too.
    burst = await asyncio.gather(*(hit(client, url, "bob") for _ in range(20)))
    assert sorted(reply.status for reply in burst) == [200] * 5 + [429] * 15
    assert sorted(int(r.headers["RateLimit-Remaining"]) for r in burst if r.status == 200) == [0, 1, 2, 3, 4]
    assert upstream.hits == ["alice"] * 5 + ["bob"] * 5


# One limit for every replica --------------------------------------------------------------------


async def test_two_shield_processes_on_one_redis_let_exactly_the_burst_through_in_total(
    upstream: Upstream,
    run_shield: StartShield,
    shared_redis: RedisServer,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    config = (
        f"state: {{backend: redis, url: '{shared_redis.url}', key_prefix: '{prefix}', timeout: 2s,"
        " on_error: deny}\n"  # a Redis failure shows as 503, never as an extra 200
        "rules:\n"
        "  - {name: api, match: {paths: ['/api/**']}, action: throttle, limit: 50/hour}\n"
    )
    replicas = await asyncio.gather(run_shield(upstream.url, config), run_shield(upstream.url, config))

    async def one(i: int) -> int:
        async with client.get(replicas[i % 2].url("/api/items")) as response:
            await response.read()
            return response.status

    statuses = await asyncio.gather(*(one(i) for i in range(300)))
    assert sorted(statuses) == [200] * 50 + [429] * 250
    assert len(upstream.hits) == 50
    for replica in replicas:  # each asked Redis (then answered its flood from its over-limit cache)
        assert await redis_metric(client, replica.admin_port, "shield_state_decisions_total") > 0


# Redis dies, then comes back --------------------------------------------------------------------


@dataclass
class Outage:
    """A Shield whose Redis (its own server) can be killed and restarted on the same port."""

    shield: Shield
    redis: RedisServer
    client: aiohttp.ClientSession
    prefix: str
    url: str

    async def readiness(self) -> tuple[int, str]:
        return await admin_text(self.client, self.shield.admin_port, "/readyz")

    async def until_redis_decides_again(self) -> None:
        """Send requests until one is decided by the restarted Redis (its key shows up there)."""
        restarted = Redis(port=self.redis.port, decode_responses=True)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not await prefixed_keys(restarted, self.prefix):
                assert loop.time() < deadline, "Redis never decided again after its restart"
                await hit(self.client, self.url, "probe")
                await asyncio.sleep(0.05)
        finally:
            await restarted.aclose()


@pytest.fixture
async def outage(
    upstream: Upstream,
    make_shield: MakeShield,
    own_redis: RedisServer,
    prefix: str,
    client: aiohttp.ClientSession,
    request: pytest.FixtureRequest,
) -> Outage:
    state = redis_state(
        own_redis.url,
        prefix,
        on_error=request.param,
        timeout="50ms",
        breaker={"failures": 2, "open_for": "200ms"},
    )
    shield = await make_shield(upstream.url, state=state, rules=[throttle("3/minute")])
    url = url_of(shield, "/api/items")
    assert (await hit(client, url, "before")).remaining == 2
    assert await state_errors(client, shield) == 0
    assert await admin_text(client, shield.admin_port, "/readyz") == (200, "ready\n")
    return Outage(shield, own_redis, client, prefix, url)


async def assert_degraded_while_down(outage: Outage) -> None:
    assert await state_errors(outage.client, outage.shield) > 0
    status, body = await outage.readiness()
    assert status == 200  # serving on the failure policy: not a reason to leave the load balancer
    assert "degraded: redis state unavailable" in body


async def assert_recovers_after_restart(outage: Outage) -> None:
    """Redis back on the same port: its decisions count again, with no Shield restart."""
    await outage.redis.restart()
    await outage.until_redis_decides_again()
    replies = [await hit(outage.client, outage.url, "after") for _ in range(4)]
    assert [(reply.status, reply.remaining) for reply in replies] == [(200, 2), (200, 1), (200, 0), (429, 0)]
    restarted = Redis(port=outage.redis.port, decode_responses=True)
    try:
        assert any("after" in key for key in await prefixed_keys(restarted, outage.prefix))
    finally:
        await restarted.aclose()
    assert await outage.readiness() == (200, "ready\n")


@pytest.mark.parametrize("outage", ["allow"], indirect=True)
async def test_redis_down_with_on_error_allow_forwards_without_ratelimit_headers(
    outage: Outage, upstream: Upstream
) -> None:
    outage.redis.kill()
    replies = [await hit(outage.client, outage.url, "down") for _ in range(6)]  # twice the limit
    assert replies == [Reply(200, {})] * 6
    assert upstream.hits.count("down") == 6
    await assert_degraded_while_down(outage)
    await assert_recovers_after_restart(outage)


@pytest.mark.parametrize("outage", ["deny"], indirect=True)
async def test_redis_down_with_on_error_deny_answers_503_retry_after_1(
    outage: Outage, upstream: Upstream
) -> None:
    outage.redis.kill()
    replies = [await hit(outage.client, outage.url, "down") for _ in range(3)]
    assert replies == [Reply(503, {"Retry-After": "1"})] * 3
    assert "down" not in upstream.hits
    await assert_degraded_while_down(outage)
    await assert_recovers_after_restart(outage)


@pytest.mark.parametrize("outage", ["local"], indirect=True)
async def test_redis_down_with_on_error_local_counts_in_this_process(
    outage: Outage, upstream: Upstream
) -> None:
    outage.redis.kill()
    replies = [await hit(outage.client, outage.url, "down") for _ in range(4)]
    assert [(reply.status, reply.remaining) for reply in replies] == [(200, 2), (200, 1), (200, 0), (429, 0)]
    assert replies[3].headers["Retry-After"] == "20"
    assert upstream.hits.count("down") == 3
    await assert_degraded_while_down(outage)
    await assert_recovers_after_restart(outage)


# Redis forgets the script -----------------------------------------------------------------------


async def test_script_flush_mid_run_still_gets_a_correct_decision(
    upstream: Upstream,
    make_shield: MakeShield,
    own_redis: RedisServer,
    redis_of: Any,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    redis: Redis = redis_of(own_redis)
    shield = await make_shield(
        upstream.url, state=redis_state(own_redis.url, prefix), rules=[throttle("3/minute")]
    )
    url = url_of(shield, "/api/items")
    assert (await hit(client, url, "alice")).remaining == 2

    await redis.script_flush()
    assert await redis.script_exists(SCRIPT_SHA) == [False]
    replies = [await hit(client, url, "alice") for _ in range(3)]
    assert [(reply.status, reply.remaining) for reply in replies] == [(200, 1), (200, 0), (429, 0)]
    assert await redis.script_exists(SCRIPT_SHA) == [True]
    assert await state_errors(client, shield) == 0  # recovered within the call, not via on_error


# A unix:// URL (Sentinel and Cluster URLs: test_state_cluster.py) --------------------------------


async def test_a_throttle_over_a_unix_socket_counts_exactly(
    upstream: Upstream,
    make_shield: MakeShield,
    tmp_path_factory: pytest.TempPathFactory,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    directory = tmp_path_factory.mktemp("sock")  # short: a socket path must fit in 107 bytes
    socket_path = directory / "redis.sock"
    server = RedisServer(directory, args=("--unixsocket", str(socket_path), "--unixsocketperm", "700"))
    server.start()
    try:
        state = redis_state(f"unix://{socket_path}", prefix)
        shield = await make_shield(upstream.url, state=state, rules=[throttle("3/minute")])
        replies = [await hit(client, url_of(shield, "/api/items"), "alice") for _ in range(4)]
        assert [(reply.status, reply.remaining) for reply in replies] == [
            (200, 2),
            (200, 1),
            (200, 0),
            (429, 0),
        ]
        assert throttle_of(shield).decisions == 4
    finally:
        server.kill()


# Keys expire; denials write nothing -------------------------------------------------------------


async def test_an_allowed_request_leaves_a_key_that_expires_within_the_period(
    upstream: Upstream,
    make_shield: MakeShield,
    shared_redis: RedisServer,
    redis_of: Any,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    redis: Redis = redis_of(shared_redis)
    rules = [throttle("5/minute"), throttle("2/second", name="fast", path="/fast/**")]
    shield = await make_shield(upstream.url, state=redis_state(shared_redis.url, prefix), rules=rules)

    assert (await hit(client, url_of(shield, "/api/items"), "alice")).status == 200
    assert await prefixed_keys(redis, prefix) == [f"{prefix}t:{{api|5/60.0/5|h:alice}}"]
    assert 0 < await redis.pttl(f"{prefix}t:{{api|5/60.0/5|h:alice}}") <= 12_000  # one request: 60 s / 5

    for _ in range(2):
        assert (await hit(client, url_of(shield, "/fast/x"), "bob")).status == 200
    fast_key = f"{prefix}t:{{fast|2/1.0/2|h:bob}}"
    assert 0 < await redis.pttl(fast_key) <= 1000
    await asyncio.sleep(1.05)
    assert not await redis.exists(fast_key)  # an idle client leaves nothing behind


async def test_a_denied_request_writes_nothing(
    upstream: Upstream,
    make_shield: MakeShield,
    shared_redis: RedisServer,
    redis_of: Any,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    redis: Redis = redis_of(shared_redis)
    shield = await make_shield(
        upstream.url, state=redis_state(shared_redis.url, prefix), rules=[throttle("2/minute")]
    )
    url = url_of(shield, "/api/items")
    key = f"{prefix}t:{{api|2/60.0/2|h:alice}}"
    for _ in range(2):
        assert (await hit(client, url, "alice")).status == 200
    value, ttl = await redis.get(key), await redis.pttl(key)
    calls = throttle_of(shield).calls

    assert (await hit(client, url, "alice")).status == 429
    assert throttle_of(shield).calls == calls + 1  # this denial was Redis's own answer
    assert await redis.get(key) == value
    assert 0 < await redis.pttl(key) <= ttl  # not pushed further out


# Over-limit cache -------------------------------------------------------------------------------


async def test_a_denied_client_is_answered_429_without_redis_until_its_retry_time(
    upstream: Upstream,
    make_shield: MakeShield,
    own_redis: RedisServer,
    redis_of: Any,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    redis: Redis = redis_of(own_redis)
    shield = await make_shield(
        upstream.url, state=redis_state(own_redis.url, prefix), rules=[throttle("2/2s")]
    )
    url = url_of(shield, "/api/items")
    assert [(await hit(client, url, "alice")).status for _ in range(3)] == [200, 200, 429]
    evalsha = await evalsha_calls(redis)
    calls = throttle_of(shield).calls

    flood = [await hit(client, url, "alice") for _ in range(20)]
    assert {reply.status for reply in flood} == {429}
    assert {reply.headers["Retry-After"] for reply in flood} == {"1"}
    assert await evalsha_calls(redis) == evalsha
    assert throttle_of(shield).calls == calls
    # Another client is not caught by alice's denial.
    assert (await hit(client, url, "bob")).status == 200
    assert await evalsha_calls(redis) == evalsha + 1

    await asyncio.sleep(1.0)  # alice's retry time (one interval, 2 s / 2) has passed
    assert (await hit(client, url, "alice")).status == 200
    assert await evalsha_calls(redis) == evalsha + 2
    assert upstream.hits == ["alice", "alice", "bob", "alice"]


# A slow Redis -----------------------------------------------------------------------------------


class DelayingProxy:
    """A TCP proxy in front of Redis that holds every reply for ``delay`` seconds (order kept)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> DelayingProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            await asyncio.gather(
                self._pump(client_reader, redis_writer, delayed=False),
                self._pump(redis_reader, client_writer, delayed=True),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_writer, redis_writer):
                writer.close()
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        while data := await reader.read(65536):
            if delayed and self.delay:
                await asyncio.sleep(self.delay)
            writer.write(data)
            await writer.drain()
        writer.close()


@pytest.fixture
async def slow_redis(shared_redis: RedisServer) -> AsyncIterator[DelayingProxy]:
    proxy = await DelayingProxy(shared_redis.port).start()
    yield proxy
    await proxy.close()


async def test_a_slow_redis_is_cut_off_at_the_timeout_and_later_answers_are_not_mismatched(
    upstream: Upstream,
    make_shield: MakeShield,
    slow_redis: DelayingProxy,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    state = redis_state(
        slow_redis.url, prefix, on_error="deny", timeout="50ms", breaker={"failures": 3, "open_for": "300ms"}
    )
    rules = [throttle("5/minute", name="a", path="/a/**"), throttle("3/minute", name="b", path="/b/**")]
    shield = await make_shield(upstream.url, state=state, rules=rules)
    throttle_state = throttle_of(shield)
    assert (await hit(client, url_of(shield, "/a/x"), "warmup")).remaining == 4

    slow_redis.delay = 0.5
    loop = asyncio.get_running_loop()
    for round in range(8):
        started = loop.time()
        replies = await asyncio.gather(
            hit(client, url_of(shield, "/a/x"), f"slow-a{round}"),
            hit(client, url_of(shield, "/b/x"), f"slow-b{round}"),
        )
        assert loop.time() - started < 0.3, "a request waited for Redis past state.timeout"
        assert list(replies) == [Reply(503, {"Retry-After": "1"})] * 2
    assert throttle_state.breaker.times_opened >= 1
    status, body = await admin_text(client, shield.admin_port, "/readyz")
    assert status == 200
    assert "degraded: redis state unavailable (circuit breaker" in body

    # Redis is fast again while the late replies are still on their way: each decision must get
    # its own answer, which two limits over fresh keys make visible.
    slow_redis.delay = 0
    deadline = loop.time() + 5
    while (await hit(client, url_of(shield, "/a/x"), "probe")).status != 200:
        assert loop.time() < deadline, "never recovered"
        await asyncio.sleep(0.05)
    seen: dict[str, list[tuple[int, int | None]]] = {"a": [], "b": []}
    for _ in range(6):
        a, b = await asyncio.gather(
            hit(client, url_of(shield, "/a/x"), "fresh"), hit(client, url_of(shield, "/b/x"), "fresh")
        )
        seen["a"].append((a.status, a.remaining))
        seen["b"].append((b.status, b.remaining))
        await asyncio.sleep(0.1)  # spread over the time the late replies arrive
    assert seen["a"] == [(200, 4), (200, 3), (200, 2), (200, 1), (200, 0), (429, 0)]
    assert seen["b"] == [(200, 2), (200, 1), (200, 0), (429, 0), (429, 0), (429, 0)]
    assert await admin_text(client, shield.admin_port, "/readyz") == (200, "ready\n")


# Batching ---------------------------------------------------------------------------------------


async def test_fifty_concurrent_clients_share_redis_calls(
    upstream: Upstream,
    make_shield: MakeShield,
    shared_redis: RedisServer,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    shield = await make_shield(
        upstream.url, state=redis_state(shared_redis.url, prefix), rules=[throttle("5/minute")]
    )
    url = url_of(shield, "/api/items")
    await hit(client, url, "warmup")  # connections to Redis made before counting

    async def counters() -> tuple[float, float]:
        calls = await redis_metric(client, shield.admin_port, "shield_state_calls_total")
        return calls, await redis_metric(client, shield.admin_port, "shield_state_decisions_total")

    calls_before, decisions_before = await counters()
    replies = await asyncio.gather(*(hit(client, url, f"client-{i}") for i in range(50)))
    assert {reply.remaining for reply in replies} == {4}  # each its own bucket, each decided by Redis
    calls_after, decisions_after = await counters()
    calls, decisions = calls_after - calls_before, decisions_after - decisions_before
    assert decisions == 50
    print(f"\n50 concurrent decisions in {calls:.0f} Redis calls: {decisions / calls:.1f} per call")
    assert decisions / calls > 1


async def test_a_client_key_of_undecodable_bytes_is_counted_and_spoils_no_other_decision(
    upstream: Upstream,
    make_shield: MakeShield,
    shared_redis: RedisServer,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    """An attacker's header of bytes that are not UTF-8 becomes a key like any other: it must not
    fail the Redis call it shares with honest clients' decisions (on_error: deny would 503 them)."""
    state = redis_state(shared_redis.url, prefix, on_error="deny")
    shield = await make_shield(upstream.url, state=state, rules=[throttle("5/minute")])
    await hit(client, url_of(shield, "/api/items"), "warmup")

    async def hostile() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", shield.port)
        writer.write(b"GET /api/items HTTP/1.1\r\nHost: x\r\nX-Client: \xff\xfe\r\nConnection: close\r\n\r\n")
        status_line = await reader.readline()
        writer.close()
        return int(status_line.split()[1])

    honest = [hit(client, url_of(shield, "/api/items"), f"client-{i}") for i in range(20)]
    status, *replies = await asyncio.gather(hostile(), *honest)
    assert status == 200
    assert {reply.status for reply in replies} == {200}
    assert {reply.remaining for reply in replies} == {4}
    raw = Redis(port=shared_redis.port)  # keys as bytes: one of them is not UTF-8
    try:
        keys = [key async for key in raw.scan_iter(match=prefix + "*")]
    finally:
        await raw.aclose()
    assert len(keys) == 22  # warmup, the hostile client and the 20 honest ones
    assert prefix.encode() + b"t:{api|5/60.0/5|h:\xff\xfe}" in keys


@given(keys=st.lists(st.binary(max_size=300), min_size=1, max_size=40), args=st.binary(max_size=2000))
def test_the_script_call_is_framed_byte_for_byte_as_redis_py_would_frame_it(
    keys: list[bytes], args: bytes
) -> None:
    """The throttle frames its EVALSHA itself (one join, not a Python step per argument): the
    bytes on the wire must be the ones redis-py's own packing gives, for any keys."""
    packed = b"".join(RedisConnection().pack_command("EVALSHA", SCRIPT_SHA, len(keys), *keys, args))
    assert _evalsha_command(keys, args) == packed

"""The waiting room's shared state: tickets in order, admission at the rate, across replicas.

The same behaviour is asked of both backends (memory, and Redis at 127.0.0.1:6379 under the
test's own key prefix), on a fake wall clock: nothing here sleeps to make time pass.
"""

from __future__ import annotations

import asyncio
import random
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from redis.asyncio import Redis

from shield.clock import FakeClock
from shield.config.state import StateConfig
from shield.ops.metrics import ProxyStats
from shield.state.connect import connect
from shield.state.queue_state import SCRIPT_SHA, MemoryQueues, QueueStanding, RedisQueues
from shield.state.records import SharedStateError
from tests.conftest import free_port
from tests.redis_servers import SHARED_REDIS_URL, RedisServer

PER_MINUTE_30 = 30 / 60
BURST = 30
START = 1_700_000_000.0  # a wall clock: replicas share it
TIMEOUT = 0.5  # generous: these tests count exactly, a loaded machine must not fail a call


class Queues(Protocol):
    async def draw(self, key: str, rate: float, burst: int, now: float) -> tuple[int, QueueStanding]: ...

    async def standing(self, key: str, rate: float, burst: int, now: float) -> QueueStanding: ...


class AwaitedMemory:
    """MemoryQueues behind the Redis backend's async calls, so one test body serves both."""

    def __init__(self) -> None:
        self.memory = MemoryQueues()

    async def draw(self, key: str, rate: float, burst: int, now: float) -> tuple[int, QueueStanding]:
        return self.memory.draw(key, rate, burst, now)

    async def standing(self, key: str, rate: float, burst: int, now: float) -> QueueStanding:
        return self.memory.standing(key, rate, burst, now)


MakeRedisQueues = Callable[..., RedisQueues]


@pytest.fixture
async def redis_queues(prefix: str) -> AsyncIterator[MakeRedisQueues]:
    """``redis_queues(url=..., timeout=..., **kwargs)``: a RedisQueues on a client of its own
    (one per "replica"); closed after the test, and the test's keys deleted."""
    made: list[RedisQueues] = []

    def make(url: str = SHARED_REDIS_URL, timeout: float = TIMEOUT, **kwargs: object) -> RedisQueues:
        state = StateConfig(backend="redis", url=url, key_prefix=prefix, timeout=timeout, connect_timeout=0.2)
        queues = RedisQueues(
            connect(state),
            key_prefix=state.key_prefix,
            timeout=state.timeout,
            max_in_flight=state.pool_size,
            **kwargs,  # type: ignore[arg-type]
        )
        made.append(queues)
        return queues

    yield make
    async with Redis.from_url(SHARED_REDIS_URL) as cleaner:
        keys = [key async for key in cleaner.scan_iter(match=prefix + "*")]
        if keys:
            await cleaner.delete(*keys)
    for queues in made:
        await queues.close()


@pytest.fixture(params=["memory", "redis"])
async def queues(request: pytest.FixtureRequest, redis_queues: MakeRedisQueues) -> Queues:
    if request.param == "memory":
        return AwaitedMemory()
    made = redis_queues()
    await made.start()
    return made


async def test_the_first_burst_walk_in_then_the_rate_holds(queues: Queues) -> None:
    clock = FakeClock(START)
    drawn = [await queues.draw("room", PER_MINUTE_30, BURST, clock.now()) for _ in range(1000)]
    assert [ticket for ticket, _ in drawn] == list(range(1, 1001))
    assert {standing.admitted for _, standing in drawn} == {30.0}
    assert sum(ticket <= standing.admitted for ticket, standing in drawn) == 30

    clock.advance(30)
    assert await queues.standing("room", PER_MINUTE_30, BURST, clock.now()) == (1000, 45.0)
    clock.advance(30)
    assert await queues.standing("room", PER_MINUTE_30, BURST, clock.now()) == (1000, 60.0)


async def test_a_new_queue_lets_in_its_burst_and_no_more(queues: Queues) -> None:
    clock = FakeClock(START)
    assert await queues.standing("room", PER_MINUTE_30, BURST, clock.now()) == (0, 30.0)
    for _ in range(30):
        assert (await queues.draw("room", PER_MINUTE_30, BURST, clock.now()))[0] <= BURST
    ticket, standing = await queues.draw("room", PER_MINUTE_30, BURST, clock.now())
    assert ticket == 31 and standing.admitted == 30.0
    clock.advance(2)  # one admission at 30/minute
    assert (await queues.standing("room", PER_MINUTE_30, BURST, clock.now())).admitted == 31.0


async def test_an_idle_queue_banks_at_most_burst(queues: Queues) -> None:
    clock = FakeClock(START)
    for _ in range(100):
        await queues.draw("room", PER_MINUTE_30, BURST, clock.now())
    clock.advance(86_400)  # a quiet day: everyone waiting got in, and only burst is banked
    assert await queues.standing("room", PER_MINUTE_30, BURST, clock.now()) == (100, 130.0)
    tickets = [(await queues.draw("room", PER_MINUTE_30, BURST, clock.now()))[0] for _ in range(31)]
    standing = await queues.standing("room", PER_MINUTE_30, BURST, clock.now())
    assert [t for t in tickets if t <= standing.admitted] == list(range(101, 131))
    clock.advance(60)
    assert (await queues.standing("room", PER_MINUTE_30, BURST, clock.now())).admitted == 160.0


async def test_standing_never_runs_ahead_of_issued_plus_burst_nor_back(queues: Queues) -> None:
    clock = FakeClock(START)
    steps = random.Random(7)
    last = 0.0
    for _ in range(300):
        clock.advance(steps.choice([0.0, 0.1, 1.0, 7.5, 120.0]))
        if steps.random() < 0.6:
            _, standing = await queues.draw("room", 2.0, 5, clock.now())
        else:
            standing = await queues.standing("room", 2.0, 5, clock.now())
        assert last <= standing.admitted <= standing.issued + 5
        last = standing.admitted


async def test_a_clock_going_back_moves_nothing_back(queues: Queues) -> None:
    clock = FakeClock(START)
    for _ in range(100):
        await queues.draw("room", PER_MINUTE_30, BURST, clock.now())
    clock.advance(10)
    assert (await queues.standing("room", PER_MINUTE_30, BURST, clock.now())).admitted == 35.0
    clock.advance(-5)  # a step back (NTP), or a replica whose clock is behind
    assert (await queues.standing("room", PER_MINUTE_30, BURST, clock.now())).admitted == 35.0
    assert (await queues.draw("room", PER_MINUTE_30, BURST, clock.now()))[1] == (101, 35.0)
    clock.advance(7)  # 2 s past the furthest time seen: those 2 s count, the 5 s again do not
    assert (await queues.standing("room", PER_MINUTE_30, BURST, clock.now())).admitted == 36.0


async def test_the_rate_and_burst_of_each_call_apply(queues: Queues) -> None:
    clock = FakeClock(START)
    for _ in range(200):
        await queues.draw("room", PER_MINUTE_30, BURST, clock.now())
    clock.advance(10)
    assert (await queues.standing("room", PER_MINUTE_30, BURST, clock.now())).admitted == 35.0
    clock.advance(10)  # an override raised the rate to 2 a second
    assert (await queues.standing("room", 2.0, BURST, clock.now())).admitted == 55.0
    # A burst lowered below what was granted takes no admission back.
    assert (await queues.standing("room", 2.0, 0, clock.now())).admitted == 55.0


async def test_queues_are_apart(queues: Queues) -> None:
    clock = FakeClock(START)
    for _ in range(40):
        await queues.draw("a", PER_MINUTE_30, BURST, clock.now())
    assert await queues.draw("b", PER_MINUTE_30, BURST, clock.now()) == (1, (1, 30.0))


async def test_both_backends_compute_the_same_floats(redis_queues: MakeRedisQueues) -> None:
    memory, redis = MemoryQueues(), redis_queues()
    clock = FakeClock(START)
    steps = random.Random(11)
    for _ in range(200):
        clock.advance(steps.random() * 3)
        rate, burst = steps.choice([(0.3, 3), (1 / 7, 10), (12.5, 1)])
        if steps.random() < 0.7:
            assert await redis.draw("room", rate, burst, clock.now()) == memory.draw(
                "room", rate, burst, clock.now()
            )
        else:
            assert await redis.standing("room", rate, burst, clock.now()) == memory.standing(
                "room", rate, burst, clock.now()
            )


async def test_concurrent_draws_get_distinct_consecutive_tickets(redis_queues: MakeRedisQueues) -> None:
    queues = redis_queues()
    drawn = await asyncio.gather(*(queues.draw("room", PER_MINUTE_30, BURST, START) for _ in range(200)))
    assert sorted(ticket for ticket, _ in drawn) == list(range(1, 201))
    assert all(standing.issued == ticket for ticket, standing in drawn)
    assert await queues.standing("room", PER_MINUTE_30, BURST, START) == (200, 30.0)


@pytest.mark.parametrize("share_of_a", [0.5, 0.2, 1.0])
async def test_two_replicas_admit_at_one_rate_between_them(
    redis_queues: MakeRedisQueues, share_of_a: float
) -> None:
    a, b = redis_queues(), redis_queues()  # two Shield replicas: two clients, one Redis
    clock = FakeClock(START)
    drawn: dict[RedisQueues, list[int]] = {a: [], b: []}
    by_a = round(50 * share_of_a)

    async def arrivals(replica: RedisQueues, count: int) -> None:
        for _ in range(count):
            drawn[replica].append((await replica.draw("room", PER_MINUTE_30, BURST, clock.now()))[0])

    for second in range(61):
        await asyncio.gather(arrivals(a, by_a), arrivals(b, 50 - by_a))
        seen = await asyncio.gather(*(r.standing("room", PER_MINUTE_30, BURST, clock.now()) for r in (a, b)))
        assert seen == [(50 * (second + 1), BURST + second / 2)] * 2
        if second < 60:
            clock.advance(1)

    admitted = seen[0].admitted
    assert admitted == BURST + 30
    tickets = drawn[a] + drawn[b]
    assert sorted(tickets) == list(range(1, 50 * 61 + 1))
    assert sum(ticket <= admitted for ticket in tickets) == 60


async def test_the_queue_is_one_hash_that_expires_after_its_last_call(
    redis_queues: MakeRedisQueues, prefix: str
) -> None:
    queues = redis_queues(ttl=600)
    await queues.draw("room", PER_MINUTE_30, BURST, START)
    async with Redis.from_url(SHARED_REDIS_URL, decode_responses=True) as redis:
        assert [key async for key in redis.scan_iter(match=prefix + "*")] == [f"{prefix}queue:room"]
        fields = await redis.hgetall(f"{prefix}queue:room")  # type: ignore[misc]
        assert set(fields) == {"issued", "admitted", "at"}
        assert 590_000 < await redis.pttl(f"{prefix}queue:room") <= 600_000
        await redis.pexpire(f"{prefix}queue:room", 1000)
        await queues.standing("room", PER_MINUTE_30, BURST, START + 1)  # a poll keeps it alive
        assert 590_000 < await redis.pttl(f"{prefix}queue:room") <= 600_000


async def test_a_redis_that_is_down_raises_shared_state_error_quickly(
    redis_queues: MakeRedisQueues,
) -> None:
    stats = ProxyStats()
    queues = redis_queues(url=f"redis://127.0.0.1:{free_port()}/0", timeout=0.2, stats=stats)
    await queues.start()  # not fatal
    started = time.monotonic()
    with pytest.raises(SharedStateError):
        await queues.draw("room", PER_MINUTE_30, BURST, START)
    with pytest.raises(SharedStateError):
        await queues.standing("room", PER_MINUTE_30, BURST, START)
    assert time.monotonic() - started < 0.2
    assert stats.state_errors["redis"] == 2


async def test_a_redis_that_does_not_answer_raises_within_the_timeout(
    redis_queues: MakeRedisQueues,
) -> None:
    """A server that takes the connection and never replies: the timeout ends the wait."""
    stuck: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stuck.append(writer)
        await reader.read()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stats = ProxyStats()
    queues = redis_queues(url=f"redis://127.0.0.1:{port}/0", timeout=0.1, stats=stats)
    try:
        started = time.monotonic()
        with pytest.raises(SharedStateError):
            await queues.draw("room", PER_MINUTE_30, BURST, START)
        assert 0.09 < time.monotonic() - started < 0.5
        assert stats.state_errors["redis"] == 1
    finally:
        for writer in stuck:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own: it flushes the scripts, which must not touch other tests'."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


async def test_a_forgotten_script_is_loaded_again(
    redis_queues: MakeRedisQueues, own_redis: RedisServer
) -> None:
    queues = redis_queues(url=own_redis.url)
    await queues.start()
    await queues.draw("room", PER_MINUTE_30, BURST, START)
    async with Redis(port=own_redis.port) as redis:
        await redis.script_flush()
        assert await redis.script_exists(SCRIPT_SHA) == [False]
    assert (await queues.draw("room", PER_MINUTE_30, BURST, START))[0] == 2


def test_memory_keeps_one_small_record_per_queue_not_per_visitor() -> None:
    queues = MemoryQueues()
    queues.draw("room", PER_MINUTE_30, BURST, START)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(100_000):
            queues.draw("room", PER_MINUTE_30, BURST, START + i / 1000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 4096, f"{grown} bytes kept for 100,000 draws"
    assert len(queues) == 1
    assert queues.standing("room", PER_MINUTE_30, BURST, START + 100) == (100_001, 80.0)


def test_memory_drops_the_least_recently_used_queue_past_its_cap() -> None:
    queues = MemoryQueues(max_keys=100)
    for n in range(100):
        queues.draw(f"rule-{n}", PER_MINUTE_30, BURST, START)
    queues.draw("rule-0", PER_MINUTE_30, BURST, START)  # in use: not the one to go
    queues.draw("rule-100", PER_MINUTE_30, BURST, START)
    assert len(queues) == 100
    assert queues.standing("rule-0", PER_MINUTE_30, BURST, START).issued == 2
    assert queues.standing("rule-1", PER_MINUTE_30, BURST, START).issued == 0  # dropped: new again

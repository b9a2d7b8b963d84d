"""Throttles on Redis behind Sentinel and on Redis Cluster, through their ``state.url`` forms.

The servers are this module's own, started once for the module: a master with one Sentinel
watching it, and a three-node cluster with every slot assigned.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from shield.app.server import Shield
from tests.conftest import MakeShield, shield_config, url_of
from tests.redis_servers import ClusterSetup, SentinelSetup, start_cluster, start_sentinel


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    yield from start_sentinel(tmp_path_factory.mktemp("sentinel"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    yield from start_cluster(tmp_path_factory.mktemp("cluster"))


def throttled_by(url: str, prefix: str, limit: str) -> dict[str, Any]:
    return {
        # Generous: these tests count exactly; a slow CI machine must not turn a decision into
        # an on_error answer, and deny would show it as a 503 rather than as an extra 200.
        "state": {"backend": "redis", "url": url, "key_prefix": prefix, "timeout": "1s", "on_error": "deny"},
        "rules": [
            {
                "name": "api",
                "match": {"paths": ["/api/**"]},
                "action": "throttle",
                "limit": limit,
                "key": "header:X-Client",
            }
        ],
    }


async def statuses(session: aiohttp.ClientSession, shield: Shield, who: str, times: int) -> list[int]:
    found = []
    for _ in range(times):
        async with session.get(url_of(shield, "/api/items"), headers={"X-Client": who}) as response:
            await response.read()
            found.append(response.status)
    return found


async def sentinel_clients(sentinel: SentinelSetup) -> int:
    """Connections the Sentinel process has open, not counting the one asking."""
    redis = Redis(port=sentinel.sentinel.port)
    try:
        return len(await redis.client_list()) - 1
    finally:
        await redis.aclose()


@pytest.fixture
async def sentinel_shield(sentinel: SentinelSetup, upstream_url: str, prefix: str) -> AsyncIterator[Shield]:
    shield = Shield(shield_config(upstream_url, **throttled_by(sentinel.url, prefix, "5/minute")))
    await shield.start()
    yield shield
    await shield.stop(grace=1.0)


async def test_a_throttle_through_sentinel_counts_exactly_on_the_master(
    sentinel: SentinelSetup, sentinel_shield: Shield, prefix: str, client: aiohttp.ClientSession
) -> None:
    assert await statuses(client, sentinel_shield, "alice", 7) == [200] * 5 + [429] * 2

    master = Redis(port=sentinel.master.port, decode_responses=True)
    try:
        assert [key async for key in master.scan_iter(match=prefix + "*")] == [
            f"{prefix}t:{{api|5/60.0/5|h:alice}}"
        ]
    finally:
        await master.aclose()


async def test_stopping_shield_closes_its_connections_to_the_sentinel(
    sentinel: SentinelSetup, upstream_url: str, prefix: str, client: aiohttp.ClientSession
) -> None:
    before = await sentinel_clients(sentinel)
    shield = Shield(shield_config(upstream_url, **throttled_by(sentinel.url, prefix, "5/minute")))
    await shield.start()
    try:
        assert await statuses(client, shield, "alice", 1) == [200]
    finally:
        await shield.stop(grace=1.0)
    assert await sentinel_clients(sentinel) == before


async def test_a_throttle_on_a_cluster_counts_exactly(
    cluster: ClusterSetup,
    upstream_url: str,
    make_shield: MakeShield,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    shield = await make_shield(upstream_url, **throttled_by(cluster.url, prefix, "5/minute"))
    assert await statuses(client, shield, "alice", 7) == [200] * 5 + [429] * 2


def key_of(prefix: str, who: str) -> str:
    return f"{prefix}t:{{api|2/60.0/2|h:{who}}}"


async def test_each_clients_key_lives_on_the_node_serving_its_slot(
    cluster: ClusterSetup,
    upstream_url: str,
    make_shield: MakeShield,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    shield = await make_shield(upstream_url, **throttled_by(cluster.url, prefix, "2/minute"))
    clients = [f"client-{i}" for i in range(30)]
    for who in clients:
        assert await statuses(client, shield, who, 3) == [200, 200, 429], who

    unplaced = {key_of(prefix, who) for who in clients}
    for node in cluster.nodes:
        redis = Redis(port=node.port, decode_responses=True)
        try:
            held = {key async for key in redis.scan_iter(match=prefix + "*")}
        finally:
            await redis.aclose()
        assert held, f"no key on node {node.port}: the clients' keys do not spread over the slots"
        assert all(cluster.node_of(key_slot(key.encode())) is node for key in held)
        unplaced -= held
    assert unplaced == set()


async def test_concurrent_clients_on_many_slots_each_get_their_own_exact_limit(
    cluster: ClusterSetup,
    upstream_url: str,
    make_shield: MakeShield,
    prefix: str,
    client: aiohttp.ClientSession,
) -> None:
    shield = await make_shield(upstream_url, **throttled_by(cluster.url, prefix, "2/minute"))
    assert shield.state.redis is not None
    throttle = shield.state.redis
    await statuses(client, shield, "warmup", 1)  # the cluster's slot map is known before counting
    calls = throttle.calls

    clients = [f"client-{i}" for i in range(60)]
    rounds = [await asyncio.gather(*(statuses(client, shield, who, 1) for who in clients)) for _ in range(3)]
    outcomes = {who: [replies[index][0] for replies in rounds] for index, who in enumerate(clients)}
    assert outcomes == {who: [200, 200, 429] for who in clients}  # a Redis failure shows as 503
    assert shield.stats.state_errors["redis"] == 0
    assert throttle.calls - calls < 3 * len(clients), "no batch carried decisions over several slots"

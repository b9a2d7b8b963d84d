"""A redis-py asyncio client from ``state.url``: a single server, Sentinel or Cluster.

redis-py reads ``redis://``, ``rediss://`` and ``unix://`` URLs itself. It has no URL form for
Sentinel or Cluster with several seed hosts, so those two are parsed here:
``redis+sentinel://[:password@]host:26379,host2:26379/SERVICE[/DB]`` and
``redis+cluster://[:password@]host:7000,host2:7001``. A ``rediss+`` scheme asks for TLS.

Retries are off: a call either answers within ``state.timeout`` or the failure policy decides,
and redis-py's own retries would only make a dead server slower to notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from shield.config.state import StateConfig, parse_seed_url

RedisClient = Redis | RedisCluster
# A cluster batch makes one call per hash slot, so each node gets a larger pool than pool_size.
CLUSTER_CONNECTIONS = 4


@dataclass
class Connection:
    """The client commands go through, and the Sentinel clients behind it (closed with it)."""

    client: RedisClient
    sentinels: list[Redis]

    async def close(self) -> None:
        await self.client.aclose()
        for sentinel in self.sentinels:
            await sentinel.aclose()


def connect(config: StateConfig) -> Connection:
    """A client for ``config.url``; nothing is sent until its first command."""
    assert config.url is not None
    scheme = urlsplit(config.url).scheme
    common: dict[str, Any] = {
        "socket_connect_timeout": config.connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if scheme.endswith("+sentinel"):
        seeds = parse_seed_url(config.url, 26379)
        db = int(seeds.path[1]) if len(seeds.path) > 1 else 0
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            seeds.hosts,
            sentinel_kwargs={"socket_connect_timeout": config.connect_timeout, "socket_timeout": 1.0},
            username=seeds.username,
            password=seeds.password,
            ssl=seeds.tls,
            db=db,
            max_connections=config.pool_size,
            **common,
        )
        master: Redis = sentinel.master_for(seeds.path[0])
        return Connection(master, list(sentinel.sentinels))
    if scheme.endswith("+cluster"):
        seeds = parse_seed_url(config.url, 6379)
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in seeds.hosts],
            username=seeds.username,
            password=seeds.password,
            ssl=seeds.tls,
            max_connections=config.pool_size * CLUSTER_CONNECTIONS,
            **common,
        )
        return Connection(cluster, [])
    return Connection(Redis.from_url(config.url, max_connections=config.pool_size, **common), [])

"""The state a Shield process keeps, assembled from ``state:``.

Memory is always there: it is the whole story with ``backend: memory`` and the fallback of
``on_error: local``. With ``backend: redis`` throttle decisions go to Redis, and the same client
serves every later feature that needs state shared between replicas.
"""

from __future__ import annotations

import asyncio

from shield.app.heap import release_freed_memory
from shield.clock import Clock
from shield.config.state import StateConfig
from shield.enforce.introspection import IdentityCache
from shield.ops.metrics import ProxyStats
from shield.state.connect import connect
from shield.state.memory_throttle import MemoryLimiter
from shield.state.redis_throttle import RedisThrottle
from shield.state.shared_cache import SharedIdentityCache


class StateBackend:
    def __init__(self, config: StateConfig, *, clock: Clock, stats: ProxyStats) -> None:
        self.config = config
        self.clock = clock
        self.memory = MemoryLimiter(config.max_keys)
        self.redis: RedisThrottle | None = None
        if config.backend == "redis":
            self.redis = RedisThrottle(connect(config), config, clock=clock, stats=stats, local=self.memory)
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.config.backend

    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._expire_idle())
        if self.redis is not None:
            await self.redis.start()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.redis is not None:
            await self.redis.close()

    async def _expire_idle(self, interval: float = 10.0, chunk: int = 20_000) -> None:
        """Every ``interval`` seconds, drop buckets that are full again, in chunks between
        which requests run, so memory falls back after an attack without a pause."""
        while True:
            await asyncio.sleep(interval)
            keys = self.memory.keys()
            for start in range(0, len(keys), chunk):
                self.memory.sweep(self.clock.now(), keys[start : start + chunk])
                await asyncio.sleep(0)
            del keys
            if self.memory.compact():
                release_freed_memory()

    def identity_cache(self, local: IdentityCache) -> IdentityCache:
        """Where introspection answers go: ``local`` alone, or shared through Redis behind it."""
        if self.redis is None:
            return local
        return SharedIdentityCache(self.redis, local, self.config.key_prefix + "auth")

    def health(self) -> str | None:
        """None when state works as configured; otherwise why it is degraded."""
        return self.redis.health() if self.redis is not None else None

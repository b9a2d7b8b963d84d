"""Introspection answers shared by every replica through Redis, behind the in-process cache.

aiocache's ``RedisCache`` does the keyed get/set with TTL (JSON values, ``PSETEX``); it runs on
the state backend's own client, so Sentinel and Cluster URLs work for it too (aiocache 0.12.3
cannot be given a client, so its ``client`` attribute is replaced; its unused pool never
connects). The in-process cache answers first, so a known credential costs no round trip; an
answer read from Redis is kept locally for at most ``LOCAL_TTL`` seconds, because its remaining
TTL is not known here. Redis failing only means a cache miss: the upstream is asked.
"""

from __future__ import annotations

import logging

from aiocache import RedisCache
from aiocache.serializers import JsonSerializer

from shield.decide.identity import Identity
from shield.enforce.introspection import IdentityCache
from shield.state.redis_throttle import RedisThrottle

log = logging.getLogger("shield.state")

LOCAL_TTL = 5.0


class SharedIdentityCache:
    def __init__(self, throttle: RedisThrottle, local: IdentityCache, namespace: str) -> None:
        self._throttle = throttle
        self._local = local
        self._redis = RedisCache(
            serializer=JsonSerializer(), namespace=namespace, timeout=max(throttle.timeout, 0.05)
        )
        self._redis.client = throttle.client

    async def get(self, key: str) -> Identity | None:
        found = await self._local.get(key)
        if found is not None or not self._available():
            return found
        try:
            value = await self._redis.get(key)
        except Exception as error:  # aiocache re-raises whatever the client raised
            self._failed(error)
            return None
        if not isinstance(value, list) or len(value) != 3:
            return None
        identity = Identity(bool(value[0]), value[1], f"{value[2]} (shared cache)")
        await self._local.set(key, identity, LOCAL_TTL)
        return identity

    async def set(self, key: str, value: Identity, ttl: float) -> None:
        await self._local.set(key, value, ttl)
        if not self._available():
            return
        try:
            await self._redis.set(key, [value.authenticated, value.user, value.how], ttl=float(ttl))
        except Exception as error:
            self._failed(error)

    async def close(self) -> None:
        await self._local.close()  # the Redis client belongs to the state backend

    def _available(self) -> bool:
        return self._throttle.breaker.state(self._throttle.clock.now()) == "closed"

    def _failed(self, error: Exception) -> None:
        self._throttle.stats.state_errors["redis"] += 1
        log.warning("shared identity cache: redis call failed (%r); asking the upstream", error)

"""Introspection: asking the upstream whose an opaque session credential is.

Only requests that carry the configured credential and were not proven by a local check
(JWT, signed cookie) come here, so only they pay for an ``await``. Answers are cached by a hash
of the credential: "user X" for ``ttl``, "nobody" (401/403) for the shorter ``negative_ttl``;
a failed or timed-out call is not cached, and the request is anonymous. Concurrent requests
with the same unknown credential share one upstream call (single flight), so a burst of
requests with a fresh session cookie cannot multiply into a burst on the upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from typing import Protocol

import aiohttp
from aiocache import SimpleMemoryCache

from shield.clock import Clock
from shield.config.auth import Introspection
from shield.config.model import Upstream
from shield.decide.credentials import cookie_value
from shield.decide.identity import Identity

log = logging.getLogger("shield.auth")


class IdentityCache(Protocol):
    """Where introspection answers are kept: in-process now; a shared (Redis) one can plug in."""

    async def get(self, key: str) -> Identity | None: ...

    async def set(self, key: str, value: Identity, ttl: float) -> None: ...

    async def close(self) -> None: ...


class BoundedMemoryCache:
    """aiocache's ``SimpleMemoryCache`` with a size bound and no timer per entry.

    aiocache 0.12.3's memory backend has no size limit and arms one ``call_later`` per key with
    a TTL: a flood of distinct credentials would grow both without bound. Here each entry
    carries its expiry, checked on read with the injected clock, and the oldest entries are
    dropped past ``max_entries``.
    """

    def __init__(self, max_entries: int, clock: Clock) -> None:
        self._cache = SimpleMemoryCache()
        self._order: OrderedDict[str, None] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    async def get(self, key: str) -> Identity | None:
        entry = await self._cache.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock.now():
            await self._cache.delete(key)
            self._order.pop(key, None)
            return None
        return value  # type: ignore[no-any-return]

    async def set(self, key: str, value: Identity, ttl: float) -> None:
        await self._cache.set(key, (self._clock.now() + ttl, value))
        self._order[key] = None
        self._order.move_to_end(key)
        while len(self._order) > self._max:
            oldest, _ = self._order.popitem(last=False)
            await self._cache.delete(oldest)

    async def close(self) -> None:
        await self._cache.close()

    def __len__(self) -> int:
        return len(self._order)


def introspection_cache(config: Introspection, clock: Clock) -> IdentityCache:
    """The cache of introspection answers. The one place to choose another backend (the state
    backend's Redis, shared by workers): anything with ``IdentityCache``'s three methods."""
    return BoundedMemoryCache(config.max_entries, clock)


class Introspector:
    def __init__(
        self,
        config: Introspection,
        upstream: Upstream,
        cache: IdentityCache,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.url = upstream.url.rstrip("/") + config.path
        self.host = upstream.authority
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None
        self._flights: dict[str, asyncio.Task[Identity]] = {}
        self.calls = 0  # upstream calls made (for tests and debugging)
        self.looked_for = ", ".join(
            [f"cookie {config.cookie}"] * bool(config.cookie)
            + [f"header {config.header}"] * bool(config.header)
        )

    def credential(self, headers: Mapping[str, str]) -> dict[str, str] | None:
        """The headers that carry the client's credential to the endpoint, or None."""
        config = self.config
        sent: dict[str, str] = {}
        if config.cookie is not None and (cookies := headers.get("Cookie")):
            value = cookie_value(cookies, config.cookie)
            if value:
                sent["Cookie"] = f"{config.cookie}={value}"
        if config.header is not None and (value := headers.get(config.header)):
            sent[config.header] = value
        return sent or None

    async def identify(self, headers: Mapping[str, str], otherwise: Identity) -> Identity:
        """The identity the upstream gives the request's credential; ``otherwise`` without one."""
        sent = self.credential(headers)
        if sent is None:
            return otherwise
        key = hashlib.sha256(repr(sorted(sent.items())).encode()).hexdigest()
        cached = await self.cache.get(key)
        if cached is not None:
            return cached
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.get_running_loop().create_task(self._lookup(key, sent))
            self._flights[key] = flight
            flight.add_done_callback(lambda _, k=key: self._flights.pop(k, None))  # type: ignore[misc]
        # shield(): a waiter whose client went away must not cancel the others' answer.
        return await asyncio.shield(flight)

    async def _lookup(self, key: str, sent: dict[str, str]) -> Identity:
        identity, ttl = await self._ask(sent)
        if ttl > 0:
            await self.cache.set(key, identity, ttl)
        return identity

    async def _ask(self, sent: dict[str, str]) -> tuple[Identity, float]:
        config = self.config
        self.calls += 1
        if self._session is None:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=config.timeout)
            )
        source = f"introspection ({' and '.join(sent)}) at {config.path}"
        try:
            async with self._session.get(
                self.url, headers={"Host": self.host, **sent}, allow_redirects=False, ssl=self._ssl
            ) as response:
                if response.status in (401, 403):
                    return Identity(
                        False, None, f"{source}: upstream answered {response.status}"
                    ), config.negative_ttl
                if response.status != 200:
                    return Identity(False, None, f"{source}: upstream answered {response.status}"), 0.0
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.warning("introspection at %s failed: %r", config.path, error)
            return Identity(False, None, f"{source} failed: {type(error).__name__}"), 0.0
        user = body.get(config.user_field) if isinstance(body, dict) else None
        if isinstance(user, bool) or not isinstance(user, str | int) or user == "":
            return Identity(
                False, None, f"{source}: no {config.user_field!r} in the answer"
            ), config.negative_ttl
        return Identity(True, str(user), f"{source}: verified by the upstream"), config.ttl

    async def close(self) -> None:
        for flight in list(self._flights.values()):
            flight.cancel()
        if self._session is not None:
            await self._session.close()
        await self.cache.close()

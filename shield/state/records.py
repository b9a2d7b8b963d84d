"""Expiring records (ctl switches, bans) read from a local copy, shared through Redis if configured.

The hot path only ever reads ``RecordStore.local``: one dict lookup, never a Redis round trip.
With Redis state each record is a key with a TTL of its remaining life, listed in an index set,
and every change bumps a sequence number. Each replica polls that number every ``poll_interval``
(one GET at rest) and reloads the records when it moved, so a change made on one replica is
seen by all within about that interval. Expiry is wall-clock (``until``, Unix seconds) because
replicas share it; Redis drops the keys itself when their TTL ends.

All keys share the hash tag ``{ctl}``, so a Redis Cluster keeps them on one slot and the
multi-key calls below stay legal there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from shield.clock import Clock
from shield.ops.metrics import ProxyStats
from shield.state.connect import Connection, RedisClient

log = logging.getLogger("shield.state")

_FAILURES = (RedisError, OSError, TimeoutError)
# Reload everything at least this often, even when the sequence did not move (a missed change,
# a flushed Redis): the local copy never drifts for long.
FULL_RELOAD_EVERY = 10.0


class RedisChannel:
    """The records' own Redis connection, apart from the throttle's pool (which refuses a
    connection past ``pool_size``): polls and ctl changes never take one a throttle decision
    needs. Calls go one at a time; they are few."""

    def __init__(self, connection: Connection, *, key_prefix: str, timeout: float) -> None:
        self.connection = connection
        self.client: RedisClient = connection.client
        self.key_prefix = key_prefix
        self.timeout = max(timeout, 1.0)
        self.lock = asyncio.Lock()

    async def close(self) -> None:
        await self.connection.close()  # with a Sentinel-discovered client, its Sentinels too

    async def pipeline(self, build: Callable[[Any], Any], *, stats: ProxyStats, what: str) -> list[Any]:
        """The replies of the commands ``build`` puts on a pipeline, sent in one round trip, one
        call at a time and within ``timeout``; a failure is counted in ``stats`` and raised as
        ``SharedStateError`` saying ``what`` was being done."""
        try:
            async with self.lock, asyncio.timeout(self.timeout):
                pipe = self.client.pipeline(transaction=False)
                build(pipe)
                return list(await pipe.execute())
        except _FAILURES as exc:
            stats.state_errors["redis"] += 1
            raise SharedStateError(f"redis did not {what}: {exc!r}") from exc


class SharedStateError(Exception):
    """Redis did not take a change; it applies to this replica only."""


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    until: float  # Unix seconds
    data: dict[str, Any]


class RecordStore:
    def __init__(
        self,
        namespace: str,
        *,
        wall: Clock,
        stats: ProxyStats,
        shared: RedisChannel | None,
        max_entries: int = 100_000,
        poll_interval: float = 0.5,
        on_reload: Callable[[], None] = lambda: None,
    ) -> None:
        self.local: dict[str, Record] = {}  # updated in place, never rebound (the gatekeeper holds it)
        self.wall = wall
        self.stats = stats
        self.shared = shared
        self.max_entries = max_entries
        self.poll_interval = poll_interval
        self.on_reload = on_reload
        prefix = (shared.key_prefix if shared else "") + "{ctl}:" + namespace
        self._record_prefix = prefix + ":r:"
        self._index = prefix + ":index"
        self._seq = prefix + ":seq"
        self._counter_prefix = prefix + ":n:"
        self._seen: bytes | None = None
        self._last_full = float("-inf")
        self._task: asyncio.Task[None] | None = None

    @property
    def is_shared(self) -> bool:
        return self.shared is not None

    def get(self, name: str) -> Record | None:
        """The live record ``name``, or None (an expired one is dropped on the way)."""
        record = self.local.get(name)
        if record is not None and record.until <= self.wall.now():
            self.local.pop(name, None)
            return None
        return record

    def live(self) -> list[Record]:
        now = self.wall.now()
        for name in [n for n, r in self.local.items() if r.until <= now]:
            del self.local[name]
        return sorted(self.local.values(), key=lambda r: r.name)

    def keep(self, record: Record) -> None:
        """Keep ``record`` in this replica's copy only (until the next reload from Redis)."""
        self.local.pop(record.name, None)
        while len(self.local) >= self.max_entries:
            # The oldest entry goes first: memory stays bounded under a flood of new clients.
            del self.local[next(iter(self.local))]
        self.local[record.name] = record

    async def put(self, name: str, data: dict[str, Any], until: float) -> Record:
        """Keep ``name`` until ``until`` here and, with Redis, on every replica."""
        record = Record(name, until, data)
        self.keep(record)
        if self.shared is not None:
            ttl_ms = max(1, int((until - self.wall.now()) * 1000))
            value = json.dumps({"until": until, "data": data})
            await self._call(
                lambda p: (
                    p.set(self._record_prefix + name, value, px=ttl_ms)
                    .sadd(self._index, name)
                    .incr(self._seq)
                )
            )
        return record

    async def delete(self, name: str) -> bool:
        """Remove ``name``; True if it was there (here or in Redis)."""
        had = self.local.pop(name, None) is not None
        if self.shared is not None:
            replies = await self._call(
                lambda p: p.delete(self._record_prefix + name).srem(self._index, name).incr(self._seq)
            )
            had = had or bool(replies[0])
        return had

    async def count(self, name: str, ttl: float) -> int:
        """Add one to the shared counter ``name`` (kept ``ttl`` seconds) and return it."""
        key = self._counter_prefix + name
        replies = await self._call(lambda p: p.incr(key).pexpire(key, int(ttl * 1000)))
        return int(replies[0])

    async def _call(self, build: Callable[[Any], Any]) -> list[Any]:
        assert self.shared is not None
        return await self.shared.pipeline(build, stats=self.stats, what="take the change")

    async def start(self) -> None:
        if self.shared is None:
            return
        try:
            await self.refresh()
        except SharedStateError as exc:
            log.warning("%s; starting with no shared records", exc)
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        # Awaited, so a poll cut short gives its connection back before the client closes.
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except SharedStateError as exc:
                log.debug("%s", exc)

    async def refresh(self, force: bool = False) -> None:
        """Reload the records from Redis when they changed (or now and then regardless)."""
        assert self.shared is not None
        now = self.wall.now()
        seq = (await self._call(lambda p: p.get(self._seq)))[0]
        if not force and seq == self._seen and now - self._last_full < FULL_RELOAD_EVERY:
            return
        names = sorted(n.decode() for n in (await self._call(lambda p: p.smembers(self._index)))[0])
        values = (
            (await self._call(lambda p: p.mget([self._record_prefix + n for n in names])))[0] if names else []
        )
        fresh: dict[str, Record] = {}
        gone = []
        for name, value in zip(names, values, strict=True):
            if value is None:
                gone.append(name)
                continue
            parsed = json.loads(value)
            if parsed["until"] > now and len(fresh) < self.max_entries:
                fresh[name] = Record(name, float(parsed["until"]), parsed["data"])
        if gone:
            await self._call(lambda p: p.srem(self._index, *gone))
        self.local.clear()
        self.local.update(fresh)
        self._seen = seq
        self._last_full = now
        self.on_reload()

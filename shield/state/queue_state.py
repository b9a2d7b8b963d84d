"""The shared state of a fair waiting room (``action: queue``): tickets and who may walk in.

Nothing is kept per visitor. Each queue is three numbers: ``issued``, the tickets drawn so far
(a visitor draws ``issued + 1``), ``admitted``, how far admission has come (a float), and ``at``,
when it last moved. On every call ``admitted`` moves up by ``rate`` a second since ``at``, never
past ``issued + burst``, so an idle queue banks at most ``burst`` admissions: the first ``burst``
arrivals after a quiet spell walk in, then the rate holds. Ticket ``t`` is in once
``t <= admitted``. The rate and burst come with every call, so an override applies at once.

``MemoryQueues`` keeps that in this process; ``RedisQueues`` keeps it in one Redis hash per
queue, advanced by one Lua script, so every replica hands out tickets from one counter and
admits at one rate between them. Time is the caller's ``now`` (wall-clock seconds, since
replicas share it); a clock behind the queue's ``at`` adds nothing and takes nothing back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import NamedTuple

from redis.exceptions import NoScriptError, RedisError

from shield.ops.metrics import ProxyStats
from shield.state.connect import Connection, RedisClient
from shield.state.records import SharedStateError

log = logging.getLogger("shield.state")

# KEYS[1]: the queue's hash (issued, admitted, at). ARGV: rate (admissions a second), burst, now
# (the caller's seconds), draw ('1' takes a ticket, '0' only looks), TTL in milliseconds.
# A missing hash is an idle queue: issued 0, admitted burst. The advance is advance()'s, in the
# same order, so both backends compute the same floats. Every call writes back and refreshes
# the TTL, so an abandoned queue goes away. Returns issued (the new ticket when drawing) and
# admitted as text: Redis would truncate a Lua number to an integer.
SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'issued', 'admitted', 'at')
local issued = tonumber(state[1])
local admitted, at
if issued == nil then
  issued, admitted, at = 0, burst, now
else
  admitted = tonumber(state[2]) or issued + burst
  at = tonumber(state[3]) or now
end
if now < at then
  now = at
end
admitted = math.max(admitted, math.min(admitted + rate * (now - at), issued + burst))
if ARGV[4] == '1' then
  issued = issued + 1
end
local text = string.format('%.17g', admitted)
redis.call('HSET', KEYS[1], 'issued', string.format('%.0f', issued), 'admitted', text,
  'at', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {issued, text}
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
_FAILURES = (RedisError, OSError, TimeoutError)


class QueueStanding(NamedTuple):
    """Where a queue stands after a call: tickets drawn, and admitted up to (ticket <= admitted)."""

    issued: int
    admitted: float


def advance(
    issued: int, admitted: float, at: float, rate: float, burst: int, now: float
) -> tuple[float, float]:
    """``(admitted, at)`` moved to ``now``; ``SCRIPT`` does the same arithmetic in the same order.

    ``admitted`` never moves back: not for a clock behind ``at`` (``at`` stays, so the time is
    not counted twice when the clock catches up), nor for a burst lowered below what was
    already granted (a visitor told to come in is not sent back)."""
    if now < at:
        now = at
    return max(admitted, min(admitted + rate * (now - at), float(issued + burst))), now


class _Queue:
    __slots__ = ("admitted", "at", "issued")

    def __init__(self, issued: int, admitted: float, at: float) -> None:
        self.issued = issued
        self.admitted = admitted
        self.at = at


class MemoryQueues:
    """Queues of this process only: one small record per queue key, at most ``max_keys`` of
    them (queues are rules, so few; past the cap the least recently used goes)."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._queues: dict[str, _Queue] = {}

    def __len__(self) -> int:
        return len(self._queues)

    def draw(self, key: str, rate: float, burst: int, now: float) -> tuple[int, QueueStanding]:
        """A new ticket in ``key``'s queue, and the queue's standing with it drawn."""
        standing = self._step(key, rate, burst, now, 1)
        return standing.issued, standing

    def standing(self, key: str, rate: float, burst: int, now: float) -> QueueStanding:
        """``key``'s queue advanced to ``now``, without drawing."""
        return self._step(key, rate, burst, now, 0)

    def _step(self, key: str, rate: float, burst: int, now: float, draw: int) -> QueueStanding:
        queue = self._queues.pop(key, None)
        if queue is None:
            # A new queue is an idle one: its first ``burst`` visitors walk in.
            queue = _Queue(0, float(burst), now)
            while len(self._queues) >= self.max_keys:
                del self._queues[next(iter(self._queues))]
        self._queues[key] = queue  # last: the dict's order is the order of use
        queue.admitted, queue.at = advance(queue.issued, queue.admitted, queue.at, rate, burst, now)
        queue.issued += draw
        return QueueStanding(queue.issued, queue.admitted)


class RedisQueues:
    """Queues shared by every replica: one hash ``{key_prefix}queue:{key}`` per queue, advanced
    (and drawn from) atomically by ``SCRIPT``, kept ``ttl`` seconds after its last call.

    At most ``max_in_flight`` calls are out at once: redis-py's pool refuses a connection past
    its size, so pass the connection's ``state.pool_size``. Give it a connection of its own, as
    ``RedisChannel`` has: the throttle counts on every connection of its pool. A call that fails
    or outlasts ``timeout`` raises ``SharedStateError`` (and counts in ``stats.state_errors``)."""

    def __init__(
        self,
        connection: Connection,
        *,
        key_prefix: str,
        timeout: float,
        max_in_flight: int = 4,
        ttl: float = 3600.0,
        stats: ProxyStats | None = None,
    ) -> None:
        self.connection = connection
        self.client: RedisClient = connection.client
        self.key_prefix = key_prefix
        self.timeout = timeout
        self.stats = stats
        self._ttl_ms = str(max(1, round(ttl * 1000)))
        self._slots = asyncio.Semaphore(max_in_flight)

    def key_of(self, key: str) -> str:
        """The Redis key of ``key``'s queue."""
        return f"{self.key_prefix}queue:{key}"

    async def start(self) -> None:
        """Load the script, so the first visitors do not pay for it; a Redis not up yet is not
        fatal (each call loads it again if Redis lost it)."""
        try:
            async with asyncio.timeout(max(self.timeout, 1.0)):
                await self.client.script_load(SCRIPT)
        except _FAILURES as exc:
            log.warning("redis queue state not reachable at start (%s)", exc)

    async def close(self) -> None:
        await self.connection.close()

    async def draw(self, key: str, rate: float, burst: int, now: float) -> tuple[int, QueueStanding]:
        """A new ticket in ``key``'s queue, and the queue's standing with it drawn."""
        standing = await self._call(key, rate, burst, now, "1")
        return standing.issued, standing

    async def standing(self, key: str, rate: float, burst: int, now: float) -> QueueStanding:
        """``key``'s queue advanced to ``now``, without drawing."""
        return await self._call(key, rate, burst, now, "0")

    async def _call(self, key: str, rate: float, burst: int, now: float, draw: str) -> QueueStanding:
        # repr: the shortest text that reads back as the same float, so Lua computes what
        # advance() would.
        args = (repr(float(rate)), str(burst), repr(float(now)), draw, self._ttl_ms)
        try:
            async with asyncio.timeout(self.timeout), self._slots:
                try:
                    reply = await self.client.evalsha(SCRIPT_SHA, 1, self.key_of(key), *args)  # type: ignore[misc]
                except NoScriptError:
                    # Redis restarted or SCRIPT FLUSH: load it again, within the same time budget.
                    await self.client.script_load(SCRIPT)
                    reply = await self.client.evalsha(SCRIPT_SHA, 1, self.key_of(key), *args)  # type: ignore[misc]
        except _FAILURES as exc:
            if self.stats is not None:
                self.stats.state_errors["redis"] += 1
            raise SharedStateError(f"redis queue state did not answer: {exc!r}") from exc
        return QueueStanding(int(reply[0]), float(reply[1]))

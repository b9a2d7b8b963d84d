"""Throttle decisions shared by every replica through Redis, with a policy for when it fails.

One decision is one GCRA step in a Lua script run by EVALSHA on Redis's clock. Decisions that
arrive while earlier calls are out wait and leave together: at most ``pool_size`` calls are in
flight, each carrying every decision queued when it left (up to ``MAX_BATCH``). At rest a
decision costs one round trip with no added delay; under load one round trip carries many, so
the Python client's cost per call is shared.

That cost is kept low in two ways, measured with the benchmark's 15 decisions per call (about
170 µs of client CPU per call through ``Redis.evalsha``, about 50 µs this way): the calls go out on
connections of the throttle's own (``pool_size`` of them, made by the client's pool and held),
with redis-py's ``send_packed_command`` and ``read_response``, so no pool checkout, liveness probe
and release per call; and a decision is two arguments (its key, and its rate and cost in one
shared argument), framed in one join here where redis-py's packing takes a Python step for each.

Around that: keys Redis denied are answered locally until their retry time; a call that fails or
outlasts ``state.timeout`` leaves its decisions to ``on_error``; consecutive failures open a
circuit breaker so a dead Redis costs nothing per request until a probe finds it back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from importlib.resources import files
from typing import Any, Final, Literal

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, RedisError

from shield.clock import Clock
from shield.config.state import StateConfig
from shield.decide.gcra import Gcra, RateLimitResult
from shield.ops.metrics import ProxyStats
from shield.state.breaker import CircuitBreaker
from shield.state.connect import CLUSTER_CONNECTIONS, Connection, RedisClient
from shield.state.memory_throttle import MemoryLimiter
from shield.state.overlimit import OverLimitCache

log = logging.getLogger("shield.state")

SCRIPT = files("shield.state").joinpath("gcra.lua").read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
MAX_BATCH = 256
_FAILURES = (RedisError, OSError, TimeoutError)
_EVALSHA_HEAD: Final = b"$7\r\nEVALSHA\r\n$40\r\n" + SCRIPT_SHA.encode() + b"\r\n"

# Per decision: allowed (1/0), reset_after and retry_after in microseconds; None: no answer.
Verdict = tuple[int, int, int] | None


def _evalsha_command(keys: list[bytes], args: bytes) -> bytes:
    """``EVALSHA SCRIPT_SHA len(keys) *keys args`` in the protocol's framing (an array of bulk
    strings), in one join: redis-py's ``pack_command`` takes a Python step per argument, which
    was a third of a call's cost at 15 keys."""
    count = b"%d" % len(keys)
    parts = [b"*%d\r\n" % (len(keys) + 4), _EVALSHA_HEAD, b"$%d\r\n%s\r\n" % (len(count), count)]
    parts += [b"$%d\r\n%s\r\n" % (len(key), key) for key in keys]
    parts.append(b"$%d\r\n%s\r\n" % (len(args), args))
    return b"".join(parts)


class _Decision:
    __slots__ = ("args", "future", "key")

    def __init__(self, key: bytes, args: bytes, future: asyncio.Future[Verdict]) -> None:
        self.key = key
        self.args = args
        self.future = future


class RedisThrottle:
    def __init__(
        self,
        connection: Connection,
        config: StateConfig,
        *,
        clock: Clock,
        stats: ProxyStats,
        local: MemoryLimiter,
    ) -> None:
        self.connection = connection
        self.client: RedisClient = connection.client
        self.key_prefix = config.key_prefix
        self.timeout = config.timeout
        self.max_in_flight = config.pool_size
        self.on_error = config.on_error
        self.clock = clock
        self.stats = stats
        self.local = local
        self.over_limit = OverLimitCache(max(1000, config.max_keys // 10))
        self.breaker = CircuitBreaker(config.breaker.failures, config.breaker.open_for)
        self._cluster = isinstance(self.client, RedisCluster)
        # Per-slot calls in flight at once, across a cluster's nodes (each node's pool is
        # CLUSTER_CONNECTIONS x pool_size; see connect.py).
        self._slot_calls = asyncio.Semaphore(config.pool_size * CLUSTER_CONNECTIONS)
        self._pending: list[_Decision] = []
        self._in_flight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        # A rate's and cost's part of the script's argument, by (count, period, burst, cost).
        self._rates: dict[tuple[int, float, int, int], bytes] = {}
        self._key_prefix = (self.key_prefix + "t:{").encode()
        # The throttle's own connections, one per call in flight: free ones here, all of them in
        # _connections (to close). Made by the client's pool, so those of a Sentinel-managed pool find
        # the current master, but not taken from it: the pool serves the other shared state.
        self._free: list[AbstractConnection] = []
        self._connections: list[AbstractConnection] = []

    @property
    def calls(self) -> int:
        """Redis calls that answered."""
        return self.stats.state_calls["redis"]

    @property
    def decisions(self) -> int:
        """Decisions those calls carried."""
        return self.stats.state_decisions["redis"]

    async def start(self) -> None:
        """Load the script, so the first requests do not pay for it; a Redis that is not up
        yet is not fatal: the failure policy covers it until it answers."""
        try:
            async with asyncio.timeout(max(self.timeout, 1.0)):
                await self.client.script_load(SCRIPT)
        except _FAILURES as exc:
            log.warning("redis state not reachable at start (%s); on_error: %s applies", exc, self.on_error)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for connection in self._connections:
            await connection.disconnect()
        await self.connection.close()

    def health(self) -> str | None:
        """None while Redis answers; otherwise what requests get instead."""
        state = self.breaker.state(self.clock.now())
        if state == "closed":
            return None
        return f"redis state unavailable (circuit breaker {state}); on_error: {self.on_error}"

    async def decide(
        self, key: str, rate: Gcra, cost: int = 1, on_error: Literal["allow", "deny", "local"] | None = None
    ) -> RateLimitResult | None:
        """The verdict for ``key``; None when Redis cannot say and the policy is not ``local``."""
        now = self.clock.now()
        denied = self.over_limit.get(key, now)
        if denied is not None:
            return denied
        if self.breaker.allows(now):
            verdict = await self._submit(key, rate, cost)
            if verdict is not None:
                allowed, reset_after, retry_after = verdict
                result = rate.result(allowed == 1, reset_after / 1e6, retry_after / 1e6)
                if not allowed:
                    self.over_limit.add(key, now, result)
                return result
        if (on_error or self.on_error) == "local":
            if cost:
                return self.local.hit(key, rate, self.clock.now(), cost)
            return self.local.peek(key, rate, self.clock.now())
        return None

    def charge(self, key: str, rate: Gcra) -> None:
        """Charge ``key`` without waiting for the verdict (after the upstream answered)."""
        if self.breaker.allows(self.clock.now()):
            future = self._submit(key, rate, 1)
            if self.on_error == "local":
                future.add_done_callback(lambda done: self._charge_locally(done, key, rate))
        elif self.on_error == "local":
            self.local.hit(key, rate, self.clock.now())

    def _charge_locally(self, done: asyncio.Future[Verdict], key: str, rate: Gcra) -> None:
        if not done.cancelled() and done.result() is None:
            self.local.hit(key, rate, self.clock.now())

    def _submit(self, key: str, rate: Gcra, cost: int) -> asyncio.Future[Verdict]:
        signature = (rate.count, rate.period, rate.burst, cost)
        args = self._rates.get(signature)
        if args is None:
            interval, tolerance = round(rate.interval * 1e6), round(rate.tolerance * 1e6)
            args = self._rates[signature] = b"%d %d %d " % (interval, tolerance, cost)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()
        # surrogateescape: a key made of undecodable header bytes is still a key, not a failed batch
        bucket = self._key_prefix + key.encode("utf-8", "surrogateescape") + b"}"
        self._pending.append(_Decision(bucket, args, future))
        if not self._flush_scheduled and self._in_flight < self.max_in_flight:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Send what is queued, as long as a connection is free; the rest waits for one."""
        self._flush_scheduled = False
        pending = self._pending
        while pending and self._in_flight < self.max_in_flight:
            batch = pending[:MAX_BATCH]
            del pending[:MAX_BATCH]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Decision]) -> None:
        verdicts: Sequence[Verdict]
        try:
            async with asyncio.timeout(self.timeout):
                if self._cluster:
                    verdicts = await self._run_by_slot(batch)
                else:
                    verdicts = await self._run(batch)
        except Exception as exc:  # whatever went wrong, every waiting request gets its answer
            if not isinstance(exc, _FAILURES):
                log.exception("redis state call failed unexpectedly")
            self.stats.state_errors["redis"] += 1
            was = self.breaker.state(self.clock.now())
            self.breaker.failed(self.clock.now())
            if was != "open" and self.breaker.state(self.clock.now()) == "open":
                log.error("redis state failing (%r); skipping it for %.1fs", exc, self.breaker.open_for)
            verdicts = [None] * len(batch)
        else:
            if self.breaker.state(self.clock.now()) != "closed":
                log.warning("redis state answers again")
            self.breaker.succeeded()
            self.stats.state_calls["redis"] += 1
            self.stats.state_decisions["redis"] += len(batch)
        finally:
            self._in_flight -= 1
            if self._pending and not self._flush_scheduled:
                self._flush()
        for decision, verdict in zip(batch, verdicts, strict=True):
            if not decision.future.done():
                decision.future.set_result(verdict)

    async def _run(self, batch: Sequence[_Decision]) -> list[Verdict]:
        keys = [decision.key for decision in batch]
        args = b"".join([decision.args for decision in batch])
        if self._cluster:  # the cluster client routes the call to the slot's node
            try:
                reply = await self.client.evalsha(SCRIPT_SHA, len(keys), *keys, args)  # type: ignore[misc]
            except NoScriptError:
                await self.client.script_load(SCRIPT)
                reply = await self.client.evalsha(SCRIPT_SHA, len(keys), *keys, args)  # type: ignore[misc]
        else:
            connection = self._free.pop() if self._free else self._connect()
            try:
                reply = await self._evalsha(connection, keys, args)
            finally:
                self._free.append(connection)
        return [(reply[i], reply[i + 1], reply[i + 2]) for i in range(0, len(reply), 3)]

    def _connect(self) -> AbstractConnection:
        """One more of the throttle's connections (it connects on its first command)."""
        assert isinstance(self.client, Redis)
        connection: AbstractConnection = self.client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        self._connections.append(connection)
        return connection

    async def _evalsha(self, connection: AbstractConnection, keys: list[bytes], args: bytes) -> Any:
        """The script's reply. redis-py disconnects a connection whose command failed or was
        cancelled (so no late reply is read as the next one's); it is connected again here, by
        ``connect`` (``send_command``'s own reconnect skips a Sentinel-managed connection's
        lookup of the master)."""
        if not connection.is_connected:
            await connection.connect()  # type: ignore[no-untyped-call]
        command = _evalsha_command(keys, args)
        try:
            await connection.send_packed_command(command)
            return await connection.read_response()
        except NoScriptError:
            # Redis restarted or SCRIPT FLUSH: load it again, once, inside the same time budget.
            await connection.send_command("SCRIPT", "LOAD", SCRIPT)
            await connection.read_response()
            await connection.send_packed_command(command)
            return await connection.read_response()

    async def _run_by_slot(self, batch: list[_Decision]) -> list[Verdict]:
        """In a cluster one script call may only touch one hash slot, and redis-py refuses
        scripts in cluster pipelines: one call per slot, concurrently, within the pool."""
        assert isinstance(self.client, RedisCluster)
        groups: dict[int, list[int]] = defaultdict(list)
        for index, decision in enumerate(batch):
            groups[self.client.keyslot(decision.key)].append(index)
        slots = self._slot_calls

        async def run(indexes: list[int]) -> list[Verdict]:
            async with slots:
                return await self._run([batch[i] for i in indexes])

        replies = await asyncio.gather(*(run(indexes) for indexes in groups.values()))
        verdicts: list[Verdict] = [None] * len(batch)
        for indexes, reply in zip(groups.values(), replies, strict=True):
            for index, verdict in zip(indexes, reply, strict=True):
                verdicts[index] = verdict
        return verdicts

"""``ctl top`` across replicas: each one publishes its slots of top tables to Redis, any one adds them.

Every ``interval`` seconds a replica writes its current slot, and once more each slot that ended
since (so a slot's last seconds are not lost), as one key per replica and slot, ``PX`` the
longest window plus a slot: Redis forgets what no window can ask for. A sorted set indexes the
keys by the wall-clock end of their slot, so a query reads only the slots that overlap its
window (``ZRANGEBYSCORE``, then one ``MGET``) and the index is trimmed on every write.

A query adds this replica's live tables to every other replica's slots from Redis, and, with
``workers: N``, to the other workers' (their stats snapshots carry their slots, ``wall_slots``,
as they carry their counters to worker 0's /metrics). Another replica's current slot is up to
``interval`` old (another worker's, a second); slot ends are wall-clock, so replicas'
clock skew moves the window's edge by as much. If Redis fails the answer is this replica's
alone, and says so (``partial``).

All keys share the hash tag ``{top}``: on a Redis Cluster they live on one slot and the
multi-key calls stay legal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from shield.clock import Clock
from shield.ops.metrics import ProxyStats
from shield.ops.top import TopReport, TopTables, checked, summarize
from shield.state.records import RedisChannel, SharedStateError

log = logging.getLogger("shield.state")

_FAILURES = (RedisError, OSError, TimeoutError)


def replica_name() -> str:
    """This process among the replicas: host and pid (readable), and a random tail (unique even
    where every container is pid 1 on a reused host name)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class SharedReport:
    report: TopReport
    replicas: list[str]  # whose tables were added, this one first
    partial: str | None  # why other replicas are missing, if they are


class TopShare:
    def __init__(
        self,
        tables: TopTables,
        *,
        channel: RedisChannel | None,
        wall: Clock,
        stats: ProxyStats,
        interval: float = 5.0,
        replica: str | None = None,
    ) -> None:
        self.tables = tables
        self.channel = channel
        self.wall = wall
        self.stats = stats
        self.interval = interval
        self.replica = replica or replica_name()
        prefix = (channel.key_prefix if channel else "") + "{top}:"
        self._slot_prefix = prefix + "slot:"
        self._index = prefix + "slots"
        self._unpublished = tables.current_slot  # the oldest slot still to write (again)
        self._task: asyncio.Task[None] | None = None
        # Snapshots of the slots that ended (``wall_slots``), and the first slot not among them.
        self._settled: dict[int, list[Any]] = {}
        self._settled_from = 0

    @property
    def _keep(self) -> float:
        """How long a slot can matter to a query: the longest window, plus the slot itself."""
        return self.tables.window_max + self.tables.slot_seconds + self.interval

    async def start(self) -> None:
        if self.channel is not None:
            self._task = asyncio.get_running_loop().create_task(self._publish_every())

    async def close(self) -> None:
        """Stop publishing, after a last write of the current slot (best effort)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        try:
            await self.publish()
        except SharedStateError as error:
            log.debug("top tables: last publish failed: %s", error)

    async def _publish_every(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.publish()
            except SharedStateError as error:
                log.debug("top tables: %s", error)

    async def publish(self) -> None:
        """Write every slot from the oldest not yet final to the current one."""
        current = self.tables.current_slot  # (before the snapshots: a slot ending now is written again)
        wall = self.wall.now()
        slots = self.tables.slot_snapshots(self._unpublished)
        ttl_ms = int(self._keep * 1000)

        def build(pipe: Any) -> None:
            for index, until_end, snapshot in slots:
                name = f"{self.replica}:{index}"
                end = wall + until_end
                value = json.dumps({"replica": self.replica, "end": end, "snapshot": snapshot})
                pipe.set(self._slot_prefix + name, value, px=ttl_ms)
                pipe.zadd(self._index, {name: end})
            pipe.zremrangebyscore(self._index, "-inf", wall - self._keep)

        await self._call(build)
        self._unpublished = current

    async def report(self, by: str, *, refused: bool, window: float, limit: int) -> SharedReport:
        """The top ``limit`` of ``by`` over every replica. ValueError for a bad query."""
        local = self.tables.report(by, refused=refused, window=window, limit=limit)
        # (With Redis every worker writes its own slots there: theirs come with the rest.)
        workers = self._workers(window) if self.channel is None else []
        if self.channel is None and not workers:
            return SharedReport(local, [self.replica], None)
        snapshots: list[Mapping[str, Any]] = [self.tables.snapshot(window)]
        try:
            remote = await self._remote(window) if self.channel is not None else []
        except SharedStateError as error:
            return SharedReport(local, [self.replica], str(error))
        replicas = [self.replica]
        for replica, snapshot in [*workers, *remote]:
            snapshots.append(snapshot)
            if replica not in replicas:
                replicas.append(replica)
        return SharedReport(summarize(snapshots, by, refused, limit), replicas, None)

    def wall_slots(self) -> list[list[Any]]:
        """This process's slots as ``[wall-clock end, snapshot]``, for its stats snapshot (each
        second). A slot that ended never changes again: its snapshot is made once and kept
        until no window can reach it."""
        wall, current = self.wall.now(), self.tables.current_slot
        live = []
        for index, until_end, snapshot in self.tables.slot_snapshots(self._settled_from):
            if index < current:
                self._settled[index] = [wall + until_end, snapshot]
            else:
                live.append([wall + until_end, snapshot])
        self._settled_from = current
        for index in [i for i, (end, _) in self._settled.items() if end < wall - self._keep]:
            del self._settled[index]
        return [*self._settled.values(), *live]

    def _workers(self, window: float) -> list[tuple[str, Mapping[str, Any]]]:
        """The other workers' slots overlapping the last ``window`` seconds (``workers: N``)."""
        start = self.wall.now() - window
        found = []
        for number, peer in enumerate(self.stats.peers(), start=1):
            for end, snapshot in peer.top_slots():
                if end > start:
                    found.append((f"{self.replica} worker {number}", checked(snapshot)))
        return found

    async def _remote(self, window: float) -> list[tuple[str, Mapping[str, Any]]]:
        """Other replicas' slots overlapping the last ``window`` seconds."""
        start = self.wall.now() - window
        names = (await self._call(lambda p: p.zrangebyscore(self._index, f"({start}", "+inf")))[0]
        mine = self.replica + ":"
        keys = [self._slot_prefix + n.decode() for n in names if not n.decode().startswith(mine)]
        if not keys:
            return []
        found = []
        for value in (await self._call(lambda p: p.mget(keys)))[0]:
            if value is None:  # expired since the index was read
                continue
            try:
                parsed = json.loads(value)
                if parsed["end"] > start:
                    found.append((str(parsed["replica"]), checked(parsed["snapshot"])))
            except (ValueError, KeyError, TypeError) as error:
                log.warning("top tables: skipping a slot that is not one: %r", error)
        return found

    async def _call(self, build: Callable[[Any], Any]) -> list[Any]:
        assert self.channel is not None
        return await self.channel.pipeline(build, stats=self.stats, what="answer for the top tables")

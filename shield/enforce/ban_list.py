"""Bans in force: who is banned (the hot path's one dict lookup), and issuing and lifting bans.

The decision of *when* to ban and for how long is ``shield.decide.ban_escalation`` (pure); this module
keeps the bans in a ``RecordStore`` so that, with Redis state, a ban issued on one replica is
answered by all of them within the store's poll interval. Violations are counted by each
replica for the traffic it sees; the ban count that makes bans grow is shared through Redis.
"""

from __future__ import annotations

import asyncio
import logging

from shield.clock import Clock
from shield.config.attack import Bans
from shield.decide.ban_escalation import Offenses, Violations, ban_duration
from shield.ops.metrics import ProxyStats
from shield.state.records import Record, RecordStore, SharedStateError

log = logging.getLogger("shield.bans")


class BanList:
    def __init__(self, config: Bans, store: RecordStore, *, wall: Clock, stats: ProxyStats) -> None:
        self.config = config
        self.store = store
        self.wall = wall
        self.stats = stats
        self.violations = Violations(config.after, config.within, config.max_entries)
        self.offenses = Offenses(config.remember, config.max_entries)
        self._tasks: set[asyncio.Task[None]] = set()

    def follow(self, config: Bans) -> None:
        """Take up a reloaded ``bans:`` section: counts and bans in force are kept, and the
        new thresholds and durations apply from the next violation."""
        self.config = config
        self.violations.retune(config.after, config.within, config.max_entries)
        self.offenses.remember = config.remember
        self.offenses.max_entries = config.max_entries
        self.store.max_entries = config.max_entries

    def banned(self, key: str) -> Record | None:
        """The ban ``key`` is under, or None. One dict lookup while nobody is banned."""
        if not self.store.local:
            return None
        return self.store.get(key)

    def violation(self, key: str) -> None:
        """Count a throttled or blocked answer to ``key``; ban it once it earned that."""
        now = self.wall.now()
        if not self.violations.add(key, now):
            return
        level = self.offenses.next_level(key, now)
        record = self._record(key, level, now)
        # In force here at once; with Redis the shared ban count may lengthen it a moment later.
        self.store.keep(record)
        self.stats.bans_issued += 1
        log.warning("banned %s for %.0fs (ban %d)", key, record.until - now, level)
        if self.store.is_shared:
            task = asyncio.get_running_loop().create_task(self._share(key, now))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _record(self, key: str, level: int, now: float) -> Record:
        config = self.config
        seconds = ban_duration(level, base=config.duration, factor=config.factor, cap=config.max_duration)
        return Record(key, now + seconds, {"level": level, "since": now})

    async def _share(self, key: str, now: float) -> None:
        try:
            level = await self.store.count(key, self.config.remember)
            record = self._record(key, level, now)
            await self.store.put(key, record.data, record.until)
        except SharedStateError as exc:
            log.warning("ban of %s applies to this replica only: %s", key, exc)

    def bans(self) -> list[Record]:
        return self.store.live()

    async def lift(self, key: str) -> bool:
        """Lift the ban of ``key``; its ban count stays, so a relapse is banned longer."""
        return await self.store.delete(key)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

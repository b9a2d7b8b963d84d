"""Throttle state in one process: TATs in a bounded dict, the least recently charged key
evicted when full, so a flood of distinct keys cannot grow memory without bound."""

from __future__ import annotations

from collections import OrderedDict
from itertools import islice

from shield.decide.gcra import Gcra, RateLimitResult


class MemoryLimiter:
    """TATs by key in one process, bounded by ``max_keys``.

    Keys whose TAT is in the past hold a full bucket, the same as no key at all, so they are
    dropped first when room is needed, and ``sweep`` drops them in the background so memory
    falls back after an attack; otherwise the least recently charged key goes.
    """

    def __init__(self, max_keys: int = 1_000_000) -> None:
        self.max_keys = max_keys
        # Least recently charged first. An OrderedDict, not a dict: evicting from the front
        # of a plain dict leaves dummies that every later eviction must scan past.
        self._tats: OrderedDict[str, float] = OrderedDict()
        # The most keys held since the dict was last rebuilt: Python dicts never shrink their
        # table on deletion, so after a flood of keys has expired the dict is copied.
        self._peak = 0

    def __len__(self) -> int:
        return len(self._tats)

    def hit(self, key: str, rate: Gcra, now: float, cost: int = 1) -> RateLimitResult:
        tats = self._tats
        result, new_tat = rate.apply(tats.get(key), now, cost)
        if new_tat is not None:
            tats[key] = new_tat
            tats.move_to_end(key)
            if len(tats) > self.max_keys:
                self._evict(now)
        return result

    def peek(self, key: str, rate: Gcra, now: float) -> RateLimitResult:
        return rate.peek(self._tats.get(key), now)

    def _evict(self, now: float) -> None:
        """Make room for 0.1% more keys: expired ones near the front first, then the oldest.

        Only a bounded window at the front (the least recently charged) is searched, so a
        flood of new keys pays a small, steady cost instead of a scan of every key.
        """
        tats = self._tats
        self._peak = max(self._peak, len(tats))
        excess = len(tats) - (self.max_keys - max(1, self.max_keys // 1000))
        window = islice(tats.items(), 2 * excess + 64)
        for key in [key for key, tat in window if tat <= now][:excess]:
            del tats[key]
        while len(tats) > self.max_keys - max(1, self.max_keys // 1000):
            tats.popitem(last=False)

    def keys(self) -> list[str]:
        """A snapshot of the keys, for sweeping in chunks while requests go on."""
        keys = list(self._tats)
        self._peak = max(self._peak, len(keys))
        return keys

    def sweep(self, now: float, keys: list[str]) -> None:
        """Forget those of ``keys`` whose bucket is full again (their TAT has passed)."""
        tats = self._tats
        for key in keys:
            tat = tats.get(key)
            if tat is not None and tat <= now:
                del tats[key]

    def compact(self) -> bool:
        """Rebuild the dict once most of its keys are gone, returning the table's memory."""
        size = len(self._tats)
        self._peak = max(self._peak, size)
        if self._peak >= 1024 and size < self._peak // 4:
            self._tats = OrderedDict(self._tats)
            self._peak = size
            return True
        return False

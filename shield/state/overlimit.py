"""Keys Redis said are over their limit, answered locally until their retry time.

Under GCRA a denied request changes nothing in Redis, so until the key's ``retry_after`` has
passed every further request for it would be denied too: answering those here is exact, and a
flood from one client costs no Redis round trips (envoy's ratelimit calls this its local cache).
Deadlines are on the local monotonic clock, relative to when the answer came, so clock skew
between replicas and Redis does not leak in.
"""

from __future__ import annotations

from shield.decide.gcra import RateLimitResult


class OverLimitCache:
    __slots__ = ("_entries", "max_keys")

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        # key -> (when it was denied, the denial)
        self._entries: dict[str, tuple[float, RateLimitResult]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: str, now: float, denial: RateLimitResult) -> None:
        entries = self._entries
        entries[key] = (now, denial)
        if len(entries) > self.max_keys:
            del entries[next(iter(entries))]

    def get(self, key: str, now: float) -> RateLimitResult | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        since, denial = entry
        elapsed = now - since
        if elapsed >= denial.retry_after:
            del self._entries[key]
            return None
        return RateLimitResult(
            False,
            denial.limit,
            0,
            max(0.0, denial.reset_after - elapsed),
            denial.retry_after - elapsed,
        )

    def clear(self) -> None:
        self._entries.clear()

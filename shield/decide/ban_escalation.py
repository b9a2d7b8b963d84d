"""Ban escalation, fail2ban-style: pure bookkeeping, time given by the caller.

A client earns a ban with ``after`` violations (throttled or blocked answers) inside a sliding
window of ``within`` seconds. Its n-th ban lasts ``duration * factor ** (n - 1)`` seconds, capped
at ``max_duration``; the count of bans is forgotten ``remember`` seconds after the last one.
Both tables are bounded: past ``max_entries`` the least recently seen client is forgotten.
"""

from __future__ import annotations

from collections import deque


def ban_duration(level: int, *, base: float, factor: float, cap: float) -> float:
    """How long the ``level``-th ban (1 for the first) lasts."""
    if level < 1:
        raise ValueError("ban levels start at 1")
    # Capped before the power can overflow a float: factor >= 1 only grows.
    exponent = level - 1
    if factor > 1 and exponent > 0 and base * factor ** min(exponent, 1023) >= cap:
        return cap
    return min(cap, base * factor**exponent)


class Violations:
    """Recent violations per client; ``add`` says when a client has earned a ban."""

    __slots__ = ("_seen", "after", "max_entries", "within")

    def __init__(self, after: int, within: float, max_entries: int) -> None:
        self.after = after
        self.within = within
        self.max_entries = max_entries
        self._seen: dict[str, deque[float]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def retune(self, after: int, within: float, max_entries: int) -> None:
        """New thresholds (a reload): each client's recent violations are kept, up to ``after``."""
        if after != self.after:
            self._seen = {key: deque(times, maxlen=after) for key, times in self._seen.items()}
        self.after, self.within, self.max_entries = after, within, max_entries

    def add(self, key: str, now: float) -> bool:
        """Count one violation of ``key`` at ``now``; True (and a fresh start) when it earns a ban."""
        times = self._seen.pop(key, None)
        if times is None:
            times = deque(maxlen=self.after)
            while len(self._seen) >= self.max_entries:
                del self._seen[next(iter(self._seen))]
        times.append(now)
        if len(times) == self.after and now - times[0] <= self.within:
            return True
        self._seen[key] = times  # re-inserted: the dict's order is least recently seen first
        return False


class Offenses:
    """How many bans each client earned lately (the per-process count, without Redis)."""

    __slots__ = ("_bans", "max_entries", "remember")

    def __init__(self, remember: float, max_entries: int) -> None:
        self.remember = remember
        self.max_entries = max_entries
        self._bans: dict[str, tuple[int, float]] = {}

    def next_level(self, key: str, now: float) -> int:
        """Record a new ban of ``key`` at ``now`` and return its level (1 for the first)."""
        count, last = self._bans.pop(key, (0, now))
        if now - last > self.remember:
            count = 0
        while len(self._bans) >= self.max_entries:
            del self._bans[next(iter(self._bans))]
        self._bans[key] = (count + 1, now)
        return count + 1

    def forget(self, key: str) -> None:
        self._bans.pop(key, None)

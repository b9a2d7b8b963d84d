"""The throttle maths (GCRA) and its in-memory state.

GCRA keeps one number per key, the theoretical arrival time (TAT). With emission interval
``T = period / count`` and tolerance ``tau = T * burst``: a request at ``now`` is allowed when
``max(tat, now) + T - tau <= now``, and then the TAT moves to ``max(tat, now) + T``. So exactly
``burst`` requests pass at once, then one every ``T``, with no window edges to game (a fixed
window lets 2x the limit through across an edge). A denied request writes nothing.

``Gcra.apply`` is pure; ``MemoryLimiter`` stores TATs in a bounded dict, evicting the least
recently charged key when full, so a flood of distinct keys cannot grow memory without bound.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import islice
from math import ceil
from typing import NamedTuple


class RateLimitResult(NamedTuple):
    """What one check said, in the units of the RateLimit headers (seconds, whole requests)."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float

    def headers(self) -> list[tuple[str, str]]:
        """RateLimit-* headers (IETF draft-ietf-httpapi-ratelimit-headers), plus Retry-After."""
        values = [
            ("RateLimit-Limit", str(self.limit)),
            ("RateLimit-Remaining", str(self.remaining)),
            ("RateLimit-Reset", str(ceil(self.reset_after))),
        ]
        if not self.allowed:
            values.append(("Retry-After", str(max(1, ceil(self.retry_after)))))
        return values


def ratelimit_lines(result: RateLimitResult) -> bytes:
    """``result.headers()`` without Retry-After, as header lines for the proxy to add."""
    return b"RateLimit-Limit: %d\r\nRateLimit-Remaining: %d\r\nRateLimit-Reset: %d\r\n" % (
        result.limit,
        result.remaining,
        ceil(result.reset_after),
    )


_REMEMBERED_LINES = 1024

# NamedTuple's generated __new__ is a Python function; the tuple constructor is not.
_result = tuple.__new__


class Gcra:
    """One rate: ``count`` per ``period`` seconds, ``burst`` at once."""

    __slots__ = (
        "burst",
        "count",
        "full_lines",
        "interval",
        "known_lines",
        "lines_start",
        "period",
        "tolerance",
    )

    def __init__(self, count: int, period: float, burst: int | None = None) -> None:
        self.count = count
        self.period = period
        self.burst = burst if burst is not None else count
        self.interval = period / count
        self.tolerance = self.interval * self.burst
        # What ``ratelimit_lines`` of any verdict of this rate starts with.
        self.lines_start = b"RateLimit-Limit: %d\r\nRateLimit-Remaining: " % self.burst
        # (remaining, reset) -> ``ratelimit_lines`` of an allowed verdict: a bucket is mostly in
        # one of a few states, and formatting the numbers cost more than the GCRA step itself.
        self.known_lines: dict[tuple[int, int], bytes] = {}
        # The lines of one request into a full bucket, the common case: always the same.
        self.full_lines = self.lines_start + b"%d\r\nRateLimit-Reset: %d\r\n" % (
            self.burst - 1,
            ceil(self.interval),
        )

    def new_lines(self, state: tuple[int, int]) -> bytes:
        """The lines of a (remaining, reset) state not in ``known_lines`` yet, remembered there.
        Bounded: past ``_REMEMBERED_LINES`` states the table starts again."""
        if len(self.known_lines) >= _REMEMBERED_LINES:
            self.known_lines.clear()
        lines = self.known_lines[state] = self.lines_start + b"%d\r\nRateLimit-Reset: %d\r\n" % state
        return lines

    def apply(self, tat: float | None, now: float, cost: int = 1) -> tuple[RateLimitResult, float | None]:
        """The verdict for ``cost`` requests at ``now``, and the TAT to store (None: deny, keep)."""
        if (tat is None or tat <= now) and cost <= self.burst:
            # A full bucket. Worked out without the clock, whose large values would round
            # "burst - cost remain" down by one for short intervals.
            spent = self.interval * cost
            return _result(RateLimitResult, (True, self.burst, self.burst - cost, spent, 0.0)), now + spent
        base = now if tat is None or tat < now else tat
        new_tat = base + self.interval * cost
        allow_at = new_tat - self.tolerance
        if now < allow_at:
            return _result(RateLimitResult, (False, self.burst, 0, base - now, allow_at - now)), None
        remaining = int((now + self.tolerance - new_tat) / self.interval + 1e-9)
        return _result(RateLimitResult, (True, self.burst, remaining, new_tat - now, 0.0)), new_tat

    def peek(self, tat: float | None, now: float) -> RateLimitResult:
        """The verdict a request at ``now`` would get, without charging it."""
        return self.apply(tat, now)[0]

    def result(self, allowed: bool, reset_after: float, retry_after: float) -> RateLimitResult:
        """A verdict reached elsewhere (the Redis script), in the same units as ``apply``'s."""
        if not allowed:
            return RateLimitResult(False, self.burst, 0, reset_after, retry_after)
        remaining = int((self.tolerance - reset_after) / self.interval + 1e-9)
        return RateLimitResult(True, self.burst, remaining, reset_after, 0.0)

    def signature(self) -> tuple[int, float, int]:
        return (self.count, self.period, self.burst)


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

    def admit(self, key: str, rate: Gcra, now: float) -> bytes | None:
        """``hit`` for one request, answering only what an allowed request needs: its
        ``ratelimit_lines``, or None when it is denied (nothing charged; ``peek`` says more).

        The same arithmetic as ``Gcra.apply``, without building a verdict: this runs for every
        request a throttle rule lets through.
        """
        tats = self._tats
        tat = tats.get(key)
        # A full bucket: what ``apply`` says of it, without the arithmetic.
        if tat is None:
            tats[key] = now + rate.interval
            if len(tats) > self.max_keys:
                self._evict(now)
            return rate.full_lines
        if tat <= now:
            tats[key] = now + rate.interval
            tats.move_to_end(key)
            return rate.full_lines
        interval = rate.interval
        tolerance = rate.tolerance
        new_tat = tat + interval
        if now < new_tat - tolerance:
            return None
        tats[key] = new_tat
        tats.move_to_end(key)
        state = (int((now + tolerance - new_tat) / interval + 1e-9), ceil(new_tat - now))
        lines = rate.known_lines.get(state)
        return lines if lines is not None else rate.new_lines(state)

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

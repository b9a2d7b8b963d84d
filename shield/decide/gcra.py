"""The throttle maths (GCRA). Pure: the time and the stored TAT are given by the caller.

GCRA keeps one number per key, the theoretical arrival time (TAT). With emission interval
``T = period / count`` and tolerance ``tau = T * burst``: a request at ``now`` is allowed when
``max(tat, now) + T - tau <= now``, and then the TAT moves to ``max(tat, now) + T``. So exactly
``burst`` requests pass at once, then one every ``T``, with no window edges to game (a fixed
window lets 2x the limit through across an edge). A denied request writes nothing.

``Gcra.apply`` is the step; where TATs are kept is ``shield.state`` (``memory_throttle`` in
one process, ``redis_throttle`` across replicas).
"""

from __future__ import annotations

from typing import Final, NamedTuple


class RateLimitResult(NamedTuple):
    """What one check said, in the units of the RateLimit headers (seconds, whole requests)."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float


# NamedTuple's generated __new__ is a Python function; the tuple constructor is not.
_result: Final = tuple.__new__


class Gcra:
    """One rate: ``count`` per ``period`` seconds, ``burst`` at once."""

    __slots__ = ("burst", "count", "fresh", "interval", "period", "tolerance")

    def __init__(self, count: int, period: float, burst: int | None = None) -> None:
        self.count = count
        self.period = period
        self.burst = burst if burst is not None else count
        self.interval = period / count
        self.tolerance = self.interval * self.burst
        # The verdict of one request into a full bucket, always the same: most requests of a
        # throttle that is not biting get it (a client's bucket refills between its requests).
        self.fresh = RateLimitResult(True, self.burst, self.burst - 1, self.interval, 0.0)

    def apply(self, tat: float | None, now: float, cost: int = 1) -> tuple[RateLimitResult, float | None]:
        """The verdict for ``cost`` requests at ``now``, and the TAT to store (None: deny, keep)."""
        if (tat is None or tat <= now) and cost <= self.burst:
            # A full bucket. Worked out without the clock, whose large values would round
            # "burst - cost remain" down by one for short intervals.
            if cost == 1:
                return self.fresh, now + self.interval
            spent = self.interval * cost
            return _result(RateLimitResult, (True, self.burst, self.burst - cost, spent, 0.0)), now + spent
        base = tat if tat is not None and tat > now else now  # (a cost past the burst, into a full bucket)
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

"""A circuit breaker: after enough consecutive failures, stop calling for a while, then probe.

Without one, every request waits out the timeout while Redis is down. Open, the breaker
refuses calls for ``open_for`` seconds; then it lets exactly one probe through (half-open),
and that probe's outcome closes it or opens it again. Pure: time comes from the caller.
"""

from __future__ import annotations

from typing import Literal

BreakerState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    __slots__ = ("_failures", "_opened_at", "_probing", "failures_to_open", "open_for", "times_opened")

    def __init__(self, failures_to_open: int, open_for: float) -> None:
        self.failures_to_open = failures_to_open
        self.open_for = open_for
        self.times_opened = 0
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    def state(self, now: float) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._probing or now - self._opened_at >= self.open_for:
            return "half-open"
        return "open"

    def allows(self, now: float) -> bool:
        """May a call go out at ``now``? In half-open state only the first caller probes."""
        if self._opened_at is None:
            return True
        if self._probing or now - self._opened_at < self.open_for:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failed(self, now: float) -> None:
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self.failures_to_open):
            if self._opened_at is None:
                self.times_opened += 1
            self._opened_at = now
            self._probing = False

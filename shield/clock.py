"""Time, injected: the real clock in production, a fake one that tests move by hand."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale; only differences matter."""
        ...


class MonotonicClock:
    __slots__ = ()

    # The builtin itself: no Python frame per call.
    now = staticmethod(time.monotonic)


class FakeClock:
    """A clock that stands still until ``advance`` moves it."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


class WallClock:
    """Unix time: for expiries shared between replicas (ctl switches, bans, challenge passes)."""

    __slots__ = ()

    now = staticmethod(time.time)

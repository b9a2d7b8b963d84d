"""Counting over the last few seconds, for triggers and the saturation detector.

Two fixed windows stand in for a sliding one (the estimate Cloudflare describes for its rate
limiting): the previous window's count is weighted by how much of it still overlaps the last
``window`` seconds. Constant memory and constant time per event, whatever the traffic.
"""

from __future__ import annotations

import math


class SlidingCount:
    """An estimate of the sum of values added over the last ``window`` seconds."""

    __slots__ = ("_current", "_previous", "_start", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._start = -math.inf
        self._current = 0.0
        self._previous = 0.0

    def _roll(self, now: float) -> None:
        start = math.floor(now / self.window) * self.window
        if start != self._start:
            adjacent = start - self._start == self.window
            self._previous = self._current if adjacent else 0.0
            self._current = 0.0
            self._start = start

    def add(self, now: float, value: float = 1.0) -> None:
        self._roll(now)
        self._current += value

    def total(self, now: float) -> float:
        self._roll(now)
        overlap = 1.0 - (now - self._start) / self.window
        return self._previous * overlap + self._current

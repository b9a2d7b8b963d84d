"""Who reaches a saturated upstream: priority classes, the admission queue, saturation.

Pure bookkeeping with no waiting in it: ``shield.enforce.overload_gate`` turns a ``QUEUE`` verdict into an
awaited future and calls back here when a slot frees or a wait ends. Time is passed in.

Classes, best first: authenticated users (``USER``), anonymous clients of rules marked
``priority: critical`` (``CRITICAL``, e.g. login), everyone else (``NORMAL``), and rules marked
``priority: low`` (``LOW``; an authenticated user there counts as ``NORMAL``). While the upstream
is slow or failing, ``NORMAL`` and ``LOW`` are shed at once; while it is merely full, everyone
queues and a better class pushes the worst waiter out of a full queue.
"""

from __future__ import annotations

import bisect
from enum import Enum
from typing import Generic, TypeVar

from shield.decide.sliding_count import SlidingCount

USER, CRITICAL, NORMAL, LOW = 0, 1, 2, 3
CLASS_NAMES = ("user", "critical", "normal", "low")

# Once saturated, the signals must fall below this share of their thresholds to clear: a
# detector that flips at one value would admit a flood the moment latency dips.
CLEAR_BELOW = 0.8


def priority_class(priority: str, authenticated: bool) -> int:
    """The admission class of a request to a rule of ``priority`` (critical, normal, low)."""
    if priority == "low":
        return NORMAL if authenticated else LOW
    if authenticated:
        return USER
    return CRITICAL if priority == "critical" else NORMAL


class Verdict(Enum):
    ADMIT = "admit"  # a slot is taken: forward now
    QUEUE = "queue"  # wait for a slot (``enqueue`` the ticket)
    SHED = "shed"  # answer 503 now


T = TypeVar("T")


class Admission(Generic[T]):
    """At most ``limit`` requests in flight; up to ``queue_size`` waiting, best class first.

    Tickets are whatever the caller waits on; this class only orders them. Invariant: a waiter
    exists only while every slot is taken, so a freed slot always goes to the best waiter.
    """

    __slots__ = ("_queue", "_seq", "in_flight", "limit", "queue_size")

    def __init__(self, limit: int, queue_size: int) -> None:
        self.limit = limit
        self.queue_size = queue_size
        self.in_flight = 0
        # Sorted by (class, arrival): the best waiter first, the worst last.
        self._queue: list[tuple[int, int, T]] = []
        self._seq = 0

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def decide(self, rank: int, *, degraded: bool = False) -> Verdict:
        """Admit (taking a slot), queue, or shed a request of class ``rank``."""
        if degraded and rank >= NORMAL:
            return Verdict.SHED
        if self.in_flight < self.limit:
            self.in_flight += 1
            return Verdict.ADMIT
        if len(self._queue) < self.queue_size:
            return Verdict.QUEUE
        if self._queue and self._queue[-1][0] > rank:
            return Verdict.QUEUE  # enqueue will push the worst waiter out
        return Verdict.SHED

    def enqueue(self, rank: int, ticket: T) -> T | None:
        """Queue ``ticket`` after a QUEUE verdict; return the waiter it pushed out, if any."""
        evicted = None
        if len(self._queue) >= self.queue_size:
            evicted = self._queue.pop()[2]
        self._seq += 1
        bisect.insort(self._queue, (rank, self._seq, ticket), key=lambda entry: entry[:2])
        return evicted

    def release(self) -> T | None:
        """A request finished: the waiter that inherits its slot, or None (the slot is free)."""
        if self._queue:
            return self._queue.pop(0)[2]
        self.in_flight -= 1
        return None

    def leave(self, ticket: T) -> bool:
        """Take a waiter out (its wait ended); False if it was not waiting."""
        for index, entry in enumerate(self._queue):
            if entry[2] is ticket:
                del self._queue[index]
                return True
        return False


class Saturation:
    """Is the upstream struggling? Mean latency and error share over the last ``window`` s.

    A threshold left None is not watched. Judged only with ``min_samples`` answers in the
    window, so three slow requests at night do not shed anyone.
    """

    __slots__ = ("_answers", "_errors", "_latency", "_seconds", "error_ratio", "latency", "min_samples", "on")

    def __init__(
        self, *, latency: float | None, error_ratio: float | None, window: float, min_samples: int
    ) -> None:
        self.latency = latency
        self.error_ratio = error_ratio
        self.min_samples = min_samples
        self._answers = SlidingCount(window)
        self._errors = SlidingCount(window)
        self._latency = SlidingCount(window)  # answers that carried a latency
        self._seconds = SlidingCount(window)
        self.on = False

    @property
    def watching(self) -> bool:
        return self.latency is not None or self.error_ratio is not None

    def observe(self, now: float, seconds: float | None, failed: bool) -> None:
        """One upstream answer: its time to headers (None if it gave none) and if it failed."""
        self._answers.add(now)
        if failed:
            self._errors.add(now)
        if seconds is not None:
            self._latency.add(now)
            self._seconds.add(now, seconds)

    def saturated(self, now: float) -> bool:
        factor = CLEAR_BELOW if self.on else 1.0
        over = False
        answers = self._answers.total(now)
        if self.error_ratio is not None and answers >= self.min_samples:
            over = self._errors.total(now) / answers > self.error_ratio * factor
        if not over and self.latency is not None:
            timed = self._latency.total(now)
            if timed >= self.min_samples:
                over = self._seconds.total(now) / timed > self.latency * factor
        self.on = over
        return over

"""A rule's auto-close trigger: a state machine driven by the time passed in.

Open until its condition has held for ``hold`` seconds (a short spike does not close anything);
then closed for at least ``reopen_after``; it reopens only once the condition has also stayed
false for ``hold`` seconds, so a rule does not flap open into the same flood. Requests the rule
matches keep counting while it is closed: an attack that goes on keeps the rule closed.
Transitions are queued in ``transitions`` for the I/O side to log and count.
"""

from __future__ import annotations

from shield.config.auto_close import AutoClose, Condition
from shield.decide.sliding_count import SlidingCount

OPEN, CLOSED = "open", "closed"


class Trigger:
    __slots__ = (
        "_answers",
        "_below_since",
        "_errors",
        "_hits",
        "_over_since",
        "condition",
        "config",
        "hold",
        "min_requests",
        "reopen_after",
        "state",
        "transitions",
        "until",
    )

    def __init__(self, config: AutoClose) -> None:
        self.config = config
        self.condition: Condition = config.condition
        self.hold = config.for_
        self.reopen_after = config.reopen_after
        self.min_requests = config.min_requests
        window = self.condition.period if self.condition.kind == "rate" else config.window
        self._hits = SlidingCount(window)
        self._answers = SlidingCount(window)
        self._errors = SlidingCount(window)
        self.state = OPEN
        self.until = 0.0  # while closed: the earliest time it may reopen
        self._over_since: float | None = None
        self._below_since: float | None = None
        self.transitions: list[tuple[str, float]] = []

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def hit(self, now: float) -> bool:
        """A request matched the rule: count it; True if the rule is closed for it."""
        if self.condition.kind == "rate":
            self._hits.add(now)
        return self.update(now)

    def answered(self, now: float, failed: bool) -> None:
        """The upstream answered a request of this rule (``failed``: 5xx, or no answer)."""
        if self.condition.kind == "errors":
            self._answers.add(now)
            if failed:
                self._errors.add(now)

    def value(self, now: float) -> float:
        """The measured side of the condition: requests per period, or the error share."""
        if self.condition.kind == "rate":
            return self._hits.total(now)
        answers = self._answers.total(now)
        return self._errors.total(now) / answers if answers >= self.min_requests else 0.0

    def update(self, now: float) -> bool:
        """Move the state machine to ``now``; True while closed."""
        over = self.value(now) > self.condition.threshold
        if self.state == OPEN:
            if not over:
                self._over_since = None
                return False
            if self._over_since is None:
                self._over_since = now
            if now - self._over_since >= self.hold:
                self.state = CLOSED
                self.until = now + self.reopen_after
                self._below_since = None
                self.transitions.append((CLOSED, now))
                return True
            return False
        if over:
            self._below_since = None
        elif self._below_since is None:
            self._below_since = now
        if now >= self.until and self._below_since is not None and now - self._below_since >= self.hold:
            self.state = OPEN
            self._over_since = None
            self.transitions.append((OPEN, now))
            return False
        return True

    def retry_after(self, now: float) -> float:
        """How long a client should wait: to the end of the cool-down, or ``hold`` past it."""
        return max(self.until - now, self.hold, 1.0)

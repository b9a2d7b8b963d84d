"""Rules closed or queued at runtime by ``shield ctl``: temporary overrides of the rule file.

A switch is a record in a ``RecordStore`` (per process with memory state, shared by every
replica through Redis), always with an end: ``ctl.max_duration`` caps it, so nothing stays
closed or queued by accident. ``ctl close`` records the rule's name; ``ctl queue`` records
``queue|`` and the name, with ``kind: queue`` (no rule name holds a ``|``, so the two never
meet and a rule may be both: the closure wins while it lasts). The rule file stays the source
of truth: a switch can only apply to a rule that exists, ``open`` only removes switches, and
every active one is listed by ``closures()`` and ``queues()`` (``ctl status``, metrics, and the
status page).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from shield.clock import Clock
from shield.config.attack import Ctl
from shield.config.rules import DEFAULT_CLOSE_MESSAGE, parse_limit
from shield.decide.decision import CtlQueue
from shield.state.records import Record, RecordStore

QUEUE_PREFIX = "queue|"


@dataclass(frozen=True, slots=True)
class Closure:
    """An active runtime closure, as the status page and ``ctl status`` list it."""

    rule: str
    message: str
    source: str  # "ctl"
    until: float  # Unix seconds


class Opened(NamedTuple):
    """What ``open`` lifted: the rule's ctl closure, its ctl waiting room."""

    closed: bool
    queued: bool


def _is_queue(record: Record) -> bool:
    return record.data.get("kind") == "queue"


def _closure(record: Record) -> Closure:
    return Closure(record.name, str(record.data.get("message") or DEFAULT_CLOSE_MESSAGE), "ctl", record.until)


def _queue(record: Record) -> CtlQueue:
    data = record.data
    return CtlQueue(
        record.name.removeprefix(QUEUE_PREFIX),
        str(data["admit"]),
        int(data["count"]),
        float(data["period"]),
        str(data.get("message") or ""),
        record.until,
    )


class Switches:
    def __init__(self, store: RecordStore, *, wall: Clock, ctl: Ctl | None) -> None:
        self.store = store
        self.wall = wall
        self.default_duration = ctl.default_duration if ctl is not None else 3600.0
        self.max_duration = ctl.max_duration if ctl is not None else 86400.0
        # Rule -> visitors in its line, as this process last saw it: the waiting room's
        # (``QueueGate.waiting``), which the gatekeeper hands over where both meet.
        self.waiting: Callable[[], Mapping[str, float]] = dict
        # Rule -> the last ticket its line let in (``QueueGate.admitted_up_to``), likewise.
        self.admitted: Callable[[], Mapping[str, int]] = dict

    @property
    def local(self) -> dict[str, Record]:
        """The local copy; empty (falsy) almost always, which is all the hot path checks first."""
        return self.store.local

    def closure(self, rule: str) -> Closure | None:
        record = self.store.get(rule)
        return _closure(record) if record is not None and not _is_queue(record) else None

    def closures(self) -> list[Closure]:
        """Every active ctl closure, by rule name."""
        return [_closure(record) for record in self.store.live() if not _is_queue(record)]

    def queued(self, rule: str) -> CtlQueue | None:
        """The waiting room ``ctl queue`` put ``rule`` in, if one is in force."""
        record = self.store.get(QUEUE_PREFIX + rule)
        return _queue(record) if record is not None and _is_queue(record) else None

    def queues(self) -> list[CtlQueue]:
        """Every active ctl waiting room, by rule name."""
        return [_queue(record) for record in self.store.live() if _is_queue(record)]

    def _until(self, duration: float | None, what: str) -> float:
        seconds = self.default_duration if duration is None else duration
        if not 0 < seconds <= self.max_duration:
            raise ValueError(f"a ctl {what} lasts more than 0s and at most {self.max_duration:g}s")
        return self.wall.now() + seconds

    async def close(self, rule: str, duration: float | None, message: str | None) -> Closure:
        """Close ``rule`` for ``duration`` seconds (the default when None); ValueError past the cap."""
        until = self._until(duration, "closure")
        record = await self.store.put(rule, {"message": message or ""}, until)
        return _closure(record)

    async def queue(self, rule: str, admit: str, duration: float | None, message: str | None) -> CtlQueue:
        """Put ``rule`` in a waiting room letting ``admit`` in (``20/minute``) for ``duration``
        seconds (the default when None); ValueError for a bad rate or past the cap."""
        count, period = parse_limit(admit)
        until = self._until(duration, "waiting room")
        data = {
            "kind": "queue",
            "admit": admit.strip(),
            "count": count,
            "period": period,
            "message": message or "",
        }
        return _queue(await self.store.put(QUEUE_PREFIX + rule, data, until))

    async def open(self, rule: str) -> Opened:
        """Remove the ctl closure and the ctl waiting room of ``rule``, saying which there were."""
        return Opened(await self.store.delete(rule), await self.store.delete(QUEUE_PREFIX + rule))

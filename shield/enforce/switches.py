"""Rules closed at runtime by ``shield ctl close``: temporary overrides of the rule file.

A switch is a record in a ``RecordStore`` (per process with memory state, shared by every
replica through Redis), always with an end: ``ctl.max_duration`` caps it, so nothing stays
closed by accident. The rule file stays the source of truth: a switch can only close a rule
that exists, ``open`` only removes switches, and every active one is listed by ``closures()``
(``ctl status``, metrics, and the status page).
"""

from __future__ import annotations

from dataclasses import dataclass

from shield.clock import Clock
from shield.config.attack import Ctl
from shield.config.rules import DEFAULT_CLOSE_MESSAGE
from shield.state.records import Record, RecordStore


@dataclass(frozen=True, slots=True)
class Closure:
    """An active runtime closure, as the status page and ``ctl status`` list it."""

    rule: str
    message: str
    source: str  # "ctl"
    until: float  # Unix seconds


def _closure(record: Record) -> Closure:
    return Closure(record.name, str(record.data.get("message") or DEFAULT_CLOSE_MESSAGE), "ctl", record.until)


class Switches:
    def __init__(self, store: RecordStore, *, wall: Clock, ctl: Ctl | None) -> None:
        self.store = store
        self.wall = wall
        self.default_duration = ctl.default_duration if ctl is not None else 3600.0
        self.max_duration = ctl.max_duration if ctl is not None else 86400.0

    @property
    def local(self) -> dict[str, Record]:
        """The local copy; empty (falsy) almost always, which is all the hot path checks first."""
        return self.store.local

    def closure(self, rule: str) -> Closure | None:
        record = self.store.get(rule)
        return _closure(record) if record is not None else None

    def closures(self) -> list[Closure]:
        """Every active ctl closure, by rule name."""
        return [_closure(record) for record in self.store.live()]

    async def close(self, rule: str, duration: float | None, message: str | None) -> Closure:
        """Close ``rule`` for ``duration`` seconds (the default when None); ValueError past the cap."""
        seconds = self.default_duration if duration is None else duration
        if not 0 < seconds <= self.max_duration:
            raise ValueError(f"a ctl closure lasts more than 0s and at most {self.max_duration:g}s")
        record = await self.store.put(rule, {"message": message or ""}, self.wall.now() + seconds)
        return _closure(record)

    async def open(self, rule: str) -> bool:
        """Remove the ctl closure of ``rule``; False if there was none."""
        return await self.store.delete(rule)

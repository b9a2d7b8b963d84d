"""A rule's ``auto_close:``: the trigger expression (``when``), how long it must hold, and the
cool-down before reopening.

``when`` is parsed here, so ``shield check`` points at the line and column of a bad one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from shield.config.base import Section
from shield.config.units import Duration

_RATE = re.compile(r"^\s*rate\s*>\s*(.+?)\s*$")
_ERRORS = re.compile(r"^\s*errors\s*>\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True, slots=True)
class Condition:
    """``rate > count/period``: requests the rule matched; ``errors > ratio``: upstream failures."""

    kind: Literal["rate", "errors"]
    threshold: float  # requests per ``period`` for rate, a share in (0, 1) for errors
    period: float = 0.0

    def describe(self) -> str:
        if self.kind == "rate":
            return f"rate > {self.threshold:g}/{self.period:g}s"
        return f"errors > {self.threshold * 100:g}%"


def parse_when(text: str) -> Condition:
    """``"rate > 50/second"`` or ``"errors > 20%"``, else ValueError saying what is accepted."""
    from shield.config.rules import UNITS_TEXT, parse_limit  # the same N/period syntax as throttle limits

    if (match := _RATE.match(text)) is not None:
        try:
            count, period = parse_limit(match.group(1))
        except ValueError as exc:
            raise ValueError(
                f"invalid trigger {text!r}: the rate is N/PERIOD (PERIOD: {UNITS_TEXT})"
            ) from exc
        return Condition("rate", float(count), period)
    if (match := _ERRORS.match(text)) is not None:
        percent = float(match.group(1))
        if not 0 < percent < 100:
            raise ValueError(f"invalid trigger {text!r}: the error share must be between 0% and 100%")
        return Condition("errors", percent / 100)
    raise ValueError(f"invalid trigger {text!r}: write 'rate > N/second' (or /minute, /10s) or 'errors > N%'")


class AutoClose(Section):
    """Close the rule while ``when`` holds for ``for``; reopen ``reopen_after`` later once it no
    longer holds (and has not held for ``for``: the hysteresis that stops flapping)."""

    when: str = Field(description="'rate > 50/second' (requests the rule matched) or 'errors > 20%'.")
    for_: Duration = Field(30.0, alias="for", description="How long `when` must hold before closing.")
    reopen_after: Duration = Field(600.0, gt=0, description="Cool-down before the rule may reopen.")
    message: str | None = Field(None, description="The text shown while auto-closed.")
    window: Duration = Field(10.0, gt=0, description="errors: how far back the error share is measured.")
    min_requests: int = Field(20, ge=1, description="errors: answers needed in the window to judge.")

    @field_validator("when")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_when(value)
        return value

    @property
    def condition(self) -> Condition:
        return parse_when(self.when)

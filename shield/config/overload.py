"""The ``overload:`` section (priority load shedding) and the ``status_page:`` section.

Both are absent or off by default: without ``overload:`` requests go to the upstream exactly as
before, with no admission step at all.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from shield.config.base import Section
from shield.config.units import Duration


class Overload(Section):
    """Limits on what Shield sends the upstream at once, and who goes first when it is full."""

    max_concurrency: int = Field(
        ge=1, description="Requests in flight to the upstream at most; more wait in the queue."
    )
    queue_size: int = Field(
        100, ge=0, description="Requests waiting for a slot at most; a better class evicts a worse one."
    )
    queue_timeout: Duration = Field(
        1.0, gt=0, description="Longest wait for a slot before the request is shed."
    )
    latency: Duration | None = Field(
        None,
        gt=0,
        description="Saturated while the upstream's mean time to headers over `window` is above this.",
    )
    error_ratio: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Saturated while the upstream's share of 5xx/failed answers over `window` is above this.",
    )
    window: Duration = Field(10.0, gt=0, description="How far back latency and errors are measured.")
    min_samples: int = Field(
        20, ge=1, description="Answers needed in the window before latency or errors count."
    )
    retry_after: Duration = Field(5.0, ge=0, description="Retry-After of a shed request.")


class StatusPage(Section):
    """A public incident page listing closed features, answered before any rule."""

    enabled: bool = Field(False, description="Serve the page (off by default: it takes a public path).")
    path: str = Field("/status", description="Where, on the public listener.")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "*" in value or "?" in value:
            raise ValueError(f"status_page.path {value!r} must be a plain path starting with '/'")
        return value.rstrip("/") or "/"

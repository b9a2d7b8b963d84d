"""The ``top:`` section: the heaviest clients, networks, agents and paths that ``shield ctl top`` lists.

On by default: counting costs well under a microsecond per request, and memory is fixed by
``capacity`` and the number of slots, whatever the traffic (``shield.ops.top``). The module is
not named ``top.py``: ``shield/ops/top.py`` holds the counting, and no two modules share a name.
"""

from __future__ import annotations

from math import ceil

from pydantic import Field, model_validator

from shield.config.base import Section
from shield.config.units import Duration

# The worst case holds 12 tables x 2 x capacity counters per slot kept (the current one and
# window_max / slot more), each with a key of up to 200 characters: about 2 KiB per unit of
# capacity x slots. The defaults (64 x 61) take 8 MB at worst; this cap, 32 MB.
MAX_CAPACITY_SLOTS = 16_384


class Top(Section):
    """Top offenders over a sliding window, per dimension, for all requests or refused ones."""

    enabled: bool = Field(True, description="Count requests for `shield ctl top`.")
    capacity: int = Field(
        64,
        ge=8,
        le=1024,
        description="Keys tracked per table; counts are low by at most 1/(capacity+1) of the requests.",
    )
    slot: Duration = Field(
        15.0, ge=1, description="The window moves by slots of this length; a query rounds up to them."
    )
    window_max: Duration = Field(900.0, gt=0, description="The longest window `ctl top --window` takes.")
    publish_interval: Duration = Field(
        5.0, gt=0, description="With Redis state: how often each replica shares its tables."
    )

    @model_validator(mode="after")
    def _memory_bounded(self) -> Top:
        if self.window_max < self.slot:
            raise ValueError("top.window_max must be at least one slot")
        if self.capacity * (self.slots + 1) > MAX_CAPACITY_SLOTS:
            raise ValueError(
                f"top.capacity x (window_max / slot + 1) must be at most {MAX_CAPACITY_SLOTS} "
                f"(memory): {self.capacity} x {self.slots + 1} is more"
            )
        return self

    @property
    def slots(self) -> int:
        """Complete slots kept besides the current one."""
        return ceil(self.window_max / self.slot - 1e-9)

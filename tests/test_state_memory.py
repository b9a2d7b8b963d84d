"""Memory state under an IP-rotation flood: bounded while it lasts, given back once it is over."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shield.decide.gcra import Gcra
from shield.state.memory_throttle import MemoryLimiter

FLOOD = """
import gc, json, os
from shield.decide.gcra import Gcra
from shield.state.memory_throttle import MemoryLimiter
from shield.app.heap import release_freed_memory

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

bound = 200_000
limiter = MemoryLimiter(max_keys=bound)
per_minute = Gcra(60, 60.0)
gc.collect()
baseline = resident()
largest = 0
for i in range(1_000_000):
    # One request per client, 10 us apart: a flood rotating through a million addresses.
    limiter.hit(f"api|60/60.0/60|10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", per_minute, i * 1e-5)
    if i % 1000 == 0:
        largest = max(largest, len(limiter))
held = len(limiter)
during = resident() - baseline
# A minute later every bucket is full again: the sweep forgets them and compacts the table.
limiter.sweep(10.0 + 60.0, limiter.keys())
gc.collect()
if limiter.compact():
    release_freed_memory()  # what Shield's sweeper does
after = resident() - baseline
print(json.dumps({"bound": bound, "largest": max(largest, held), "held": held,
                  "during": during, "after": after, "left": len(limiter)}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from Linux /proc")
def test_a_million_rotating_clients_stay_under_the_bound_and_memory_returns_after_they_expire() -> None:
    # A fresh interpreter, so other tests' allocations do not blur the measurement.
    run = subprocess.run([sys.executable, "-c", FLOOD], capture_output=True, text=True, check=True)
    figures = json.loads(run.stdout)
    bytes_per_key = figures["during"] / figures["held"]
    left = figures["after"] / 1e6
    print(
        f"\n{figures['held']} keys held, {bytes_per_key:.0f} bytes per key; {left:.1f} MB left after expiry"
    )
    assert figures["largest"] <= figures["bound"]
    assert bytes_per_key < 400
    assert figures["left"] == 0
    assert figures["after"] < figures["during"] / 10


def test_sweep_keeps_buckets_that_are_still_draining() -> None:
    limiter = MemoryLimiter()
    hourly = Gcra(1, 3600.0)
    per_second = Gcra(1, 1.0)
    limiter.hit("slow", hourly, 0.0)
    limiter.hit("fast", per_second, 0.0)
    limiter.sweep(5.0, limiter.keys())
    assert len(limiter) == 1
    assert not limiter.peek("slow", hourly, 5.0).allowed

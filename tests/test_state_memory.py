"""Memory state under an IP-rotation flood: bounded while it lasts, given back once it is over."""

from __future__ import annotations

import gc
import os

import pytest

from shield.limiter import Gcra, MemoryLimiter


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_a_million_rotating_clients_stay_under_the_bound_and_memory_returns_after_they_expire() -> None:
    bound = 200_000
    limiter = MemoryLimiter(max_keys=bound)
    per_minute = Gcra(60, 60.0)
    gc.collect()
    baseline = resident_bytes()
    largest = 0
    for i in range(1_000_000):
        # One request per client, 10 µs apart: a flood rotating through a million addresses.
        limiter.hit(f"api|60/60.0/60|10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", per_minute, i * 1e-5)
        if i % 1000 == 0:
            largest = max(largest, len(limiter))
    largest = max(largest, len(limiter))
    during = resident_bytes() - baseline
    bytes_per_key = during / len(limiter)
    print(f"\n{len(limiter)} keys held, {bytes_per_key:.0f} bytes per key")
    assert largest <= bound
    assert bytes_per_key < 400

    # A minute later every bucket is full again; the sweep forgets them all and gives the
    # dict's table back.
    limiter.sweep(10.0 + 60.0, limiter.keys())
    limiter.compact()
    gc.collect()
    after = resident_bytes() - baseline
    print(f"after expiry: {len(limiter)} keys, {after / 1e6:.1f} MB above the baseline")
    assert len(limiter) == 0
    assert after < during / 4


def test_sweep_keeps_buckets_that_are_still_draining() -> None:
    limiter = MemoryLimiter()
    hourly = Gcra(1, 3600.0)
    per_second = Gcra(1, 1.0)
    limiter.hit("slow", hourly, 0.0)
    limiter.hit("fast", per_second, 0.0)
    limiter.sweep(5.0, limiter.keys())
    assert len(limiter) == 1
    assert not limiter.peek("slow", hourly, 5.0).allowed

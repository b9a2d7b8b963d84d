"""What the top tables (``shield ctl top``) cost: CPU per request and memory, in-process.

CPU, best of ``--repeat`` runs, net of the bare loop:

- ``record``: ``TopTables.record`` for one request, with few keys (every table hit), a skewed
  stream (Zipf over 50k addresses), and a million rotating addresses (a prune every 65 new ones);
  refused requests go to their own tables at the same cost;
- ``observer``: what the observer adds per decided request (``Observer._count_top``: the
  User-Agent lookup, the geo callback when there is one, ``record``).

Memory, with tracemalloc (what the tables hold, keys included): after 10k and after 1M distinct
rotating addresses, in one slot and spread over 15 minutes (every slot of the ring filled), and
the worst case: every table of every slot full of distinct 200-character keys.

    SHIELD_PURE_PYTHON=1 .venv/bin/python tests/bench/top_cost.py [--repeat 5]

A benchmark, not a test: it asserts nothing about time. Shield serves about 11k requests a
second per core (about 90 us of CPU each); the budget for this is 3 % of that.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
import tracemalloc
from collections.abc import Callable

from multidict import CIMultiDict, CIMultiDictProxy

from shield.clock import FakeClock
from shield.http.answer import ShieldAnswer
from shield.http.connection import EMPTY_BODY, Http1Connection, Http1Server, Request
from shield.ops.metrics import ProxyStats
from shield.ops.observer import Observer
from shield.ops.top import MAX_KEY_LENGTH, TopTables

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0"


def address(n: int) -> str:
    return f"{(n >> 24) + 10}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def best_ns(run: Callable[[], None], count: int, repeat: int) -> float:
    """Nanoseconds per item of ``run`` (which does ``count`` items), the best of ``repeat``."""
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter_ns()
        run()
        times.append(time.perf_counter_ns() - started)
    return min(times) / count


def record_costs(repeat: int) -> list[tuple[str, float]]:
    top = TopTables(clock=time.monotonic)
    top.networks = lambda ip: (64500, "DE")
    record = top.record
    n = 1_000_000
    same = ["203.0.113.7"] * n
    rng = random.Random(7)
    names = [address(i) for i in range(50_000)]
    skewed = rng.choices(names, [1 / (r + 1) ** 1.1 for r in range(50_000)], k=n)
    rotating = [address(i) for i in range(n)]

    def bare(keys: list[str]) -> Callable[[], None]:
        def run() -> None:
            for _ in keys:
                pass

        return run

    def recording(keys: list[str], refused: bool) -> Callable[[], None]:
        def run() -> None:
            for ip in keys:
                record(ip, ip, UA, "/api/items", "api", refused)

        return run

    loop = best_ns(bare(same), n, repeat)
    rows = []
    for name, keys in (("one client", same), ("zipf, 50k clients", skewed), ("1M rotating", rotating)):
        for refused in (False, True):
            cost = best_ns(recording(keys, refused), n, repeat) - loop
            rows.append((f"record: {name}{', refused' if refused else ''}", cost))
    return rows


async def observer_costs(repeat: int) -> list[tuple[str, float]]:
    """(Async only because a Request needs a connection, and a connection a running loop.)"""

    async def never(request: Request) -> ShieldAnswer:
        raise AssertionError

    server = Http1Server(never, header_timeout=10, keepalive_timeout=10, max_line=8190, max_headers=100)
    headers = CIMultiDictProxy(CIMultiDict({"Host": "example.com", "User-Agent": UA, "Accept": "*/*"}))
    request = Request(Http1Connection(server), "GET", b"/", "1.1", [], headers, True, None, EMPTY_BODY, False)
    request.client_ip = request.client_key = "203.0.113.7"
    request.path = "/api/items"
    labels = ("api", "throttle", "forwarded", "anonymous")
    n = 500_000

    def counting(observer: Observer, top: TopTables) -> Callable[[], None]:
        count = observer._count_top

        def run() -> None:
            for _ in range(n):
                count(top, request, labels)

        return run

    def bare() -> None:
        for _ in range(n):
            pass

    rows = []
    for name, networks in (("no geo", None), ("geo callback", lambda ip: (64500, "DE"))):
        top = TopTables(clock=time.monotonic)
        top.networks = networks
        observer = Observer(never, stats=ProxyStats(), access_log=None, top=top)
        rows.append(
            (f"observer: {name}", best_ns(counting(observer, top), n, repeat) - best_ns(bare, n, repeat))
        )
    return rows


def held(fill: Callable[[TopTables, FakeClock], None]) -> tuple[int, int]:
    """Bytes tracemalloc sees held after ``fill``, and the counters kept."""
    clock = FakeClock()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    top = TopTables(clock=clock.now)
    fill(top, clock)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    size = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return size, sum(top.sizes())


def rotating(n: int, spread: float) -> Callable[[TopTables, FakeClock], None]:
    def fill(top: TopTables, clock: FakeClock) -> None:
        step = spread / n
        top.networks = lambda ip: (64500, "DE")
        for i in range(n):
            top.record(address(i), address(i), UA, "/api/items", "api", i % 4 == 0)
            clock.advance(step)

    return fill


def worst(top: TopTables, clock: FakeClock) -> None:
    """Every table of every slot as full as it gets (2 x capacity counters, just short of a
    prune) with distinct keys of the longest length kept."""
    pad = "x" * MAX_KEY_LENGTH
    per_slot = 2 * 2 * top.capacity  # passed and refused tables: 2 x capacity keys each
    top.networks = lambda key: (int(key[: key.index("x")]), key)  # a distinct ASN and country each
    for i in range((round(top.window_max / top.slot_seconds) + 1) * per_slot):
        key = f"{i}{pad}"[:MAX_KEY_LENGTH]
        top.record(key, key, key, key, key, i % 2 == 0)
        if i % per_slot == per_slot - 1:
            top.flush()
            clock.advance(top.slot_seconds)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (the best counts)")
    args = parser.parse_args()
    import shield

    print(f"shield {shield.build()}; ns per request, net of the bare loop")
    for name, ns in record_costs(args.repeat) + asyncio.run(observer_costs(args.repeat)):
        print(f"  {name:<36} {ns:7.0f} ns")
    print("memory held by the tables (tracemalloc), counters kept")
    for name, fill in (
        ("10k rotating, one slot", rotating(10_000, 0)),
        ("1M rotating, one slot", rotating(1_000_000, 0)),
        ("10k rotating over 15 min", rotating(10_000, 900)),
        ("1M rotating over 15 min", rotating(1_000_000, 900)),
        ("worst: every table full, long keys", worst),
    ):
        size, counters = held(fill)
        print(f"  {name:<36} {size / 1024:9.0f} KiB  {counters:6d} counters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""What a timer per wait would cost the upstream pool, beside the deadline field it keeps now.

The pool gives each wait a deadline (a float on the connection) and one ticker per pool checks
them every 0.1 s (``shield/upstream/pool.py``). A ``loop.call_at`` per wait, cancelled when the
answer comes, is the textbook alternative. This times both under uvloop, the loop Shield runs
on, in-process:

    .venv/bin/python tests/bench/timer_cost.py [--number 200000]

For instructions rather than time (repeatable on a noisy VM), run it under callgrind with
``--only timer`` and ``--only field`` and compare the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import uvloop


async def measure(number: int, only: str | None) -> None:
    loop = asyncio.get_running_loop()

    class Waiting:
        deadline = 0.0

    waiting = Waiting()

    def nothing() -> None:
        return None

    def field() -> None:
        for _ in range(number):
            waiting.deadline = loop.time() + 30.0
            waiting.deadline = 0.0

    def timer() -> None:
        for _ in range(number):
            loop.call_at(loop.time() + 30.0, nothing).cancel()

    what = {"field": "deadline field set and cleared", "timer": "call_at, then cancel"}
    for name, run in (("field", field), ("timer", timer)):
        if only is not None and name != only:
            continue
        started = time.perf_counter()
        run()
        each = (time.perf_counter() - started) / number * 1e9
        print(f"{name:<6} {each:7.0f} ns per wait ({what[name]})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--only", choices=["field", "timer"])
    args = parser.parse_args()
    uvloop.run(measure(args.number, args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())

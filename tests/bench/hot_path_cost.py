"""Per-request cost of Shield's pure hot-path pieces, in-process and without sockets.

Times, timeit-style, each piece the gatekeeper and the proxy run per request:

- ``decide``: the 20-rule decision of ``decision_cost.py`` for ``GET /2b`` (ends in a throttle);
- ``resolve``: ``ClientResolver.resolve`` with the default config (no trusted proxies);
- ``head``: ``RequestHeadBuilder.build`` as ``proxy.head_builder`` makes it, for a wrk/curl
  header set (Host, User-Agent, Accept);
- ``response``: ``response_bytes`` for a 2-byte nginx answer (Server, Date, Content-Type,
  Content-Length, Connection: keep-alive) plus the three RateLimit headers;
- ``request_id``: ``RequestIds.of(None)``, a generated id.

Timing on a shared machine is noisy; for an A/B of a change, count instructions instead, one
piece at a time, and subtract a run with ``--loops 0`` (the start-up cost):

    .venv/bin/python tests/bench/hot_path_cost.py [--number 200000] [--only head]
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        .venv/bin/python tests/bench/hot_path_cost.py --only head --loops 10000
    callgrind_annotate /tmp/cg.out | head
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

from decision_cost import CASES, decider
from multidict import CIMultiDict, CIMultiDictProxy

from shield.config import load_config
from shield.decide.client_address import ClientResolver
from shield.http.request_id import RequestIds
from shield.http.response import DateHeader, response_bytes
from shield.upstream.forward import head_builder

WRK_HEADERS = ((b"Host", b"127.0.0.1:8080"), (b"User-Agent", b"curl/8.5.0"), (b"Accept", b"*/*"))
NGINX_2B = [
    (b"Server", b"nginx/1.24.0"),
    (b"Date", b"Tue, 04 Jun 2024 08:00:00 GMT"),
    (b"Content-Type", b"text/plain"),
    (b"Content-Length", b"2"),
    (b"Connection", b"keep-alive"),
]
RATELIMIT = b"RateLimit-Limit: 1000000\r\nRateLimit-Remaining: 999999\r\nRateLimit-Reset: 1\r\n"


def pieces() -> dict[str, Callable[[], object]]:
    path = Path(tempfile.mkdtemp()) / "shield.yaml"
    path.write_text("upstream: http://127.0.0.1:8080\n", encoding="utf-8")
    config = load_config(path)
    decide, _, _ = decider()
    method, raw_path, ip = CASES["GET /2b (20 rules, ends in a throttle)"]
    clients = ClientResolver()
    headers = CIMultiDictProxy(CIMultiDict((n.decode(), v.decode()) for n, v in WRK_HEADERS))
    builder = head_builder(config, tls=False)
    date = DateHeader()
    ids = RequestIds()
    id_line = ids.line_of(None)
    return {
        "decide": lambda: decide(method, raw_path, ip),
        "resolve": lambda: clients.resolve("127.0.0.1", headers),
        "head": lambda: builder.build(b"GET", b"/2b", WRK_HEADERS, "127.0.0.1", b"", id_line, b""),
        "response": lambda: response_bytes(
            200, NGINX_2B, b"ok", head_request=False, keep_alive=True, date=date, extra=RATELIMIT
        ),
        "request_id": lambda: ids.of(None),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--number", type=int, default=200_000, help="calls per measurement")
    parser.add_argument("--only", help="one piece: decide, resolve, head, response or request_id")
    parser.add_argument("--loops", type=int, help="call the piece(s) this many times, untimed (callgrind)")
    args = parser.parse_args()
    chosen = pieces()
    if args.only:
        chosen = {args.only: chosen[args.only]}
    if args.loops is not None:
        for call in chosen.values():
            for _ in range(args.loops):
                call()
        return 0
    print(f"{args.number} calls per measurement, best and median of 5")
    for label, call in chosen.items():
        times = timeit.repeat(call, number=args.number, repeat=5)
        best = min(times) / args.number * 1e9
        median = statistics.median(times) / args.number * 1e9
        print(f"  {label:<12} {best:7.0f} ns best   {median:7.0f} ns median")
    return 0


if __name__ == "__main__":
    sys.exit(main())

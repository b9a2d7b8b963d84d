#!/usr/bin/env python3
"""CPU instructions Shield executes per proxied request, counted by valgrind: repeatable A/B.

    .venv/bin/python tests/bench/instructions.py NAME=DIR[:EXTRA_YAML] ... [--requests 3000]

Wall-clock benchmarks on a shared 2-core VM move by several percent between runs; instruction
counts do not (the same build, config and requests give the same count to within about 1 % from
one process to the next, whatever else the machine does: repeat a variant to see the spread).
Each variant is ``python -m shield run`` started in DIR (so DIR's
``shield/`` package is the one imported: a checkout of another commit measures that commit) with
the extra config appended, under ``valgrind --tool=callgrind`` with instrumentation off; after a
warm-up the script switches it on, sends exactly ``--requests`` ``GET /2b`` (``--path /16k``: a
16 KiB answer) over 8 keep-alive connections, switches it off and divides. An nginx upstream
answers ``ok`` (or the 16 KiB). ``--rules`` adds the 20-rule policy of ``run_bench.py``.

What it counts: instructions in user space (Python, uvloop, llhttp, libc), not the kernel's
socket work, so it measures what code changes can change. Turning instructions into requests/s
takes the wall-clock benchmark (run_bench.py). Example::

    .venv/bin/python tests/bench/instructions.py base=/tmp/base new=. 'new+rules=.:' --rules
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from local_http import free_port, nginx_upstream, variant_config, wait_http
from run_bench import bench_rules

PATHS = ("/2b", "/16k")


def request(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n" % path.encode()


CONNECTIONS = 8


async def send_requests(port: int, count: int, path: str = "/2b") -> None:
    """``count`` requests, each waited for before the next on its connection."""
    message = request(path)

    async def one_connection(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n):
            writer.write(message)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected answer: {head[:80]!r}")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            assert length is not None
            await reader.readexactly(int(length.group(1)))
        writer.close()

    share, rest = divmod(count, CONNECTIONS)
    await asyncio.gather(*(one_connection(share + (i < rest)) for i in range(CONNECTIONS)))


def measure(
    python: str,
    directory: Path,
    config: Path,
    port: int,
    requests: int,
    log: Path,
    simulate: bool = False,
    path: str = "/2b",
) -> int:
    """Instructions per request for one variant (``simulate``: with cache and branch simulation,
    whose counts ``callgrind_annotate`` shows from the kept profile)."""
    out = log.with_suffix(".callgrind")
    process = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            *(["--cache-sim=yes", "--branch-sim=yes"] if simulate else []),
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            python,
            "-m",
            "shield",
            "run",
            "-c",
            str(config),
        ],
        cwd=directory,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/2b", timeout=180, interval=0.5)
        asyncio.run(send_requests(port, 400, path))  # warm-up: caches, pool, first-call paths
        subprocess.run(["callgrind_control", "-i", "on", str(process.pid)], check=True, capture_output=True)
        asyncio.run(send_requests(port, requests, path))
        subprocess.run(["callgrind_control", "-i", "off", str(process.pid)], check=True, capture_output=True)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)
    collected = re.search(r"Collected : (\d+)", log.read_text(errors="replace"))
    if collected is None:
        raise SystemExit(f"no instruction count in {log}")
    return int(collected.group(1)) // requests


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variants", nargs="+", help="NAME=DIR[:EXTRA_YAML]")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--path", choices=PATHS, default="/2b", help="what every request asks for")
    parser.add_argument("--rules", action="store_true", help="add run_bench.py's 20 rules to every variant")
    parser.add_argument(
        "--keep", metavar="DIR", help="copy each variant's callgrind profile to DIR/NAME.callgrind"
    )
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="also simulate caches and branch prediction (slower; see the kept profiles)",
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install valgrind nginx-light)")
    tmp = Path(tempfile.mkdtemp(prefix="shield-instructions-"))
    upstream_port = free_port()
    rules = yaml.safe_dump({"rules": bench_rules()}) if args.rules else ""
    nginx = subprocess.Popen(nginx_upstream(tmp, upstream_port))
    try:
        wait_http(f"http://127.0.0.1:{upstream_port}/2b", timeout=15)
        results: list[tuple[str, int]] = []
        for spec in args.variants:
            name, _, rest = spec.partition("=")
            directory, _, extra = rest.partition(":")
            port = free_port()
            config = tmp / f"{name}.yaml"
            config.write_text(variant_config(port, free_port(), upstream_port, extra, rules))
            count = measure(
                sys.executable,
                Path(directory).resolve(),
                config,
                port,
                args.requests,
                tmp / f"{name}.log",
                args.simulate,
                args.path,
            )
            results.append((name, count))
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp / f"{name}.callgrind", Path(args.keep) / f"{name}.callgrind")
            print(f"{name:<16} {count:>9,} instructions per request", flush=True)
        base = results[0][1]
        print()
        for name, count in results:
            print(f"{name:<16} {count / base:6.3f} x {results[0][0]}")
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

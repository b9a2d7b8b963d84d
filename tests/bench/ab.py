#!/usr/bin/env python3
"""A/B throughput of two or more Shield builds or configs, interleaved, with wrk.

    .venv/bin/python tests/bench/ab.py NAME=PYTHON_OR_DIR[:EXTRA_YAML] ...

Each variant is ``python -m shield run`` with that interpreter (so another checkout's
virtualenv measures another commit) and the extra config appended; given a directory instead,
this interpreter runs in it, importing that directory's ``shield/`` (a checkout or a patched
copy, without a virtualenv of its own). An nginx upstream answers
``GET /2b`` with ``ok`` on core 1; the Shields run one at a time on core 0; ``wrk -t1 -c50``
on core 1. Prints median req/s and p99 per variant over the rounds. Example (this branch
against its base commit, and with the access log on)::

    mkdir /tmp/base && git archive BASE | tar -x -C /tmp/base
    (cd /tmp/base && python3 -m venv .venv && .venv/bin/pip install -q -e .)
    .venv/bin/python tests/bench/ab.py base=/tmp/base/.venv/bin/python new=.venv/bin/python \\
        'new+log=.venv/bin/python:access_log: {enabled: true}'
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from local_http import free_port, nginx_upstream, variant_config, wait_http
from run_bench import bench_rules


def wrk(url: str, duration: float) -> tuple[float, float]:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c50", f"-d{int(duration)}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99_text = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99_text is not None
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[p99_text.group(2)]
    return rps, float(p99_text.group(1)) * scale


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="+", help="NAME=PYTHON[:EXTRA_YAML]")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rules", action="store_true", help="add run_bench.py's 20 rules to every variant")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shield-ab-"))
    upstream_port = free_port()
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(subprocess.Popen(["taskset", "-c", "1", *nginx_upstream(tmp, upstream_port)]))
        wait_http(f"http://127.0.0.1:{upstream_port}/2b")
        results: dict[str, list[tuple[float, float]]] = {}
        variants = []
        for spec in args.variants:
            name, _, rest = spec.partition("=")
            python, _, extra = rest.partition(":")
            python = os.path.abspath(python)
            variants.append((name, python, extra.strip()))
        rules = yaml.safe_dump({"rules": bench_rules()}) if args.rules else ""
        for round_ in range(args.rounds):
            order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
            for name, python, extra in order:
                port, admin = free_port(), free_port()
                config = tmp / f"{name}.yaml"
                config.write_text(variant_config(port, admin, upstream_port, extra, rules))
                in_dir = os.path.isdir(python)
                shield = subprocess.Popen(
                    [
                        "taskset",
                        "-c",
                        "0",
                        sys.executable if in_dir else python,
                        "-m",
                        "shield",
                        "run",
                        "-c",
                        str(config),
                    ],
                    # ``-m`` imports the shield/ of the working directory first: a scratch
                    # directory runs the interpreter's own install, a checkout runs that checkout.
                    cwd=python if in_dir else tmp,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    wait_http(f"http://127.0.0.1:{port}/2b")
                    wrk(f"http://127.0.0.1:{port}/2b", 1)  # warm-up
                    results.setdefault(name, []).append(wrk(f"http://127.0.0.1:{port}/2b", args.duration))
                finally:
                    shield.send_signal(signal.SIGTERM)
                    shield.wait(10)
        base_rps = statistics.median(r for r, _ in results[variants[0][0]])
        print(f"{'variant':<12} {'req/s':>9} {'p99':>9} {'vs first':>9}   rounds")
        for name, runs in results.items():
            rps = statistics.median(r for r, _ in runs)
            p99 = statistics.median(p for _, p in runs)
            rounds = " ".join(f"{r:.0f}" for r, _ in runs)
            print(f"{name:<12} {rps:>9.0f} {p99 * 1000:>7.2f}ms {rps / base_rps:>9.3f}   {rounds}")
    finally:
        for process in started:
            process.send_signal(signal.SIGQUIT)
            process.wait(5)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

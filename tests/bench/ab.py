#!/usr/bin/env python3
"""A/B throughput of two or more Shield builds or configs, interleaved, with wrk.

    .venv/bin/python tests/bench/ab.py NAME=PYTHON_OR_DIR[:EXTRA_YAML] ...

Each variant is ``python -m shield run`` with that interpreter (so another checkout's
virtualenv measures another commit) and the extra config appended; given a directory instead,
this interpreter runs in it, importing that directory's ``shield/`` (a checkout or a patched
copy, without a virtualenv of its own). An nginx upstream answers
``GET /2b`` with ``ok`` on core 1. Each round starts every variant on core 0 and ``wrk -t1 -c50``
on core 1 loads them one at a time, the order rotating each round, or with ``--together`` all at
once: then they share core 0 at the same moments, so a change in the machine's speed (this VM's
moves by tens of percent from second to second) hits them alike, and their req/s compare their
per-request costs.
Prints per variant, over the rounds: median req/s and p99, the median of each round's req/s
ratio to the first variant (paired: drifts of the machine's speed cancel), and Shield's CPU
time per request (user + system, from /proc), with the first variant's CPU time divided by it:
what the throughput ratio would be on a core Shield had to itself. Example (this branch against
its base commit, and with the access log on)::

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
import time
from pathlib import Path
from typing import NamedTuple

import yaml
from local_http import free_port, nginx_upstream, variant_config, wait_http
from run_bench import bench_rules


class Run(NamedTuple):
    rps: float
    p99: float  # seconds
    cpu: float  # Shield's CPU seconds (user + system) per request
    system: float  # the system (kernel) part of it


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far (its own, not its children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def start_wrk(url: str, duration: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["taskset", "-c", "1", "wrk", "-t1", "-c50", f"-d{int(duration)}s", "--latency", url],
        stdout=subprocess.PIPE,
        text=True,
    )


def wrk_result(
    process: subprocess.Popen[str],
    before: tuple[float, float],
    after: tuple[float, float],
    running: float | None = None,
) -> Run:
    """What wrk measured; with ``running`` (the seconds the variant ran in its turns), req/s is
    requests over that time rather than over wrk's whole run."""
    out, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"wrk failed: {out[-500:]}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if running is not None:
        rps = requests / running
    p99_text = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99_text is not None
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[p99_text.group(2)]
    user, system = after[0] - before[0], after[1] - before[1]
    count = max(requests, 1)
    return Run(rps, float(p99_text.group(1)) * scale, (user + system) / count, system / count)


def wrk(url: str, duration: float, pid: int | None = None) -> Run:
    before = cpu_seconds(pid) if pid is not None else (0.0, 0.0)
    process = start_wrk(url, duration)
    process.wait()
    return wrk_result(process, before, cpu_seconds(pid) if pid is not None else (0.0, 0.0))


def wrk_together(
    urls: dict[str, str],
    duration: float,
    pids: dict[str, int],
    slice_seconds: float = 0.0,
    first: int = 0,
) -> dict[str, Run]:
    """Load every variant at once: they share core 0, so each gets the same CPU time at the same
    moments, and their req/s compare per-request costs whatever the machine's speed does.

    With ``slice_seconds``, only one variant runs at a time, in turns of that length (the others
    are stopped with SIGSTOP): the core's caches then serve one process at a time, as in
    production, where running side by side would charge a bigger working set for the other's
    misses too. Turns start with variant ``first``, and a variant's req/s is its requests over
    the time it ran: wrk's own figure divides by the whole run, so whichever variant got one
    turn more than another (the first, most often) would look faster by a turn's worth."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    processes = {name: start_wrk(url, duration) for name, url in urls.items()}
    ran: dict[str, float] | None = None
    if slice_seconds > 0:
        ran = dict.fromkeys(pids, 0.0)
        order = list(pids.items())
        turn = first
        try:
            while any(process.poll() is None for process in processes.values()):
                name, running = order[turn % len(order)]
                for _, pid in order:
                    if pid != running:
                        os.kill(pid, signal.SIGSTOP)
                started = time.monotonic()
                os.kill(running, signal.SIGCONT)
                # The turn ends early when this variant's wrk does: what it ran after is not its.
                while time.monotonic() - started < slice_seconds and processes[name].poll() is None:
                    time.sleep(0.002)
                ran[name] += time.monotonic() - started
                turn += 1
        finally:
            for _, pid in order:
                os.kill(pid, signal.SIGCONT)
    for process in processes.values():
        process.wait()
    return {
        name: wrk_result(
            process, before[name], cpu_seconds(pids[name]), ran[name] if ran is not None else None
        )
        for name, process in processes.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="+", help="NAME=PYTHON[:EXTRA_YAML]")
    parser.add_argument("--duration", type=int, default=2, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rules", action="store_true", help="add run_bench.py's 20 rules to every variant")
    parser.add_argument(
        "--together",
        action="store_true",
        help="load all variants at once (sharing core 0) instead of one after another",
    )
    parser.add_argument(
        "--slice",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --together, run the variants in turns of this length rather than side by side",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shield-ab-"))
    upstream_port = free_port()
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(subprocess.Popen(["taskset", "-c", "1", *nginx_upstream(tmp, upstream_port)]))
        wait_http(f"http://127.0.0.1:{upstream_port}/2b")
        results: dict[str, list[Run]] = {}
        variants = []
        for spec in args.variants:
            name, _, rest = spec.partition("=")
            python, _, extra = rest.partition(":")
            python = os.path.abspath(python)
            variants.append((name, python, extra.strip()))
        rules = yaml.safe_dump({"rules": bench_rules()}) if args.rules else ""

        def start_all() -> tuple[dict[str, int], dict[str, subprocess.Popen[bytes]]]:
            """Every variant on core 0, warmed up; idle until wrk loads it."""
            ports: dict[str, int] = {}
            shields: dict[str, subprocess.Popen[bytes]] = {}
            for name, python, extra in variants:
                port = ports[name] = free_port()
                config = tmp / f"{name}.yaml"
                config.write_text(variant_config(port, free_port(), upstream_port, extra, rules))
                in_dir = os.path.isdir(python)
                shields[name] = subprocess.Popen(
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
            for port in ports.values():
                wait_http(f"http://127.0.0.1:{port}/2b")
                wrk(f"http://127.0.0.1:{port}/2b", 1)  # warm-up
            return ports, shields

        for round_ in range(args.rounds):
            # New processes every round: each draws its own hash seed and memory layout, which
            # move a process's speed by a few percent; over the rounds that evens out.
            ports, shields = start_all()
            try:
                pids = {name: shield.pid for name, shield in shields.items()}
                if args.together:
                    urls = {name: f"http://127.0.0.1:{port}/2b" for name, port in ports.items()}
                    turns = wrk_together(urls, args.duration, pids, args.slice, first=round_)
                    for name, run in turns.items():
                        results.setdefault(name, []).append(run)
                else:
                    order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
                    for name, _, _ in order:
                        url = f"http://127.0.0.1:{ports[name]}/2b"
                        results.setdefault(name, []).append(wrk(url, args.duration, pids[name]))
            finally:
                for shield in shields.values():
                    shield.send_signal(signal.SIGTERM)
                for shield in shields.values():
                    shield.wait(10)
        first = results[variants[0][0]]
        base_rps = statistics.median(run.rps for run in first)
        base_cpu = statistics.median(run.cpu for run in first)
        print(
            f"{'variant':<12} {'req/s':>9} {'p99':>9} {'vs first':>9} {'paired':>7}"
            f" {'CPU µs/req':>11} {'vs first':>9} {'sys µs':>7}   rounds"
        )
        for name, runs in results.items():
            rps = statistics.median(run.rps for run in runs)
            p99 = statistics.median(run.p99 for run in runs)
            # Each round's ratio to the first variant's run in the same round, then the median:
            # slow drifts of the machine's speed fall out of it.
            paired = statistics.median(run.rps / base.rps for run, base in zip(runs, first, strict=True))
            cpu = statistics.median(run.cpu for run in runs)
            system = statistics.median(run.system for run in runs)
            rounds = " ".join(f"{run.rps:.0f}" for run in runs)
            print(
                f"{name:<12} {rps:>9.0f} {p99 * 1000:>7.2f}ms {rps / base_rps:>9.3f} {paired:>7.3f}"
                f" {cpu * 1e6:>11.1f} {base_cpu / cpu:>9.3f} {system * 1e6:>7.1f}   {rounds}"
            )
    finally:
        for process in started:
            process.send_signal(signal.SIGQUIT)
            process.wait(5)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

#!/usr/bin/env python3
"""System calls per proxied request: Shield with the 20 rules beside nginx as a reverse proxy.

Run by hand from the repository root (pytest never collects this directory)::

    .venv/bin/python tests/bench/syscalls.py [--requests 20000] [--connections 50] [--sizes 1000]
    .venv/bin/python tests/bench/syscalls.py --targets shield+rules --paths /16k --requests 5000

It starts the nginx upstream of ``run_bench.py`` (``/2b`` and ``/16k``, on ``--load-cpu``), nginx as
``run_bench.py`` configures it as a reverse proxy and Shield with ``run_bench.bench_rules()`` and
memory state (both on ``--proxy-cpu``). For each target and path it opens ``--connections``
keep-alive connections from an asyncio client in this process, warms up, then attaches
``strace -c -f -p PID`` to the serving process (nginx's worker, Shield's process) while exactly
``--requests`` requests go over those connections, each answer checked (200, the right length).
A second, shorter pass (``--sizes`` requests) under ``strace -f -yy`` records every socket
read and write with its file descriptor's addresses, so each call is put on the client's side
or the upstream's, with the sizes asked for and returned. A third pass counts the same calls
with ``perf stat`` on the kernel's syscall tracepoints, which never stop the process, under
``--perf-wrk`` seconds of ``wrk -t1 -c50`` (the load of ``run_bench.py``; its request count is
the divisor): so ``epoll_wait`` per request as in the wall-clock benchmark. Last, ``--idle``
seconds with no load give what the process does on its own (timers).

strace stops the process at every system call, so the traced process runs several times slower
than it would: the counts of reads and writes per request do not depend on that, but
``epoll_wait`` per request does (a slower server finds more connections ready at each wait):
take that one from the perf table. Everything runs under ``nice -n 10``, every
process started is stopped on exit, and each phase is bounded by ``--timeout``. Needs ``strace``
(``apt-get install -y strace``), ``nginx`` and ``taskset``, for the third pass ``perf`` and ``wrk``
(skipped without perf, the client instead of wrk); ``strace`` must be allowed to attach
(root, or ``kernel.yama.ptrace_scope`` 0). Results also go to ``tests/bench/results/syscalls.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from run_bench import (
    PATHS,
    RESULTS_DIR,
    BenchError,
    Processes,
    Server,
    free_port,
    proxy_nginx_conf,
    shield_bin,
    shield_config,
    upstream_nginx_conf,
    wait_ready,
)

TARGETS = ("nginx", "shield+rules")
NICE = 10
LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
# System calls by what they do, in the order the table shows them.
GROUPS: dict[str, tuple[str, ...]] = {
    "reads": ("read", "readv", "recvfrom", "recvmsg", "pread64"),
    "writes": ("write", "writev", "sendto", "sendmsg", "sendfile"),
    "epoll_wait": ("epoll_wait", "epoll_pwait", "epoll_pwait2"),
    "epoll_ctl": ("epoll_ctl",),
}
SOCKET_IO = ",".join(name for group in ("reads", "writes") for name in GROUPS[group])
# One line of ``strace -f -yy``: pid, call, fd with its TCP addresses, the rest, the result.
TRACE_LINE = re.compile(r"^\d+\s+(\w+)\(\d+<TCP:\[[\d.]+:(\d+)->[\d.]+:(\d+)\]>, (.*)\)\s+=\s+(-?\d+)")


# ---------------------------------------------------------------------------------------------
# The load: exactly N requests over keep-alive connections


class Client:
    """``connections`` keep-alive connections to ``port`` asking for ``path``, opened once and
    reused by every ``run``; each answer must be a 200 with the path's body size."""

    def __init__(self, port: int, path: str, connections: int) -> None:
        self.port = port
        self.path = path
        self.size = PATHS[path]
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n".encode()
        )
        self.count = connections
        self.streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self) -> None:
        for _ in range(self.count):
            self.streams.append(await asyncio.open_connection("127.0.0.1", self.port))

    async def run(self, requests: int) -> None:
        share, rest = divmod(requests, len(self.streams))
        await asyncio.gather(
            *(
                self._one(reader, writer, share + (i < rest))
                for i, (reader, writer) in enumerate(self.streams)
            )
        )

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        for _ in range(n):
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = LENGTH.search(head)
            if not head.startswith(b"HTTP/1.1 200") or length is None or int(length.group(1)) != self.size:
                raise BenchError(f"GET {self.path}: unexpected answer {head[:200]!r}")
            await reader.readexactly(self.size)

    async def close(self) -> None:
        for _, writer in self.streams:
            writer.close()
        for _, writer in self.streams:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self.streams.clear()


# ---------------------------------------------------------------------------------------------
# strace


def serving_pid(pid: int) -> int:
    """The process that serves: the only child of ``pid`` (nginx's worker), or ``pid`` itself."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) > 1:
        raise BenchError(f"process {pid} has {len(children)} children; expected one worker")
    return int(children[0]) if children else pid


class Strace:
    """``strace`` attached to a process until ``stop``; its output in ``out``."""

    def __init__(self, pid: int, out: Path, options: list[str], timeout: float) -> None:
        self.out = out
        argv = ["strace", "-f", "-o", str(out), *options, "-p", str(pid)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Wait for its "Process N attached" line: calls before it would be missed.
        assert self.proc.stderr is not None
        said: list[str] = []
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stderr, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while not any("attached" in line for line in said):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None or not selector.select(left):
                    self.proc.kill()
                    raise BenchError(f"strace did not attach to {pid}: {''.join(said).strip()}")
                said.append(self.proc.stderr.readline())
        time.sleep(0.2)  # every thread attached (-f attaches them one by one)

    def stop(self) -> str:
        """Detach; the output written."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise BenchError("strace did not detach within 60 s") from None
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return self.out.read_text(errors="replace")


def perf_events() -> set[str]:
    """The system calls ``perf`` has a tracepoint for (empty without perf or tracefs)."""
    if shutil.which("perf") is None:
        return set()
    listed = subprocess.run(
        ["perf", "list", "syscalls:sys_enter_*"], capture_output=True, text=True, timeout=30
    )
    return set(re.findall(r"syscalls:sys_enter_(\w+)", listed.stdout))


class PerfCount:
    """``perf stat`` counting the system calls ``names`` (and all of them) of a process until
    ``stop``: the kernel's tracepoints, so the process is never stopped, unlike under strace."""

    def __init__(self, pid: int, names: list[str], out: Path) -> None:
        self.out = out
        events = ",".join([*(f"syscalls:sys_enter_{name}" for name in names), "raw_syscalls:sys_enter"])
        argv = ["perf", "stat", "-x", ",", "-o", str(out), "-e", events, "-p", str(pid)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        time.sleep(0.5)  # (perf says nothing once it counts)
        if self.proc.poll() is not None:
            raise BenchError(f"perf stat exited with {self.proc.returncode}: {' '.join(argv)}")

    def stop(self) -> dict[str, tuple[int, int]]:
        """Syscall -> (calls, 0); the whole under ``total``."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise BenchError("perf stat did not stop within 30 s") from None
        counts: dict[str, tuple[int, int]] = {}
        for line in self.out.read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[0].isdigit():
                name = fields[2].removeprefix("syscalls:sys_enter_")
                counts["total" if name == "raw_syscalls:sys_enter" else name] = (int(fields[0]), 0)
        return counts


def parse_summary(text: str) -> dict[str, tuple[int, int]]:
    """``strace -c``'s table: syscall -> (calls, errors)."""
    counts: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) in (5, 6) and fields[-1] != "total" and fields[3].isdigit():
            counts[fields[-1]] = (int(fields[3]), int(fields[4]) if len(fields) == 6 else 0)
    return counts


@dataclass
class SideCalls:
    """One system call on one side (client or upstream) in the detailed trace."""

    calls: int = 0
    errors: int = 0
    asked: Counter[int] = field(default_factory=Counter)  # bytes asked for (reads) or given (writes)
    done: Counter[int] = field(default_factory=Counter)  # bytes returned, for calls that succeeded
    buffers: Counter[int] = field(default_factory=Counter)  # iovec count of readv/writev


def parse_trace(text: str, target_port: int, upstream_port: int) -> dict[str, dict[str, SideCalls]]:
    """Socket reads and writes of ``strace -f -yy -s 0``: side -> syscall -> what they did. A
    socket whose peer is the upstream is on the upstream's side, one on the target's own port on
    the client's."""
    sides: dict[str, dict[str, SideCalls]] = {}
    for line in text.splitlines():
        match = TRACE_LINE.match(line)
        if match is None:
            continue
        name, local, peer, args, result = match.groups()
        if int(peer) == upstream_port:
            side = "upstream"
        elif int(local) == target_port:
            side = "client"
        else:
            continue
        calls = sides.setdefault(side, {}).setdefault(name, SideCalls())
        calls.calls += 1
        if vector := re.search(r"\], (\d+)$", args):  # readv, writev: the iovecs' sizes, their count
            calls.buffers[int(vector.group(1))] += 1
            calls.asked[sum(int(n) for n in re.findall(r"iov_len=(\d+)", args))] += 1
        elif sized := re.match(r'"(?:[^"\\]|\\.)*"(?:\.\.\.)?, (\d+)', args):
            calls.asked[int(sized.group(1))] += 1
        if int(result) < 0:
            calls.errors += 1
        else:
            calls.done[int(result)] += 1
    return sides


# ---------------------------------------------------------------------------------------------
# Running it


@dataclass
class Target:
    name: str
    server: Server
    port: int


def start_targets(args: argparse.Namespace, procs: Processes, root: Path) -> tuple[int, list[Target]]:
    """The upstream, then the targets asked for; the upstream's port and the targets."""
    upstream_port = free_port()
    conf = root / "upstream.conf"
    conf.write_text(upstream_nginx_conf(root, upstream_port))
    nginx = ["nginx", "-p", str(root), "-e", str(root / "up.log"), "-c", str(conf)]
    upstream = procs.start(
        "upstream nginx", ["taskset", "-c", str(args.load_cpu), *nginx], root / "upstream.out"
    )
    wait_ready(upstream, f"http://127.0.0.1:{upstream_port}")
    targets: list[Target] = []
    for name in args.target_list:
        port = free_port()
        pin = ["taskset", "-c", str(args.proxy_cpu)]
        if name == "nginx":
            conf = root / "nginx-proxy.conf"
            conf.write_text(proxy_nginx_conf(root, "nginx-proxy", port, upstream_port))
            argv = [*pin, "nginx", "-p", str(root), "-e", str(root / "proxy.log"), "-c", str(conf)]
        else:
            conf = root / "shield+rules.yaml"
            conf.write_text(shield_config(port, free_port(), upstream_port, rules=True))
            argv = [*pin, shield_bin(), "--log-level", "WARNING", "run", "-c", str(conf)]
        server = procs.start(name, argv, root / f"{name}.out")
        wait_ready(server, f"http://127.0.0.1:{port}")
        targets.append(Target(name, server, port))
    return upstream_port, targets


def measure(
    args: argparse.Namespace,
    loop: asyncio.AbstractEventLoop,
    target: Target,
    path: str,
    upstream_port: int,
    root: Path,
) -> dict[str, Any]:
    """Per-request counts (``strace -c``) and the detailed trace's sides for one target and path."""
    pid = serving_pid(target.server.proc.pid)
    client = Client(target.port, path, args.connections)

    def run(coroutine: Any) -> None:
        loop.run_until_complete(asyncio.wait_for(coroutine, args.timeout))

    label = f"{target.name} {path}"
    try:
        run(client.open())
        run(client.run(args.warmup))
        strace = Strace(pid, root / f"{target.name}{path.replace('/', '-')}.c.txt", ["-c"], args.timeout)
        started = time.monotonic()
        try:
            run(client.run(args.requests))
        finally:
            summary = strace.stop()
        seconds = time.monotonic() - started
        counts = parse_summary(summary)
        if not counts:
            raise BenchError(f"{label}: strace -c gave no table:\n{summary}")
        print(f"{label}: {args.requests:,} requests in {seconds:.1f} s under strace -c", flush=True)
        sides: dict[str, dict[str, SideCalls]] = {}
        if args.sizes:
            options = ["-yy", "-s", "8", "-e", f"trace={SOCKET_IO}"]
            out = root / f"{target.name}{path.replace('/', '-')}.trace.txt"
            strace = Strace(pid, out, options, args.timeout)
            try:
                run(client.run(args.sizes))
            finally:
                trace = strace.stop()
            sides = parse_trace(trace, target.port, upstream_port)
        perf: dict[str, tuple[int, int]] = {}
        perf_requests = 0
        if args.perf_events:
            names = sorted({*counts, *GROUPS["epoll_wait"], *GROUPS["epoll_ctl"]} & args.perf_events)
            counter = PerfCount(pid, names, root / f"{target.name}{path.replace('/', '-')}.perf.txt")
            started = time.monotonic()
            try:
                if args.perf_wrk:
                    perf_requests = wrk_requests(args, target.port, path)
                else:
                    run(client.run(args.requests))
                    perf_requests = args.requests
            finally:
                perf = counter.stop()
            rate = perf_requests / (time.monotonic() - started)
            load = f"wrk -c{args.connections}" if args.perf_wrk else "the client"
            print(
                f"{label}: {perf_requests:,} requests from {load} at {rate:,.0f}/s under perf stat",
                flush=True,
            )
    finally:
        if client.streams:
            loop.run_until_complete(asyncio.wait_for(client.close(), 10))
    return {
        "counts": counts,
        "counts_requests": args.requests,
        "sides": sides,
        "seconds": seconds,
        "perf": perf,
        "perf_requests": perf_requests,
    }


def wrk_requests(args: argparse.Namespace, port: int, path: str) -> int:
    """``wrk`` for ``--perf-wrk`` seconds on the load core: the requests it completed (all 2xx)."""
    argv = ["taskset", "-c", str(args.load_cpu), "wrk", "-t1", f"-c{args.connections}"]
    argv += [f"-d{args.perf_wrk:g}s", f"http://127.0.0.1:{port}{path}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.perf_wrk + 60)
    total = re.search(r"^\s+(\d+) requests in", proc.stdout, re.M)
    if proc.returncode != 0 or total is None or "Non-2xx" in proc.stdout or "Socket errors" in proc.stdout:
        raise BenchError(f"wrk failed or saw errors:\n{proc.stdout}{proc.stderr}")
    return int(total.group(1))


def idle_rate(args: argparse.Namespace, target: Target, root: Path) -> dict[str, float]:
    """System calls a second with no load: the process's own timers."""
    strace = Strace(
        serving_pid(target.server.proc.pid), root / f"{target.name}.idle.txt", ["-c"], args.timeout
    )
    time.sleep(args.idle)
    counts = parse_summary(strace.stop())
    return {name: calls / args.idle for name, (calls, _) in counts.items()}


# ---------------------------------------------------------------------------------------------
# Printing


def group_of(name: str) -> str:
    return next((group for group, names in GROUPS.items() if name in names), "others")


def print_counts(results: dict[str, dict[str, Any]], key: str, title: str) -> None:
    """The table of ``results[column][key]`` (syscall -> (calls, errors)) per request: one row
    a syscall, grouped, with each group's sum and the total (``total`` when the counts have one,
    for perf's count of every call), each column divided by its ``results[column][key + "_requests"]``."""
    columns = [column for column, result in results.items() if result[key]]
    if not columns:
        return
    seen = {name for column in columns for name in results[column][key] if name != "total"}
    order = [*GROUPS, "others"]
    rows = sorted(seen, key=lambda name: (order.index(group_of(name)), name))
    width = max(12, *(len(column) for column in columns)) + 2
    print(f"\n{title}")
    print(f"{'syscall':<16}" + "".join(f"{column:>{width}}" for column in columns))

    def line(label: str, names: list[str], index: int = 0) -> str:
        cells = []
        for column in columns:
            counts = results[column][key]
            if names == ["total"] and "total" not in counts:
                names = rows
            requests = results[column][key + "_requests"]
            cells.append(f"{sum(counts.get(name, (0, 0))[index] for name in names) / requests:>{width}.3f}")
        return f"{label:<16}" + "".join(cells)

    for group in order:
        names = [name for name in rows if group_of(name) == group]
        for name in names:
            print(line(f"  {name}", [name]))
        if len(names) > 1 or (names and group == "others"):
            print(line(f"= {group}", names))
    print(line("total", ["total"]))
    if any(errors for column in columns for _, errors in results[column][key].values()):
        print(line("errors", rows, 1))


def top(counter: Counter[int], total: int, limit: int = 3) -> str:
    return ", ".join(f"{size}x{count / total:.2f}" for size, count in counter.most_common(limit))


def print_sides(results: dict[str, dict[str, Any]], sizes: int) -> None:
    print(f"\nSocket reads and writes by side ({sizes:,} requests, strace -yy): calls per request;")
    print("bytes asked for (reads) or given (writes) and bytes returned, as size x share of the calls")
    for column, result in results.items():
        for side, calls in sorted(result["sides"].items()):
            for name, call in sorted(calls.items()):
                buffers = f" iovecs {top(call.buffers, call.calls)}" if call.buffers else ""
                errors = f" errors {call.errors / sizes:.3f}" if call.errors else ""
                asked, done = top(call.asked, call.calls), top(call.done, call.calls)
                print(
                    f"  {column:<20} {side:<9} {name:<9} {call.calls / sizes:6.3f}/req"
                    f"  asked {asked}  returned {done}{buffers}{errors}"
                )


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000, help="requests counted per target and path")
    parser.add_argument("--connections", type=int, default=50, help="keep-alive connections")
    parser.add_argument("--warmup", type=int, default=2000, help="requests before strace attaches")
    parser.add_argument("--sizes", type=int, default=1000, help="requests in the detailed trace (0: none)")
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of the idle trace (0: none)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"among {', '.join(TARGETS)}")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"among {', '.join(PATHS)}")
    parser.add_argument("--no-perf", action="store_true", help="skip the perf stat pass")
    parser.add_argument(
        "--perf-wrk",
        type=float,
        default=5.0,
        help="seconds of wrk load in the perf pass (0: --requests from the client instead)",
    )
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1, help="the upstream's and this client's core")
    parser.add_argument("--timeout", type=float, default=180.0, help="bound of each phase, in seconds")
    args = parser.parse_args(argv)
    args.target_list = [t for t in args.targets.split(",") if t]
    args.path_list = [p for p in args.paths.split(",") if p]
    for name, chosen, known in (("target", args.target_list, TARGETS), ("path", args.path_list, PATHS)):
        if unknown := [item for item in chosen if item not in known]:
            parser.error(f"unknown {name}: {', '.join(unknown)}")
    if args.requests < args.connections or args.warmup < args.connections:
        parser.error("--requests and --warmup must be at least --connections")
    return args


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("strace", "nginx", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install -y strace nginx-light util-linux)")
    args.perf_events = set() if args.no_perf else perf_events()
    if args.perf_wrk and shutil.which("wrk") is None:
        print("wrk is not installed: the perf pass uses the client", file=sys.stderr)
        args.perf_wrk = 0.0
    os.nice(NICE)  # every process started inherits it
    os.sched_setaffinity(0, {args.load_cpu})  # the client shares the upstream's core
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    procs = Processes()
    root = Path(tempfile.mkdtemp(prefix="shield-syscalls-"))
    root.chmod(0o755)
    results: dict[str, dict[str, Any]] = {}
    idle: dict[str, dict[str, float]] = {}
    try:
        upstream_port, targets = start_targets(args, procs, root)
        for path in args.path_list:
            for target in targets:
                results[f"{target.name} {path}"] = measure(args, loop, target, path, upstream_port, root)
        if args.idle:
            idle = {target.name: idle_rate(args, target, root) for target in targets}
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        loop.close()
        shutil.rmtree(root, ignore_errors=True)
    print_counts(
        results,
        "counts",
        f"System calls per request ({args.requests:,} requests, strace -c -f on the serving process)",
    )
    print_counts(
        results,
        "perf",
        "The same counted by perf stat's tracepoints (no ptrace stops: epoll_wait as in the benchmark), "
        + (f"{args.perf_wrk:g} s of wrk" if args.perf_wrk else f"another {args.requests:,} requests"),
    )
    if args.sizes:
        print_sides(results, args.sizes)
    for name, rates in idle.items():
        calls = ", ".join(f"{call} {rate:.0f}" for call, rate in sorted(rates.items(), key=lambda kv: -kv[1]))
        print(f"\nidle {name}: {sum(rates.values()):.0f} calls/s ({calls or 'none'})")
    RESULTS_DIR.mkdir(exist_ok=True)
    saved = {
        "args": {k: v for k, v in vars(args).items() if k not in ("target_list", "path_list", "perf_events")},
        "results": {
            column: {
                "seconds": result["seconds"],
                "per_request": {name: calls / args.requests for name, (calls, _) in result["counts"].items()},
                "errors_per_request": {
                    name: e / args.requests for name, (_, e) in result["counts"].items() if e
                },
                "perf_requests": result["perf_requests"],
                "perf_per_request": {
                    name: calls / max(1, result["perf_requests"])
                    for name, (calls, _) in result["perf"].items()
                },
                "sides": {
                    side: {
                        name: {
                            "per_request": call.calls / args.sizes,
                            "asked": dict(call.asked.most_common(5)),
                            "returned": dict(call.done.most_common(5)),
                        }
                        for name, call in calls.items()
                    }
                    for side, calls in result["sides"].items()
                },
            }
            for column, result in results.items()
        },
        "idle_calls_per_second": idle,
    }
    (RESULTS_DIR / "syscalls.json").write_text(json.dumps(saved, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

#!/usr/bin/env python3
"""Slow and greedy clients against Shield and nginx, in one run: do real clients still get in?

Run by hand from the repository root, as root (it raises its descriptor limit and may
apt-get install nginx and slowhttptest); it asserts nothing and prints a table::

    .venv/bin/python tests/attack/slow.py [--connections 2000] [--length 40] [--settle 60]
        [--only slow-read] [--skip-nginx] [--markdown]

One nginx serves as the upstream (``/small``: 2 bytes, ``/page``: 100 KB, ``/big``: 1 MiB).
In front of it, Shield with its defaults (one worker, memory state, no per-client caps) and
nginx as a reverse proxy (one worker, Debian's proxy defaults: request and response buffering
on). For each attack, Debian's ``slowhttptest`` opens ``--connections`` connections against one
proxy, and a legitimate client asks for ``/small`` every 0.5 s from 127.0.0.2 (so a per-address
cap, if one were set, would not meet it), each time on a new connection; a probe is served
when a 200 arrives within 5 s (slowhttptest's own probe timeout). Then the same against the
other proxy. Shield's resident memory and open descriptors are read before, at the highest
point during, and ``--settle`` seconds after each attack, and what ``shield_client_limits``
counted is shown.

Last, the pipelined flood: 200 connections each write 256 KiB of pipelined GETs and never read
their answers; Shield's memory is read while they hang there, and after they close.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.run_bench import (  # noqa: E402
    Processes,
    Server,
    find_nginx,
    free_port,
    nginx_common,
    shield_bin,
    static_files,
)

PROBE_FROM = "127.0.0.2"
PROBE_EVERY = 0.5
PROBE_TIMEOUT = 5.0
PAGE = 100 * 1000
BIG = 1024 * 1024


@dataclass
class Attack:
    name: str
    flags: list[str]
    path: str


def attacks(connections: int, length: int) -> list[Attack]:
    common = ["-c", str(connections), "-r", str(max(50, connections // 10)), "-l", str(length)]
    return [
        Attack("slowloris (-H)", ["-H", "-i", "10", "-x", "24", *common], "/small"),
        Attack("slow body, 4 KB (-B)", ["-B", "-i", "10", "-x", "24", "-s", "4096", *common], "/small"),
        Attack(
            "slow body, 100 KB (-B -s 100000)",
            ["-B", "-i", "10", "-x", "24", "-s", "100000", *common],
            "/small",
        ),
        # A slow reader of a 100 KB page, three times over one connection (-k 3): 300 KB each.
        Attack(
            "slow read, 100 KB x 3 (-X)",
            ["-X", "-w", "10", "-y", "20", "-n", "5", "-z", "32", "-k", "3", *common],
            "/page",
        ),
        # A slow reader of 1 MiB answers: past limits.buffer_response, so they stream.
        Attack(
            "slow read, 1 MiB (-X)", ["-X", "-w", "10", "-y", "20", "-n", "5", "-z", "32", *common], "/big"
        ),
        Attack("range header (-R)", ["-R", "-a", "10", "-b", "3000", *common], "/big"),
    ]


# ---------------------------------------------------------------------------------------------
# Set-up


def ensure_tools() -> tuple[str, str]:
    missing = [
        pkg
        for pkg, found in (("nginx", find_nginx()), ("slowhttptest", shutil.which("slowhttptest")))
        if not found
    ]
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", *missing]
        if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
            subprocess.run(install, env=env, stdout=subprocess.DEVNULL)
    nginx, slow = find_nginx(), shutil.which("slowhttptest")
    if nginx is None or slow is None:
        sys.exit("nginx and slowhttptest are needed: apt-get install -y nginx slowhttptest")
    return nginx, slow


def raise_descriptor_limit() -> None:
    """Thousands of connections need thousands of descriptors, in every process started here."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 1 << 20), hard))


def upstream_conf(root: Path, port: int) -> str:
    www = static_files(root, {"page": b"p" * PAGE, "big": b"b" * BIG})
    return (
        nginx_common(root, "upstream")
        + f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location = /small {{ default_type text/plain; return 200 "ok"; }}
        location / {{ default_type application/octet-stream; }}
    }}
}}
"""
    )


def proxy_conf(root: Path, port: int, upstream_port: int) -> str:
    # What a Debian site config adds for a reverse proxy; buffering and body sizes as shipped.
    return (
        nginx_common(root, "proxy")
        + f"""
    upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""
    )


def wait_answering(server: Server, url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not server.alive():
            sys.exit(f"{server.name} exited:\n{server.log_tail()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
            if answer.status == 200:
                return
        time.sleep(0.1)
    sys.exit(f"{server.name} did not answer {url}:\n{server.log_tail()}")


# ---------------------------------------------------------------------------------------------
# Measuring


def group_pids(leader: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rpartition(")")[2].split()[2]) == leader:
                    pids.append(int(entry))
    return pids


@dataclass
class Usage:
    rss_mb: float
    fds: int


def usage(leader: int) -> Usage:
    rss = 0
    fds = 0
    for pid in group_pids(leader):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            found = re.search(r"VmRSS:\s+(\d+) kB", status)
            rss += int(found.group(1)) if found else 0
            fds += len(os.listdir(f"/proc/{pid}/fd"))
    return Usage(rss / 1024, fds)


@dataclass
class Probes:
    latencies: list[float] = field(default_factory=list)  # of the probes served
    failed: int = 0

    @property
    def sent(self) -> int:
        return len(self.latencies) + self.failed

    def served_pct(self) -> float:
        return 100.0 * len(self.latencies) / self.sent if self.sent else float("nan")


async def probe_once(port: int) -> float | None:
    """Seconds to a complete 200 for GET /small on a new connection, or None."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(PROBE_FROM, 0))
            try:
                writer.write(b"GET /small HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                answer = await reader.read()
            finally:
                writer.close()
    except (TimeoutError, OSError):
        return None
    if not answer.startswith(b"HTTP/1.1 200 ") or not answer.endswith(b"ok"):
        return None
    return loop.time() - started


async def probe(port: int, seconds: float, probes: Probes) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    pending: set[asyncio.Task[float | None]] = set()
    while loop.time() < end:
        pending.add(asyncio.create_task(probe_once(port)))
        await asyncio.sleep(PROBE_EVERY)
    for task in asyncio.as_completed(pending):
        latency = await task
        if latency is None:
            probes.failed += 1
        else:
            probes.latencies.append(latency)


async def watch_peak(leader: int, seconds: float) -> Usage:
    peak = usage(leader)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(1)
        now = usage(leader)
        peak = Usage(max(peak.rss_mb, now.rss_mb), max(peak.fds, now.fds))
    return peak


def client_limits(admin_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        found.group(1): float(found.group(2))
        for found in re.finditer(r'^shield_client_limits_total\{limit="(\w+)"\} (\S+)$', text, re.M)
    }


@dataclass
class Result:
    attack: str
    proxy: str
    probes: Probes
    before: Usage
    during: Usage
    after: Usage | None
    limits: dict[str, float]


async def run_attack(
    attack: Attack, proxy: str, port: int, leader: int, slow: str, args: argparse.Namespace, admin_port: int
) -> Result:
    """``attack`` against the proxy at ``port`` (``admin_port``: Shield's, else 0)."""
    before = usage(leader)
    limits_before = await asyncio.to_thread(client_limits, admin_port) if admin_port else {}
    argv = [*attack.flags, "-p", "5", "-u", f"http://127.0.0.1:{port}{attack.path}"]
    attacker = await asyncio.create_subprocess_exec(
        slow, *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    ramp = 10.0
    try:
        probes = Probes()
        await asyncio.sleep(ramp)  # the attack's connections open first
        peak_task = asyncio.create_task(watch_peak(leader, args.length - ramp))
        await probe(port, args.length - ramp - PROBE_TIMEOUT, probes)
        during = await peak_task
    finally:
        with contextlib.suppress(ProcessLookupError):
            attacker.terminate()
        try:
            await asyncio.wait_for(attacker.wait(), 10)
        except TimeoutError:
            attacker.kill()
            await attacker.wait()
    after = None
    if proxy == "Shield":
        await asyncio.sleep(args.settle)
        after = usage(leader)
    limits = {}
    if admin_port:
        now = await asyncio.to_thread(client_limits, admin_port)
        limits = {
            kind: n - limits_before.get(kind, 0) for kind, n in now.items() if n > limits_before.get(kind, 0)
        }
    return Result(attack.name, proxy, probes, before, during, after, limits)


async def pipelined_flood(port: int, leader: int, settle: float) -> tuple[Usage, Usage, Usage]:
    """200 connections each writing 256 KiB of pipelined GETs, never reading."""
    before = usage(leader)
    request = b"GET /small HTTP/1.1\r\nHost: flood\r\n\r\n"
    flood = request * (256 * 1024 // len(request))
    writers = []
    for _ in range(200):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.set_write_buffer_limits(high=1 << 30)  # no waiting for the proxy to read
        writer.write(flood)
        writers.append(writer)
    during = await watch_peak(leader, 10)
    for writer in writers:
        writer.transport.abort()
    await asyncio.sleep(settle)
    return before, during, usage(leader)


# ---------------------------------------------------------------------------------------------
# Report


def print_table(results: list[Result], markdown: bool) -> None:
    names = list(dict.fromkeys(result.attack for result in results))
    by = {(result.attack, result.proxy): result for result in results}
    head = [
        "attack",
        "probes served, Shield",
        "p50 / p99 ms, Shield",
        "probes served, nginx",
        "p50 / p99 ms, nginx",
        "Shield RSS MB before / during / after",
        "Shield fds during",
        "Shield's client limits",
    ]
    rows = []
    for name in names:
        row = [name]
        for proxy in ("Shield", "nginx"):
            result = by.get((name, proxy))
            if result is None:
                row += ["-", "-"]
                continue
            served = result.probes
            row.append(f"{served.served_pct():.0f} % ({len(served.latencies)}/{served.sent})")
            row.append(latency_text(served.latencies))
        shield = by.get((name, "Shield"))
        if shield is None:
            row += ["-", "-", "-"]
        else:
            after = f"{shield.after.rss_mb:.0f}" if shield.after else "-"
            row.append(f"{shield.before.rss_mb:.0f} / {shield.during.rss_mb:.0f} / {after}")
            row.append(str(shield.during.fds))
            row.append(
                ", ".join(f"{kind} {count:.0f}" for kind, count in sorted(shield.limits.items())) or "-"
            )
        rows.append(row)
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
        for row in [head, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def latency_text(latencies: list[float]) -> str:
    if not latencies:
        return "-"
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.median(ordered) * 1000:.0f} / {p99 * 1000:.0f}"


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=2000, help="attack connections (2000)")
    parser.add_argument("--length", type=int, default=40, help="seconds each attack lasts (40)")
    parser.add_argument(
        "--settle", type=float, default=60.0, help="seconds before Shield's memory is read after (60)"
    )
    parser.add_argument("--only", default="", help="attacks whose name contains this")
    parser.add_argument("--skip-nginx", action="store_true", help="attack Shield only")
    parser.add_argument("--skip-flood", action="store_true", help="leave out the pipelined flood")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    return parser.parse_args()


@dataclass
class Running:
    shield: Server
    shield_port: int
    admin_port: int
    nginx: Server
    nginx_port: int


def start_servers(processes: Processes, root: Path, nginx: str) -> Running:
    upstream_port, proxy_port, shield_port, admin_port = (free_port() for _ in range(4))
    (root / "upstream.conf").write_text(upstream_conf(root, upstream_port))
    upstream = processes.start(
        "upstream nginx",
        [nginx, "-p", str(root), "-e", str(root / "upstream-err.log"), "-c", str(root / "upstream.conf")],
        root / "upstream.out",
    )
    wait_answering(upstream, f"http://127.0.0.1:{upstream_port}/small")
    (root / "proxy.conf").write_text(proxy_conf(root, proxy_port, upstream_port))
    nginx_proxy = processes.start(
        "nginx proxy",
        [nginx, "-p", str(root), "-e", str(root / "proxy-err.log"), "-c", str(root / "proxy.conf")],
        root / "proxy.out",
    )
    (root / "shield.yaml").write_text(
        f"listen: 127.0.0.1:{shield_port}\nupstream: http://127.0.0.1:{upstream_port}\n"
        f"admin:\n  listen: 127.0.0.1:{admin_port}\n"
    )
    shield = processes.start(
        "Shield", [shield_bin(), "run", "-c", str(root / "shield.yaml")], root / "shield.out"
    )
    for server, port in ((nginx_proxy, proxy_port), (shield, shield_port)):
        wait_answering(server, f"http://127.0.0.1:{port}/small")
        for path in ("/page", "/big"):  # warm: the first answers' buffers are allocated once
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                answer.read()
    return Running(shield, shield_port, admin_port, nginx_proxy, proxy_port)


async def run_all(running: Running, slow: str, args: argparse.Namespace) -> list[Result]:
    results = []
    for attack in attacks(args.connections, args.length):
        if args.only not in attack.name:
            continue
        targets = [("Shield", running.shield_port, running.shield.proc.pid, running.admin_port)]
        if not args.skip_nginx:
            targets.append(("nginx", running.nginx_port, running.nginx.proc.pid, 0))
        for proxy, port, leader, admin in targets:
            print(f"{attack.name} against {proxy} ...", file=sys.stderr, flush=True)
            results.append(await run_attack(attack, proxy, port, leader, slow, args, admin))
            if not running.shield.alive():
                sys.exit(f"Shield died:\n{running.shield.log_tail()}")
    return results


def main() -> None:
    args = parse_args()
    nginx, slow = ensure_tools()
    raise_descriptor_limit()
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="shield-slow-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        try:
            running = start_servers(processes, root, nginx)
            print_table(asyncio.run(run_all(running, slow, args)), args.markdown)
            if not args.skip_flood:
                print("pipelined flood (200 x 256 KiB, never reading) ...", file=sys.stderr, flush=True)
                flood = pipelined_flood(running.shield_port, running.shield.proc.pid, args.settle)
                before, during, after = asyncio.run(flood)
                print(
                    f"\npipelined flood, Shield RSS: {before.rss_mb:.0f} MB before, {during.rss_mb:.0f} MB "
                    f"during (+{during.rss_mb - before.rss_mb:.0f} MB, {during.fds} fds), "
                    f"{after.rss_mb:.0f} MB {args.settle:.0f} s after"
                )
        finally:
            processes.stop_all()


if __name__ == "__main__":
    main()

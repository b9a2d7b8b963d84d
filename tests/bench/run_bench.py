#!/usr/bin/env python3
"""Throughput and latency of Shield against nginx as a reverse proxy, measured with wrk.

Run by hand from the repository root (pytest never collects this directory)::

    .venv/bin/python tests/bench/run_bench.py [--duration 10] [--rounds 3] [--connections 50] [--profile]

It starts an nginx upstream (core 1); nginx as a reverse proxy, the same nginx with a per-IP rate
check that never triggers, HAProxy with such a check, Shield and Shield with 20 rules (all on core 0),
the 20 rules with Redis state (a redis-server of its own on core 1) and with two workers (both
cores), then runs wrk (core 1) against each of them and against the upstream directly, interleaved
round by round, and prints medians, ratios and each proxy's CPU time per request. Every process
it starts is stopped on exit, error or Ctrl-C.
See tests/bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(__file__).resolve().parent / "results"

PATHS: dict[str, int] = {"/2b": 2, "/16k": 16384}  # benchmark path -> body size
TARGETS = (
    "direct",
    "nginx",
    "nginx+limit",
    "haproxy",
    "shield",
    "shield+rules",
    "shield+redis",
    "shield+workers",
)
# nginx proxy targets -> the name of their config, logs and temp directory.
NGINX_PROXIES = {"nginx": "nginx-proxy", "nginx+limit": "nginx-limit"}
SHIELDS = ("shield", "shield+rules", "shield+redis", "shield+workers")
# The same 20 rules, with throttle state in Redis (the one at --redis-url) instead of memory, or
# with `workers: 2` (memory state, each worker counting alone), allowed on both cores.
WITH_RULES = ("shield+rules", "shield+redis", "shield+workers")
WORKERS = {"shield+workers": 2}
RULE_COUNT = 20
OTHER_LOAD_LIMIT = 10.0  # % of a core used by processes we did not start: "the machine is not quiet"

# Tool -> the Debian package that provides it.
PACKAGES = {"nginx": "nginx-light", "wrk": "wrk", "taskset": "util-linux", "haproxy": "haproxy"}


class BenchError(Exception):
    """A failure that ends the benchmark with a message (and a non-zero exit)."""


# ---------------------------------------------------------------------------------------------
# Tools


def find_tool(name: str) -> str | None:
    """``name`` on PATH, or in the sbin directories a user's PATH may lack (nginx, haproxy)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"):
        candidate = f"{directory}/{name}"
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def needed_tools(targets: list[str]) -> list[str]:
    """nginx (the upstream), wrk and taskset always; haproxy for its target only."""
    return ["nginx", "wrk", "taskset", *(["haproxy"] if "haproxy" in targets else [])]


def find_tools(names: list[str]) -> dict[str, str | None]:
    return {name: find_tool(name) for name in names}


def ensure_tools(names: list[str]) -> dict[str, str]:
    """The paths of the tools ``names``, installing the missing ones with apt-get if possible."""
    tools = find_tools(names)
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        packages = sorted({PACKAGES[name] for name in missing})
        print(f"missing: {', '.join(missing)}; installing {' '.join(packages)} with apt-get", flush=True)
        prefix: list[str] | None = [] if os.geteuid() == 0 else None
        if prefix is None and shutil.which("sudo"):
            prefix = ["sudo", "-n"]
        if prefix is not None and shutil.which("apt-get"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = [*prefix, "apt-get", "install", "-y", *packages]
            if subprocess.run(install, env=env).returncode != 0:
                subprocess.run([*prefix, "apt-get", "update"], env=env)
                subprocess.run(install, env=env)
        tools = find_tools(names)
        missing = [name for name, path in tools.items() if path is None]
    if missing:
        packages = sorted({PACKAGES[name] for name in missing})
        raise BenchError(
            f"missing tools: {', '.join(missing)} (Debian packages: {' '.join(packages)}); "
            f"install them with: sudo apt-get install -y {' '.join(packages)}"
        )
    return {name: path for name, path in tools.items() if path is not None}


def shield_bin() -> str:
    for candidate in (Path(sys.executable).parent / "shield", REPO / ".venv" / "bin" / "shield"):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("shield")
    if found is None:
        raise BenchError("the shield command is not installed: run `pip install -e .` in the virtualenv")
    return found


def ensure_py_spy() -> str:
    bindir = Path(sys.executable).parent
    py_spy = bindir / "py-spy"
    if not os.access(py_spy, os.X_OK):
        print("py-spy is missing: pip install py-spy", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "py-spy"], check=True)
    return str(py_spy)


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def command_output(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unavailable ({error})"
    return first_line(proc.stdout + "\n" + proc.stderr)


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment(tools: dict[str, str]) -> dict[str, str]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "shield"], capture_output=True, text=True
    ).stdout.strip()
    versions = {"nginx": command_output([tools["nginx"], "-v"])}
    if "haproxy" in tools:
        versions["haproxy"] = command_output([tools["haproxy"], "-v"]).split(" - ")[0]
    return {
        **versions,
        "wrk": command_output([tools["wrk"], "--version"]).split(" Copyright")[0],
        "python": sys.version.replace("\n", " "),
        "aiohttp": package_version("aiohttp"),
        "uvloop": package_version("uvloop"),
        "httptools": package_version("httptools"),
        "shield": package_version("shield"),
        "git": commit + (" (shield/ has uncommitted changes)" if dirty else ""),
        "nproc": command_output(["nproc"]),
        "cpu": cpu_model or platform.processor() or "unknown",
        "kernel": platform.release(),
    }


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A process we started in its own session (so its whole group can be signalled)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        # The leader has exited; make sure nothing it left in its group (nginx workers) survives.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log_file.close()


class Processes:
    """Every server this run started; ``stop_all`` in a finally block."""

    def __init__(self) -> None:
        self.servers: list[Server] = []

    def start(self, name: str, argv: list[str], log: Path) -> Server:
        log_file = log.open("wb")
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        OUR_GROUPS.add(proc.pid)  # start_new_session: the leader's pid is the group id
        server = Server(name, proc, log, log_file)
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        while self.servers:
            server = self.servers.pop()
            try:
                server.stop()
            except Exception as error:  # keep stopping the others
                print(f"warning: stopping {server.name}: {error}", file=sys.stderr)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_ready(server: Server, base_url: str, timeout: float = 20.0) -> None:
    """Wait until ``server`` answers every benchmark path with 200 and the right body size."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not server.alive():
            raise BenchError(
                f"{server.name} exited with code {server.proc.returncode}; its log:\n{server.log_tail()}"
            )
        try:
            for path, size in PATHS.items():
                status, body = http_get(base_url + path)
                if status != 200 or len(body) != size:
                    last = f"GET {path}: status {status}, {len(body)} bytes (want 200, {size} bytes)"
                    raise BenchError(last)
            return
        except (OSError, BenchError) as error:
            last = str(error)
        time.sleep(0.1)
    raise BenchError(f"{server.name} not ready after {timeout:.0f}s: {last}; its log:\n{server.log_tail()}")


# ---------------------------------------------------------------------------------------------
# Configs


def nginx_common(root: Path, name: str) -> str:
    tmp = root / f"{name}-tmp"
    tmp.mkdir(mode=0o755)
    return f"""worker_processes 1;
daemon off;
pid {root}/{name}.pid;
error_log {root}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
"""


def static_files(root: Path, files: dict[str, bytes]) -> Path:
    """``root/www`` holding ``files`` (name -> content), readable by nginx workers running as
    nobody; its path."""
    www = root / "www"
    www.mkdir()
    for name, content in files.items():
        (www / name).write_bytes(content)
    for path in (root, www, *(www / name for name in files)):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return www


def upstream_nginx_conf(root: Path, port: int) -> str:
    www = static_files(root, {"16k": b"x" * PATHS["/16k"]})
    return (
        nginx_common(root, "upstream")
        + f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location = /2b {{ default_type text/plain; return 200 "ok"; }}
        location = /16k {{ default_type application/octet-stream; }}
    }}
}}
"""
    )


def proxy_nginx_conf(root: Path, name: str, port: int, upstream_port: int, limit: bool = False) -> str:
    """nginx as a reverse proxy to the upstream; with ``limit``, a per-client-IP rate check that
    never triggers (a million requests a second, and as many again in burst)."""
    zone = "\n    limit_req_zone $binary_remote_addr zone=perip:10m rate=1000000r/s;" if limit else ""
    check = "\n            limit_req zone=perip burst=1000000 nodelay;" if limit else ""
    return (
        nginx_common(root, name)
        + f"""{zone}
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{{check}
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )


HAPROXY_TABLE = "proxy"  # the frontend, which holds the per-IP stick table


def haproxy_conf(root: Path, port: int, upstream_port: int) -> str:
    """HAProxy as a reverse proxy to the upstream, one thread, keep-alive on both sides, no log,
    and a per-client-IP rate check that never triggers. The table's one entry (127.0.0.1) outlives
    the run (``expire 1h``) so that ``show table`` on the stats socket proves the check ran."""
    return f"""global
    nbthread 1
    maxconn 4096
    stats socket {root}/haproxy.sock mode 600 level operator

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 75s

frontend {HAPROXY_TABLE}
    bind 127.0.0.1:{port} backlog 4096
    stick-table type ip size 100k expire 1h store http_req_rate(1s)
    http-request track-sc0 src
    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt 100000000 }}
    default_backend upstream

backend upstream
    server upstream 127.0.0.1:{upstream_port}
"""


def haproxy_tracked(sock_path: Path, client: str = "127.0.0.1") -> str:
    """The stick-table entry HAProxy keeps for ``client``, from its stats socket; a BenchError if
    there is none (the rate check did not run)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(sock_path))
        sock.sendall(f"show table {HAPROXY_TABLE}\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks).decode(errors="replace")
    entry = next((line for line in reply.splitlines() if f" key={client} " in line), "")
    if not entry:
        raise BenchError(f"haproxy: no stick-table entry for {client}; `show table` said:\n{reply}")
    return entry.split(": ", 1)[-1]


def bench_rules() -> list[dict[str, Any]]:
    """20 rules, none of which matches GET /2b or /16k but the last: a throttle that never bites.

    So every benchmark request is tested against all 20 rules and pays for one throttle decision.
    """
    return [
        {
            "name": "registration-closed",
            "match": {"methods": ["POST"], "paths": ["/api/register", "/api/v1/users/register"]},
            "action": "close",
            "retry_after": "10m",
            "message": "Registration may be busy. Please try again later.",
        },
        {
            "name": "password-reset-closed",
            "match": {"methods": ["POST"], "paths": ["/api/v1/password/reset"]},
            "action": "close",
            "retry_after": "30m",
            "message": "Password resets are paused. Please try again later.",
        },
        {
            "name": "login",
            "match": {"paths": ["/api/login", "/api/v1/auth/login"]},
            "action": "throttle",
            "limit": "10/minute",
            "burst": 5,
            "key": "ip",
        },
        {
            "name": "otp-verify",
            "match": {"methods": ["POST"], "paths": ["/api/v1/auth/otp/*"]},
            "action": "throttle",
            "limit": "5/minute",
            "key": "ip",
        },
        {
            "name": "signup",
            "match": {"methods": ["POST"], "paths": ["/api/v1/users"]},
            "action": "throttle",
            "limit": "5/hour",
            "key": "ip",
        },
        {"name": "internal", "match": {"paths": ["/internal/**"]}, "action": "block"},
        {"name": "admin", "match": {"paths": ["/admin/**"]}, "action": "block"},
        {"name": "debug-header", "match": {"headers": {"X-Debug": "present"}}, "action": "block"},
        {
            "name": "wordpress-probes",
            "match": {"paths": ["/wp-login.php", "/wp-admin/**", "/xmlrpc.php"]},
            "action": "block",
        },
        {"name": "dotfiles", "match": {"paths": ["/.env", "/.git/**", "/.aws/**"]}, "action": "block"},
        {
            "name": "scrapers",
            "match": {"user_agents": ["(?i)python-requests", "(?i)scrapy", "(?i)curl/"]},
            "action": "block",
        },
        {
            "name": "trace-connect",
            "match": {"methods": ["TRACE", "CONNECT"]},
            "action": "block",
        },
        {
            "name": "search",
            "match": {"methods": ["GET"], "paths": ["/api/v1/search", "/api/v1/search/*"]},
            "action": "throttle",
            "limit": "30/minute",
            "key": "ip",
        },
        {
            "name": "report-export",
            "match": {"paths": ["/api/v1/reports/*/export"]},
            "action": "throttle",
            "limit": "5/minute",
            "key": "ip",
        },
        {
            "name": "uploads",
            "match": {"methods": ["POST", "PUT"], "paths": ["/api/v1/uploads/**"]},
            "action": "throttle",
            "limit": "20/minute",
            "key": "ip",
        },
        {
            "name": "graphql",
            "match": {"methods": ["POST"], "paths": ["/graphql"]},
            "action": "throttle",
            "limit": "120/minute",
            "key": "ip",
        },
        {
            "name": "partner-api",
            "match": {"paths": ["/api/partner/**"], "headers": {"X-Api-Key": "present"}},
            "action": "throttle",
            "limit": "100/10s",
            "key": "header:X-Api-Key",
        },
        {
            "name": "legacy-host",
            "match": {"hosts": ["legacy.example.com", "*.legacy.example.com"]},
            "action": "throttle",
            "limit": "1000/second",
            "key": "route",
        },
        {
            "name": "api-anonymous",
            "match": {"paths": ["/api/**"]},
            "action": "throttle",
            "limit": "600/minute",
            "key": "ip",
        },
        {
            "name": "everything-else",
            "match": {"paths": ["/**"]},
            "action": "throttle",
            "limit": "1000000/second",
            "key": "ip",
        },
    ]


LAST_RULE = "everything-else"


def shield_config(
    port: int,
    admin_port: int,
    upstream_port: int,
    rules: bool,
    redis_url: str | None = None,
    workers: int = 1,
) -> str:
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "upstream": f"http://127.0.0.1:{upstream_port}",
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
    }
    if rules:
        config["rules"] = bench_rules()
        assert len(config["rules"]) == RULE_COUNT and config["rules"][-1]["name"] == LAST_RULE
    if redis_url is not None:
        config["state"] = {"backend": "redis", "url": redis_url, "key_prefix": f"bench:{os.getpid()}:"}
    if workers > 1:
        config["workers"] = workers
        config["state"] = {"backend": "memory", "per_worker_limits": True}  # the throttle never triggers
    text: str = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
    return text


# ---------------------------------------------------------------------------------------------
# wrk


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    # Busy share of the proxy core and of the load core (wrk + upstream) during the run, in %.
    cpu_proxy_pct: float = float("nan")
    cpu_load_pct: float = float("nan")
    # The largest share of either core used by processes this benchmark did not start, in %.
    cpu_other_pct: float = float("nan")
    # CPU time (user + system) of the target's processes per request, in µs: all of a proxy's
    # processes (nginx's master and worker, Shield's workers), whichever core they ran on. Not
    # counted: the kernel's loopback work done in softirq on no process's account.
    proxy_cpu_us: float = float("nan")


# Process groups of everything this run started (and its own, which holds wrk). CPU time used by
# other processes (not kernel threads) on our cores is someone else's load, which skews the figures.
# (Comparing a core's busy time with our processes' time does not work: the kernel charges loopback
# TCP processing to softirq, not to the processes, and that is a quarter to half of a core here.)
OUR_GROUPS: set[int] = set()
# The process group of each target's proxy, for its CPU time per request.
TARGET_GROUPS: dict[str, int] = {}


@dataclass
class CpuSample:
    cores: dict[int, tuple[int, int]]  # cpu -> (busy, total) ticks, from /proc/stat
    others: dict[int, tuple[int, int]]  # pid -> (cpu, ticks) of user processes we did not start
    uptime: float  # seconds since boot, in clock ticks
    groups: dict[int, int]  # process group we started -> CPU ticks of its processes alive now


def cpu_sample() -> CpuSample:
    cores: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
                total = sum(values)
                cores[int(name[3:])] = (total - values[3] - values[4], total)
    uptime = float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK")
    others: dict[int, tuple[int, int]] = {}
    groups: Counter[int] = Counter()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(stat.parent.name)
            fields = stat.read_text().rpartition(")")[2].split()
            # After "(comm)": state ppid pgrp ... utime(12) stime(13) ... processor(37).
            ticks = int(fields[11]) + int(fields[12])
            if int(fields[2]) in OUR_GROUPS:
                groups[int(fields[2])] += ticks
            elif pid != 2 and int(fields[1]) != 2:
                # The processor it last ran on: exact for pinned processes, a guess for the rest.
                others[pid] = (int(fields[36]), ticks)
    return CpuSample(cores, others, uptime, dict(groups))


def busy_pct(before: CpuSample, after: CpuSample, cpu: int) -> float:
    if cpu not in before.cores or cpu not in after.cores:
        return float("nan")
    busy = after.cores[cpu][0] - before.cores[cpu][0]
    total = after.cores[cpu][1] - before.cores[cpu][1]
    return 100 * busy / total if total > 0 else float("nan")


def _start_ticks(pid: int) -> float:
    try:
        return float(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return 0.0  # gone: count nothing


def other_pct(before: CpuSample, after: CpuSample, cpus: tuple[int, ...]) -> float:
    """The largest share of one of ``cpus`` used by user processes that are not ours, in %.

    Approximate: a process that exits in between loses its time, one that migrates counts where
    it ran last."""
    used: Counter[int] = Counter()
    for pid, (cpu, ticks) in after.others.items():
        if pid in before.others:
            used[cpu] += max(0, ticks - before.others[pid][1])
        elif _start_ticks(pid) >= before.uptime:  # started in between: all its time is inside
            used[cpu] += ticks
    worst = 0.0
    for cpu in cpus:
        if cpu not in before.cores or cpu not in after.cores:
            continue
        total = after.cores[cpu][1] - before.cores[cpu][1]
        others = used[cpu]
        if total > 0:
            worst = max(worst, 100 * others / total)
    return worst


def wait_quiet(args: argparse.Namespace, label: str) -> CpuSample:
    """Wait (up to --quiet-wait seconds) until no one else loads our cores; the last sample."""
    cpus = (args.proxy_cpu, args.load_cpu)
    deadline = time.monotonic() + args.quiet_wait
    before = cpu_sample()
    waited = False
    while True:
        time.sleep(0.25)
        after = cpu_sample()
        other = other_pct(before, after, cpus)
        if other <= OTHER_LOAD_LIMIT:
            if waited:
                print(f"{label}: cores quiet again", flush=True)
            return after
        if time.monotonic() > deadline:
            print(f"warning: {label}: other processes still use {other:.0f}% of a core; running anyway")
            return after
        if not waited:
            print(f"{label}: other processes use {other:.0f}% of a core: waiting for quiet", flush=True)
            waited = True
        before = after


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise BenchError(f"cannot parse wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    total = re.search(r"^\s+(\d+) requests in", output, re.M)
    if not (rps and p50 and p99 and total):
        raise BenchError(f"cannot parse wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = {}
    if errors:
        socket_errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True)
        )
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=to_ms(p50.group(1)),
        p99_ms=to_ms(p99.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def wrk_argv(args: argparse.Namespace, tools: dict[str, str], url: str, duration: float) -> list[str]:
    return [
        tools["taskset"], "-c", str(args.load_cpu), tools["wrk"],
        f"-t{args.threads}", f"-c{args.connections}", f"-d{duration:g}s", "--latency", url,
    ]  # fmt: skip


def run_wrk(
    args: argparse.Namespace,
    tools: dict[str, str],
    label: str,
    url: str,
    duration: float,
    wait: bool = True,
    group: int | None = None,
) -> WrkResult:
    argv = wrk_argv(args, tools, url, duration)
    before = wait_quiet(args, label) if wait else cpu_sample()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    after = cpu_sample()
    if proc.returncode != 0:
        raise BenchError(f"{label}: wrk exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    result = parse_wrk(proc.stdout)
    result.cpu_proxy_pct = busy_pct(before, after, args.proxy_cpu)
    result.cpu_load_pct = busy_pct(before, after, args.load_cpu)
    result.cpu_other_pct = other_pct(before, after, (args.proxy_cpu, args.load_cpu))
    if group is not None and group in before.groups and group in after.groups and result.requests:
        ticks = after.groups[group] - before.groups[group]
        result.proxy_cpu_us = ticks / os.sysconf("SC_CLK_TCK") / result.requests * 1e6
    if result.cpu_other_pct > OTHER_LOAD_LIMIT:
        print(f"warning: {label}: other processes used {result.cpu_other_pct:.0f}% of a core", flush=True)
    problems = []
    if result.non_2xx:
        problems.append(f"{result.non_2xx} non-2xx/3xx responses")
    if any(result.socket_errors.values()):
        problems.append(f"socket errors {result.socket_errors}")
    if result.requests == 0:
        problems.append("no requests completed")
    if problems:
        raise BenchError(f"{label}: {'; '.join(problems)}\n$ {shlex.join(argv)}\n{proc.stdout}")
    return result


# ---------------------------------------------------------------------------------------------
# Profile


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def top_self_frames(raw: str, limit: int = 25) -> tuple[int, list[tuple[str, int]]]:
    """py-spy's raw (collapsed) stacks -> total samples and the frames most often on top."""
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        leaf = stack.split(";")[-1]
        if leaf.startswith("process ") and ";" not in stack:
            leaf = "<no Python frame: native code (uvloop, llhttp, the kernel)>"
        match = _FRAME.match(leaf)
        if match:
            file = match.group("file")
            with contextlib.suppress(ValueError):
                file = str(Path(file).relative_to(REPO))
            leaf = f"{match.group('func')} ({file})"
        leaves[leaf] += count
    return total, leaves.most_common(limit)


def profile_run(
    args: argparse.Namespace, tools: dict[str, str], target: str, server: Server, url: str, root: Path
) -> dict[str, Any]:
    py_spy = ensure_py_spy()
    out = root / "profile.txt"
    duration = max(2, int(args.duration) - 1)
    argv = [
        py_spy, "record", "--pid", str(server.proc.pid), "--subprocesses", "--nonblocking",
        "--rate", "250", "--duration", str(duration), "--format", "raw", "--output", str(out),
    ]  # fmt: skip
    print(f"\nprofiling {target} on {url} with py-spy ({duration}s): {shlex.join(argv)}", flush=True)
    wait_quiet(args, f"{target} (profiled)")  # before py-spy starts its clock
    spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.3)
        result = run_wrk(args, tools, f"{target} (profiled)", url, args.duration, wait=False)
        spy_out, _ = spy.communicate(timeout=duration + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed ({spy.returncode}):\n{spy_out}")
    total, top = top_self_frames(out.read_text())
    if total == 0:
        raise BenchError(f"py-spy recorded no samples of {target}:\n{spy_out}")
    print(f"{target} under py-spy: {result.rps:,.0f} req/s; {total} samples (idle excluded)")
    print(f"top {len(top)} frames by self time:")
    for frame, count in top:
        print(f"  {100 * count / max(total, 1):5.1f}%  {count:7d}  {frame}")
    return {
        "target": target,
        "url": url,
        "rps_under_profiler": result.rps,
        "samples": total,
        "top_self": [{"frame": frame, "samples": count} for frame, count in top],
    }


# ---------------------------------------------------------------------------------------------
# Report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: dict[str, dict[str, list[WrkResult]]]) -> dict[str, dict[str, dict[str, Any]]]:
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for path, by_target in runs.items():
        summary[path] = {}
        for target, results in by_target.items():
            rps = [r.rps for r in results]
            summary[path][target] = {
                "rps": median(rps),
                "p50_ms": median([r.p50_ms for r in results]),
                "p99_ms": median([r.p99_ms for r in results]),
                "cpu_proxy_pct": median([r.cpu_proxy_pct for r in results]),
                "cpu_load_pct": median([r.cpu_load_pct for r in results]),
                "cpu_other_pct_max": max(r.cpu_other_pct for r in results),
                "proxy_cpu_us": median([r.proxy_cpu_us for r in results]),
                "rps_spread_pct": 100 * (max(rps) - min(rps)) / median(rps) if rps else float("nan"),
                "rounds": [asdict(r) for r in results],
            }
        base_nginx = summary[path].get("nginx")
        base_direct = summary[path].get("direct")
        for row in summary[path].values():
            row["rps_vs_nginx"] = row["rps"] / base_nginx["rps"] if base_nginx else None
            row["rps_vs_direct"] = row["rps"] / base_direct["rps"] if base_direct else None
            row["p99_vs_nginx"] = row["p99_ms"] / base_nginx["p99_ms"] if base_nginx else None
    return summary


def fmt_ms(value: float) -> str:
    return f"{value * 1000:.0f}us" if value < 1 else f"{value:.2f}ms"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(summary: dict[str, dict[str, dict[str, Any]]], proxy_cpu: int, load_cpu: int) -> None:
    header = (
        *("path", "target", "req/s", "spread", "p50", "p99", "rps/nginx", "rps/direct", "p99/nginx"),
        *(f"cpu{proxy_cpu}", f"cpu{load_cpu}", "other", "cpu/req"),
    )
    rows: list[tuple[str, ...]] = [header]
    for path, by_target in summary.items():
        for target, row in by_target.items():
            rows.append(
                (
                    path,
                    target,
                    f"{row['rps']:,.0f}",
                    f"±{row['rps_spread_pct'] / 2:.1f}%",
                    fmt_ms(row["p50_ms"]),
                    fmt_ms(row["p99_ms"]),
                    fmt_ratio(row["rps_vs_nginx"]),
                    fmt_ratio(row["rps_vs_direct"]),
                    fmt_ratio(row["p99_vs_nginx"]),
                    f"{row['cpu_proxy_pct']:.0f}%",
                    f"{row['cpu_load_pct']:.0f}%",
                    f"{row['cpu_other_pct_max']:.0f}%",
                    "-" if row["proxy_cpu_us"] != row["proxy_cpu_us"] else f"{row['proxy_cpu_us']:.1f}us",
                )
            )
    widths = [max(len(line[i]) for line in rows) for i in range(len(header))]
    for index, line in enumerate(rows):
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))


def scrape_decisions(admin_url: str) -> dict[str, float]:
    """``shield_requests_total`` by rule/action/decision, from the admin /metrics page."""
    _, body = http_get(admin_url + "/metrics", timeout=5)
    decisions: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("shield_requests_total{"):
            labels, _, value = line.rpartition(" ")
            decisions[labels.removeprefix("shield_requests_total")] = float(value)
    return decisions


# ---------------------------------------------------------------------------------------------
# Main


def scrape_batching(admin_url: str) -> dict[str, float]:
    """How many throttle decisions each Redis call carried, from Shield's own counters."""
    _, body = http_get(admin_url + "/metrics")
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        for name in ("calls", "decisions", "errors"):
            if line.startswith(f'shield_state_{name}_total{{backend="redis"}}'):
                values[name] = float(line.rsplit(" ", 1)[1])
    calls = values.get("calls", 0.0)
    return {**values, "per_call": values.get("decisions", 0.0) / calls if calls else 0.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per target and path")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}"
    )
    parser.add_argument(
        "--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}"
    )
    parser.add_argument("--proxy-cpu", type=int, default=0, help="core for the proxies (default 0)")
    parser.add_argument("--load-cpu", type=int, default=1, help="core for wrk and the upstream (default 1)")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="auto",
        choices=["auto", *SHIELDS],
        help="after the measurements, profile a Shield (default: shield+rules if available) on /2b "
        "with py-spy and print the top 25 self-time frames",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="before each run, wait up to this many seconds for other processes to leave the cores idle",
    )
    parser.add_argument(
        "--redis-url",
        default="own",
        help="the Redis of target shield+redis: 'own' (the default) starts a redis-server pinned "
        "to the load core, as the upstream is, so Redis's own work does not land on the proxy's "
        "core (in production it runs on another machine); or the URL of one already running",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.json", help="the JSON results")
    parser.add_argument(
        "--print-rules", action="store_true", help="print the 20 rules as a rule file's rules: and exit"
    )
    args = parser.parse_args(argv)
    args.target_list = [t for t in args.targets.split(",") if t]
    args.path_list = [p for p in args.paths.split(",") if p]
    if unknown := [t for t in args.target_list if t not in TARGETS]:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    if unknown := [p for p in args.path_list if p not in PATHS]:
        parser.error(f"unknown paths {unknown}; choose from {', '.join(PATHS)}")
    if args.rounds < 1 or args.duration < 1 or args.connections < 1:
        parser.error("--rounds, --duration and --connections must be positive")
    return args


def check_cpus(args: argparse.Namespace) -> None:
    available = sorted(os.sched_getaffinity(0))
    for option, cpu in (("--proxy-cpu", args.proxy_cpu), ("--load-cpu", args.load_cpu)):
        if cpu not in available:
            raise BenchError(f"{option} {cpu}: this process may only use CPUs {available}")
    if args.proxy_cpu == args.load_cpu:
        print("warning: proxies and load generator share a core: the figures mean little", file=sys.stderr)


def start_servers(
    args: argparse.Namespace, tools: dict[str, str], procs: Processes, root: Path, meta: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Server], dict[str, str]]:
    """Start what the targets need: base URL per target, the Shield servers, their admin URLs."""
    urls: dict[str, str] = {}
    shields: dict[str, Server] = {}
    admin_urls: dict[str, str] = {}
    proxy_cpu, load_cpu = str(args.proxy_cpu), str(args.load_cpu)

    upstream_port = free_port()
    conf = root / "upstream.conf"
    conf.write_text(upstream_nginx_conf(root, upstream_port))
    nginx_argv = [tools["nginx"], "-p", str(root), "-e", str(root / "upstream-error.log"), "-c", str(conf)]
    upstream = procs.start(
        "upstream nginx", [tools["taskset"], "-c", load_cpu, *nginx_argv], root / "upstream.out"
    )
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    wait_ready(upstream, upstream_url)
    urls["direct"] = upstream_url

    redis_url = args.redis_url
    if "shield+redis" in args.target_list and redis_url == "own":
        redis_url = start_redis(tools, procs, root, load_cpu)
        meta["redis"] = redis_url

    for target, name in NGINX_PROXIES.items():
        if target not in args.target_list:
            continue
        port = free_port()
        conf = root / f"{name}.conf"
        conf.write_text(proxy_nginx_conf(root, name, port, upstream_port, limit=target == "nginx+limit"))
        nginx_argv = [tools["nginx"], "-p", str(root), "-e", str(root / f"{name}-error.log"), "-c", str(conf)]
        argv = [tools["taskset"], "-c", proxy_cpu, *nginx_argv]
        proxy = procs.start(f"{target} proxy", argv, root / f"{name}.out")
        TARGET_GROUPS[target] = proxy.proc.pid
        urls[target] = f"http://127.0.0.1:{port}"
        wait_ready(proxy, urls[target])
        meta["commands"][target] = shlex.join(argv)
        meta["configs"][target] = conf.read_text()

    if "haproxy" in args.target_list:
        port = free_port()
        conf = root / "haproxy.cfg"
        conf.write_text(haproxy_conf(root, port, upstream_port))
        # -db: in the foreground, one process, so stopping its group stops it.
        argv = [tools["taskset"], "-c", proxy_cpu, tools["haproxy"], "-db", "-f", str(conf)]
        proxy = procs.start("haproxy", argv, root / "haproxy.out")
        TARGET_GROUPS["haproxy"] = proxy.proc.pid
        urls["haproxy"] = f"http://127.0.0.1:{port}"
        wait_ready(proxy, urls["haproxy"])
        meta["commands"]["haproxy"] = shlex.join(argv)
        meta["configs"]["haproxy"] = conf.read_text()

    shield = shield_bin()
    for target in SHIELDS:
        if target not in args.target_list:
            continue
        port, admin_port = free_port(), free_port()
        conf = root / f"{target}.yaml"
        conf.write_text(
            shield_config(
                port,
                admin_port,
                upstream_port,
                rules=target in WITH_RULES,
                redis_url=redis_url if target == "shield+redis" else None,
                workers=WORKERS.get(target, 1),
            )
        )
        if target in WITH_RULES:
            check = subprocess.run([shield, "check", "-c", str(conf)], capture_output=True, text=True)
            if check.returncode != 0:
                reason = first_line(check.stderr) or first_line(check.stdout) or f"exit {check.returncode}"
                print(f"{target}: skipped ({reason})", flush=True)
                meta["skipped"][target] = reason
                continue
            print(f"shield check: {first_line(check.stdout)}")
            if warnings := check.stderr.strip():
                print(f"shield check warnings:\n{warnings}")
            explain = subprocess.run(
                [shield, "explain", "-c", str(conf), "GET", "/2b"], capture_output=True, text=True
            )
            if explain.returncode == 0:
                print(f"shield explain GET /2b:\n{explain.stdout.rstrip()}")
            meta["rules_config"] = conf.read_text()
        # Several workers get both cores (one core would only time-share them); wrk and the upstream
        # stay pinned to the load core, so there the workers compete with them.
        cpus = proxy_cpu if target not in WORKERS else f"{proxy_cpu},{load_cpu}"
        argv = [tools["taskset"], "-c", cpus, shield, "--log-level", "WARNING", "run", "-c", str(conf)]
        server = procs.start(target, argv, root / f"{target}.out")
        TARGET_GROUPS[target] = server.proc.pid
        urls[target] = f"http://127.0.0.1:{port}"
        admin_urls[target] = f"http://127.0.0.1:{admin_port}"
        wait_ready(server, urls[target])
        shields[target] = server
        meta["commands"][target] = shlex.join(argv)
    return urls, shields, admin_urls


def start_redis(tools: dict[str, str], procs: Processes, root: Path, cpu: str) -> str:
    """A redis-server of this run's own, on the load core, keeping nothing on disk."""
    server = shutil.which("redis-server")
    if server is None:
        raise BenchError("redis-server not found: install redis-server, or pass --redis-url URL")
    port = free_port()
    argv = [tools["taskset"], "-c", cpu, server, "--bind", "127.0.0.1", "--port", str(port)]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(root)]
    redis = procs.start("redis", argv, root / "redis.out")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not redis.alive():
            raise BenchError(f"redis-server exited; its log:\n{redis.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"redis-server on port {port} did not answer PING")


def bench(
    args: argparse.Namespace, tools: dict[str, str], root: Path, meta: dict[str, Any]
) -> dict[str, Any]:
    procs = Processes()
    try:
        urls, shields, admin_urls = start_servers(args, tools, procs, root, meta)
        targets = [t for t in args.target_list if t in urls]
        meta["wrk_command"] = shlex.join(wrk_argv(args, tools, "URL", args.duration))
        print(f"wrk: {meta['wrk_command']}", flush=True)

        for target in targets:
            for path in args.path_list:
                run_wrk(args, tools, f"warm-up {target} {path}", urls[target] + path, args.warmup)
        print(f"warmed up {', '.join(targets)} ({args.warmup:g}s per target and path)", flush=True)

        runs: dict[str, dict[str, list[WrkResult]]] = {p: {t: [] for t in targets} for p in args.path_list}
        for round_no in range(args.rounds):
            # Rotate the order each round so no target always runs first (or right after another).
            order = targets[round_no % len(targets) :] + targets[: round_no % len(targets)]
            for path in args.path_list:
                for target in order:
                    for server in procs.servers:
                        if not server.alive():
                            raise BenchError(f"{server.name} died; its log:\n{server.log_tail()}")
                    label = f"round {round_no + 1}/{args.rounds} {path} {target}"
                    result = run_wrk(
                        args,
                        tools,
                        label,
                        urls[target] + path,
                        args.duration,
                        group=TARGET_GROUPS.get(target),
                    )
                    runs[path][target].append(result)
                    print(
                        f"{label:<34} {result.rps:>10,.0f} req/s  p50 {fmt_ms(result.p50_ms):>8}  "
                        f"p99 {fmt_ms(result.p99_ms):>8}  cpu{args.proxy_cpu} {result.cpu_proxy_pct:3.0f}%  "
                        f"cpu{args.load_cpu} {result.cpu_load_pct:3.0f}%  other {result.cpu_other_pct:2.0f}%"
                        f"  {result.proxy_cpu_us:5.1f} us/req",
                        flush=True,
                    )

        for target, admin_url in admin_urls.items():
            decisions = scrape_decisions(admin_url)
            meta["decisions"][target] = decisions
            if target in WITH_RULES:
                wrong = {k: v for k, v in decisions.items() if f'rule="{LAST_RULE}"' not in k and v}
                if wrong or not decisions:
                    raise BenchError(
                        f"{target}: requests decided by other rules than {LAST_RULE}: {decisions}"
                    )
            if target == "shield+redis":
                batching = scrape_batching(admin_url)
                meta["redis_batching"] = batching
                print(
                    f"shield+redis: {batching['decisions']:,.0f} decisions in {batching['calls']:,.0f} Redis "
                    f"calls ({batching['per_call']:.1f} per call), {batching['errors']:,.0f} errors"
                )
        for target, decisions in meta["decisions"].items():
            print(f"{target} decisions: " + ", ".join(f"{k} {v:,.0f}" for k, v in decisions.items()))
        if "haproxy" in urls:
            entry = haproxy_tracked(root / "haproxy.sock")
            meta["haproxy_table"] = entry
            print(f"haproxy stick table: {entry}")

        profile = None
        if args.profile:
            target = args.profile
            if target == "auto":
                target = "shield+rules" if "shield+rules" in shields else "shield"
            if target not in shields:
                print(f"--profile: {target} is not running; no profile", file=sys.stderr)
            else:
                path = "/2b" if "/2b" in args.path_list else args.path_list[0]
                profile = profile_run(args, tools, target, shields[target], urls[target] + path, root)
        return {"summary": summarize(runs), "profile": profile}
    except BenchError:
        for server in procs.servers:
            if not server.alive():
                print(
                    f"{server.name} exited ({server.proc.returncode}):\n{server.log_tail()}", file=sys.stderr
                )
        raise
    finally:
        procs.stop_all()


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_rules:
        print(yaml.safe_dump({"rules": bench_rules()}, sort_keys=False), end="")
        return 0
    if threading.current_thread() is threading.main_thread():
        # Even when started from a script that ignores SIGINT: Ctrl-C and kill -INT must clean up.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _exit_on_signal)
        signal.signal(signal.SIGHUP, _exit_on_signal)
    command = shlex.join([sys.executable, *(sys.argv if argv is None else [__file__, *argv])])
    started = datetime.datetime.now(datetime.UTC)
    OUR_GROUPS.add(os.getpgrp())  # wrk runs in ours
    try:
        check_cpus(args)
        tools = ensure_tools(needed_tools(args.target_list))
        env = environment(tools)
        print(f"command: {command}")
        for key, value in env.items():
            print(f"{key + ':':<11}{value}")
        print(
            f"settings:  {args.rounds} rounds x {args.duration:g}s, {args.connections} connections, "
            f"{args.threads} wrk thread(s); proxies on core {args.proxy_cpu}, "
            f"wrk and upstream on core {args.load_cpu}",
            flush=True,
        )
        meta: dict[str, Any] = {"skipped": {}, "commands": {}, "configs": {}, "decisions": {}}
        with tempfile.TemporaryDirectory(prefix="shield-bench-") as tmp:
            outcome = bench(args, tools, Path(tmp), meta)
    except BenchError as error:
        print(f"\nBENCHMARK FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except SystemExit as exit_:
        print(
            f"\nstopped by a signal; every process started was stopped (exit {exit_.code})", file=sys.stderr
        )
        raise

    summary = outcome["summary"]
    print(f"\nmedians over {args.rounds} rounds; spread = ±half the req/s range across rounds")
    print_table(summary, args.proxy_cpu, args.load_cpu)
    print(
        f"cpu{args.proxy_cpu}: busy share of the proxy core; cpu{args.load_cpu}: of the core wrk and the "
        "upstream share (near 100% there means the load side, not the proxy, set the pace); other: the\n"
        "largest share of either core used by user processes the benchmark did not start, worst round"
    )
    for path, by_target in summary.items():
        if "shield+redis" in by_target and "shield+rules" in by_target:
            ratio = by_target["shield+redis"]["rps"] / by_target["shield+rules"]["rps"]
            print(f"{path}: shield+redis keeps {ratio:.2f}x the throughput of shield+rules (memory state)")
    for target, reason in meta["skipped"].items():
        print(f"{target}: skipped ({reason})")
    print(f"\ncommand: {command}")
    print(f"wrk:     {meta['wrk_command']}")
    haproxy = f"{env['haproxy']}; " if "haproxy" in env else ""
    print(
        f"versions: {env['nginx']}; {haproxy}{env['wrk']}; Python {sys.version.split()[0]}; "
        f"aiohttp {env['aiohttp']}"
    )
    print(f"nproc:   {env['nproc']}")

    report = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {
            key: getattr(args, key)
            for key in ("duration", "rounds", "connections", "threads", "warmup", "proxy_cpu", "load_cpu")
        }
        | {"targets": args.target_list, "paths": args.path_list},
        "environment": env,
        **meta,
        "results": summary,
        "profile": outcome["profile"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

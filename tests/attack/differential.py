#!/usr/bin/env python3
"""Differential HTTP/1.1 probe: the same raw bytes through Shield, HAProxy and nginx.

Run by hand from the repository root (it asserts nothing; see tests/attack/README.md)::

    .venv/bin/python tests/attack/differential.py [--only NAME] [--markdown] [--raw]

It starts one raw-recording upstream per proxy (``recorder.py``, in this process), Shield, HAProxy
and nginx in front of them on free 127.0.0.1 ports under a temporary directory, sends every probe
of ``probes.py`` to the three proxies at once, and prints what each client saw and what each
upstream received. Everything it starts is stopped on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.attack.probes import HOST, PROBES, Probe  # noqa: E402
from tests.attack.recorder import Recorder, Request, frame_chunked, split_head  # noqa: E402

LOOPBACK = "127.0.0.1"
READ_WINDOW = 1.5  # seconds to read after the last write
IDLE_DONE = 0.4  # stop earlier once the answers are complete and nothing came for this long
WRITE_LIMIT = 5.0  # a write the proxy does not read is abandoned after this
BODY_LIMIT = 1024
NOTABLE = ("x-trailer", "location", "set-cookie")


class SetupError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Processes


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidate = f"/usr/sbin/{name}"
    return candidate if os.access(candidate, os.X_OK) else None


def ensure_tools() -> None:
    """haproxy and nginx, installed with apt-get when missing (apt-get update and again on failure)."""
    missing = [name for name in ("haproxy", "nginx") if find_tool(name) is None]
    if not missing or not shutil.which("apt-get"):
        return
    print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *missing]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class Processes:
    """Child processes, each in its own session, stopped (whole group) by ``stop_all``."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def shield_config(port: int, admin: int, upstream: int) -> str:
    return (
        f"listen: {LOOPBACK}:{port}\n"
        f"upstream: http://{LOOPBACK}:{upstream}\n"
        f"admin: {{listen: {LOOPBACK}:{admin}}}\n"
        "limits: {max_body_size: 1KiB}\n"
    )


def haproxy_config(port: int, upstream: int) -> str:
    return textwrap.dedent(f"""\
        global
            maxconn 256
        defaults
            mode http
            option http-keep-alive
            timeout connect 2s
            timeout client 10s
            timeout server 10s
        frontend probe
            bind {LOOPBACK}:{port}
            http-request deny deny_status 413 if {{ req.hdr_val(content-length) gt {BODY_LIMIT} }}
            default_backend recorder
        backend recorder
            server recorder {LOOPBACK}:{upstream}
        """)


def nginx_config(root: Path, port: int, upstream: int) -> str:
    temp = " ".join(f"{kind}_temp_path {root}/{kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi"))
    return textwrap.dedent(f"""\
        daemon off;
        master_process off;
        worker_processes 1;
        pid {root}/nginx.pid;
        error_log {root}/nginx-error.log info;
        events {{ worker_connections 256; }}
        http {{
            access_log off;
            client_body_temp_path {root}/client_body;
            {temp}
            upstream recorder {{ server {LOOPBACK}:{upstream}; keepalive 16; }}
            server {{
                listen {LOOPBACK}:{port};
                client_max_body_size 1k;
                location / {{
                    proxy_pass http://recorder;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_set_header Host $host;
                }}
            }}
        }}
        """)


@dataclass
class Target:
    name: str
    recorder: Recorder
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    error: str = ""


async def answers_http(port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), 1)
    except (TimeoutError, OSError):
        return False
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: " + HOST + b"\r\nConnection: close\r\n\r\n")
        line = await asyncio.wait_for(reader.readline(), 2)
        return line.startswith(b"HTTP/1.")
    except (TimeoutError, OSError):
        return False
    finally:
        writer.close()


async def start_target(target: Target, argv: list[str], root: Path, procs: Processes) -> None:
    target.log = root / f"{target.name}.out"
    target.proc = procs.start(argv, target.log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            break
        if await answers_http(target.port):
            return
        await asyncio.sleep(0.2)
    tail = target.log.read_text(errors="replace").strip().splitlines()[-5:]
    target.error = f"{target.name} did not start: " + " / ".join(tail)
    print(target.error, file=sys.stderr, flush=True)


def launch_argv(target: Target, root: Path, upstream: int) -> list[str]:
    """Write the target's config under ``root``; its command line."""
    conf = root / f"{target.name.lower()}.conf"
    if target.name == "Shield":
        conf.write_text(shield_config(target.port, free_port(), upstream))
        shield = Path(sys.executable).parent / "shield"
        if not shield.exists():
            shield = REPO / ".venv/bin/shield"
        return [str(shield), "run", "-c", str(conf)]
    if target.name == "HAProxy":
        conf.write_text(haproxy_config(target.port, upstream))
        return [find_tool("haproxy") or "haproxy", "-db", "-f", str(conf)]
    conf.write_text(nginx_config(root, target.port, upstream))
    log = str(root / "nginx-error.log")
    return [find_tool("nginx") or "nginx", "-p", str(root), "-e", log, "-c", str(conf)]


async def start_all(targets: list[Target], root: Path, procs: Processes) -> None:
    for target in targets:
        upstream = await target.recorder.start(LOOPBACK)
        target.port = free_port()
        try:
            await start_target(target, launch_argv(target, root, upstream), root, procs)
        except OSError as error:
            target.error = f"{target.name} did not start: {error}"


# ---------------------------------------------------------------------------------------------
# One probe against one proxy


@dataclass
class Response:
    status: str
    headers: list[tuple[bytes, bytes]]
    body: int = 0
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class Outcome:
    client: str
    upstream: str
    raw_client: bytes = b""
    raw_upstream: list[bytes] = field(default_factory=list)


def parse_responses(data: bytes, first_is_head: bool, closed: bool) -> tuple[list[Response], bytes, bool]:
    """The responses in ``data``, the bytes left that are no response, and whether all are complete."""
    responses: list[Response] = []
    pos = 0
    head_pending = first_is_head
    while pos < len(data):
        if not data.startswith(b"HTTP/", pos):
            return responses, data[pos:], True
        match = re.compile(rb"\r?\n\r?\n").search(data, pos)
        if match is None:
            return responses, data[pos:], False
        line, headers = split_head(data[pos : match.start()])
        parts = line.split(b" ")
        response = Response(parts[1].decode("latin-1") if len(parts) > 1 else "?", headers)
        responses.append(response)
        pos = match.end()
        code = int(response.status) if response.status.isdigit() else 0
        if 100 <= code < 200 and code != 101:
            continue
        values = {name.strip().lower(): value.strip().lower() for name, value in headers}
        if head_pending or code in (204, 304):
            head_pending = False
            continue
        if code == 101:
            response.body, pos = len(data) - pos, len(data)
        elif b"chunked" in values.get(b"transfer-encoding", b""):
            framed = frame_chunked(data, pos)
            if framed is None:
                return responses, data[pos:], False
            if isinstance(framed, str):
                return responses, data[pos:], True
            body, response.trailers, pos = framed
            response.body = len(body)
        elif b"content-length" in values and values[b"content-length"].isdigit():
            size = int(values[b"content-length"])
            response.body = min(size, len(data) - pos)
            if len(data) - pos < size:
                return responses, b"", False
            pos += size
        else:
            response.body, pos = len(data) - pos, len(data)
            return responses, b"", closed
    return responses, b"", True


def settled(probe: Probe, data: bytes) -> bool:
    """All answers complete, and the last one neither an error nor ``Connection: close`` (after
    which we wait for the proxy to close, up to the read window)."""
    responses, rest, complete = parse_responses(data, probe.first_is_head, False)
    if not complete or rest or not responses:
        return False
    last = responses[-1]
    closing = any(n.strip().lower() == b"connection" and b"close" in v.lower() for n, v in last.headers)
    return not closing and last.status < "400"


def show(value: bytes, limit: int = 32) -> str:
    text = "".join(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_client(probe: Probe, data: bytes, state: str) -> str:
    responses, rest, complete = parse_responses(data, probe.first_is_head, state != "open")
    items = []
    for response in responses:
        notes = []
        for name, value in response.headers:
            key = name.strip().lower().decode("latin-1")
            plain_te = key == "transfer-encoding" and value.strip().lower() == b"chunked"
            if key in NOTABLE or key in probe.show or (key == "transfer-encoding" and not plain_te):
                notes.append(f"{name.strip().decode('latin-1')}={show(value, 20)}")
        notes += [f"trailer {show(name)}" for name, _ in response.trailers]
        if "body" in probe.show:
            notes.append(f"b={response.body}")
        items.append(response.status + (f"[{' '.join(notes)}]" if notes else ""))
    text = ",".join(items) or "no answer"
    if rest:
        text += f" +{len(rest)}B junk {show(rest, 16)!r}"
    if not complete:
        text += " (partial)"
    return f"{text} {state}"


def describe_request(probe: Probe, request: Request) -> str:
    parts = [show(request.line, 40)]
    hosts = request.values("host")
    if hosts != [HOST]:
        parts.append("Host=" + ("|".join(show(h, 24) for h in hosts) or "(none)"))
    agents = request.values("user-agent")
    if len(agents) > 1 or any(agent != b"probe" for agent in agents):
        parts.append("UA=" + "|".join(show(agent, 16) for agent in agents))
    xff = request.values("x-forwarded-for")
    if "x-forwarded-for" in probe.show or any(value != LOOPBACK.encode() for value in xff):
        parts.append("XFF=" + ("|".join(show(value) for value in xff) or "(none)"))
    for name, value in request.headers:
        key = name.strip().lower().decode("latin-1")
        short = {"transfer-encoding": "TE", "content-length": "CL", "authorization": "Auth"}.get(key)
        if name != name.strip() or not name:
            parts.append(f"odd-name={show(name, 20)!r}")
        elif key in ("host", "user-agent", "x-forwarded-for"):
            continue  # summarized above
        elif short or key in ("x-evil", "expect", "upgrade") or "_" in key or key in probe.show:
            parts.append(f"{short or show(name.strip(), 20)}={show(value, 24)}")
    if request.body or request.values("content-length") or request.values("transfer-encoding"):
        parts.append(f"b={len(request.body)}")
    if request.trailers:
        parts.append("trailers=" + ",".join(show(name, 16) for name, _ in request.trailers))
    return " ".join(parts)


def describe_upstream(probe: Probe, recorder: Recorder) -> str:
    conns = recorder.connections()
    items = [describe_request(probe, request) for request in recorder.requests()]
    for conn in conns:
        left = len(conn.data) - conn.consumed
        if left:
            why = f" ({conn.broken})" if conn.broken else ""
            items.append(f"+{left}B unframed{why} {show(bytes(conn.data[conn.consumed :]), 24)!r}")
    text = "; ".join(items) or "-"
    return f"[{len(conns)} conns] {text}" if len(conns) > 1 else text


async def send_probe(probe: Probe, target: Target) -> Outcome:
    recorder = target.recorder
    await recorder.reset()
    recorder.answers = dict(probe.answers)
    received = bytearray()
    state = "open"
    last = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, target.port), 2)
    except (TimeoutError, OSError) as error:
        return Outcome(f"connect failed: {error}", "-")

    async def read_all() -> None:
        nonlocal state, last
        try:
            while chunk := await reader.read(65536):
                received.extend(chunk)
                last = time.monotonic()
            state = "closed"
        except OSError:
            state = "reset"

    async def write_all() -> str:
        try:
            for index, data in enumerate(probe.writes):
                if index:
                    await asyncio.sleep(probe.pause)
                writer.write(data)
                await writer.drain()
        except OSError as error:
            return f" (write failed: {error.strerror or error})"
        return ""

    reading = None if probe.read_late else asyncio.create_task(read_all())
    try:
        write_note = await asyncio.wait_for(write_all(), WRITE_LIMIT)
    except TimeoutError:
        write_note = " (write stalled)"
    reading = reading or asyncio.create_task(read_all())
    done_writing = time.monotonic()
    while not reading.done() and time.monotonic() < done_writing + READ_WINDOW:
        await asyncio.sleep(0.05)
        if received and time.monotonic() - last > IDLE_DONE and settled(probe, bytes(received)):
            break
    if not reading.done():
        reading.cancel()
    writer.transport.abort()
    await asyncio.sleep(0.05)
    client = describe_client(probe, bytes(received), state) + write_note
    raw_upstream = [bytes(conn.data) for conn in recorder.connections()]
    return Outcome(client, describe_upstream(probe, recorder), bytes(received), raw_upstream)


# ---------------------------------------------------------------------------------------------
# Output


def text_table(rows: list[tuple[str, list[Outcome]]], names: list[str]) -> str:
    width = max(30, (shutil.get_terminal_size((180, 40)).columns - 24) // len(names) - 3)
    lines = [f"{'probe':<22} | " + " | ".join(f"{name:<{width}}" for name in names)]
    lines.append("-" * len(lines[0]))
    for probe_name, outcomes in rows:
        cells = []
        for outcome in outcomes:
            cell = textwrap.wrap("C: " + outcome.client, width, break_on_hyphens=False)
            cell += textwrap.wrap("U: " + outcome.upstream, width, break_on_hyphens=False)
            cells.append(cell)
        for index in range(max(len(cell) for cell in cells)):
            first = probe_name if index == 0 else ""
            texts = [cell[index] if index < len(cell) else "" for cell in cells]
            lines.append(f"{first:<22} | " + " | ".join(f"{text:<{width}}" for text in texts))
        lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def md(text: str) -> str:
    return text.replace("&", "&amp;").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown_table(rows: list[tuple[str, list[Outcome]]], names: list[str]) -> str:
    lines = ["| probe | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for probe_name, outcomes in rows:
        cells = [f"C: {md(o.client)}<br>U: {md(o.upstream)}" for o in outcomes]
        lines.append(f"| `{probe_name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(
    rows: list[tuple[str, list[Outcome]]], targets: list[Target], probes: list[Probe], markdown: bool
) -> None:
    names = [target.name for target in targets]
    print(markdown_table(rows, names) if markdown else text_table(rows, names))
    print()
    print("C: what the client got (statuses in order, notable headers, then open/closed/reset);")
    print("U: what the upstream got (request lines, notable headers, body length b=, unframed bytes).")
    for probe in probes:
        print(
            f"- `{probe.name}`: {probe.description}" if markdown else f"  {probe.name}: {probe.description}"
        )
    for target in targets:
        if target.error:
            print(f"note: {target.error}")


async def probe_all(args: argparse.Namespace, probes: list[Probe], targets: list[Target]) -> None:
    live = [target for target in targets if not target.error]
    rows: list[tuple[str, list[Outcome]]] = []
    for probe in probes:
        print(f"probe {probe.name}", file=sys.stderr, flush=True)
        results = await asyncio.gather(*(send_probe(probe, target) for target in live))
        outcomes = iter(results)
        rows.append(
            (probe.name, [Outcome("not started", "-") if t.error else next(outcomes) for t in targets])
        )
        if args.raw:
            for target, outcome in zip(live, results, strict=True):
                print(f"  {target.name} client got: {outcome.raw_client[:600]!r}", file=sys.stderr)
                for data in outcome.raw_upstream:
                    print(f"  {target.name} upstream got: {data[:600]!r}", file=sys.stderr)
        for target in live:
            await target.recorder.close_all()
        await asyncio.sleep(0.25)  # let the proxies see their upstream connections close
    report(rows, targets, probes, args.markdown)


async def run(args: argparse.Namespace, root: Path, procs: Processes) -> int:
    probes = [probe for probe in PROBES if args.only is None or args.only in probe.name]
    if not probes:
        print(f"no probe name contains {args.only!r}", file=sys.stderr)
        return 2
    main_task = asyncio.current_task()
    assert main_task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, main_task.cancel)
    targets = [Target(name, Recorder()) for name in ("Shield", "HAProxy", "nginx")]
    try:
        await start_all(targets, root, procs)
        if all(target.error for target in targets):
            return 1
        await probe_all(args, probes, targets)
        return 0
    finally:
        for target in targets:
            await target.recorder.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help="run only the probes whose name contains this text")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--raw", action="store_true", help="also print the raw bytes (stderr)")
    args = parser.parse_args()

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    ensure_tools()
    started = time.monotonic()
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="shield-attack-") as tmp:
            try:
                return asyncio.run(run(args, Path(tmp), procs))
            finally:
                procs.stop_all()
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        print(f"took {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""Small helpers the benchmark scripts share: a free local port, waiting for a server to answer,
a Shield config for one variant."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 15, interval: float = 0.1) -> None:
    """Return once ``url`` answers 200; exit with a message after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} never answered")
        time.sleep(interval)


def nginx_upstream(directory: Path, port: int) -> list[str]:
    """The command of an nginx answering ``ok`` on 127.0.0.1:``port`` (``GET /16k``: a static
    file of 16384 bytes, as ``run_bench.py``'s upstream serves), its config written into
    ``directory``: the upstream the A/B scripts put behind Shield."""
    (directory / "www").mkdir(exist_ok=True)
    (directory / "www" / "16k").write_bytes(b"x" * 16384)
    for readable in (directory, directory / "www"):  # by nginx's workers, which run as nobody
        readable.chmod(0o755)
    (directory / "nginx.conf").write_text(
        f"worker_processes 1; daemon off; pid {directory}/nginx.pid; error_log {directory}/error.log;\n"
        "events {}\nhttp { access_log off; keepalive_requests 1000000;\n"
        f"  server {{ listen 127.0.0.1:{port}; location / {{ return 200 ok; }}\n"
        f"    location = /16k {{ root {directory}/www; default_type application/octet-stream; }} }} }}\n"
    )
    return ["nginx", "-c", str(directory / "nginx.conf"), "-p", str(directory)]


def variant_config(port: int, admin_port: int, upstream_port: int, *extras: str) -> str:
    """A Shield config listening on ``port`` in front of ``upstream_port``, with each of
    ``extras`` (YAML text) merged in: an extra ``admin: {request_metrics: false}`` keeps the
    admin port, an extra ``rules:`` list is appended to the rules already there."""
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "upstream": f"http://127.0.0.1:{upstream_port}",
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
    }
    for extra in extras:
        for key, value in (yaml.safe_load(extra) or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            elif isinstance(value, list) and isinstance(config.get(key), list):
                config[key] = config[key] + value
            else:
                config[key] = value
    return str(yaml.safe_dump(config, sort_keys=False))

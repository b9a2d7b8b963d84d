"""Shared fixtures: a Shield started in-process in front of a test's own upstream, or as a
``shield run`` subprocess."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.app.server import Shield
from shield.config.model import ShieldConfig
from tests.explain_agreement import Agreement, comparing_every_decision

MakeShield = Callable[..., Awaitable[Shield]]


@pytest.fixture(autouse=True)
def explain_agrees() -> Iterator[Agreement]:
    """Every request an in-process Shield decides in any test is explained too; the test fails
    if ``shield explain`` would have said otherwise (``explain_agreement.py``)."""
    agreement = Agreement()
    with comparing_every_decision(agreement):
        yield agreement
    assert not agreement.disagreements, "\n".join(agreement.disagreements)


def shield_config(upstream_url: str, **sections: Any) -> ShieldConfig:
    """A config for tests: ephemeral public and admin ports, the given sections merged in."""
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"listen": {"host": "127.0.0.1", "port": 0}},
        "upstream": {"url": upstream_url},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return ShieldConfig.model_validate(data)


async def scraped(shield: Shield, counter: str) -> dict[str, float]:
    """A labelled counter's values (``shield_upstream_errors``: {"connect": 1.0, ...}), by its one
    label's value, scraped from the admin listener as Prometheus would."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{shield.admin_port}/metrics") as response,
    ):
        text = await response.text()
    values = {}
    for line in text.splitlines():
        if line.startswith(counter + "_total{"):
            labels, _, value = line.partition(" ")
            values[labels.split('"')[1]] = float(value)
    return values


@pytest.fixture
async def make_shield() -> AsyncIterator[MakeShield]:
    """``await make_shield(upstream_url, timeouts={...}, ...)`` starts a Shield; stopped after."""
    started: list[Shield] = []

    async def make(upstream_url: str, **sections: Any) -> Shield:
        shield = Shield(shield_config(upstream_url, **sections))
        await shield.start()
        started.append(shield)
        return shield

    yield make
    for shield in started:
        await shield.stop(grace=1.0)


# Debian's chromium, for the browser tests (scripts/test.sh installs it).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's chromium, headless, through Playwright (no browser download)."""
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        await browser.close()


async def metrics_text(shield: Shield) -> str:
    """What Prometheus reads from the admin listener of ``shield``."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{shield.admin_port}/metrics") as response,
    ):
        return await response.text()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for the test; no cap on its connections (tests fire requests at once)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest.fixture
def prefix() -> str:
    """A Redis key prefix of the test's own, so tests sharing a server never share keys."""
    return f"test:{uuid4().hex}:"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(aiohttp_server: AiohttpServer, handler: Handler) -> str:
    """Start a test upstream answering every method and path with ``handler``; its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def _ok(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


@pytest.fixture
async def upstream_url(aiohttp_server: AiohttpServer) -> str:
    """A test upstream that reads each request and answers 200 ``ok``."""
    return await serve(aiohttp_server, _ok)


@pytest.fixture
async def shields() -> AsyncIterator[list[Shield]]:
    """A list to append Shields a test starts itself; they are stopped after the test."""
    started: list[Shield] = []
    yield started
    for shield in started:
        await shield.stop(grace=0.5)


def free_port() -> int:
    """A TCP port free on loopback right now, for configs of subprocesses."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def url_of(shield: Shield, path: str = "/") -> str:
    return f"http://127.0.0.1:{shield.port}{path}"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry))
    return sorted(found)


@dataclass
class ShieldProcess:
    process: asyncio.subprocess.Process
    port: int
    admin_port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    async def exit_code(self, within: float) -> int:
        return await asyncio.wait_for(self.process.wait(), within)


StartShield = Callable[..., Awaitable[ShieldProcess]]


@pytest.fixture
async def run_shield(tmp_path: Path) -> AsyncIterator[StartShield]:
    """``await run_shield(upstream_url, "extra: yaml")``: ``shield run`` in a subprocess, serving.

    Each process gets its own config file and log (``shield-N.yaml``, ``shield-N.log``), so a
    test may run several side by side."""
    started: list[ShieldProcess] = []
    numbers = count(1)

    async def start(upstream_url: str, extra: str = "", admin: str = "") -> ShieldProcess:
        """``admin``: more keys of the admin section, e.g. ``ctl: {token_env: NAME}``."""
        port, admin_port = free_port(), free_port()
        number = next(numbers)
        config, log_path = tmp_path / f"shield-{number}.yaml", tmp_path / f"shield-{number}.log"
        more = f", {admin}" if admin else ""
        head = f"listen: 127.0.0.1:{port}\nupstream: {upstream_url}\n"
        config.write_text(f"{head}admin: {{listen: {admin_port}{more}}}\n{extra}")
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shield", "run", "-c", str(config), stdout=log, stderr=log
            )
        shield = ShieldProcess(process, port, admin_port)
        started.append(shield)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        async with aiohttp.ClientSession() as client:
            while True:
                assert process.returncode is None, log_path.read_text()
                try:
                    async with client.get(shield.admin_url("/healthz")) as response:
                        if response.status == 200:
                            return shield
                except aiohttp.ClientConnectionError:
                    pass
                assert loop.time() < deadline, "shield did not start"
                await asyncio.sleep(0.05)

    yield start
    for shield in started:
        for child in children_of(shield.pid):
            os.kill(child, signal.SIGKILL)
        if shield.process.returncode is None:
            shield.process.kill()
        await shield.process.wait()

"""Clients that vanish mid-request leave nothing behind: no sockets, no tasks, no upstream work.

Shield runs in-process so its tasks can be counted with ``asyncio.all_tasks()`` and its file
descriptors in /proc/self/fd; the upstream handlers count how they ended.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.app.server import Shield
from tests.conftest import MakeShield

CLIENTS = 10_000
CONCURRENCY = 200
CHUNK = b"x" * 1024


@dataclass
class Handlers:
    """How the upstream's handlers ended."""

    started: int = 0
    ended: Counter[str] = field(default_factory=Counter)
    running: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> int:
        return sum(self.ended.values())


def upstream_app(handlers: Handlers) -> web.Application:
    async def endless(request: web.Request) -> web.StreamResponse:
        """A body that trickles and never ends: only the connection closing stops it."""
        handlers.started += 1
        try:
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            while True:
                await response.write(CHUNK)
                await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            handlers.ended["cancelled"] += 1
            raise
        except ConnectionError:
            handlers.ended["connection lost"] += 1
            raise
        except BaseException:
            handlers.ended["other"] += 1
            raise

    async def slow_headers(request: web.Request) -> web.Response:
        handlers.started += 1
        handlers.running.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            handlers.ended["cancelled"] += 1
            raise
        handlers.ended["answered"] += 1
        return web.Response(text="too late")

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application()
    app.router.add_get("/endless", endless)
    app.router.add_get("/slow", slow_headers)
    app.router.add_get("/ping", ping)
    return app


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def connections(shield: Shield) -> int:
    """Client connections Shield holds, plus its open upstream connections."""
    assert shield._server is not None and shield.pool is not None
    return len(shield._server.connections) + shield.pool.open_connections


async def request_and_vanish(port: int, path: str, *, read_body: bool) -> None:
    """Send a GET, read the response head and a little body (or nothing), then reset the socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        if read_body:
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert await reader.read(1024)
    finally:
        # SO_LINGER 0: close with a reset, as a crashed or killed client does.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


async def settle(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds, failing after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "did not settle in time"
        await asyncio.sleep(0.05)


async def start(aiohttp_server: AiohttpServer, make_shield: MakeShield, handlers: Handlers) -> Shield:
    upstream = await aiohttp_server(upstream_app(handlers))
    # Idle upstream connections close quickly, so "nothing open" is reached soon after the traffic.
    shield = await make_shield(
        str(upstream.make_url("")).rstrip("/"), upstream={"pool": {"idle_timeout": 0.2}}
    )
    # One complete exchange first, so the baseline includes what a served request leaves behind.
    reader, writer = await asyncio.open_connection("127.0.0.1", shield.port)
    writer.write(b"GET /ping HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).endswith(b"pong")
    writer.close()
    await writer.wait_closed()
    await settle(lambda: shield.admin_state.upstream_seen)
    return shield


async def test_ten_thousand_clients_vanishing_mid_stream_leave_nothing_behind(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    handlers = Handlers()
    shield = await start(aiohttp_server, make_shield, handlers)
    await settle(lambda: connections(shield) == 0)
    fds, tasks = open_fds(), len(asyncio.all_tasks())

    gate = asyncio.Semaphore(CONCURRENCY)

    async def client() -> None:
        async with gate:
            await request_and_vanish(shield.port, "/endless", read_body=True)

    await asyncio.gather(*(client() for _ in range(CLIENTS)))

    await settle(lambda: handlers.finished == CLIENTS)
    await settle(lambda: connections(shield) == 0)
    await settle(lambda: len(asyncio.all_tasks()) <= tasks)
    await settle(lambda: open_fds() <= fds + 5)
    assert handlers.started == CLIENTS
    assert handlers.ended["other"] == 0
    assert set(handlers.ended) <= {"cancelled", "connection lost"}


async def test_a_client_leaving_before_the_upstream_answered_cancels_the_upstream_request(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    handlers = Handlers()
    shield = await start(aiohttp_server, make_shield, handlers)
    tasks = len(asyncio.all_tasks())

    await request_and_vanish(shield.port, "/slow", read_body=False)
    await asyncio.wait_for(handlers.running.wait(), 5)
    # Still computing its answer (30 s away): the client's departure must reach it now.
    await settle(lambda: handlers.finished == 1, timeout=5)
    assert handlers.ended == {"cancelled": 1}
    await settle(lambda: connections(shield) == 0)
    await settle(lambda: len(asyncio.all_tasks()) <= tasks)

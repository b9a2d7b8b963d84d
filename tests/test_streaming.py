"""1 GiB downloads and uploads cross a real ``shield run`` process in bounded memory.

Shield runs as a subprocess so its memory can be read from /proc/<pid>/status while the bytes
flow; the upstream (in the test process) generates and consumes them without storing them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import free_port

GIB = 1024**3
MIB = 1024**2
# Shield may use this much memory above its idle size while 1 GiB crosses it.
RSS_BOUND = 64 * MIB
# Bytes the upstream may get ahead of a stalled reader: socket buffers on both hops (loopback
# autotuning lets them reach tens of MiB; about 21 MiB measured) plus Shield's own 256 KiB.
IN_FLIGHT_BOUND = 64 * MIB

BLOCK = random.Random(0).randbytes(MIB)


def block(index: int) -> bytes:
    """The index-th MiB of a test body: numbered, so a lost or repeated block changes the hash."""
    return index.to_bytes(8, "big") + BLOCK[8:]


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


StartShield = Callable[[str], Awaitable["ShieldProcess"]]


@dataclass
class ShieldProcess:
    process: asyncio.subprocess.Process
    port: int
    admin_port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss(self) -> int:
        return memory_kib(self.process.pid)["VmRSS"] * 1024

    def peak_rss(self) -> int:
        return memory_kib(self.process.pid)["VmHWM"] * 1024


@dataclass
class RssSampler:
    """Samples a process's RSS every few milliseconds while a transfer runs."""

    shield: ShieldProcess
    peak: int = 0
    samples: int = 0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.shield.rss())
            self.samples += 1
            await asyncio.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.fixture
async def run_shield(tmp_path: Path) -> AsyncIterator[StartShield]:
    """``await run_shield(upstream_url)``: ``shield run`` in a subprocess, ready to serve."""
    processes: list[asyncio.subprocess.Process] = []

    async def start(upstream_url: str) -> ShieldProcess:
        port, admin_port = free_port(), free_port()
        config = tmp_path / "shield.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{port}\n"
            f"upstream: {upstream_url}\n"
            f"admin: {{listen: 127.0.0.1:{admin_port}}}\n"
            "limits: {max_body_size: 2GiB}\n"
        )
        log = (tmp_path / "shield.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shield", "run", "-c", str(config), stdout=log, stderr=log
        )
        log.close()
        processes.append(process)
        shield = ShieldProcess(process, port, admin_port)
        deadline = asyncio.get_running_loop().time() + 15
        async with aiohttp.ClientSession() as client:
            while True:
                assert process.returncode is None, (tmp_path / "shield.log").read_text()
                try:
                    async with client.get(f"http://127.0.0.1:{admin_port}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, "shield did not start"
                await asyncio.sleep(0.05)
            # Warm up the request path so the baseline includes its code and buffers.
            for _ in range(3):
                async with client.get(shield.url("/ping")) as response:
                    assert response.status == 200
        return shield

    yield start
    for process in processes:
        process.kill()
        await process.wait()


@dataclass
class Upstream:
    """What the test upstream saw: the bytes it sent or received, and their hash."""

    sent: int = 0
    sent_sha256: str = ""
    sending: bool = False


def upstream_app(seen: Upstream) -> web.Application:
    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def blob(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        digest = hashlib.sha256()
        seen.sending = True
        for index in range(size // MIB):
            data = block(index)
            await response.write(data)
            digest.update(data)
            seen.sent += len(data)
        seen.sent_sha256 = digest.hexdigest()
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        received = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            received += len(chunk)
        return web.json_response(
            {
                "received": received,
                "sha256": digest.hexdigest(),
                "chunked": request.headers.get("Transfer-Encoding") == "chunked",
            }
        )

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_get("/blob", blob)
    app.router.add_post("/upload", upload)
    return app


async def test_a_1gib_download_streams_through_in_bounded_memory(
    aiohttp_server: AiohttpServer, run_shield: StartShield
) -> None:
    seen = Upstream()
    upstream = await aiohttp_server(upstream_app(seen))
    shield = await run_shield(str(upstream.make_url("")).rstrip("/"))
    baseline = shield.rss()

    digest = hashlib.sha256()
    received = 0
    with RssSampler(shield) as sampler:
        async with aiohttp.ClientSession() as client, client.get(shield.url(f"/blob?size={GIB}")) as response:
            assert response.status == 200
            assert response.content_length == GIB
            async for chunk in response.content.iter_any():
                digest.update(chunk)
                received += len(chunk)

    assert received == GIB
    assert digest.hexdigest() == seen.sent_sha256
    assert sampler.samples > 10
    assert sampler.peak < baseline + RSS_BOUND, (baseline, sampler.peak)
    assert shield.peak_rss() < baseline + RSS_BOUND


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_1gib_upload_streams_through_in_bounded_memory(
    aiohttp_server: AiohttpServer,
    run_shield: StartShield,
    framing: str,
) -> None:
    upstream = await aiohttp_server(upstream_app(Upstream()))
    shield = await run_shield(str(upstream.make_url("")).rstrip("/"))
    baseline = shield.rss()
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for index in range(GIB // MIB):
            data = block(index)
            digest.update(data)
            yield data

    headers = {"Content-Length": str(GIB)} if framing == "content-length" else {}
    with RssSampler(shield) as sampler:
        async with (
            aiohttp.ClientSession() as client,
            client.post(shield.url("/upload"), data=body(), headers=headers) as response,
        ):
            assert response.status == 200
            answer = await response.json()

    assert answer == {"received": GIB, "sha256": digest.hexdigest(), "chunked": framing == "chunked"}
    assert sampler.peak < baseline + RSS_BOUND, (baseline, sampler.peak)
    assert shield.peak_rss() < baseline + RSS_BOUND


async def test_a_slow_reader_holds_the_upstream_back_instead_of_filling_shield(
    aiohttp_server: AiohttpServer, run_shield: StartShield
) -> None:
    size = 512 * MIB
    seen = Upstream()
    upstream = await aiohttp_server(upstream_app(seen))
    shield = await run_shield(str(upstream.make_url("")).rstrip("/"))
    baseline = shield.rss()
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256()

    async with aiohttp.ClientSession() as client, client.get(shield.url(f"/blob?size={size}")) as response:
        assert response.status == 200
        received = 0

        async def read(amount: int) -> None:
            nonlocal received
            data = await response.content.readexactly(amount)
            digest.update(data)
            received += len(data)

        # Read a little, then stop: the upstream must stall once the buffers on the way are full.
        await read(MIB)
        stalled_at, deadline = -1, loop.time() + 10
        while seen.sent != stalled_at:
            stalled_at = seen.sent
            await asyncio.sleep(0.3)
            assert loop.time() < deadline, "the upstream never stalled"
        assert seen.sending
        assert stalled_at < received + IN_FLIGHT_BOUND
        assert shield.rss() < baseline + RSS_BOUND

        # Read slowly: the upstream advances with the reader, never far ahead of it.
        for _ in range(20):
            await read(MIB)
            await asyncio.sleep(0.02)
            assert seen.sent < received + IN_FLIGHT_BOUND
        assert seen.sent > stalled_at

        while chunk := await response.content.readany():
            digest.update(chunk)
            received += len(chunk)

    assert received == size
    assert digest.hexdigest() == seen.sent_sha256
    assert shield.peak_rss() < baseline + RSS_BOUND

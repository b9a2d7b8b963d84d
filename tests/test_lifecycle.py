"""A Shield process's life: graceful and forced shutdown, workers, health, readiness, metrics.

Signal handling is tested on real ``shield run`` processes; the admin endpoints in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from prometheus_client.parser import text_string_to_metric_families

from shield.app.server import Shield
from tests.conftest import MakeShield, StartShield, children_of, free_port, url_of


class TcpSocket(NamedTuple):
    local_ip: str
    local_port: int
    remote_port: int
    listening: bool
    inode: int


def tcp_sockets() -> list[TcpSocket]:
    """The IPv4 TCP sockets of this network namespace, as ``ss -tan`` would list them."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_ip, local_port = fields[1].split(":")
        remote_port = int(fields[2].split(":")[1], 16)
        ip = ".".join(str(b) for b in reversed(bytes.fromhex(local_ip)))
        found.append(TcpSocket(ip, int(local_port, 16), remote_port, fields[3] == "0A", int(fields[9])))
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``condition()`` holds, failing with ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


async def is_refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


@dataclass
class SlowUpstream:
    """An upstream whose /slow answers after ``delay`` seconds, telling when a request arrived."""

    delay: float
    arrived: asyncio.Event

    def app(self) -> web.Application:
        async def slow(request: web.Request) -> web.Response:
            self.arrived.set()
            await asyncio.sleep(self.delay)
            return web.Response(text="done")

        async def ping(request: web.Request) -> web.Response:
            return web.Response(text="pong")

        app = web.Application()
        app.router.add_get("/slow", slow)
        app.router.add_get("/ping", ping)
        return app


async def slow_upstream(aiohttp_server: AiohttpServer, delay: float) -> tuple[str, asyncio.Event]:
    upstream = SlowUpstream(delay, asyncio.Event())
    server = await aiohttp_server(upstream.app())
    return str(server.make_url("")).rstrip("/"), upstream.arrived


async def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(
    aiohttp_server: AiohttpServer, run_shield: StartShield
) -> None:
    upstream_url, arrived = await slow_upstream(aiohttp_server, delay=1.5)
    shield = await run_shield(upstream_url, "timeouts: {shutdown_grace: 10s}\n")
    loop = asyncio.get_running_loop()

    async with aiohttp.ClientSession() as client:

        async def slow_request() -> tuple[int, str]:
            async with client.get(shield.url("/slow")) as response:
                return response.status, await response.text()

        in_flight = asyncio.create_task(slow_request())
        await asyncio.wait_for(arrived.wait(), 5)
        signalled = loop.time()
        shield.terminate()

        deadline = loop.time() + 1
        while not await is_refused(shield.port):
            assert loop.time() < deadline, "still accepting connections after SIGTERM"
            await asyncio.sleep(0.02)
        assert not in_flight.done()
        async with client.get(f"http://127.0.0.1:{shield.admin_port}/readyz") as response:
            assert response.status == 503  # draining: load balancers should stop sending traffic

        assert await in_flight == (200, "done")
    assert await shield.exit_code(within=10) == 0
    assert loop.time() - signalled < 10


async def test_sigterm_does_not_wait_for_idle_keepalive_connections(
    aiohttp_server: AiohttpServer, run_shield: StartShield
) -> None:
    upstream_url, _ = await slow_upstream(aiohttp_server, delay=0)
    shield = await run_shield(upstream_url, "timeouts: {shutdown_grace: 4s}\n")
    loop = asyncio.get_running_loop()
    # A browser keeps its connection open after a request; another connected and sent nothing yet.
    reader, writer = await asyncio.open_connection("127.0.0.1", shield.port)
    writer.write(b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    _, silent = await asyncio.open_connection("127.0.0.1", shield.port)
    try:
        signalled = loop.time()
        shield.terminate()
        assert await shield.exit_code(within=10) == 0
        assert loop.time() - signalled < 2, "nothing was in flight, yet the exit waited for the grace"
    finally:
        for stream in (writer, silent):
            stream.close()


async def test_a_second_sigterm_exits_at_once(aiohttp_server: AiohttpServer, run_shield: StartShield) -> None:
    upstream_url, arrived = await slow_upstream(aiohttp_server, delay=30)
    shield = await run_shield(upstream_url, "timeouts: {shutdown_grace: 30s}\n")
    loop = asyncio.get_running_loop()

    async with aiohttp.ClientSession() as client:
        in_flight = asyncio.create_task(client.get(shield.url("/slow")))
        await asyncio.wait_for(arrived.wait(), 5)
        shield.terminate()
        deadline = loop.time() + 1
        while not await is_refused(shield.port):  # the graceful shutdown has begun
            assert loop.time() < deadline, "still accepting connections after SIGTERM"
            await asyncio.sleep(0.02)

        second = loop.time()
        shield.terminate()
        assert await shield.exit_code(within=3) != 0
        assert loop.time() - second < 3
        with pytest.raises(aiohttp.ClientError):
            await in_flight


async def test_two_workers_serve_the_same_port_and_sigterm_stops_them_all(
    aiohttp_server: AiohttpServer, run_shield: StartShield
) -> None:
    upstream_url, _ = await slow_upstream(aiohttp_server, delay=0)
    shield = await run_shield(upstream_url, "workers: 2\n")

    def listeners() -> dict[int, int]:
        """Worker pid -> its listening sockets on the public port."""
        ours = {s.inode for s in tcp_sockets() if s.listening and s.local_port == shield.port}
        return {pid: len(socket_inodes(pid) & ours) for pid in children_of(shield.pid)}

    await until(lambda: sorted(listeners().values()) == [1, 1], 15, "both workers listen")
    workers = set(listeners())

    # New connections are spread over both listening sockets; find which worker took each one.
    streams = [await asyncio.open_connection("127.0.0.1", shield.port) for _ in range(32)]
    owners: set[int] = set()
    for reader, writer in streams:
        writer.write(b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        client_port = writer.get_extra_info("sockname")[1]
        accepted = {
            s.inode for s in tcp_sockets() if s.local_port == shield.port and s.remote_port == client_port
        }
        owners |= {pid for pid in workers if socket_inodes(pid) & accepted}
    for _, writer in streams:
        writer.close()
        await writer.wait_closed()
    assert owners == workers

    shield.terminate()
    assert await shield.exit_code(within=10) == 0
    assert not any(is_alive(pid) for pid in workers)


async def test_healthz_is_200_and_readyz_waits_for_the_upstream(make_shield: MakeShield) -> None:
    upstream_port = free_port()  # nothing listens there yet
    shield = await make_shield(f"http://127.0.0.1:{upstream_port}", admin={"ready_grace": "1h"})
    admin = f"http://127.0.0.1:{shield.admin_port}"
    runner = web.AppRunner(web.Application())
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{admin}/healthz") as response:
                assert response.status == 200
            async with client.get(f"{admin}/readyz") as response:
                assert response.status == 503

            # Any HTTP answer counts (here a 404): the upstream is up.
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while True:
                async with client.get(f"{admin}/readyz") as response:
                    if response.status == 200:
                        break
                    assert response.status == 503
                assert loop.time() < deadline, "never became ready"
                await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()


async def test_readyz_turns_ready_after_the_grace_period_without_the_upstream(
    make_shield: MakeShield,
) -> None:
    shield = await make_shield(f"http://127.0.0.1:{free_port()}", admin={"ready_grace": "300ms"})
    admin = f"http://127.0.0.1:{shield.admin_port}/readyz"
    async with aiohttp.ClientSession() as client:
        async with client.get(admin) as response:
            assert response.status == 503
        await asyncio.sleep(0.4)
        async with client.get(admin) as response:
            assert response.status == 200


async def requests_total(client: aiohttp.ClientSession, shield: Shield) -> float:
    async with client.get(f"http://127.0.0.1:{shield.admin_port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "shield_requests_total"
    ]
    return sum(sample.value for sample in samples)


async def test_metrics_count_requests(aiohttp_server: AiohttpServer, make_shield: MakeShield) -> None:
    upstream_url, _ = await slow_upstream(aiohttp_server, delay=0)
    shield = await make_shield(upstream_url)
    async with aiohttp.ClientSession() as client:
        before = await requests_total(client, shield)
        for _ in range(3):
            async with client.get(url_of(shield, "/ping")) as response:
                assert response.status == 200
        assert await requests_total(client, shield) == before + 3


async def test_request_metrics_off_leave_the_counter_alone_and_requests_unchanged(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    upstream_url, _ = await slow_upstream(aiohttp_server, delay=0)
    shield = await make_shield(upstream_url, admin={"listen": {"port": 0}, "request_metrics": False})
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.get(url_of(shield, "/ping")) as response:
                assert response.status == 200
                assert response.headers["X-Request-ID"]
        assert await requests_total(client, shield) == 0


async def test_the_admin_listener_binds_loopback_by_default(make_shield: MakeShield) -> None:
    shield = await make_shield(f"http://127.0.0.1:{free_port()}", admin={"listen": {"port": 0}})
    bound = {s.local_ip for s in tcp_sockets() if s.listening and s.local_port == shield.admin_port}
    assert bound == {"127.0.0.1"}


def stats_dir_of(pid: int) -> Path:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return Path(args[args.index(b"--stats-dir") + 1].decode())


async def test_one_scrape_with_two_workers_counts_both_workers_requests(
    aiohttp_server: AiohttpServer, run_shield: StartShield
) -> None:
    upstream_url, _ = await slow_upstream(aiohttp_server, delay=0)
    shield = await run_shield(upstream_url, "workers: 2\n")
    await until(lambda: len(children_of(shield.pid)) == 2, 15, "both workers run")
    stats_dir = stats_dir_of(children_of(shield.pid)[0])
    admin = f"http://127.0.0.1:{shield.admin_port}/metrics"

    async with aiohttp.ClientSession() as client:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:  # both workers up and the admin listener answering
            try:
                async with client.get(admin) as response:
                    if response.status == 200 and (stats_dir / "worker-1.json").exists():
                        break
            except aiohttp.ClientError:
                pass
            assert loop.time() < deadline, "the workers never came up"
            await asyncio.sleep(0.1)

        # A new connection per request, so SO_REUSEPORT spreads them over both workers.
        sent = 40
        for _ in range(sent):
            async with aiohttp.ClientSession() as fresh, fresh.get(shield.url("/ping")) as response:
                assert response.status == 200

        def requests(text: str) -> float:
            return sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "shield_requests_total"
            )

        while True:  # worker 1 publishes its counts every second
            async with client.get(admin) as response:
                total = requests(await response.text())
            if total == sent:
                break
            assert total < sent and loop.time() < deadline + 5, f"scrape counted {total} of {sent}"
            await asyncio.sleep(0.2)

    # Worker 1 really served some of them: the sum is not worker 0's count alone.
    worker_1 = requests_in_snapshot(stats_dir / "worker-1.json")
    assert 0 < worker_1 < sent
    shield.terminate()
    assert await shield.exit_code(within=10) == 0
    assert not stats_dir.exists()


def requests_in_snapshot(path: Path) -> int:
    return sum(int(row[-1]) for row in json.loads(path.read_text())["requests"])

"""redis-server processes of a test's own, on free ports: plain, Sentinel, and a 3-node Cluster.

The shared Redis at 127.0.0.1:6379 serves tests that only read and write their own keys; a
test that stops Redis, flushes its scripts, counts its commands or needs Sentinel or Cluster
starts its own servers here and kills them at teardown. Only a missing ``redis-server`` binary
skips (CI installs it).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"
CLUSTER_SLOTS = 16384


def redis_binary(name: str = "redis-server") -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; the bus must stay below 65536."""
    while True:
        port = random.randrange(20_000, 55_000)
        try:
            with socket.socket() as data, socket.socket() as bus:
                data.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server on ``port``, with no persistence: a restart comes back empty."""

    directory: Path
    port: int = field(default_factory=free_port)
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.directory / f"redis-{self.port}.log"

    def launch(self, *config_file: str) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [redis_binary(), *config_file, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory), *self.args]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start(self) -> RedisServer:
        """Launch and wait (blocking: for fixtures outside the event loop) until it answers."""
        self.launch()
        deadline = time.monotonic() + 10
        while not answers_ping(self.port):
            self._check_alive()
            assert time.monotonic() < deadline, f"redis-server on {self.port} did not start"
            time.sleep(0.01)
        return self

    async def restart(self) -> None:
        """Launch again on the same port and wait, without blocking the loop, until it answers."""
        self.launch()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not await asyncio.to_thread(answers_ping, self.port):
            self._check_alive()
            assert loop.time() < deadline, f"redis-server on {self.port} did not start"
            await asyncio.sleep(0.01)

    def kill(self) -> None:
        """Stop it the hard way, as a crash or a lost host would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"redis-server exited: {self.log.read_text()}")


@dataclass
class SentinelSetup:
    master: RedisServer
    sentinel: RedisServer
    service: str = "shieldtest"

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}/0"


def start_sentinel(directory: Path) -> Iterator[SentinelSetup]:
    """A master and one Sentinel watching it; the Sentinel knows the master before this yields."""
    master = RedisServer(directory / "master").start()
    sentinel = RedisServer(directory / "sentinel", args=("--sentinel",))
    setup = SentinelSetup(master, sentinel)
    try:
        sentinel.directory.mkdir(parents=True)
        config = sentinel.directory / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        config.write_text(
            f"sentinel monitor {setup.service} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {setup.service} 60000\n"
        )
        sentinel.launch(str(config))
        deadline = time.monotonic() + 10
        while True:
            try:
                with sentinel.client() as client:
                    if client.execute_command("SENTINEL", "get-master-addr-by-name", setup.service):
                        break
            except redis.ConnectionError:
                sentinel._check_alive()
            assert time.monotonic() < deadline, "sentinel did not start"
            time.sleep(0.02)
        yield setup
    finally:
        sentinel.kill()
        master.kill()


@dataclass
class ClusterSetup:
    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:2])

    def node_of(self, slot: int) -> RedisServer:
        """The node serving ``slot`` (slots are split evenly by ``--cluster create``)."""
        with self.nodes[0].client() as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(node for node in self.nodes if node.port == int(master[1]))
        raise AssertionError(f"no node serves slot {slot}")


def start_cluster(directory: Path, size: int = 3) -> Iterator[ClusterSetup]:
    """``size`` primaries, no replicas, all slots assigned and ``cluster_state:ok`` everywhere."""
    nodes: list[RedisServer] = []
    try:
        for _ in range(size):
            node = RedisServer(directory, free_cluster_port())
            node.args = ("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{node.port}.conf")
            nodes.append(node.start())
        subprocess.run(
            [redis_binary("redis-cli"), "--cluster", "create"]
            + [f"127.0.0.1:{node.port}" for node in nodes]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        for node in nodes:
            with node.client() as client:
                while "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    assert time.monotonic() < deadline, f"cluster not ok on {node.port}"
                    time.sleep(0.05)
        yield ClusterSetup(nodes)
    finally:
        for node in nodes:
            node.kill()

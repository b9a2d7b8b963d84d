"""Process lifecycle: run one Shield until a signal, or supervise ``workers`` processes.

SIGTERM or SIGINT starts a graceful shutdown (stop accepting, let in-flight requests finish
within the grace period); a second one exits at once. With ``workers: N`` the parent starts N
processes that bind the same port with SO_REUSEPORT, relays signals to them and restarts one
that dies unexpectedly. Worker 0 also serves the admin listener, and its /metrics adds up the
stats every worker publishes into a directory the supervisor made (``shield.ops.worker_stats``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from shield.app.server import Shield, install_uvloop
from shield.config.model import ShieldConfig
from shield.ops.worker_stats import WorkerStats

log = logging.getLogger("shield")


async def serve(
    config: ShieldConfig,
    *,
    config_path: str | None = None,
    worker: int | None = None,
    started: Callable[[Shield], Awaitable[None]] | None = None,
    stats_dir: str | None = None,
) -> None:
    shield = Shield(config, config_path=config_path, admin=worker in (None, 0), reuse_port=worker is not None)
    shared = None
    if stats_dir is not None and worker is not None:
        shared = WorkerStats(Path(stats_dir), worker, shield.stats)
        shared.restore()
        shield.stats.peers = shared.peers
    await shield.start()
    loop = asyncio.get_running_loop()
    publishing = loop.create_task(shared.run()) if shared is not None else None
    stopping = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info(
            "shutting down: finishing in-flight requests (up to %.0fs)",
            config.timeouts.shutdown_grace,
        )
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    reloads: set[asyncio.Task[bool]] = set()  # held until done: the loop keeps only weak references

    def on_sighup() -> None:
        task = loop.create_task(shield.reload_off_loop())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if started is not None:
        await started(shield)
    await stopping.wait()
    await shield.stop()
    if shared is not None and publishing is not None:
        publishing.cancel()
        shared.publish()
    log.info("stopped")


def tune_gc() -> None:
    """Move start-up objects out of the collector's way and collect young objects less often.

    Per request Shield allocates a few dozen short-lived containers; with the default threshold
    (700) a generation-0 pass ran every dozen requests and showed in p99 latency.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


def run(
    config: ShieldConfig, *, config_path: str, worker: int | None = None, stats_dir: str | None = None
) -> int:
    """Serve until stopped; the process entry point behind ``shield run``."""
    if config.workers > 1 and worker is None:
        return supervise(config, config_path)
    install_uvloop()
    asyncio.run(serve(config, config_path=config_path, worker=worker, stats_dir=stats_dir))
    return 0


def supervise(config: ShieldConfig, config_path: str) -> int:
    stats_dir = tempfile.mkdtemp(prefix="shield-workers-")
    try:
        return _supervise(config, config_path, stats_dir)
    finally:
        shutil.rmtree(stats_dir, ignore_errors=True)


def _supervise(config: ShieldConfig, config_path: str, stats_dir: str) -> int:
    def spawn(index: int) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "shield",
            "run",
            "--config",
            config_path,
            "--worker",
            str(index),
            "--stats-dir",
            stats_dir,
        ]
        return subprocess.Popen(command)

    children = {index: spawn(index) for index in range(config.workers)}
    stopping = False

    def relay(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum in (signal.SIGTERM, signal.SIGINT)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, relay)
    log.info("supervising %d workers", config.workers)
    while True:
        alive = False
        for index, child in list(children.items()):
            code = child.poll()
            if code is None:
                alive = True
            elif not stopping:
                log.warning("worker %d exited with %s; restarting it", index, code)
                children[index] = spawn(index)
                alive = True
        if not alive:
            return 0
        time.sleep(0.2)

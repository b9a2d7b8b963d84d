"""One scrape for all workers: each worker publishes its stats; the admin worker adds them up.

With ``workers: N`` the supervisor makes a private directory and passes it to every worker.
Each worker writes ``worker-<index>.json`` (a ``ProxyStats.snapshot()``) every
``PUBLISH_INTERVAL`` seconds and when it stops, replacing the file atomically; worker 0, which
serves /metrics, reads its peers' files at scrape time and adds them to its own live counters.

Why files rather than prometheus_client's multiprocess mode: that mode keeps every counter in
an mmap'd file and pays a dict lookup and a struct write per increment, which is exactly the
per-request cost the plain counters avoid. Here a worker pays one small JSON write per second.

A worker that restarts starts from its predecessor's last snapshot, so counters never go
backwards in the sum (a crash loses at most the last interval's counts, which Prometheus then
sees as slightly less traffic, not as a counter reset).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Final

from shield.ops.metrics import ProxyStats

log = logging.getLogger("shield.metrics")

PUBLISH_INTERVAL: Final = 1.0


class WorkerStats:
    def __init__(self, directory: Path, worker: int, stats: ProxyStats) -> None:
        self.directory = directory
        self.worker = worker
        self.stats = stats
        self.path = directory / f"worker-{worker}.json"

    def restore(self) -> None:
        """Carry over the counters a previous process with this index published."""
        previous = _read(self.path)
        if previous is not None:
            self.stats.add(previous)

    def publish(self) -> None:
        data = json.dumps(self.stats.snapshot(), separators=(",", ":"))
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(data, encoding="utf-8")
        os.replace(temporary, self.path)

    def peers(self) -> list[ProxyStats]:
        """The latest snapshot of every other worker (at most ``PUBLISH_INTERVAL`` old)."""
        found = []
        for path in sorted(self.directory.glob("worker-*.json")):
            if path != self.path and (stats := _read(path)) is not None:
                found.append(stats)
        return found

    async def run(self) -> None:
        """Publish every ``PUBLISH_INTERVAL`` seconds until cancelled."""
        while True:
            try:
                self.publish()
            except OSError as error:
                log.warning("cannot publish this worker's metrics: %s", error)
            await asyncio.sleep(PUBLISH_INTERVAL)


def _read(path: Path) -> ProxyStats | None:
    try:
        return ProxyStats.from_snapshot(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("ignoring unreadable worker metrics %s: %s", path, error)
        return None

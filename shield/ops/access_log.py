"""One JSON line per request on stdout, written by a thread so the event loop never waits on it.

Formatting is a single f-string with only untrusted strings escaped (``json`` C escaper), which
costs a few microseconds rather than ``json.dumps`` of a dict. Lines are batched in memory and
handed to a writer thread every ``FLUSH_INTERVAL`` or when the batch grows large. If stdout
blocks (a stalled log collector) and the backlog passes ``MAX_BACKLOG`` bytes, new lines are
dropped and counted in ``shield_access_log_dropped_lines_total`` rather than buffered without
bound or stalling requests.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import threading
import time
from json.encoder import encode_basestring
from typing import Final

from shield.ops.metrics import ProxyStats

FLUSH_INTERVAL: Final = 0.2
FLUSH_SIZE: Final = 64 * 1024
MAX_BACKLOG: Final = 8 * 1024 * 1024


def _json(text: str | None) -> str:
    return "null" if text is None else str(encode_basestring(text))


class _UtcClock:
    """ISO 8601 UTC timestamps with milliseconds; the part up to the second is cached."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


def format_line(
    *,
    stamp: str,
    request_id: str,
    client_ip: str,
    identity: str,
    method: str,
    path: str | None,
    rule: str | None,
    decision: str | None,
    status: int,
    size: int,
    duration: float,
    upstream: float | None,
) -> str:
    """One access log line (with its newline). Durations are in milliseconds."""
    upstream_ms = "null" if upstream is None else f"{upstream * 1000:.3f}"
    return (
        f'{{"time":"{stamp}","request_id":{_json(request_id)},"client_ip":{_json(client_ip)},'
        f'"identity":"{identity}","method":{_json(method)},"path":{_json(path)},'
        f'"rule":{_json(rule)},"decision":{_json(decision)},"status":{status},"bytes":{size},'
        f'"duration_ms":{duration * 1000:.3f},"upstream_ms":{upstream_ms}}}\n'
    )


class AccessLog:
    """Samples requests, formats their lines and ships them to ``fd`` from a writer thread."""

    def __init__(self, stats: ProxyStats, *, sample: float = 1.0, fd: int = 1) -> None:
        self.sample = sample
        self._stats = stats
        self._fd = fd
        self._clock = _UtcClock()
        self._batch: list[str] = []
        self._batch_size = 0
        self._backlog = 0  # bytes handed to the thread and not yet written
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._random = random.random

    def sampled(self) -> bool:
        return self.sample >= 1.0 or self._random() < self.sample

    def stamp(self) -> str:
        return self._clock.stamp(time.time())

    def write(self, line: str) -> None:
        """Queue ``line``; never blocks, drops it if the writer is too far behind."""
        if self._backlog + self._batch_size > MAX_BACKLOG:
            self._stats.access_log_dropped += 1
            return
        self._batch.append(line)
        self._batch_size += len(line)
        if self._batch_size >= FLUSH_SIZE:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._batch:
            return
        data = "".join(self._batch).encode("utf-8", "backslashreplace")
        self._batch = []
        self._batch_size = 0
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="shield-access-log", daemon=True)
            self._thread.start()
        with self._lock:
            self._backlog += len(data)
        self._queue.put(data)

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                pass  # stdout closed: nothing sensible left to do with the line
            with self._lock:
                self._backlog -= len(data)

    def close(self) -> None:
        """Flush what is batched and wait (briefly) for the thread to write it."""
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=2.0)
            self._thread = None

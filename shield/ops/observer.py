"""Recording each request: its id, what was decided, how long it took, one access log line.

``Observer.handle`` wraps the gatekeeper. It gives the request its id; the request itself is
the record the rest fill in (no new parameters on their methods): the gatekeeper writes what it
decided, the proxy how long the upstream took. Once the
answer is ready the observer records the decision and the duration (``ProxyStats.durations``),
puts ``X-Request-ID`` on Shield's own answers and writes the access log line. With ``top`` it
also counts the request in the top tables (``shield ctl top``).

Requests refused before a rule could be asked (a malformed target or path, CONNECT) are not
counted in ``shield_requests_total``; they are logged with rule and decision null.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from multidict import istr

from shield.http.answer import ShieldAnswer
from shield.http.connection import Reply, Request, Written
from shield.http.request_id import RequestIds
from shield.ops.access_log import AccessLog, format_line
from shield.ops.metrics import ProxyStats
from shield.ops.top import TopTables

Handler = Callable[[Request], Awaitable[Reply]]

# A case-insensitive multidict looks an istr up without folding it first.
_REQUEST_ID: Final = istr("X-Request-ID")
_USER_AGENT: Final = istr("User-Agent")
# A C static once compiled, where ``from time import perf_counter`` is a module-dict lookup per call.
_perf_counter: Final = time.perf_counter

# What nginx logs for a client that went away before its answer was ready.
CLIENT_CLOSED: Final = 499

# Decisions that are no refusal of the client, for ``ctl top --refused``: forwarded, a solved
# challenge, and "error" (the upstream or the state backend failed: nothing the client did).
# Every other one is: throttled, blocked, closed, banned, challenged, refused (a wrong
# solution), shed and capped.
NOT_REFUSED: Final = frozenset({"forwarded", "passed", "error"})


def body_size(response: Reply, request: Request) -> int:
    """Body bytes of the answer (what the client receives after the head)."""
    if request.sent >= 0:
        return request.sent
    size = getattr(response, "body_size", None)  # the proxy's pre-written answers
    if size is not None:
        return int(size)
    return len(response.body) if isinstance(response, ShieldAnswer) else 0


class Observer:
    """The public listener's handler: ``handler`` with accounting around it."""

    def __init__(
        self,
        handler: Handler,
        *,
        stats: ProxyStats,
        access_log: AccessLog | None,
        request_ids: RequestIds | None = None,
        metrics: bool = True,
        top: TopTables | None = None,
    ) -> None:
        self._handler = handler
        self._stats = stats
        self._durations = stats.durations
        self._log = access_log
        self._ids = request_ids or RequestIds()
        self._metrics = metrics
        self._top = top

    async def handle(self, request: Request) -> Reply:
        """The listener's handler: give the request its id, run the gatekeeper, then count,
        time and log the answer, as far as ``metrics`` and the access log are on."""
        started = _perf_counter()
        request.id_line = self._ids.line_of(request.headers.get(_REQUEST_ID))
        try:
            response = await self._handler(request)
        except asyncio.CancelledError:
            if self._log is not None and self._log.sampled():
                self._write_log(request, CLIENT_CLOSED, 0, _perf_counter() - started)
            raise
        labels = request.labels
        if labels is not None and self._metrics:
            if response.status == 101:
                self._stats.count(labels)  # a WebSocket session: its length is no duration
            else:
                durations = self._durations.get(labels)
                if durations is None:
                    durations = self._stats.durations_of(labels)
                durations.append(_perf_counter() - started)
        if self._top is not None and labels is not None:
            self._count_top(self._top, request, labels)
        if not isinstance(response, Written):
            response.headers["X-Request-ID"] = request.request_id
        if self._log is not None and self._log.sampled():
            size = body_size(response, request)
            self._write_log(request, response.status, size, _perf_counter() - started)
        return response

    def _count_top(self, top: TopTables, request: Request, labels: tuple[str, str, str, str]) -> None:
        top.record(
            request.client_key,
            request.client_ip,
            request.headers.get(_USER_AGENT),
            request.path,
            labels[0],
            labels[2] not in NOT_REFUSED,
        )

    def _write_log(self, request: Request, status: int, size: int, elapsed: float) -> None:
        assert self._log is not None
        self._log.write(
            format_line(
                stamp=self._log.stamp(),
                request_id=request.request_id,
                client_ip=request.client_ip or request.remote or "unknown",
                identity=request.identity_label,
                method=request.method,
                path=request.path or None,
                rule=request.rule,
                decision=request.decision,
                status=status,
                size=size,
                duration=elapsed,
                upstream=request.upstream_seconds,
            )
        )

"""Priority load shedding: the waiting side of ``shield.decide.admission``.

``OverloadGate.forward`` stands in front of ``Proxy.forward`` when ``overload:`` is configured.
It asks the pure ``Admission`` for a verdict; a queued request awaits a future that a finishing
request resolves (True: the slot is yours) or that expires or is evicted (False: shed). Each
upstream answer feeds the saturation detector. Without ``overload:`` none of this exists and the
gatekeeper calls the proxy directly.
"""

from __future__ import annotations

import asyncio
import logging

from shield.clock import Clock
from shield.config.overload import Overload
from shield.decide.admission import Admission, Saturation, Verdict
from shield.enforce import answers
from shield.http.connection import Reply, Request
from shield.upstream.forward import Proxy

log = logging.getLogger("shield.overload")

Ticket = asyncio.Future[bool]


class OverloadGate:
    def __init__(self, config: Overload, proxy: Proxy, clock: Clock) -> None:
        self.config = config
        self.proxy = proxy
        self.clock = clock
        self.admission: Admission[Ticket] = Admission(config.max_concurrency, config.queue_size)
        self.saturation = Saturation(
            latency=config.latency,
            error_ratio=config.error_ratio,
            window=config.window,
            min_samples=config.min_samples,
        )

    async def forward(
        self,
        request: Request,
        target: bytes,
        extra: bytes,
        upstream: tuple[str, bytes],
        rank: int,
    ) -> Reply:
        """Forward once admitted; a ``Shed`` answer (503 + Retry-After) if not."""
        degraded = self.saturation.watching and self.saturation.saturated(self.clock.now())
        verdict = self.admission.decide(rank, degraded=degraded)
        if verdict is Verdict.QUEUE and not await self._wait(rank):
            verdict = Verdict.SHED
        if verdict is Verdict.SHED:
            return answers.shed(self.config.retry_after, accept=request.headers.get("Accept"))
        try:
            response = await self.proxy.forward(request, target, extra, upstream)
        finally:
            self._release()
        failed = response.status >= 500
        self.saturation.observe(self.clock.now(), request.upstream_seconds, failed)
        return response

    async def _wait(self, rank: int) -> bool:
        """Wait for a slot; True once one is handed over, False when shed (timeout, evicted)."""
        loop = asyncio.get_running_loop()
        ticket: Ticket = loop.create_future()
        evicted = self.admission.enqueue(rank, ticket)
        if evicted is not None and not evicted.done():
            evicted.set_result(False)
        timer = loop.call_later(self.config.queue_timeout, self._expire, ticket)
        try:
            return await ticket
        except asyncio.CancelledError:
            # The client left. A slot handed over in the same loop turn must be passed on.
            if ticket.done() and not ticket.cancelled() and ticket.result():
                self._release()
            else:
                self.admission.leave(ticket)
            raise
        finally:
            timer.cancel()

    def _expire(self, ticket: Ticket) -> None:
        if not ticket.done() and self.admission.leave(ticket):
            ticket.set_result(False)

    def _release(self) -> None:
        while (waiter := self.admission.release()) is not None:
            if not waiter.done():
                waiter.set_result(True)
                return
            # A waiter that already left: the loop offers the slot to the next one.

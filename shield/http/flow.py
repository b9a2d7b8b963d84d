"""Write back-pressure for an asyncio protocol: wait while the peer reads more slowly than we write."""

from __future__ import annotations

import asyncio


class WriteFlow:
    """``pause_writing``/``resume_writing`` for a protocol, and ``writable()`` to wait on them.

    Mixed into Shield's two protocols (the client side, ``http.connection``; the upstream side,
    ``upstream``): the transport calls these when its write buffer crosses its high and low
    water marks.
    """

    def __init__(self) -> None:
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain = self._drain_waiter
        if drain is not None:
            self._drain_waiter = None
            if not drain.done():
                drain.set_result(None)

    async def writable(self, loop: asyncio.AbstractEventLoop) -> None:
        """Return once writing may go on (at once unless the transport paused it)."""
        if self._writing_paused:
            self._drain_waiter = loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def writing_failed(self, error: BaseException) -> None:
        """The connection is gone: whoever waits to write gets ``error``."""
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(error)

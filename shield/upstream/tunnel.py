"""After the upstream agreed to switch protocols (a WebSocket's 101), its connection and the
client's are spliced: bytes cross as they come, in both directions, with back-pressure.

Shield judged the handshake; what follows is the upgraded protocol, which it does not read (as
nginx and HAProxy do). A side that ends its output (FIN) has that passed on while the other
direction goes on; the tunnel closes when both have ended or either connection is lost.
"""

from __future__ import annotations

import asyncio


class TunnelEnd(asyncio.Protocol):
    """One side of a tunnel: what its transport reads is written to the other side's."""

    def __init__(self, transport: asyncio.Transport, ended: asyncio.Future[None]) -> None:
        self.transport = transport
        self.other: TunnelEnd | None = None
        self.received = 0
        self._ended = ended
        self._eof = False

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        assert self.other is not None
        self.other.transport.write(data)

    def eof_received(self) -> bool:
        self._eof = True
        other = self.other
        assert other is not None
        if other._eof or not other.transport.can_write_eof():
            return False  # both directions are done (or TLS cannot half-close): close
        other.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        # This side's peer reads more slowly than the other side writes: stop reading there.
        if self.other is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None:
            self.other.transport.close()
        if not self._ended.done():
            self._ended.set_result(None)


async def splice(
    client: asyncio.Transport, upstream: asyncio.Transport, to_upstream: bytes, to_client: bytes
) -> tuple[int, int]:
    """Relay between ``client`` and ``upstream`` until the tunnel closes, after sending each the
    bytes that arrived for it before the splice. Returns the bytes that went to the client and
    to the upstream."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    from_client = TunnelEnd(client, ended)
    from_upstream = TunnelEnd(upstream, ended)
    from_client.other, from_upstream.other = from_upstream, from_client
    client.set_protocol(from_client)
    upstream.set_protocol(from_upstream)
    if client.is_closing() or upstream.is_closing():
        client.close()
        upstream.close()
        return 0, 0
    if to_client:
        client.write(to_client)
    if to_upstream:
        upstream.write(to_upstream)
    client.resume_reading()
    upstream.resume_reading()
    try:
        await ended
    finally:
        client.close()
        upstream.close()
    return len(to_client) + from_upstream.received, len(to_upstream) + from_client.received

"""The tunnel after a 101: bytes cross both ways as sent, an end of output is passed on while the
other direction goes on, a side that does not read holds the other back instead of filling
Shield's memory, and either side going away ends it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shield.upstream.tunnel import splice


class _Accepted(asyncio.Protocol):
    """Holds an accepted connection's transport until the tunnel takes it over."""

    def __init__(self, accepted: asyncio.Queue[asyncio.Transport]) -> None:
        self._accepted = accepted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._accepted.put_nowait(transport)


@dataclass
class Ends:
    """A tunnel in progress: the client's and the upstream's own sockets, and the splice."""

    client: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    shield_client_side: asyncio.Transport
    spliced: asyncio.Task[tuple[int, int]]


@contextlib.asynccontextmanager
async def tunnel(to_upstream: bytes = b"", to_client: bytes = b"") -> AsyncIterator[Ends]:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[asyncio.Transport] = asyncio.Queue()
    server = await loop.create_server(lambda: _Accepted(accepted), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await asyncio.open_connection("127.0.0.1", port)
    client_side = await accepted.get()
    upstream = await asyncio.open_connection("127.0.0.1", port)
    upstream_side = await accepted.get()
    spliced = asyncio.create_task(splice(client_side, upstream_side, to_upstream, to_client))
    try:
        yield Ends(client, upstream, client_side, spliced)
    finally:
        for _, writer in (client, upstream):
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(spliced, 5)
        server.close()
        await server.wait_closed()


async def test_bytes_cross_both_ways_after_what_came_before_the_splice() -> None:
    async with tunnel(to_upstream=b"early-up ", to_client=b"HTTP/1.1 101 ...\r\n\r\n") as ends:
        (client_reader, client_writer), (upstream_reader, upstream_writer) = ends.client, ends.upstream
        client_writer.write(b"from client")
        upstream_writer.write(b"from upstream")

        assert await client_reader.readexactly(33) == b"HTTP/1.1 101 ...\r\n\r\nfrom upstream"
        assert await upstream_reader.readexactly(20) == b"early-up from client"


async def test_an_end_of_output_is_passed_on_while_the_other_direction_goes_on() -> None:
    async with tunnel() as ends:
        (client_reader, client_writer), (upstream_reader, upstream_writer) = ends.client, ends.upstream
        client_writer.write(b"last words")
        client_writer.write_eof()
        assert await upstream_reader.read() == b"last words"  # then the end of the stream

        upstream_writer.write(b"still answering")
        upstream_writer.write_eof()
        assert await client_reader.read() == b"still answering"
        sent, received = await asyncio.wait_for(ends.spliced, 5)

    assert (sent, received) == (15, 10)


async def test_a_client_that_does_not_read_holds_the_upstream_back() -> None:
    async with tunnel() as ends:
        (client_reader, _), (_, upstream_writer) = ends.client, ends.upstream
        written = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while written < 256 * 1024 * 1024:
                    upstream_writer.write(b"x" * 65536)
                    written += 65536
                    await upstream_writer.drain()
        # The upstream's writes stalled long before 256 MiB: Shield stopped reading from it
        # rather than buffer what the client does not take.
        assert written < 64 * 1024 * 1024
        assert ends.shield_client_side.get_write_buffer_size() <= 1024 * 1024

        received = 0
        while received < written:
            received += len(await client_reader.read(1024 * 1024))
        assert received == written


async def test_either_side_going_away_ends_the_tunnel_and_closes_the_other() -> None:
    async with tunnel() as ends:
        (client_reader, _), (_, upstream_writer) = ends.client, ends.upstream
        # A reset, not an end of output (which only half-closes the tunnel, as above).
        sock = upstream_writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        upstream_writer.transport.abort()

        await asyncio.wait_for(ends.spliced, 5)
        assert await asyncio.wait_for(client_reader.read(), 5) == b""

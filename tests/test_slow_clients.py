"""Slow clients that are healthy get served, greedy ones are bounded.

A streamed upload is its own phase: the wait for the upstream's answer starts once the whole
body went up, so an upload longer than ``timeouts.upstream_headers`` is not cut off by it. A
request head is bounded in all (``limits.max_header_total``), not only per line and count.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.app.server import Shield
from shield.http import connection as http_connection
from tests.conftest import MakeShield, scraped, serve, url_of
from tests.test_http_integrity import FakeTransport
from tests.test_proxy_http import (
    StartUpstream,
    connect,
    proxied,
    raw_upstream,
    read_response,
    read_until_closed,
    write_until_answered,
)

__all__ = ["raw_upstream"]  # the fixture, imported for this module's tests

PIECE = 16 * 1024
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


async def test_a_slow_upload_longer_than_the_header_wait_completes(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    received: list[int] = []

    async def upload(request: web.Request) -> web.Response:
        if request.method == "POST":  # (not Shield's readiness probe)
            received.append(len(await request.read()))
        return web.Response(text="stored")

    shield = await make_shield(
        await serve(aiohttp_server, upload),
        timeouts={"upstream_headers": 0.3, "upstream_idle": 2.0, "client_idle": 2.0},
    )

    async def slowly() -> AsyncIterator[bytes]:
        for _ in range(8):  # 128 KiB over about 1.2 s: a streamed body (over 64 KiB)
            yield b"x" * PIECE
            await asyncio.sleep(0.15)

    async with (
        aiohttp.ClientSession() as client,
        client.post(url_of(shield, "/upload"), data=slowly()) as answer,
    ):
        assert (answer.status, await answer.text()) == (200, "stored")
    assert received == [8 * PIECE]


async def test_the_header_wait_still_holds_once_the_body_is_up(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    async def never_answers(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(5)
        return web.Response(text="late")

    shield = await make_shield(
        await serve(aiohttp_server, never_answers),
        timeouts={"upstream_headers": 0.3, "upstream_idle": 2.0},
    )

    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * PIECE

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with (
        aiohttp.ClientSession() as client,
        client.post(url_of(shield, "/upload"), data=body()) as answer,
    ):
        assert answer.status == 504
    assert loop.time() - started < 2.0


async def test_a_head_past_max_header_total_is_refused_while_it_arrives(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    # Every line within max_header_size and the count within max_headers: only the total is over.
    upstream, shield = await proxied(raw_upstream, make_shield, limits={"max_header_total": "16KiB"})

    async with connect(shield) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
        fillers = [b"X-Filler-%d: %s\r\n" % (index, b"x" * 1000) for index in range(64)]
        sent, answer = await write_until_answered(reader, writer, fillers, wait=0.005)

    assert answer.startswith(b"HTTP/1.1 431 ")
    assert sent < 40 * 1000  # refused at about 16 KiB of the 64 the client would have sent
    assert upstream.heads == []
    assert (await scraped(shield, "shield_client_limits"))["header_total"] == 1


async def test_a_head_within_max_header_total_passes(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, limits={"max_header_total": "16KiB"})

    async with connect(shield) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
        for index in range(12):
            writer.write(b"X-Filler-%d: %s\r\n" % (index, b"x" * 1000))
            await writer.drain()
            await asyncio.sleep(0.002)
        writer.write(b"\r\n")
        answer = await read_response(reader)

    assert answer.status == 200
    assert len(upstream.requests[0].header(b"X-Filler-11")[0]) == 1000


async def test_a_client_that_never_reads_frees_its_upstream_connection_within_client_send(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    async def files(request: web.Request) -> web.StreamResponse:
        if request.path == "/small":
            return web.Response(text="small")
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(256):  # 64 MiB, far more than the socket buffers on the way
            await response.write(b"x" * 262144)
        return response

    shield = await make_shield(
        await serve(aiohttp_server, files),
        upstream={"pool": {"max_connections": 1}},
        timeouts={"client_send": 0.5, "connect": 5.0},
    )

    # A client asks for a large file and never reads: the one upstream connection streams to it.
    reader, writer = await asyncio.open_connection("127.0.0.1", shield.port)
    writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.2)

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession() as client, client.get(url_of(shield, "/small")) as answer:
        assert (answer.status, await answer.text()) == (200, "small")
    assert loop.time() - started < 2.5  # within client_send (and a tick), not connect's 5 s
    # The stalled client was cut off: what it can still read ends well short of 64 MiB.
    got = await read_until_closed(reader, timeout=10)
    writer.close()
    assert len(got) < 64 * 1024 * 1024
    assert (await scraped(shield, "shield_client_limits"))["client_send"] == 1


@contextlib.asynccontextmanager
async def stuck_on_its_first_answer() -> AsyncIterator[
    tuple[http_connection.Http1Connection, FakeTransport, asyncio.Event]
]:
    """A connection whose first answer never ends (its client never gets or reads it), so what
    it reads next waits its turn; the event is set once that first request is being answered."""
    started = asyncio.Event()

    async def never_done(request: http_connection.Request) -> http_connection.Written:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    server = http_connection.Http1Server(
        never_done, header_timeout=5, keepalive_timeout=5, max_line=8190, max_headers=100
    )
    conn = server()
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    try:
        yield conn, transport, started
    finally:
        server.close_all()


async def test_a_read_full_of_pipelined_requests_is_not_parsed_past_the_cap() -> None:
    flood = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * (256 * 1024 // 27)  # 9,700 requests in one read
    async with stuck_on_its_first_answer() as (conn, transport, started):
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        conn.data_received(flood)
        await started.wait()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()

    # Parsing stopped within a slice of the pipelining cap: the rest of the read waits as bytes.
    assert not transport.reading
    assert grown < 512 * 1024  # it was 3.8 MB a connection


async def test_pipelined_requests_with_bodies_are_not_read_past_the_byte_cap() -> None:
    # Fewer requests than the count cap (16), but 480 KiB of bodies waiting behind the first.
    post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 32768\r\n\r\n" + b"x" * 32768
    flood = GET + post * 15
    reads = [flood[start : start + 65536] for start in range(0, len(flood), 65536)]
    async with stuck_on_its_first_answer() as (conn, transport, started):
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        while reads and transport.reading:  # as the event loop reads a socket: until paused
            conn.data_received(reads.pop(0))
        await started.wait()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()

    # Reading paused at the byte cap (64 KiB of requests waiting, a read past it at most), not
    # once all fifteen bodies were held.
    assert not transport.reading
    assert reads
    assert grown < 192 * 1024


async def test_a_connection_gone_while_idle_leaves_nothing_for_the_cyclic_collector() -> None:
    # What a closed connection held must go with it, not wait for the cyclic collector (which,
    # once an attack is over, does not run: 2,000 slow readers' answers stayed resident).
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"p" * 100_000

    async def handler(request: http_connection.Request) -> http_connection.Written:
        return http_connection.Written(answer, True, 200)

    server = http_connection.Http1Server(
        handler, header_timeout=5, keepalive_timeout=5, max_line=8190, max_headers=100
    )
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        conn = server()
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received(GET)
        for _ in range(5):
            await asyncio.sleep(0)  # answered, and now waiting for the next request
        assert transport.written == answer
        conn.connection_lost(ConnectionResetError("the client went away"))
        for _ in range(3):
            await asyncio.sleep(0)  # the serving task ends
        del conn, transport
        gc.collect()
        left = {type(thing).__name__ for thing in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()

    assert not left, sorted(left)


async def test_memory_is_handed_back_once_a_crowd_of_connections_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[float] = []
    monkeypatch.setattr(http_connection, "release_garbage", lambda: trims.append(1.0))

    async def handler(request: http_connection.Request) -> http_connection.Written:
        raise AssertionError("no request is sent")

    server = http_connection.Http1Server(
        handler, header_timeout=60, keepalive_timeout=60, max_line=8190, max_headers=100
    )
    crowd = []
    for _ in range(200):
        conn = server()
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        crowd.append(conn)
    server._tick()
    assert trims == []  # a crowd that is there is not trimmed for

    for conn in crowd[:150]:
        conn.connection_lost(None)  # three quarters of it gone
    server._tick()
    server._tick()
    assert trims == [1.0]  # once, not at every tick
    server.close_all()


async def test_a_pipelined_request_answered_before_its_body_came_leaves_reading_on(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    # Found by the property tests (10,000 examples): the body of a request that waited behind
    # another one was still counted as waiting once it was answered, and reading stayed paused.
    rules = [{"name": "no-evil", "match": {"headers": {"X-Evil": "present"}}, "action": "block"}]
    upstream, shield = await proxied(raw_upstream, make_shield, rules=rules)
    blocked = b"GET /b HTTP/1.1\r\nHost: a\r\nX-Evil: 1\r\nContent-Length: 70000\r\n\r\n"

    async with connect(shield) as (reader, writer):
        writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\nX-Evil: 1\r\n\r\n" + blocked + b"x")
        await writer.drain()
        await asyncio.sleep(0.05)  # both answered 403; the second body still to come
        writer.write(b"x" * 69999 + b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n")
        statuses = [(await read_response(reader)).status for _ in range(3)]
        writer.write(b"GET /d HTTP/1.1\r\nHost: a\r\n\r\n")  # once all of that is answered
        later = await asyncio.wait_for(read_response(reader), 5)

    assert statuses == [403, 403, 200]
    assert later.status == 200
    assert [r.line for r in upstream.requests] == [b"GET /c HTTP/1.1", b"GET /d HTTP/1.1"]


async def test_requests_left_unparsed_are_served_once_the_client_reads_again(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)
    count = 400  # 11 KiB: parsed in slices, with pauses at the pipelining cap on the way

    async with connect(shield) as (reader, writer):
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % n for n in range(count)))
        answers = [await read_response(reader) for _ in range(count)]

    assert all(answer.status == 200 for answer in answers)
    assert [r.line for r in upstream.requests] == [b"GET /%d HTTP/1.1" % n for n in range(count)]


async def test_pipelined_requests_with_bodies_are_all_served_in_order_past_the_byte_cap(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)
    count = 24  # 24 x 16 KiB bodies: the byte cap pauses reading again and again on the way

    async with connect(shield) as (reader, writer):
        for n in range(count):
            body = bytes([65 + n]) * PIECE
            writer.write(b"POST /%d HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (n, PIECE, body))
        answers = [await read_response(reader) for _ in range(count)]

    assert all(answer.status == 200 for answer in answers)
    assert [(r.line, r.body) for r in upstream.requests] == [
        (b"POST /%d HTTP/1.1" % n, bytes([65 + n]) * PIECE) for n in range(count)
    ]


# -- buffering and minimum rates --------------------------------------------------------------


def big_file(size: int) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An upstream answering /big with ``size`` bytes, streamed, and /small with 'small'."""

    async def files(request: web.Request) -> web.StreamResponse:
        if request.path != "/big":
            if request.method == "POST":
                await request.read()
            return web.Response(text="small")
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(size // 65536):
            await response.write(b"x" * 65536)
        return response

    return files


async def served_within(shield: Shield, seconds: float) -> int:
    """The status of a GET /small, or 0 when it took longer than ``seconds``."""
    try:
        async with (
            asyncio.timeout(seconds),
            aiohttp.ClientSession() as client,
            client.get(url_of(shield, "/small")) as answer,
        ):
            await answer.read()
            return answer.status
    except TimeoutError:
        return 0


def slow_reader(port: int, path: bytes) -> socket.socket:
    """A client that asks for ``path`` with a small receive buffer and reads nothing yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    return sock


@pytest.mark.parametrize(("buffer", "served"), [("16MiB", True), ("64KiB", False)])
async def test_an_answer_within_buffer_response_frees_its_upstream_connection_for_a_slow_client(
    aiohttp_server: AiohttpServer, make_shield: MakeShield, buffer: str, served: bool
) -> None:
    shield = await make_shield(
        await serve(aiohttp_server, big_file(8 * 1024 * 1024)),
        upstream={"pool": {"max_connections": 1}},
        limits={"buffer_response": buffer},
        timeouts={"connect": 1.5, "client_send": 30},
    )
    reader = slow_reader(shield.port, b"/big")  # 8 MiB: more than the kernel buffers hold
    try:
        await asyncio.sleep(0.5)
        status = await served_within(shield, 1.0)
    finally:
        reader.close()

    # With the answer waiting in Shield, the one upstream connection is free for the next client;
    # without, it stays busy feeding the reader that does not read.
    assert (status == 200) is served


async def test_a_slow_upload_within_buffer_request_body_holds_no_upstream_connection(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    shield = await make_shield(
        await serve(aiohttp_server, big_file(0)),
        upstream={"pool": {"max_connections": 1}},
        timeouts={"connect": 1.0},
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", shield.port)
    writer.write(b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 102400\r\n\r\n" + b"x" * 50000)
    await writer.drain()  # half a 100 KB body, the rest still to come

    # Read whole before an upstream connection is taken, so the other client gets the one there is.
    assert await served_within(shield, 1.0) == 200
    writer.write(b"x" * 52400)
    assert (await read_response(reader)).status == 200
    writer.close()


async def test_an_upload_slower_than_min_data_rate_gets_408(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    shield = await make_shield(
        await serve(aiohttp_server, big_file(0)),
        limits={"min_data_rate": 1000},
        timeouts={"data_rate_grace": 0.5, "client_idle": 30},
    )

    async with connect(shield) as (reader, writer):
        writer.write(b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        # 10 bytes every 0.1 s: 100 bytes a second, never idle, always a trickle.
        _, answer = await write_until_answered(reader, writer, [b"x" * 10] * 100, wait=0.1)

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert (await scraped(shield, "shield_client_limits"))["body_rate"] == 1


async def test_a_reader_slower_than_min_data_rate_is_cut_off(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    shield = await make_shield(
        await serve(aiohttp_server, big_file(64 * 1024 * 1024)),
        upstream={"pool": {"max_connections": 1}},
        limits={"min_data_rate": 100_000, "buffer_response": "64KiB"},
        timeouts={"data_rate_grace": 0.5, "client_send": 30, "connect": 5},
    )
    sock = slow_reader(shield.port, b"/big")
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    got = 0
    reset = False
    try:
        while loop.time() - started < 10:  # 2 KB every 0.05 s: 40 KB/s, a fifth of the minimum
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                data = b"-"
            except ConnectionResetError:
                reset = True
                break
            if not data:
                break
            got += len(data)
            await asyncio.sleep(0.05)
    finally:
        sock.close()

    # Cut off with a reset soon after the grace period, not left to read 64 MiB at its pace.
    assert reset and loop.time() - started < 5
    assert got < 64 * 1024 * 1024
    assert await served_within(shield, 2.0) == 200  # and its upstream connection is free again
    assert (await scraped(shield, "shield_client_limits"))["read_rate"] == 1

"""Shield's own HTTP/1.1 listener: what a client sees of the connection itself.

Pipelined requests, a connection that stays usable after a refusal its body never reached,
bounds on the request head while it arrives, idle and silent connections, HTTP/1.0 clients, and
a WebSocket upgrade after plain requests on the same connection.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from shield.http import connection as http_connection
from tests.conftest import MakeShield
from tests.test_proxy_http import (
    OK,
    StartUpstream,
    connect,
    proxied,
    raw_upstream,
    read_response,
    read_until_closed,
    write_until_answered,
)

__all__ = ["raw_upstream"]  # the fixture, imported for this module's tests

CLOSED_ROUTE = [
    {
        "name": "signup-closed",
        "match": {"methods": ["POST"], "paths": ["/signup"]},
        "action": "close",
        "message": "Registration may be busy. Please try again later.",
    }
]


async def test_pipelined_requests_are_answered_in_order(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    async with connect(shield) as (reader, writer):
        writer.write(
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /three HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        answers = [await read_response(reader) for _ in range(3)]

    assert [a.status for a in answers] == [200, 200, 200]
    assert [r.line for r in upstream.requests] == [
        b"GET /one HTTP/1.1",
        b"POST /two HTTP/1.1",
        b"GET /three HTTP/1.1",
    ]
    assert upstream.requests[1].body == b"abc"


async def test_a_refused_request_whose_body_comes_later_leaves_the_connection_usable(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, rules=CLOSED_ROUTE)

    async with connect(shield) as (reader, writer):
        writer.write(b"POST /signup HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf-")
        refused = await read_response(reader)
        writer.write(b"body!GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        after = await read_response(reader)

    assert refused.status == 503 and b"Registration may be busy" in refused.body
    assert after.status == 200 and after.body == b"ok"
    assert [r.line for r in upstream.requests] == [b"GET /after HTTP/1.1"]


async def test_an_endless_header_is_refused_while_it_arrives(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, limits={"max_header_size": 1024})

    async with connect(shield) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")
        refused_after, answer = await write_until_answered(reader, writer, [b"x" * 512] * 200)

    # Shield answers within a few KiB, not after the 100 KiB the client was ready to send, and
    # the client reads the 400: Shield lingers rather than reset a connection with unread input.
    assert refused_after < 64 * 1024
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert upstream.heads == []


async def test_more_headers_than_max_headers_get_400(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, limits={"max_headers": 8})
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(9))

    async with connect(shield) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
        response = await read_response(reader)
        rest = await read_until_closed(reader)

    assert response.status == 400 and rest == b""
    assert upstream.heads == []


@pytest.mark.parametrize("name", [b"Content-Type", b"User-Agent", b"Transfer-Encoding"])
async def test_a_header_that_may_appear_once_appearing_twice_gets_400(
    raw_upstream: StartUpstream, make_shield: MakeShield, name: bytes
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)
    value = b"chunked" if name == b"Transfer-Encoding" else b"a"

    async with connect(shield) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n%s: %s\r\n%s: %s\r\n\r\n" % (name, value, name, value))
        response = await read_response(reader)

    assert response.status == 400
    assert upstream.heads == []


async def test_a_connection_that_never_sends_a_request_is_closed_after_the_header_timeout(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(raw_upstream, make_shield, timeouts={"client_header": 0.3})
    loop = asyncio.get_running_loop()

    async with connect(shield) as (reader, _):
        started = loop.time()
        assert await read_until_closed(reader) == b""
        elapsed = loop.time() - started

    assert 0.25 <= elapsed < 2.0


async def test_an_idle_keepalive_connection_closes_after_the_keepalive_timeout(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(raw_upstream, make_shield, timeouts={"keepalive": 0.3})
    loop = asyncio.get_running_loop()

    async with connect(shield) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(reader)).status == 200
        started = loop.time()
        assert await read_until_closed(reader) == b""
        elapsed = loop.time() - started

    assert 0.25 <= elapsed < 2.0


async def test_an_http10_client_gets_a_streamed_body_ended_by_close(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    body = os.urandom(300_000)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:100_000], body[100_000:]))
    _, shield = await proxied(
        raw_upstream,
        make_shield,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n",
    )

    async with connect(shield) as (reader, writer):
        writer.write(b"GET /big HTTP/1.0\r\nHost: a\r\n\r\n")
        response = await read_response(reader)

    assert response.status == 200
    assert response.header(b"Transfer-Encoding") == []
    assert response.header(b"Connection") == [b"close"]
    assert response.body == body


async def test_a_websocket_upgrade_after_plain_requests_on_the_same_connection_is_relayed(
    make_shield: MakeShield,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(text="plain")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await ws.send_str("echo:" + message.data)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    upstream = TestServer(app)
    await upstream.start_server()
    try:
        shield = await make_shield(str(upstream.make_url("")).rstrip("/"))
        key = base64.b64encode(os.urandom(16))
        async with connect(shield) as (reader, writer):
            writer.write(b"GET /page HTTP/1.1\r\nHost: a\r\n\r\n")
            plain = await read_response(reader)
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
                + key
                + b"\r\n\r\n"
                # A masked text frame "hi" sent right behind the handshake.
                + bytes([0x81, 0x82, 1, 2, 3, 4, ord("h") ^ 1, ord("i") ^ 2])
            )
            async with asyncio.timeout(3):
                switched = await reader.readuntil(b"\r\n\r\n")
                frame = await reader.readexactly(2)
                payload = await reader.readexactly(frame[1] & 0x7F)
                # A masked Close frame with code 1000; the upstream's Close comes back.
                writer.write(bytes([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]))
                closing = await reader.readexactly(2)
    finally:
        await upstream.close()

    assert plain.status == 200 and plain.body == b"plain"
    assert switched.startswith(b"HTTP/1.1 101")
    assert frame[0] == 0x81 and payload == b"echo:hi"
    assert closing[0] == 0x88


async def test_an_upgrade_refused_by_a_rule_leaves_the_connection_serving_http(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    rules = [{"name": "no-ws", "match": {"paths": ["/ws"]}, "action": "block"}]
    upstream, shield = await proxied(raw_upstream, make_shield, OK, rules=rules)

    async with connect(shield) as (reader, writer):
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        refused = await read_response(reader)
        writer.write(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        after = await read_response(reader)

    assert refused.status == 403
    assert after.status == 200
    assert [r.line for r in upstream.requests] == [b"GET /after HTTP/1.1"]


async def test_a_client_that_pipelines_without_reading_is_not_served_ahead_of_its_reading(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    body = b"x" * 16384
    upstream, shield = await proxied(
        raw_upstream, make_shield, b"HTTP/1.1 200 OK\r\nContent-Length: 16384\r\n\r\n" + body
    )
    count = 1000
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect(("127.0.0.1", shield.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n" * count)
        await asyncio.sleep(1.0)
        # Answers wait in the kernel's buffers, not in Shield's memory: most requests are not
        # even sent upstream while the client reads nothing.
        served_unread = len(upstream.requests)
        answers = [await read_response(reader) for _ in range(count)]
    finally:
        writer.close()

    assert served_unread < count * 0.8
    assert len(upstream.requests) == count
    assert all(a.status == 200 and a.body == body for a in answers)


def test_header_names_are_remembered_within_bounds() -> None:
    for i in range(2 * http_connection._REMEMBERED_NAMES):
        name = b"X-Name-%d" % i
        assert http_connection._header_name(name) == (name.decode(), None)
    assert len(http_connection._NAMES) <= http_connection._REMEMBERED_NAMES
    assert http_connection._header_name(b"HOST") == ("HOST", b"host")
    long_name = b"X-" + b"n" * 100
    assert http_connection._header_name(long_name) == (long_name.decode(), None)
    assert long_name not in http_connection._NAMES

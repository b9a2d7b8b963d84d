"""What the rules judged is what the upstream gets; what the upstream answered is what the client gets.

Each test pins one case an outside audit found (raw sockets on both sides, so the bytes are
exact): trailers posing as headers, a glued second answer, underscore look-alikes, codings
Shield does not decode, a parse error among pipelined requests, Host and version games, a HEAD
answer that closes, 100 Continue for HTTP/1.0, the reasons to pause reading kept apart, and a
refusal the client can read although its body was still coming.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from shield.http import connection as http_connection
from tests.conftest import MakeShield
from tests.test_proxy_http import (
    OK,
    StartUpstream,
    connect,
    exchange,
    proxied,
    raw_upstream,
    read_response,
    read_until_closed,
    write_until_answered,
)

__all__ = ["raw_upstream"]  # the fixture, imported for this module's tests

BLOCK_EVIL = [
    {"name": "evil-header", "match": {"headers": {"X-Evil": "present"}}, "action": "block"},
    {"name": "internal-host", "match": {"hosts": ["admin.internal"]}, "action": "block"},
    {"name": "bots", "match": {"user_agents": ["evilbot"]}, "action": "block"},
]


# -- 1. request trailers ----------------------------------------------------------------------


async def test_request_trailers_never_reach_the_upstream_as_headers(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, rules=BLOCK_EVIL)

    response = await exchange(
        shield,
        b"POST /form HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: curl/8\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n"
        b"0\r\nX-Evil: 1\r\nHost: admin.internal\r\nUser-Agent: evilbot\r\nAuthorization: Bearer x\r\n\r\n",
    )

    # The rules judged a request without X-Evil, for shop.example, from curl: forwarded. The
    # upstream must get exactly that request: the trailer fields are dropped.
    assert response.status == 200
    (request,) = upstream.requests
    assert request.body == b"hello"
    assert request.header(b"Host") == [b"shop.example"]
    assert request.header(b"X-Forwarded-Host") == [b"shop.example"]
    assert request.header(b"User-Agent") == [b"curl/8"]
    assert not request.names() & {b"x-evil", b"authorization"}


async def test_endless_request_trailers_are_refused_while_they_arrive(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, limits={"max_header_size": 1024})

    async with connect(shield) as (reader, writer):
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Endless: ")
        sent, answer = await write_until_answered(reader, writer, [b"x" * 1024] * 256)

    assert sent < 16 * 1024
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert upstream.requests == []


# -- 2 and 3. what the client gets of the upstream's answer -----------------------------------


async def test_response_trailers_are_not_merged_into_the_answers_head(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(
        raw_upstream,
        make_shield,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Head: 1\r\n\r\n"
        b"2\r\nok\r\n0\r\nX-Trailer: 1\r\nSet-Cookie: injected=1\r\n\r\n",
    )

    response = await exchange(shield, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

    assert (response.status, response.body) == (200, b"ok")
    assert response.header(b"X-Head") == [b"1"]
    assert response.header(b"X-Trailer") == [] and response.header(b"Set-Cookie") == []


GLUED = (
    b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nSet-Cookie: a=b\r\nContent-Length: 4\r\n\r\n"
    b"evil"
)


@pytest.mark.parametrize(
    "answer",
    [
        OK + GLUED,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + GLUED,
        OK + b"HTTP/1.1 100 Continue\r\n\r\n",
        OK + b"\x00garbage",
    ],
    ids=["after Content-Length", "after chunked", "a 1xx", "garbage"],
)
async def test_bytes_glued_after_a_complete_answer_are_dropped_with_the_connection(
    raw_upstream: StartUpstream, make_shield: MakeShield, answer: bytes
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, answer, OK)

    async with connect(shield) as (reader, writer):
        writer.write(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await read_response(reader)
        writer.write(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
        second = await read_response(reader)

    assert (first.status, first.body) == (200, b"ok")
    assert first.header(b"Location") == [] and first.header(b"Set-Cookie") == []
    assert (second.status, second.body) == (200, b"ok")
    assert len(upstream.requests) == 2


# -- 4. underscores ---------------------------------------------------------------------------

UNDERSCORED = (
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX_Evil: 1\r\nTransfer_Encoding: chunked\r\n"
    b"Content_Length: 5\r\nX-Kept: 1\r\n\r\nok"
)


async def test_headers_with_underscores_are_dropped_before_the_rules_read_the_request(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    rules = [{"name": "evil", "match": {"headers": {"X_Evil": "present"}}, "action": "block"}]
    upstream, shield = await proxied(raw_upstream, make_shield, rules=rules)

    response = await exchange(shield, UNDERSCORED)

    # Dropped, so no rule can see it either: the upstream and the rules agree.
    assert response.status == 200
    (request,) = upstream.requests
    assert not {name for name in request.names() if b"_" in name}
    assert request.header(b"X-Kept") == [b"1"] and request.body == b"ok"


async def test_headers_with_underscores_can_be_refused_or_allowed(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, refusing = await proxied(
        raw_upstream, make_shield, forwarding={"underscores_in_headers": "refuse"}
    )
    allowing = await make_shield(upstream.url, forwarding={"underscores_in_headers": "allow"})

    refused = await exchange(refusing, UNDERSCORED)
    allowed = await exchange(allowing, UNDERSCORED)

    assert refused.status == 400 and allowed.status == 200
    (request,) = upstream.requests
    assert request.header(b"X_Evil") == [b"1"]


# -- 5. transfer codings Shield does not decode -----------------------------------------------


async def test_a_request_with_a_transfer_coding_besides_chunked_gets_501(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    response = await exchange(
        shield,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )

    assert response.status == 501
    assert upstream.heads == []


async def test_transfer_encoding_in_an_http10_request_gets_400(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    response = await exchange(
        shield, b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )

    assert response.status == 400
    assert upstream.heads == []


async def test_an_answer_with_a_transfer_coding_besides_chunked_gets_502(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    compressed = b"\x1f\x8b\x08\x00"
    _, shield = await proxied(
        raw_upstream,
        make_shield,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\n" + compressed + b"\r\n0\r\n\r\n",
    )

    response = await exchange(shield, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

    assert response.status == 502
    assert compressed not in response.body


# -- 6. a parse error among pipelined requests ------------------------------------------------


async def test_requests_pipelined_before_a_parse_error_are_answered_then_the_400(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(
        raw_upstream,
        make_shield,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
    )

    async with connect(shield) as (reader, writer):
        writer.write(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n\x00garbage\r\n\r\n"
        )
        answers = [await read_response(reader) for _ in range(3)]
        rest = await read_until_closed(reader)

    assert [(a.status, a.body) for a in answers] == [(200, b"a"), (200, b"b"), (400, b"Bad Request.\n")]
    assert rest == b""
    assert [r.line for r in upstream.requests] == [b"GET /a HTTP/1.1", b"GET /b HTTP/1.1"]


async def test_a_head_llhttp_refuses_after_completing_it_is_never_answered_as_good(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    async with connect(shield) as (reader, writer):
        writer.write(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nG"
        )
        answers = [await read_response(reader) for _ in range(2)]

    assert [a.status for a in answers] == [200, 400]
    assert [r.line for r in upstream.requests] == [b"GET /a HTTP/1.1"]


# -- 7. Host and version ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: evil/x@127.0.0.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: user@shop.example\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400),
        (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
    ],
    ids=["no Host", "space", "path and userinfo", "userinfo", "empty", "HTTP/0.9 with headers"],
)
async def test_requests_without_a_valid_host_or_version_are_refused(
    raw_upstream: StartUpstream, make_shield: MakeShield, request_bytes: bytes, status: int
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    async with connect(shield) as (reader, writer):
        writer.write(request_bytes)
        data = await read_until_closed(reader)

    assert data.startswith(b"HTTP/1.1 %d " % status)
    assert upstream.heads == []


@pytest.mark.parametrize(
    "host",
    [b"shop.example", b"shop.example:8080", b"127.0.0.1", b"[2001:db8::1]:443", b"xn--bcher-kva.example"],
)
async def test_valid_authorities_are_forwarded(
    raw_upstream: StartUpstream, make_shield: MakeShield, host: bytes
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    response = await exchange(shield, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")

    assert response.status == 200
    assert upstream.requests[0].header(b"Host") == [host]


async def test_an_http10_request_without_host_goes_to_the_upstreams_authority(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    async with connect(shield) as (reader, writer):
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        data = await read_until_closed(reader)

    assert data.startswith(b"HTTP/1.1 200 ")
    assert upstream.requests[0].header(b"Host") == [upstream.url.removeprefix("http://").encode()]


# -- 8. a HEAD answer that closes -------------------------------------------------------------


@contextlib.asynccontextmanager
async def closing_after_head() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An upstream that answers HEAD with ``Connection: close`` and closes only a moment later,
    without reading anything more: a request sent on that connection meanwhile is lost."""
    lines: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines.append(head.partition(b"\r\n")[0])
                if head.startswith(b"HEAD "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n")
                    await asyncio.sleep(0.3)
                    break
                length = next(
                    (
                        int(v)
                        for n, _, v in (x.partition(b": ") for x in head.split(b"\r\n"))
                        if n.lower() == b"content-length"
                    ),
                    0,
                )
                await reader.readexactly(length)
                writer.write(OK)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", lines
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def test_a_head_answer_saying_connection_close_is_not_pooled(make_shield: MakeShield) -> None:
    async with closing_after_head() as (url, lines):
        shield = await make_shield(url)
        async with connect(shield) as (reader, writer):
            writer.write(b"HEAD /page HTTP/1.1\r\nHost: a\r\n\r\n")
            head = await read_response(reader, head_request=True)
            writer.write(b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
            post = await read_response(reader)

    assert head.status == 200 and head.header(b"Content-Length") == [b"10"]
    assert (post.status, post.body) == (200, b"ok")
    assert lines[-1] == b"POST /form HTTP/1.1"


# -- 9. 100 Continue --------------------------------------------------------------------------


async def test_an_http10_client_expecting_100_continue_gets_no_1xx(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    async with connect(shield) as (reader, writer):
        writer.write(b"POST /x HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                early = await reader.read(100)
                pytest.fail(f"Shield answered before the body: {early!r}")
        writer.write(b"hello")
        data = await read_until_closed(reader)

    assert data.startswith(b"HTTP/1.1 200 ") and b"100 Continue" not in data
    assert upstream.requests[0].body == b"hello"


# -- 10. an upgrade the upstream declines ------------------------------------------------------

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nServer: app\r\nContent-Length: 9\r\n\r\nplain old", 200, b"plain old"),
        (b"HTTP/1.1 400 Bad Request\r\nServer: app\r\nContent-Length: 3\r\n\r\nno!", 400, b"no!"),
        (
            b"HTTP/1.1 426 Upgrade Required\r\nServer: app\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nlater\r\n0\r\n\r\n",
            426,
            b"later",
        ),
    ],
    ids=["200", "400", "426 chunked"],
)
async def test_a_declined_upgrade_reaches_the_client_as_the_upstream_answered(
    raw_upstream: StartUpstream, make_shield: MakeShield, answer: bytes, status: int, body: bytes
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, answer)

    response = await exchange(shield, HANDSHAKE)

    assert (response.status, response.body) == (status, body)
    assert response.header(b"Server") == [b"app"]  # the upstream's, never a library's
    assert b"aiohttp" not in response.raw_head
    (request,) = upstream.requests
    assert request.header(b"Upgrade") == [b"websocket"] and request.header(b"Host") == [b"chat.example"]


async def test_an_upgrade_request_with_a_body_gets_400(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    response = await exchange(shield, HANDSHAKE.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\nhello"))

    # llhttp hands what follows an upgrade request's head to the new protocol, body included,
    # so Shield cannot forward that body as the request's: refused, never passed on half-read.
    assert response.status == 400 and b"aiohttp" not in response.raw_head
    assert upstream.heads == []


async def test_the_asterisk_form_is_only_for_options(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    refused = await exchange(shield, b"GET * HTTP/1.1\r\nHost: a\r\n\r\n")
    options = await exchange(shield, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")

    assert (refused.status, options.status) == (400, 200)
    assert [r.line for r in upstream.requests] == [b"OPTIONS * HTTP/1.1"]


# -- 11. the reasons to pause reading ---------------------------------------------------------


class FakeTransport:
    """Just enough of a transport to watch whether the connection reads."""

    def __init__(self) -> None:
        self.reading = True
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close


async def test_draining_a_body_does_not_resume_reading_after_a_refusal() -> None:
    bodies: list[bytes] = []
    body_read = asyncio.Event()

    async def handler(request: http_connection.Request) -> http_connection.Written:
        bodies.append(await request.content.read())
        body_read.set()
        await asyncio.sleep(0.05)
        return http_connection.Written(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True, 200)

    server = http_connection.Http1Server(
        handler, header_timeout=5, keepalive_timeout=5, max_line=8190, max_headers=100
    )
    conn = server()
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    body = b"x" * (http_connection.BODY_HIGH_WATER + 1)
    # A body big enough to pause reading, then input that cannot be parsed, in one read.
    conn.data_received(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s\x00bad" % (len(body), body)
    )
    assert not transport.reading

    await body_read.wait()  # the handler drained the body: the body's reason to pause is gone
    assert bodies == [body]
    assert not transport.reading  # the refusal's is not

    for _ in range(20):
        if transport.written.count(b"HTTP/1.1 ") == 2:
            break
        await asyncio.sleep(0.01)
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.1 400 Bad Request\r\n" in transport.written
    server.close_all()


# -- 12. a refusal the client can read --------------------------------------------------------


async def test_a_client_still_sending_its_body_reads_the_413(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, limits={"max_body_size": 1024})

    def post_and_read() -> tuple[bytes, OSError | None]:
        """A client as most upload clients are: it sends its whole body, then reads the answer,
        and gives up if sending fails (as ``requests`` does on a reset)."""
        with socket.create_connection(("127.0.0.1", shield.port), timeout=5) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 50000000\r\n\r\n")
            try:
                for _ in range(128):
                    sock.sendall(b"x" * 32768)
            except OSError as error:
                return b"", error
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    answer += chunk
            return answer, None

    answer, send_error = await asyncio.to_thread(post_and_read)

    # Shield answered at once and closed; but it read and dropped the 4 MiB still coming rather
    # than reset the connection under the client's feet.
    assert send_error is None
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert upstream.heads == []


async def test_lingering_ends_after_its_time_even_if_the_client_keeps_sending(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(raw_upstream, make_shield, limits={"max_body_size": 1024})

    async with connect(shield) as (reader, writer):
        writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 50000000\r\n\r\n")
        answer = await reader.readuntil(b"\r\n\r\n")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with contextlib.suppress(ConnectionError):
            while loop.time() - started < 10:
                writer.write(b"x" * 4096)
                await writer.drain()
                await asyncio.sleep(0.01)
        sending_for = loop.time() - started

    assert answer.startswith(b"HTTP/1.1 413 ")
    assert sending_for < 5  # Shield lingers 2 s, then resets a client that never stops


# -- found by fuzzing (tests/fuzz) ------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 000 OK\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 104 X\r\nContent-Length: 2\r\n\r\nhi" + OK,
        b"HTTP/1.1 150 X\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nSet-Cookie: session=attacker\r\n\r\n" + OK,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"8\r\n3\r\nabc\r\n\r\n0\r\n\r\n",
    ],
    ids=["status 000", "status 999", "a 1xx with a body", "a 1xx with trailers", "chunked twice"],
)
async def test_answers_llhttp_accepts_but_the_client_would_misread_get_502(
    raw_upstream: StartUpstream, make_shield: MakeShield, answer: bytes
) -> None:
    _, shield = await proxied(raw_upstream, make_shield, answer)

    response = await exchange(shield, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

    assert response.status == 502
    assert response.header(b"Set-Cookie") == [] and b"hi" not in response.body


async def test_an_upstreams_content_length_reaches_the_client_as_plain_digits(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(raw_upstream, make_shield, b"HTTP/1.1 200 OK\r\nContent-Length: 0005\r\n\r\n")

    response = await exchange(shield, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", head_request=True)

    assert response.header(b"Content-Length") == [b"5"]


@pytest.mark.parametrize(("host", "status"), [(b"shop%.example", 400), (b"shop%41.example", 200)])
async def test_a_percent_in_host_must_encode_a_byte(
    raw_upstream: StartUpstream, make_shield: MakeShield, host: bytes, status: int
) -> None:
    _, shield = await proxied(raw_upstream, make_shield)

    async with connect(shield) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        answer = await read_response(reader)

    assert answer.status == status


async def test_a_refusal_on_an_idle_keepalive_connection_leaves_no_task_behind(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(raw_upstream, make_shield)

    async with connect(shield) as (reader, writer):
        writer.write(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await read_response(reader)
        writer.write(b"GET /two HTTP/1.1\r\nHost: a\x01b\r\n\r\n")  # a control character
        refused = await read_response(reader)
    for _ in range(50):
        serving = [t for t in asyncio.all_tasks() if "Http1Connection._serve" in repr(t.get_coro())]
        if not serving:
            break
        await asyncio.sleep(0.01)

    assert (first.status, refused.status) == (200, 400)
    assert serving == []  # one would be left per such connection, for ever


# -- found by the property tests (tests/test_wire_*.py) ---------------------------------------


async def test_whitespace_after_a_header_value_is_not_part_of_it(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    rules = [{"name": "debug", "match": {"headers": {"X-Debug": "1"}}, "action": "block"}]
    upstream, shield = await proxied(raw_upstream, make_shield, rules=rules)

    blocked = await exchange(shield, b"GET / HTTP/1.1\r\nHost: a\r\nX-Debug: 1 \t\r\n\r\n")
    forwarded = await exchange(shield, b"GET / HTTP/1.1\r\nHost: a \r\nUser-Agent: curl \r\n\r\n")

    # "1 " is "1" (RFC 9112 §5): the rule holds, and what goes upstream is stripped too.
    assert (blocked.status, forwarded.status) == (403, 200)
    (request,) = upstream.requests
    assert request.header(b"Host") == [b"a"] and request.header(b"User-Agent") == [b"curl"]


async def test_a_refused_head_request_gets_no_body(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(raw_upstream, make_shield)

    async with connect(shield) as (reader, writer):
        writer.write(b"HEAD / HTTP/1.1\r\nHost: a b\r\n\r\n")
        data = await read_until_closed(reader)

    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and body == b""


@pytest.mark.parametrize("connection", [b"Connection: keep-alive, close", b"Proxy-Connection: keep-alive"])
async def test_an_http10_request_keeps_its_connection_only_when_asked_without_close(
    raw_upstream: StartUpstream, make_shield: MakeShield, connection: bytes
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    async with connect(shield) as (reader, writer):
        writer.write(b"GET /a HTTP/1.0\r\n" + connection + b"\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
        first = await read_response(reader)
        rest = await read_until_closed(reader)

    assert first.status == 200 and first.header(b"Connection") == [b"close"]
    assert rest == b""  # the second request is not served on a connection that was to close
    assert [r.line for r in upstream.requests] == [b"GET /a HTTP/1.1"]


async def test_a_refusal_after_a_head_request_keeps_its_body(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(raw_upstream, make_shield)

    async with connect(shield) as (reader, writer):
        writer.write(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n\x00garbage\r\n\r\n")
        head = await read_response(reader, head_request=True)
        refused = await read_response(reader)  # found by fuzzing: llhttp kept HEAD as the method

    assert (head.status, refused.status, refused.body) == (200, 400, b"Bad Request.\n")

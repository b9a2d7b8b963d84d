"""HTTP/1.1 through a real Shield, on the wire: what the upstream receives and what the client sees.

Both ends are raw sockets, so a test sees the exact bytes: the upstream is a tiny asyncio server
that records each request and answers with the bytes the test gives it, and the client writes
its request by hand (``asyncio.open_connection``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import pytest

from shield.app.server import Shield
from tests.conftest import MakeShield

WAIT = 3.0  # generous bound on any single wire read; a passing test takes milliseconds


# -- a recording upstream ---------------------------------------------------------------------


@dataclass
class UpstreamRequest:
    """One request as the upstream read it off the wire."""

    head: bytes  # request line and header lines, without the final blank line
    body: bytes = b""  # decoded from its framing
    wire_body: bytes = b""  # as framed on the wire

    @property
    def line(self) -> bytes:
        return self.head.partition(b"\r\n")[0]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        lines = self.head.split(b"\r\n")[1:]
        return [(name, value) for name, _, value in (text.partition(b": ") for text in lines)]

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def names(self) -> set[bytes]:
        return {key.lower() for key, _ in self.headers}


Respond = Callable[[UpstreamRequest, asyncio.StreamWriter], Awaitable[None]]


def replying(*answers: bytes) -> Respond:
    """Answer the n-th request with ``answers[n]`` (the last one repeats)."""
    served = 0

    async def respond(request: UpstreamRequest, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        writer.write(answers[min(served, len(answers) - 1)])
        served += 1

    return respond


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class RawUpstream:
    """An HTTP/1.1 server of a few lines: it records requests and lets the test write the answers."""

    respond: Respond
    heads: list[bytes] = field(default_factory=list)  # every request head, even one whose body never came
    requests: list[UpstreamRequest] = field(default_factory=list)  # complete requests
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            while not writer.is_closing():
                head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
                if is_readiness_probe(head):
                    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                    continue
                self.heads.append(head)
                request = UpstreamRequest(head)
                request.body, request.wire_body = await read_body(reader, request.headers)
                self.requests.append(request)
                await self.respond(request, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


def is_readiness_probe(head: bytes) -> bool:
    """Shield's own ``HEAD /`` at start-up (server.py ``_probe_upstream``), not a client's request."""
    return head.startswith(b"HEAD / HTTP/1.1\r\nHost: ") and head.count(b"\r\n") == 1


async def read_body(reader: asyncio.StreamReader, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """The body of a message with ``headers``, decoded and as framed on the wire."""
    fields = {name.lower(): value for name, value in headers}
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = wire = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            wire += size_line
            size = int(size_line.partition(b";")[0], 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    wire += trailer
                return body, wire + b"\r\n"
            data = await reader.readexactly(size + 2)
            wire += data
            body += data[:-2]
    if b"content-length" in fields:
        data = await reader.readexactly(int(fields[b"content-length"]))
        return data, data
    return b"", b""


StartUpstream = Callable[[Respond], Awaitable[RawUpstream]]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[StartUpstream]:
    """``await raw_upstream(respond)`` starts a recording upstream; closed after the test."""
    started: list[RawUpstream] = []

    async def start(respond: Respond) -> RawUpstream:
        upstream = await RawUpstream(respond).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.close()


# -- a raw client -----------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw_head: bytes
    interim: list[bytes] = field(default_factory=list)  # heads of 1xx answers before this one

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def names(self) -> set[bytes]:
        return {key.lower() for key, _ in self.headers}


async def read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    async with asyncio.timeout(WAIT):
        raw = await reader.readuntil(b"\r\n\r\n")
    line, *lines = raw[:-4].split(b"\r\n")
    headers = [(name, value) for name, _, value in (text.partition(b": ") for text in lines)]
    return int(line.split(b" ")[1]), headers, raw


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False) -> Response:
    """One response off the wire, framed as HTTP/1.1 says; 1xx answers are collected on the way."""
    interim = []
    while True:
        status, headers, raw = await read_head(reader)
        if status >= 200:
            break
        interim.append(raw)
    body = b""
    if not head_request and status not in (204, 304):
        async with asyncio.timeout(WAIT):
            if any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers):
                body, _ = await read_body(reader, headers)
            else:
                body = await reader.read()
    return Response(status, headers, body, raw, interim)


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = WAIT) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``timeout``)."""
    data = b""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                data += chunk
    return data


async def write_until_answered(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pieces: Iterable[bytes], wait: float = 0.002
) -> tuple[int, bytes]:
    """Write ``pieces`` one after the other, looking for an answer for ``wait`` seconds after
    each, and stop at the first byte of one: the bytes written until then, and the whole answer
    (read until the server closes)."""
    sent = 0
    answer = b""
    for piece in pieces:
        try:
            writer.write(piece)
            await writer.drain()
        except ConnectionError:
            break
        sent += len(piece)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                answer = await reader.read(65536)
        if answer:
            break
    return sent, answer + await read_until_closed(reader)


@contextlib.asynccontextmanager
async def connect(shield: Shield) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", shield.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def exchange(shield: Shield, request: bytes, *, head_request: bool = False) -> Response:
    """Send one raw request on a new connection and read its response."""
    async with connect(shield) as (reader, writer):
        writer.write(request)
        return await read_response(reader, head_request=head_request)


async def proxied(
    raw_upstream: StartUpstream, make_shield: MakeShield, *answers: bytes, **sections: object
) -> tuple[RawUpstream, Shield]:
    upstream = await raw_upstream(replying(*answers or (OK,)))
    return upstream, await make_shield(upstream.url, **sections)


# -- what the upstream receives ---------------------------------------------------------------


async def test_upstream_gets_the_clients_request_plus_only_shields_forwarding_headers(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    response = await exchange(shield, b"GET /x HTTP/1.1\r\nHost: shop.example\r\n\r\n")

    assert (response.status, response.body) == (200, b"ok")
    # No User-Agent, Accept, Accept-Encoding or Content-Type of Shield's own.
    head, _, request_id = upstream.requests[0].head.partition(b"\r\nX-Request-ID: ")
    assert head == (
        b"GET /x HTTP/1.1\r\n"
        b"Host: shop.example\r\n"
        b"X-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: shop.example\r\n"
        b"Via: 1.1 shield"
    )
    assert response.header(b"X-Request-ID") == [request_id]


async def test_client_claims_about_its_address_are_overwritten_not_appended_to(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    await exchange(
        shield,
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: admin.internal\r\n"
        b"Forwarded: for=10.0.0.1\r\nX-Real-IP: 10.0.0.1\r\nTrue-Client-IP: 10.0.0.1\r\n\r\n",
    )

    (request,) = upstream.requests
    assert request.header(b"X-Forwarded-For") == [b"127.0.0.1"]
    assert request.header(b"X-Forwarded-Proto") == [b"http"]
    assert request.header(b"X-Forwarded-Host") == [b"a"]
    assert not request.names() & {b"forwarded", b"x-real-ip", b"true-client-ip"}


async def test_end_to_end_headers_and_cookies_pass_unchanged(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    await exchange(
        shield,
        b"GET / HTTP/1.1\r\nHost: a\r\nCookie: session=abc; theme=dark\r\nCookie: b=2\r\n"
        b"Authorization: Bearer t0k3n\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n",
    )

    (request,) = upstream.requests
    assert request.headers[1:5] == [
        (b"Cookie", b"session=abc; theme=dark"),
        (b"Cookie", b"b=2"),
        (b"Authorization", b"Bearer t0k3n"),
        (b"User-Agent", b"curl/8.5"),
    ]


async def test_hop_by_hop_headers_and_the_ones_connection_names_are_dropped(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    await exchange(
        shield,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Foo\r\nX-Foo: secret\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\nProxy-Authorization: Basic eA==\r\n"
        b"Proxy-Connection: keep-alive\r\nX-Kept: 1\r\n\r\n",
    )

    (request,) = upstream.requests
    dropped = {b"connection", b"x-foo", b"keep-alive", b"te", b"trailer", b"proxy-authorization"}
    assert not request.names() & (dropped | {b"proxy-connection"})
    assert request.header(b"X-Kept") == [b"1"]


async def test_connection_cannot_drop_shields_x_forwarded_for(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    await exchange(
        shield,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Forwarded-For, Via\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\n\r\n",
    )

    (request,) = upstream.requests
    assert request.header(b"X-Forwarded-For") == [b"127.0.0.1"]
    assert request.header(b"Via") == [b"1.1 shield"]


async def test_h2c_upgrade_is_stripped_and_answered_as_a_plain_request(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    async with connect(shield) as (reader, writer):
        writer.write(
            b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        first = await read_response(reader)
        writer.write(b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
        second = await read_response(reader)

    assert (first.status, first.body) == (200, b"ok")
    assert (second.status, second.body) == (200, b"ok")
    assert not upstream.requests[0].names() & {b"upgrade", b"http2-settings", b"connection"}
    assert [r.line for r in upstream.requests] == [b"GET /x HTTP/1.1", b"GET /y HTTP/1.1"]


async def test_connect_is_refused_with_405(raw_upstream: StartUpstream, make_shield: MakeShield) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    response = await exchange(
        shield, b"CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n"
    )

    assert response.status == 405
    assert upstream.heads == []


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        (b"/search?q=a+b&x=%2F%20&&y=%zz", b"/search?q=a+b&x=%2F%20&&y=%zz"),
        (b"/caf%C3%A9/menu/?lang=fr", b"/caf%C3%A9/menu/?lang=fr"),
        (b"/p?redirect=http://evil.example/%2e%2e", b"/p?redirect=http://evil.example/%2e%2e"),
        # The rules engine matches a canonical path and forwards that same path (shield/decide/paths.py);
        # the query is never touched.
        (b"/a/%2e%2e/b?x=%20", b"/b?x=%20"),
    ],
)
async def test_request_target_is_forwarded_byte_for_byte(
    raw_upstream: StartUpstream, make_shield: MakeShield, sent: bytes, forwarded: bytes
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    response = await exchange(shield, b"GET " + sent + b" HTTP/1.1\r\nHost: a\r\n\r\n")

    assert response.status == 200
    assert upstream.requests[0].line == b"GET " + forwarded + b" HTTP/1.1"


async def test_absolute_form_for_another_host_is_refused(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    response = await exchange(shield, b"GET http://other/api/register HTTP/1.1\r\nHost: a\r\n\r\n")

    assert response.status == 400
    assert upstream.heads == []


async def test_absolute_form_for_the_named_host_is_forwarded_in_origin_form(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    response = await exchange(shield, b"GET http://a/x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n")

    assert response.status == 200
    (request,) = upstream.requests
    assert request.line == b"GET /x?y=1 HTTP/1.1"
    assert request.header(b"Host") == [b"a"]


@pytest.mark.parametrize(
    ("buffer", "framing"),
    [("1MiB", (b"Content-Length", b"16")), (0, (b"Transfer-Encoding", b"chunked"))],
    ids=["buffered: Content-Length", "streamed: chunked"],
)
async def test_a_chunked_request_body_is_reframed(
    raw_upstream: StartUpstream, make_shield: MakeShield, buffer: object, framing: tuple[bytes, bytes]
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, limits={"buffer_request_body": buffer})

    response = await exchange(
        shield,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\nA\r\nworld12345\r\n0\r\nX-Trailer: t\r\n\r\n",
    )

    assert response.status == 200
    (request,) = upstream.requests
    assert request.body == b"hello world12345"
    name, value = framing
    assert request.header(name) == [value]
    assert not request.names() & ({b"content-length", b"transfer-encoding"} - {name.lower()})
    # Shield's own framing: no client chunk extension or trailer crosses it.
    assert b"name=value" not in request.wire_body
    assert b"X-Trailer" not in request.wire_body


async def test_a_gzip_request_body_reaches_the_upstream_as_sent(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)
    body = gzip.compress(b'{"name": "ada"}' * 20)

    response = await exchange(
        shield,
        b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Encoding: gzip\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )

    assert response.status == 200
    (request,) = upstream.requests
    assert request.body == body
    assert request.header(b"Content-Encoding") == [b"gzip"]
    assert request.header(b"Content-Length") == [b"%d" % len(body)]


async def test_expect_100_continue_is_answered_then_the_upstreams_answer_follows(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(
        raw_upstream, make_shield, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    )

    async with connect(shield) as (reader, writer):
        writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        async with asyncio.timeout(WAIT):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert upstream.heads == []
        writer.write(b"hello")
        response = await read_response(reader)

    assert response.status == 201
    (request,) = upstream.requests
    assert request.body == b"hello"
    assert request.header(b"Expect") == []


async def test_an_oversized_declared_body_gets_413_without_100_continue(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, limits={"max_body_size": 1000})

    async with connect(shield) as (reader, writer):
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10000000000\r\n\r\n"
        )
        # The client waits for 100 Continue and sends nothing: Shield answers and hangs up.
        data = await read_until_closed(reader, timeout=1.0)

    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in data
    assert upstream.heads == []


async def test_a_streamed_body_over_the_limit_gets_413(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, limits={"max_body_size": 1000})
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"

    response = await exchange(
        shield,
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 4 + b"0\r\n\r\n",
    )

    assert response.status == 413
    assert upstream.requests == []


# Each is refused by aiohttp's C parser (llhttp) with 400 before Shield's handler runs
# (reference §4.2); none may reach the upstream as one request, let alone two.
SMUGGLING = {
    "CL+TE": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nG",
    "duplicate CL": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "different CLs": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
    "CL +3": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "TE xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "TE chunked, identity": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "space before colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare CR in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-Abc: \rxTransfer-Encoding: chunked\r\n\r\n",
    "duplicate Host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
}


@pytest.mark.parametrize("payload", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_smuggling_payloads_get_400_and_never_reach_the_upstream(
    raw_upstream: StartUpstream, make_shield: MakeShield, payload: bytes
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield)

    async with connect(shield) as (reader, writer):
        writer.write(payload + b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
        response = await read_response(reader)
        rest = await read_until_closed(reader)

    assert response.status == 400
    assert rest == b""
    assert upstream.heads == []


# -- what the client sees ---------------------------------------------------------------------


async def answer_in_two_parts(head_and_start: bytes, rest: bytes, client_got_head: asyncio.Event) -> Respond:
    """An upstream answer whose end is held back until the client has the headers: Shield can
    only have sent them by streaming, so this exercises the streaming path, not the fast path."""

    async def respond(request: UpstreamRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(head_and_start)
        await client_got_head.wait()
        writer.write(rest)

    return respond


HOP_BY_HOP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\n"
    b"X-Internal: secret\r\nProxy-Authenticate: Basic\r\nTrailer: X-Sum\r\n"
    b"Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; HttpOnly\r\nContent-Type: text/plain\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_client_gets_every_set_cookie_and_no_upstream_hop_by_hop_header(
    raw_upstream: StartUpstream, make_shield: MakeShield, streamed: bool
) -> None:
    client_got_head = asyncio.Event()
    if not streamed:
        client_got_head.set()
    respond = await answer_in_two_parts(
        HOP_BY_HOP_RESPONSE + b"3\r\nabc\r\n", b"3\r\ndef\r\n0\r\n\r\n", client_got_head
    )
    upstream = await raw_upstream(respond)
    shield = await make_shield(upstream.url)

    async with connect(shield) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, raw = await read_head(reader)
        client_got_head.set()
        body, _ = await read_body(reader, headers)
    response = Response(status, headers, body, raw)

    assert response.status == 200
    assert response.body == b"abcdef"
    assert response.header(b"Set-Cookie") == [b"a=1; Path=/", b"b=2; HttpOnly"]
    assert response.header(b"Content-Type") == [b"text/plain"]
    assert not response.names() & {
        b"x-internal",
        b"keep-alive",
        b"proxy-authenticate",
        b"trailer",
    }
    assert response.header(b"Connection") in ([], [b"keep-alive"])
    assert response.header(b"Server") == [b"shield"]


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_a_gzip_response_arrives_byte_identical_with_its_content_encoding(
    raw_upstream: StartUpstream, make_shield: MakeShield, streamed: bool
) -> None:
    body = gzip.compress(b"<p>hello</p>" * 500)
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nVary: Accept-Encoding\r\nContent-Length: %d\r\n\r\n"
    client_got_head = asyncio.Event()
    if not streamed:
        client_got_head.set()
    respond = await answer_in_two_parts(head % len(body) + body[:100], body[100:], client_got_head)
    upstream = await raw_upstream(respond)
    shield = await make_shield(upstream.url)

    async with connect(shield) as (reader, writer):
        writer.write(b"GET /page HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n")
        status, headers, raw = await read_head(reader)
        client_got_head.set()
        received, _ = await read_body(reader, headers)
    response = Response(status, headers, received, raw)

    assert response.status == 200
    assert response.body == body
    assert response.header(b"Content-Encoding") == [b"gzip"]
    assert response.header(b"Content-Length") == [b"%d" % len(body)]
    assert upstream.requests[0].header(b"Accept-Encoding") == [b"gzip"]


async def test_head_keeps_content_length_sends_no_body_and_the_connection_stays_usable(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream, shield = await proxied(
        raw_upstream,
        make_shield,
        b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: 1234\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext",
    )

    async with connect(shield) as (reader, writer):
        writer.write(b"HEAD /movie HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await read_response(reader, head_request=True)
        writer.write(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        following = await read_response(reader)

    assert head.status == 200
    assert head.header(b"Content-Length") == [b"1234"]
    assert head.header(b"Content-Type") == [b"video/mp4"]
    # Any body byte after the HEAD answer would have been read as the next status line.
    assert (following.status, following.body) == (200, b"next")
    assert [r.line for r in upstream.requests] == [b"HEAD /movie HTTP/1.1", b"GET /next HTTP/1.1"]


@pytest.mark.parametrize("size", [4095, 4096, 16384, 200_000])
async def test_an_answer_of_any_size_reaches_the_client_byte_for_byte_and_the_connection_goes_on(
    raw_upstream: StartUpstream, make_shield: MakeShield, size: int
) -> None:
    """Small answers go out joined to their head, large ones beside it (one writev): the client
    must not tell the two apart, nor where the next answer starts."""
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    _, shield = await proxied(
        raw_upstream,
        make_shield,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s"
        % (size, body),
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext",
    )

    async with connect(shield) as (reader, writer):
        writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await read_response(reader)
        following = await read_response(reader)

    assert (first.status, first.header(b"Content-Length"), first.body) == (200, [b"%d" % size], body)
    assert (following.status, following.body) == (200, b"next")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nX-A: 1\r\n\r\n',
    ],
    ids=["204", "304"],
)
async def test_no_body_statuses_are_relayed_without_a_body(
    raw_upstream: StartUpstream, make_shield: MakeShield, answer: bytes
) -> None:
    _, shield = await proxied(raw_upstream, make_shield, answer, OK)

    async with connect(shield) as (reader, writer):
        writer.write(b'GET /r HTTP/1.1\r\nHost: a\r\nIf-None-Match: "v1"\r\n\r\n')
        first = await read_response(reader)
        writer.write(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        following = await read_response(reader)

    assert first.status == int(answer[9:12])
    assert first.header(b"X-A") == [b"1"]
    assert first.header(b"Content-Length") == []
    assert first.header(b"Transfer-Encoding") == []
    assert (following.status, following.body) == (200, b"ok")


async def test_early_hints_before_the_final_answer_leave_it_intact(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(
        raw_upstream,
        make_shield,
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n\r\n<html>",
    )

    response = await exchange(shield, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

    # Shield does not relay 1xx answers (shield/upstream/pool.py); the hint's headers stay on the hint.
    assert response.interim == []
    assert (response.status, response.body) == (200, b"<html>")
    assert response.header(b"Link") == []
    assert response.header(b"Content-Type") == [b"text/html"]


async def test_an_unasked_100_continue_from_the_upstream_is_not_mistaken_for_the_answer(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(
        raw_upstream,
        make_shield,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone",
        OK,
    )

    async with connect(shield) as (reader, writer):
        writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        first = await read_response(reader)
        writer.write(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        following = await read_response(reader)

    assert (first.status, first.body) == (201, b"done")
    assert (following.status, following.body) == (200, b"ok")


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_shield_invents_no_content_type(
    raw_upstream: StartUpstream, make_shield: MakeShield, streamed: bool
) -> None:
    client_got_head = asyncio.Event()
    if not streamed:
        client_got_head.set()
    respond = await answer_in_two_parts(
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc", b"def", client_got_head
    )
    upstream = await raw_upstream(respond)
    shield = await make_shield(upstream.url)

    async with connect(shield) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        _, headers, raw = await read_head(reader)
        client_got_head.set()
        body, _ = await read_body(reader, headers)
    response = Response(200, headers, body, raw)

    assert response.body == b"abcdef"
    assert response.header(b"Content-Type") == []
    assert response.header(b"Server") == [b"shield"]
    assert len(response.header(b"Date")) == 1


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        (b"GET", b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"),
    ],
    ids=["204 with a body", "HEAD with a body"],
)
async def test_body_bytes_an_upstream_sends_where_none_belong_never_reach_the_client(
    raw_upstream: StartUpstream, make_shield: MakeShield, method: bytes, answer: bytes
) -> None:
    upstream, shield = await proxied(raw_upstream, make_shield, answer, OK)

    async with connect(shield) as (reader, writer):
        writer.write(method + b" /r HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await read_response(reader, head_request=method == b"HEAD")
        writer.write(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        following = await read_response(reader)

    assert first.status in (200, 204)
    assert (following.status, following.body) == (200, b"ok")
    assert [r.line for r in upstream.requests][-1] == b"GET /next HTTP/1.1"

"""When the upstream or the client misbehaves: 502, 504, truncation that shows, timeouts that fire.

Timeouts are set to a few tenths of a second so every wait in this file is short; the upstream
is the recording raw server of ``test_proxy_http`` so each test decides what goes on the wire.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from shield.app.server import Shield
from tests.conftest import MakeShield, scraped, url_of
from tests.test_proxy_http import (
    OK,
    RawUpstream,
    Respond,
    StartUpstream,
    UpstreamRequest,
    connect,
    exchange,
    read_response,
    read_until_closed,
    replying,
)

TIMEOUT = 0.3
# The pool checks deadlines every 0.1 s (shield/upstream/pool.py TICK); allow that and a loaded machine.
LATE = 1.0


@pytest.fixture
async def raw_upstream() -> AsyncIterator[StartUpstream]:
    started: list[RawUpstream] = []

    async def start(respond: Respond) -> RawUpstream:
        upstream = await RawUpstream(respond).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.close()


def stalling(answer: bytes = b"") -> Respond:
    """Write ``answer`` (maybe nothing, maybe part of a response), then never write again."""

    async def respond(request: UpstreamRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await asyncio.Event().wait()

    return respond


def hanging_up(answer: bytes) -> Respond:
    """Write ``answer`` and close the connection."""

    async def respond(request: UpstreamRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        writer.close()

    return respond


async def upstream_errors(shield: Shield) -> dict[str, float]:
    """``shield_upstream_errors_total`` by kind, scraped from the admin listener."""
    return await scraped(shield, "shield_upstream_errors")


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- before the response headers: 502 and 504 -------------------------------------------------


async def test_unreachable_upstream_gets_a_fast_502_with_a_short_body(make_shield: MakeShield) -> None:
    shield = await make_shield(f"http://127.0.0.1:{closed_port()}")
    loop = asyncio.get_running_loop()

    started = loop.time()
    async with aiohttp.ClientSession() as client, client.get(url_of(shield, "/x")) as response:
        body = await response.read()
    elapsed = loop.time() - started

    assert response.status == 502
    assert elapsed < LATE
    assert body == b"The upstream is unavailable.\n"
    assert response.headers["Server"] == "shield"
    assert (await upstream_errors(shield))["connect"] == 1


async def test_upstream_without_headers_in_time_gets_504(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream = await raw_upstream(stalling())
    shield = await make_shield(upstream.url, timeouts={"upstream_headers": TIMEOUT})
    loop = asyncio.get_running_loop()

    started = loop.time()
    async with aiohttp.ClientSession() as client, client.get(url_of(shield, "/slow")) as response:
        body = await response.read()
    elapsed = loop.time() - started

    assert response.status == 504
    assert body == b"The upstream did not answer in time.\n"
    assert TIMEOUT <= elapsed < TIMEOUT + LATE
    assert (await upstream_errors(shield))["timeout"] == 1


MALFORMED = {
    "duplicate CL": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    "CL and TE": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare CR in a header": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "not HTTP": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "unasked 101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
}


@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_upstream_response_gets_502(
    raw_upstream: StartUpstream, make_shield: MakeShield, answer: bytes
) -> None:
    upstream = await raw_upstream(stalling(answer))
    shield = await make_shield(upstream.url)

    response = await exchange(shield, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

    assert response.status == 502
    assert response.body == b"The upstream is unavailable.\n"
    assert (await upstream_errors(shield))["reset"] == 1


def endless_head() -> Respond:
    """A status line, then header lines that never end."""

    async def respond(request: UpstreamRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Filler: " + b"x" * 1000 + b"\r\n"
        while not writer.is_closing():
            writer.write(line * 64)
            await writer.drain()

    return respond


async def test_an_upstream_head_that_never_ends_gets_502_not_memory(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream = await raw_upstream(endless_head())
    shield = await make_shield(upstream.url)

    response = await exchange(shield, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

    assert response.status == 502
    assert (await upstream_errors(shield))["reset"] == 1


async def test_upstream_closing_before_answering_gets_502(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream = await raw_upstream(hanging_up(b""))
    shield = await make_shield(upstream.url)

    response = await exchange(shield, b"POST /order HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")

    assert response.status == 502
    assert [r.line for r in upstream.requests] == [b"POST /order HTTP/1.1"]


# -- after the response headers: the client must see the truncation ---------------------------

STALLED_OR_CUT = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
}


@pytest.mark.parametrize("answer", STALLED_OR_CUT.values(), ids=STALLED_OR_CUT.keys())
async def test_an_upstream_stalling_mid_body_aborts_the_client_response(
    raw_upstream: StartUpstream, make_shield: MakeShield, answer: bytes
) -> None:
    upstream = await raw_upstream(stalling(answer))
    shield = await make_shield(upstream.url, timeouts={"upstream_idle": TIMEOUT})
    loop = asyncio.get_running_loop()

    async with aiohttp.ClientSession() as client, client.get(url_of(shield, "/download")) as response:
        assert response.status == 200
        assert await response.content.readexactly(10) == b"0123456789"
        started = loop.time()
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    elapsed = loop.time() - started

    assert elapsed < TIMEOUT + LATE
    assert (await upstream_errors(shield))["timeout"] == 1


@pytest.mark.parametrize("answer", STALLED_OR_CUT.values(), ids=STALLED_OR_CUT.keys())
async def test_an_upstream_closing_mid_body_aborts_the_client_response(
    raw_upstream: StartUpstream, make_shield: MakeShield, answer: bytes
) -> None:
    upstream = await raw_upstream(hanging_up(answer))
    shield = await make_shield(upstream.url)

    async with aiohttp.ClientSession() as client, client.get(url_of(shield, "/download")) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()

    assert (await upstream_errors(shield))["reset"] == 1


async def test_a_body_delimited_by_the_upstream_closing_arrives_whole(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream = await raw_upstream(hanging_up(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"))
    shield = await make_shield(upstream.url)

    async with aiohttp.ClientSession() as client, client.get(url_of(shield, "/")) as response:
        assert response.status == 200
        assert await response.read() == b"all of it"

    assert (await upstream_errors(shield))["reset"] == 0


# -- a pooled connection the upstream closed while idle ---------------------------------------


def one_answer_per_connection() -> Respond:
    """Answers the first request on each connection with keep-alive, then hangs up on the next
    one unanswered: the upstream's idle close racing Shield's reuse, made deterministic."""
    answered: set[asyncio.StreamWriter] = set()

    async def respond(request: UpstreamRequest, writer: asyncio.StreamWriter) -> None:
        if writer in answered:
            writer.close()
            return
        answered.add(writer)
        writer.write(OK)

    return respond


async def test_an_idempotent_request_on_a_dead_pooled_connection_is_retried(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream = await raw_upstream(one_answer_per_connection())
    shield = await make_shield(upstream.url)

    first = await exchange(shield, b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    second = await exchange(shield, b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")

    assert (first.status, second.status) == (200, 200)
    assert second.body == b"ok"
    assert [r.line for r in upstream.requests] == [
        b"GET /one HTTP/1.1",
        b"GET /two HTTP/1.1",  # on the pooled connection, which the upstream closed
        b"GET /two HTTP/1.1",  # retried once on a new connection
    ]
    assert (await upstream_errors(shield))["reset"] == 0


async def test_a_post_on_a_dead_pooled_connection_is_not_sent_twice(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream = await raw_upstream(one_answer_per_connection())
    shield = await make_shield(upstream.url)

    first = await exchange(shield, b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    second = await exchange(shield, b"POST /pay HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n100")

    assert (first.status, second.status) == (200, 502)
    assert [r.line for r in upstream.requests] == [b"GET /one HTTP/1.1", b"POST /pay HTTP/1.1"]
    assert (await upstream_errors(shield))["reset"] == 1


async def test_a_pooled_connection_idle_past_idle_timeout_is_never_reused(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    """The upstream may close a connection once its own keep-alive timeout passes: Shield must
    have dropped it by then, so ``idle_timeout`` is an upper bound on reuse."""
    upstream = await raw_upstream(replying(OK))
    shield = await make_shield(upstream.url, upstream={"pool": {"idle_timeout": 0.5}})
    request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"

    assert (await exchange(shield, request)).status == 200
    connections = len(upstream._writers)
    assert (await exchange(shield, request)).status == 200
    assert len(upstream._writers) == connections  # reused at once

    await asyncio.sleep(0.5)
    assert (await exchange(shield, request)).status == 200
    assert len(upstream._writers) == connections + 1


# -- slow clients -----------------------------------------------------------------------------


async def test_a_client_stalling_in_the_request_line_is_disconnected(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream = await raw_upstream(replying(OK))
    shield = await make_shield(upstream.url, timeouts={"client_header": TIMEOUT})
    loop = asyncio.get_running_loop()

    async with connect(shield) as (reader, writer):
        writer.write(b"GET /slow HT")
        started = loop.time()
        data = await read_until_closed(reader, timeout=TIMEOUT + LATE)
        elapsed = loop.time() - started

    assert data == b""
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + LATE
    assert upstream.heads == []


async def test_a_client_stalling_in_the_headers_of_a_second_request_is_disconnected(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream = await raw_upstream(replying(OK))
    shield = await make_shield(upstream.url, timeouts={"client_header": TIMEOUT})
    loop = asyncio.get_running_loop()

    async with connect(shield) as (reader, writer):
        writer.write(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await read_response(reader)
        writer.write(b"GET /two HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        started = loop.time()
        data = await read_until_closed(reader, timeout=TIMEOUT + LATE)
        elapsed = loop.time() - started

    assert first.status == 200
    assert data == b""
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + LATE
    assert [r.line for r in upstream.requests] == [b"GET /one HTTP/1.1"]


async def test_an_idle_keepalive_connection_outlives_the_header_timeout(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream = await raw_upstream(replying(OK))
    shield = await make_shield(upstream.url, timeouts={"client_header": TIMEOUT})

    async with connect(shield) as (reader, writer):
        writer.write(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await read_response(reader)
        # No byte of a next request yet: the keep-alive timeout governs, not the header guard.
        await asyncio.sleep(TIMEOUT * 2)
        writer.write(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        second = await read_response(reader)

    assert (first.status, second.status) == (200, 200)
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("declared", [100, 1_000_000], ids=["read whole", "streamed"])
async def test_a_client_stalling_in_its_body_gets_400_and_the_upstream_no_request(
    raw_upstream: StartUpstream, make_shield: MakeShield, declared: int
) -> None:
    upstream = await raw_upstream(replying(OK))
    shield = await make_shield(upstream.url, timeouts={"client_idle": TIMEOUT})
    loop = asyncio.get_running_loop()

    async with connect(shield) as (reader, writer):
        writer.write(b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n0123456789" % declared)
        started = loop.time()
        response = await read_response(reader)
        elapsed = loop.time() - started

    assert response.status == 400
    assert response.header(b"Connection") == [b"close"]
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + LATE
    assert upstream.requests == []


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 2000 + b"\r\n\r\n",
        b"GET /" + b"x" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
    ids=["header line", "request line"],
)
async def test_a_line_over_max_header_size_gets_aiohttps_400(
    raw_upstream: StartUpstream, make_shield: MakeShield, request_head: bytes
) -> None:
    upstream = await raw_upstream(replying(OK))
    shield = await make_shield(upstream.url, limits={"max_header_size": 1024})

    async with connect(shield) as (reader, writer):
        writer.write(request_head)
        response = await read_response(reader)
        rest = await read_until_closed(reader)

    # aiohttp's parser raises LineTooLong, a 400 Bad Request (not 431 or 414), and closes.
    assert response.status == 400
    assert rest == b""
    assert upstream.heads == []


async def test_a_malformed_request_gets_a_plain_400_that_echoes_nothing_and_logs_no_traceback(
    raw_upstream: StartUpstream, make_shield: MakeShield, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await raw_upstream(replying(OK))
    shield = await make_shield(upstream.url)

    async with connect(shield) as (reader, writer):
        writer.write(b"GET /\x01<script>x</script> HTTP/1.1\r\nHost: a\r\n\r\n")
        response = await read_response(reader)
        rest = await read_until_closed(reader)

    assert response.status == 400
    assert response.header(b"Server") == [b"shield"]
    assert b"script" not in response.body + rest
    assert upstream.heads == []
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


async def test_a_header_within_max_header_size_passes(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    upstream = await raw_upstream(replying(OK))
    shield = await make_shield(upstream.url, limits={"max_header_size": 1024})

    response = await exchange(shield, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 900 + b"\r\n\r\n")

    assert response.status == 200
    assert upstream.requests[0].header(b"X-Big") == [b"x" * 900]


async def test_a_retry_never_reuses_another_dead_pooled_connection(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    both_connected = asyncio.Event()
    connections: set[asyncio.StreamWriter] = set()
    answered: set[asyncio.StreamWriter] = set()

    async def respond(request: UpstreamRequest, writer: asyncio.StreamWriter) -> None:
        # Two requests in flight at once leave two connections in Shield's pool; after that the
        # upstream (restarted, say) hangs up on any pooled connection it is sent a request on.
        if writer in answered:
            writer.close()
            return
        connections.add(writer)
        if len(connections) == 2:
            both_connected.set()
        await both_connected.wait()
        answered.add(writer)
        writer.write(OK)

    upstream = await raw_upstream(respond)
    shield = await make_shield(upstream.url)
    request = b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n"
    warm = await asyncio.gather(exchange(shield, request), exchange(shield, request))
    assert [response.status for response in warm] == [200, 200]

    response = await exchange(shield, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")

    assert response.status == 200
    assert [r.line for r in upstream.requests].count(b"GET /after HTTP/1.1") == 2

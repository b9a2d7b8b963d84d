"""Shield's public HTTP/1.1 listener: llhttp parsing (httptools), one request at a time per connection.

Why not aiohttp's server: every request crossing it costs a future to wake the connection's
loop, a new task, a ``StreamWriter``, a ``BaseRequest`` with its URL, and three event-loop hops
before the handler runs. Measured with a minimal forwarder over Shield's upstream pool on one
core: 43k req/s behind aiohttp's low-level ``web.Server``, 54k behind this protocol. Here a
request is handled by one task, created when its headers are complete.

What aiohttp's server did for Shield and this module does itself:

- bounds: the request line and each header line at ``max_line``, the header count at
  ``max_headers`` (400 and close beyond either, as aiohttp answered), enforced while bytes
  arrive, so an endless header cannot grow memory;
- a deadline for receiving a request's headers (slowloris) and one for idle keep-alive
  connections, checked by one ticker for all connections;
- request bodies streamed with back-pressure (reading pauses while a body waits unread),
  the rest of an unread body drained for at most ``lingering`` seconds after a refusal;
- the handler task cancelled when its client goes away;
- graceful shutdown: idle connections close at once, busy ones after their answer.

Refused input is answered in order: requests parsed before a parse error are answered first,
then the refusal, and the connection lingers (reads and drops what still comes, bounded in
time and bytes) before it closes, so the client reads the refusal rather than a reset. Trailer
fields are dropped, never added to the headers the rules saw.

A WebSocket upgrade the gatekeeper allowed and the upstream accepted (101) turns the connection
into a tunnel to the upstream's (``tunnel``, ``shield.upstream.tunnel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Final

import httptools
from aiohttp.http_exceptions import BadHttpMessage
from multidict import CIMultiDict, CIMultiDictProxy

from shield.app.heap import release_garbage
from shield.decide.client_caps import HeldPerClient
from shield.decide.policy import RequestView
from shield.decide.remembered import remember
from shield.http.answer import ShieldAnswer
from shield.http.body_buffer import BodyBuffer
from shield.http.flow import WriteFlow
from shield.http.proxy_protocol import ProxyHeaderError, parse_proxy_header
from shield.http.response import DateHeader, status_line
from shield.upstream.tunnel import splice

log: Final = logging.getLogger("shield")

# How often deadlines (header reads, idle keep-alive, lingering) are checked.
TICK: Final = 0.1
# Pause reading from a client while this much of its body waits unread; resume below half.
BODY_HIGH_WATER: Final = 256 * 1024
# Pause reading from a client with this many requests parsed and waiting for their turn, or
# this many bytes of them (heads and bodies): sixteen requests of large bodies would hold
# megabytes per connection.
MAX_PIPELINED: Final = 16
MAX_PIPELINED_BYTES: Final = 64 * 1024
# A read longer than this that is not all body is parsed a slice at a time, so that a pause
# (the cap above, a body waiting unread) takes effect within it: 256 KiB of tiny pipelined
# requests would otherwise become 6,000 queued requests (3.8 MB) before the cap is looked at.
PARSE_SLICE: Final = 4096

# Once this many connections were open at once and at most a quarter of them are left (an
# attack's connections closed or cut off), freed memory is handed back to the system; at most
# once every TRIM_INTERVAL seconds (a collection of every object pauses the loop briefly).
TRIM_AFTER_CONNECTIONS: Final = 128
TRIM_INTERVAL: Final = 10.0

# Bytes a client may send while Shield lingers after answering and closing (see ``_close``).
LINGER_BYTES: Final = 8 * 1024 * 1024

# Why reading from a client is paused. Each reason pauses and resumes on its own: reading goes
# on only once none is left (resuming for a drained body must not undo a refusal).
PAUSED_FOR_BODY: Final = 1  # a body waits unread past BODY_HIGH_WATER
PAUSED_FOR_PIPELINE: Final = 2  # MAX_PIPELINED requests wait for their turn
PAUSED_FOR_UPGRADE: Final = 4  # an upgrade request is being decided
PAUSED_FOR_REFUSAL: Final = 8  # the input was refused: nothing more is parsed


def _refusal(status: int) -> bytes:
    """Shield's answer to a request it cannot parse or will not read: nothing of the input
    echoed, then the connection closes."""
    text = f"{HTTPStatus(status).phrase}.\n".encode()
    return (
        status_line(status) + b"Server: shield\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(text), text)
    )


_REFUSALS: Final = {status: _refusal(status) for status in (400, 431, 501, 505)}
# The same for a HEAD request, which gets no body (RFC 9110 §9.3.2).
_HEAD_REFUSALS: Final = {
    status: answer.partition(b"\r\n\r\n")[0] + b"\r\n\r\n" for status, answer in _REFUSALS.items()
}
_SERVER_ERROR: Final = (
    b"HTTP/1.1 500 Internal Server Error\r\nServer: shield\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 23\r\nConnection: close\r\n\r\n"
    b"Internal Server Error.\n"
)
# Headers a request may carry once (aiohttp's list): two Hosts or two Content-Types are a
# smuggling attempt, since Shield and the upstream may each believe a different one.
SINGLETON_HEADERS: Final = frozenset(
    {
        b"content-length",
        b"content-location",
        b"content-range",
        b"content-type",
        b"etag",
        b"host",
        b"max-forwards",
        b"server",
        b"transfer-encoding",
        b"user-agent",
    }
)
# ``bytes in bytes`` first tries its operand as an integer and fails: an int is ten times faster.
_UNDERSCORE: Final = ord("_")
# RFC 3986 §3.2.2-3: an IP literal or a registered name (IPv4 addresses are among them), then
# an optional port. No userinfo, path or spaces: the host the rules see must be the host.
_AUTHORITY: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+)(?::[0-9]*)?"
)
_REG_NAME: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;="


def _asks_to_close(raw: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's Connection fields name ``close``, or none of them keep-alive."""
    tokens = {
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return b"close" in tokens or b"keep-alive" not in tokens


def _is_authority(host: bytes) -> bool:
    """Whether a Host value is an authority; a plain name (the usual case) is checked without
    the regex, at a quarter of its cost."""
    if host and not host.translate(None, _REG_NAME):
        return True
    return _AUTHORITY.fullmatch(host) is not None


_METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
# Header name as the client spelled it -> as text: names repeat from request to request.
# Header name as the client spelled it -> its text, and its lower-cased form when it is one
# of the SINGLETON_HEADERS (else None): names repeat from request to request.
# multidict's classes as C statics once compiled (an imported name is a module-dict lookup).
_HEADERS: Final = CIMultiDict
_HEADERS_VIEW: Final = CIMultiDictProxy
_NAMES: Final[dict[bytes, tuple[str, bytes | None]]] = {}
_REMEMBERED_NAMES: Final = 1024
_REMEMBERED_NAME: Final = 64


def _header_name(name: bytes) -> tuple[str, bytes | None]:
    """``name`` decoded, and lower-cased if it may appear once; remembered when short and
    without an underscore (so that every request carrying such a name comes past
    ``Http1Connection._new_name``). Bounded: past ``_REMEMBERED_NAMES`` spellings the table
    starts again, so a client inventing names costs a rebuild, not memory."""
    lower = name.lower()
    known = name.decode("latin-1"), lower if lower in SINGLETON_HEADERS else None
    fits = len(name) <= _REMEMBERED_NAME and _UNDERSCORE not in name
    return remember(_NAMES, name, known, _REMEMBERED_NAMES, fits=fits)


# Shield frames every answer itself; these from a response object are never copied.
_FRAMING: Final = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class Written:
    """An answer the handler serialized itself.

    ``data`` is written as is, then ``body`` if there is one (a large body kept apart from its
    head, so both go out in one writev uncopied); ``data`` is empty when the answer already went
    out piece by piece (a streamed upstream body). ``body_size`` is what the access log reports.
    """

    __slots__ = ("body", "body_size", "data", "keep_alive", "status")

    def __init__(
        self, data: bytes, keep_alive: bool, status: int, body_size: int = 0, *, body: bytes = b""
    ) -> None:
        self.data = data
        self.body = body
        self.keep_alive = keep_alive
        self.status = status
        self.body_size = body_size


Reply = ShieldAnswer | Written
Handler = Callable[["Request"], Awaitable[Reply]]


class RequestBody:
    """A request's body as it arrives. The subset of aiohttp's ``StreamReader`` Shield uses."""

    __slots__ = ("_buffer", "_conn", "_discard", "_eof", "_error", "_lost", "_waiter")

    def __init__(self, conn: Http1Connection) -> None:
        self._conn = conn
        self._buffer = BodyBuffer(
            high_water=BODY_HIGH_WATER,
            low_water=BODY_HIGH_WATER // 2,
            pause=conn.pause_for_body,
            resume=conn.resume_for_body,
        )
        self._eof = False
        self._lost = False
        self._discard = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- fed by the connection ----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._discard:
            return
        self._buffer.add(data)
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def lost(self) -> None:
        self._lost = True
        self._wake()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._wake()

    def discard(self) -> None:
        """Nobody will read the rest: drop what is buffered and what is still coming."""
        self._discard = True
        self._buffer.clear()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- read by the handler ------------------------------------------------------------------

    def is_eof(self) -> bool:
        return self._eof and not self._buffer.size

    async def _arrived(self) -> bool:
        """Wait until part of the body is buffered; False at its end or when the client left."""
        while not self._buffer.size:
            if self._error is not None:
                raise self._error
            if self._eof or self._lost:
                return False
            await self._wait()
        return True

    async def readany(self) -> bytes:
        """The next part of the body; ``b""`` at its end or when the client went away."""
        return self._buffer.take() if await self._arrived() else b""

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes as soon as any are there (``n < 0``: the whole rest of the body)."""
        if n < 0:
            parts = []
            while chunk := await self.readany():
                parts.append(chunk)
            return b"".join(parts)
        return self._buffer.take(n) if await self._arrived() else b""

    async def readexactly(self, n: int) -> bytes:
        buffer = self._buffer
        while buffer.size < n:
            if self._error is not None:
                raise self._error
            if self._eof or self._lost:
                raise asyncio.IncompleteReadError(buffer.take_all(), n)
            await self._wait()
        parts = []
        needed = n
        while needed:
            part = buffer.take(needed)
            parts.append(part)
            needed -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)


class EmptyBody:
    """The body of a request that has none: shared, nothing to feed or read."""

    __slots__ = ()

    def feed(self, data: bytes) -> None:
        raise AssertionError("a request without a body was fed one")

    def feed_eof(self) -> None:
        return None

    def lost(self) -> None:
        return None

    def fail(self, error: Exception) -> None:
        return None

    def discard(self) -> None:
        return None

    def is_eof(self) -> bool:
        return True

    async def readany(self) -> bytes:
        return b""

    async def read(self, n: int = -1) -> bytes:
        return b""

    async def readexactly(self, n: int) -> bytes:
        if n:
            raise asyncio.IncompleteReadError(b"", n)
        return b""


EMPTY_BODY: Final = EmptyBody()


class Request(RequestView):
    """One request as it crosses Shield, from its parsed head to its log line.

    For the handlers: the subset of aiohttp's ``BaseRequest`` they use, plus streaming an answer
    (``send``) and handing a WebSocket upgrade over (``hand_over``). For the rules: it is the
    request's ``RequestView``, whose canonical ``path``, client and ``identity`` the gatekeeper
    fills in before it decides. For the metrics and the log: its request id (set by the
    observer), the decision's ``labels``, what the upstream took (``upstream_seconds``) and the
    body bytes of a streamed answer (``sent``). Until the gatekeeper has looked, ``client_ip``
    and ``path`` are empty."""

    __slots__ = (
        "_conn",
        "body_exists",
        "content",
        "content_length",
        "id_line",
        "keep_alive",
        "labels",
        "raw_headers",
        "remote",
        "sent",
        "started",
        "target",
        "upgrade",
        "upstream_seconds",
        "version",
        "waiting_bytes",
    )

    def __init__(
        self,
        conn: Http1Connection,
        method: str,
        target: bytes,
        version: str,
        raw_headers: list[tuple[bytes, bytes]],
        headers: CIMultiDictProxy[str],
        keep_alive: bool,
        content_length: int | None,
        content: RequestBody | EmptyBody,
        upgrade: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.target = target
        self.version = version
        self.raw_headers = raw_headers
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.content = content
        self.body_exists = content is not EMPTY_BODY
        self.remote = conn.remote
        self.upgrade = upgrade
        self.started = False
        # Bytes of this request (head, body so far) held while it waits behind another one.
        self.waiting_bytes = 0
        # "X-Request-ID: <id>\r\n" (``RequestIds.line_of``): the form the hot path sends.
        self.id_line = b""
        # (rule, action, decision, identity) once decided: the request counter's key as it is.
        self.labels: tuple[str, str, str, str] | None = None
        self.client_ip = ""
        # The client's throttle key (an IPv6 client's prefix), what per-client caps count by.
        self.client_key = ""
        self.path = ""
        self._host = None
        self.upstream_seconds: float | None = None
        self.sent = -1  # body bytes of a streamed answer, counted by the proxy

    @property
    def request_id(self) -> str:
        return self.id_line[14:-2].decode("latin-1")

    def decided(self, rule: str, action: str, decision: str, identity: str) -> None:
        self.labels = (rule, action, decision, identity)

    @property
    def rule(self) -> str | None:
        return self.labels[0] if self.labels is not None else None

    @property
    def decision(self) -> str | None:
        return self.labels[2] if self.labels is not None else None

    @property
    def identity_label(self) -> str:
        """The identity class of the decision's labels ("anonymous" before any decision)."""
        return self.labels[3] if self.labels is not None else "anonymous"

    @property
    def raw_path(self) -> str:
        """The request-target as the client sent it (aiohttp's name for it)."""
        return self.target.decode("utf-8", "surrogateescape")

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._conn.transport

    @property
    def secure(self) -> bool:
        transport = self._conn.transport
        return transport is not None and transport.get_extra_info("sslcontext") is not None

    def send(self, data: bytes) -> None:
        """Write part of the answer now (a streamed body: head first, then its pieces)."""
        transport = self._conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        self.started = True
        transport.write(data)

    async def drain(self) -> None:
        """Wait while the client reads more slowly than the answer is written."""
        await self._conn.drain()

    async def tunnel(self, upstream: asyncio.Transport, to_client: bytes) -> Written:
        """Splice this connection with ``upstream``, which switched protocols for it, after
        writing ``to_client`` (the 101 and what followed it); return once the session ended.

        Only for a request llhttp parsed as an upgrade (``upgrade``), before anything was
        answered: what the client sent after the request goes to the upstream first.
        """
        return await self._conn.tunnel(self, upstream, to_client)


class Http1Connection(WriteFlow):
    """One client connection of the public listener.

    An asyncio protocol by its methods, not by inheritance: compiled (mypyc), a subclass of
    ``asyncio.Protocol`` would stay an interpreted class with its attributes in a dict."""

    def __init__(self, server: Http1Server, parse_events: object = None) -> None:
        """``parse_events``: what llhttp reports the request's parts to, if not this connection
        (the request fuzzer's observer, which passes each event on to it)."""
        super().__init__()
        self._server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self._parse_events = parse_events  # (None, not self: no cycle to leave for the collector)
        self._parser: Any = httptools.HttpRequestParser(parse_events or self)
        self.remote: str | None = None
        # The client key this connection counts under for max_connections_per_client.
        self.capped_as: str | None = None
        self._proxy_pending: bytes | None = b"" if server.proxy_protocol else None
        # The request being parsed.
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        # A header name with an underscore was seen in the head being parsed; an HTTP/1.0 one
        # named close among its Connection options.
        self._underscored = False
        self._closing_after = False
        # The last Host this client sent that was found valid (a keep-alive client repeats it).
        self._valid_host: bytes | None = None
        self._in_head = False
        self._head_bytes = 0
        self._parsing: Request | None = None
        self._upgrade_request: Request | None = None
        # Requests parsed, waiting for their turn (pipelining), and the one being answered.
        self._queue: deque[Request] = deque()
        self._waiting_bytes = 0  # the requests' in ``_queue``
        self._current: Request | None = None
        # One task per connection answers its requests in turn; between requests it waits on
        # ``_ready`` (a future is cheaper than a task per request).
        self._serving: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._upgrade_rest: bytes | None = None
        # Spliced with an upstream connection (``tunnel``): no longer this protocol's.
        self._handed_over = False
        self._closing = False
        # PAUSED_FOR_* reasons in force, or-ed together.
        self._paused = 0
        # The answer to send once the requests parsed before a refusal are answered.
        self._refused: bytes | None = None
        # Set while a chunked body is parsed: bytes read since llhttp last reported body data
        # (chunk-size lines, extensions, trailers), bounded like a head line.
        self._chunked = False
        self._framing_bytes = 0
        # Body bytes still to come for the request being parsed, by its Content-Length (a read
        # that is all body needs no slicing); and what was read but not parsed yet.
        self._body_left = 0
        self._unparsed = b""
        # When the connection went idle (its last answer ended), and when the request head
        # now awaited began to arrive (0 when none is awaited within ``header_timeout``).
        self._idle_since = 0.0
        self._head_started = 0.0
        # When the transport last said the client stopped taking what is written to it, and
        # its buffer then; the seconds the client kept Shield waiting so, and what it took then.
        self._write_stalled_since = 0.0
        self._stalled_buffer = 0
        self._stalled_for = 0.0
        self._taken_while_stalled = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self._server
        if server.write_buffer:
            # Up to this much of an answer waits in Shield for a slow client without holding up
            # the upstream: streaming waits for the client only past it (nginx's proxy_buffering).
            transport.set_write_buffer_limits(high=server.write_buffer)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple | list) and peer:
            self.remote = str(peer[0])
        elif peer:
            self.remote = str(peer)
        # (Behind the PROXY protocol, the client is known once its header is read.)
        if self._proxy_pending is None and not self._take_connection_slot():
            return
        server.connections.add(self)
        # The first request's headers (or the PROXY header) must arrive in time.
        self._head_started = self.loop.time()
        server.watch()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.forget(self)
        if self._handed_over:
            return
        self.transport = None
        for request in (self._current, self._parsing, *self._queue):
            if request is not None:
                request.content.lost()
        # What refers back to this connection is let go, so that it and what it held go now,
        # not when the cyclic collector next runs (after an attack, it may not for minutes: the
        # answers of 2,000 slow readers stayed resident). The serving task, cancelled: its
        # CancelledError's traceback holds the task's frame, which holds this connection. The
        # parser (it calls back into this connection) and the requests (each knows it).
        self._queue.clear()
        self._current = self._parsing = None
        self._parser = None
        task = self._serving
        self._serving = None
        if task is not None and not task.done():
            task.cancel()
        self.writing_failed(ConnectionResetError("the client went away"))

    def data_received(self, data: bytes) -> None:
        if self._proxy_pending is not None:
            rest = self._proxy_header(data)
            if not rest:
                return
            data = rest
        if self._upgrade_rest is not None:
            # Reading is paused after an upgrade request; bytes already in flight wait here.
            self._upgrade_rest += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse ``data``. While a request head is incomplete, bytes not yet accounted for by
        complete header lines are bounded by ``max_line``: the bytes of the read in which a
        head begins are not counted (llhttp does not say where in them it began), so an
        overlong line is refused at most one read later."""
        if len(data) > PARSE_SLICE and len(data) > self._body_left:
            self._feed_in_slices(data)
            return
        try:
            if self._in_head:
                self._head_bytes += len(data)
            elif self._chunked:
                # Checked a read late, like a head line: bounded all the same.
                self._framing_bytes += len(data)
                if self._framing_bytes > 2 * self._server.max_line + len(data):
                    raise _HeadRefused("a chunk-size line or the trailers are too long")
            self._parser.feed_data(data)
            if self._in_head:
                self._head_incomplete()
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._upgrade_rest = data[offset:]
            self._pause(PAUSED_FOR_UPGRADE)
        except (httptools.HttpParserError, _HeadRefused) as error:
            # An error raised in a parser callback reaches here as llhttp's, with ours as its
            # context.
            cause = error.__context__
            self._refuse(cause if isinstance(cause, _HeadRefused) else error)
            return
        # Requests start only once llhttp accepted all of this read: it refuses some heads
        # (an invalid Transfer-Encoding) only after reporting them complete.
        if self._queue and self._current is None:
            self._next()

    def _feed_in_slices(self, data: bytes) -> None:
        """Parse ``data`` a slice at a time; once reading is paused, the rest waits unparsed
        (``_unparsed``) until it resumes. Bytes after an upgrade request are the upgrade's."""
        for start in range(0, len(data), PARSE_SLICE):
            if self._upgrade_rest is not None:
                self._upgrade_rest += data[start:]
                return
            if self._closing or self._refused is not None:
                return
            if self._paused:
                self._unparsed = data[start:]
                return
            self._feed(data[start : start + PARSE_SLICE])

    def _feed_unparsed(self) -> None:
        """Reading may go on: first what was read and not parsed yet, then the socket again."""
        if self._paused or self.transport is None:
            return  # paused again meanwhile: the next resume comes back here
        data = self._unparsed
        self._unparsed = b""
        if data:
            self._feed(data)
        if not self._paused and not self._unparsed and self.transport is not None:
            self.transport.resume_reading()

    def _head_incomplete(self) -> None:
        """A read ended inside a request head: start its deadline, bound what it buffers."""
        if not self._head_started:
            self._head_started = self.loop.time()
        server = self._server
        if self._head_bytes > server.max_head:
            server.client_limits["header_total"] += 1
            raise _HeadRefused("the request head is too large", 431)
        headers = self._raw_headers
        if len(headers) > server.max_headers:
            raise _HeadRefused("too many headers")
        accounted = sum(len(name) + len(value) + 4 for name, value in headers)
        if self._head_bytes - accounted > 2 * server.max_line:
            raise _HeadRefused("a line of the request head is too long")

    def _proxy_header(self, data: bytes) -> bytes | None:
        """The bytes after the PROXY header, or None while it is incomplete (or refused)."""
        assert self._proxy_pending is not None
        buffered = self._proxy_pending + data
        try:
            parsed = parse_proxy_header(buffered)
        except ProxyHeaderError as error:
            log.debug("closing a connection without a valid PROXY header: %s", error)
            self._proxy_pending = b""
            if self.transport is not None:
                self.transport.close()
            return None
        if parsed is None:
            self._proxy_pending = buffered
            return None
        length, source = parsed
        self._proxy_pending = None
        if source is not None:
            self.remote = str(source[0])
        if not self._take_connection_slot():
            return None
        return buffered[length:]

    def _take_connection_slot(self) -> bool:
        """Count this connection against its client's cap, if there is one; over it, close the
        connection (and False)."""
        server = self._server
        caps = server.connection_caps
        if caps is None:
            return True
        key = server.connection_key(self.remote or "unknown")
        if key is None or caps.take(key):
            self.capped_as = key
            return True
        server.client_limits["connections_per_client"] += 1
        log.debug("closing a connection from %s: it holds %d already", self.remote, caps.cap)
        if self.transport is not None:
            self.transport.close()
        return False

    def eof_received(self) -> bool:
        return False

    async def drain(self) -> None:
        if self.transport is None:
            raise ConnectionResetError("the client went away")
        await self.writable(self.loop)

    def _pause(self, reason: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and self.transport is not None:
                if self._unparsed:
                    self.loop.call_soon(self._feed_unparsed)
                else:
                    self.transport.resume_reading()

    def pause_for_body(self) -> None:
        self._pause(PAUSED_FOR_BODY)

    def resume_for_body(self) -> None:
        self._resume(PAUSED_FOR_BODY)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._raw_headers = []

    def on_url(self, url: bytes) -> None:
        url = self._url = self._url + url
        if len(url) > self._server.max_line:
            raise _HeadRefused("the request line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp reports trailer fields (after a chunked body) through this callback too: they
        # land in the list ``on_headers_complete`` left for them, which nothing reads. Added to
        # the request's they would reach the upstream as headers no rule judged.
        # A field value has no trailing whitespace (RFC 9112 §5), but llhttp keeps it: kept, a
        # rule on "X-Debug: 1" would not match "X-Debug: 1 " and the upstream would get it.
        self._raw_headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_started = 0.0
        parser = self._parser
        raw = self._raw_headers
        self._raw_headers = []  # for trailer fields, dropped (bounded with the chunk framing)
        url = self._url
        server = self._server
        if len(raw) > server.max_headers:
            raise _HeadRefused("too many headers")
        longest = server.max_line - 4
        content_length: int | None = None
        chunked = False
        host: bytes | None = None
        pairs: list[tuple[str | None, str]] = []
        seen: set[bytes] | None = None
        for name, value in raw:
            if len(name) + len(value) > longest:
                raise _HeadRefused("a header line is too long")
            text, lower = _NAMES.get(name) or self._new_name(name)
            pairs.append((text, value.decode("utf-8", "surrogateescape")))
            if lower is not None:  # a header that may appear once
                if seen is None:
                    seen = {lower}
                elif lower in seen:
                    raise _HeadRefused(f"duplicate {name.decode('latin-1')} header")
                else:
                    seen.add(lower)
                if lower == b"host":
                    host = value
                elif lower == b"content-length":
                    content_length = int(value)
                elif lower == b"transfer-encoding":
                    coding = value.strip().lower()
                    if coding != b"chunked":
                        # Not chunked last: no body length can be trusted (RFC 9112 §6.3: 400).
                        # Chunked after others (gzip, chunked): Shield decodes only chunked and
                        # would pass gzip bytes on as the content (RFC 9112 §6.1: 501).
                        if coding.rpartition(b",")[2].strip() != b"chunked":
                            raise _HeadRefused("a body length that cannot be determined")
                        raise _HeadRefused("a transfer coding other than chunked", 501)
                    chunked = True
        if self._underscored:
            # WSGI and CGI turn X_Evil and X-Evil into the same HTTP_X_EVIL: a rule about one
            # would be sidestepped with the other (nginx drops such names by default).
            self._underscored = False
            if server.underscores_in_headers == "refuse":
                raise _HeadRefused("a header name with an underscore")
            raw = [pair for pair in raw if _UNDERSCORE not in pair[0]]
            pairs = [pair for pair in pairs if pair[0] is not None]
        version = parser.get_http_version()
        if version != "1.1":
            if version != "1.0":
                raise _HeadRefused(f"HTTP/{version}", 505)
            if chunked:
                # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
                raise _HeadRefused("Transfer-Encoding in an HTTP/1.0 request")
            if _asks_to_close(raw):
                self._closing_after = True
        if host is None:
            if version == "1.1":
                raise _HeadRefused("an HTTP/1.1 request without Host")  # RFC 9112 §3.2
        elif host != self._valid_host:
            if not _is_authority(host):
                raise _HeadRefused("a Host that is not a valid authority")
            self._valid_host = host
        upgrade = parser.should_upgrade()
        if upgrade and (chunked or content_length):
            # llhttp takes what follows an upgrade request's head for the new protocol, body
            # included: Shield could not forward that body as the request's.
            raise _HeadRefused("an upgrade request with a body")
        method_bytes = parser.get_method()
        method = _METHODS.get(method_bytes) or method_bytes.decode("ascii")
        keep_alive = parser.should_keep_alive() and not self._closing and method != "CONNECT"
        if self._closing_after:
            # llhttp keeps an HTTP/1.0 connection alive on a keep-alive token, even beside
            # close or in Proxy-Connection; close wins (RFC 9112 §9.3).
            self._closing_after = keep_alive = False
        request = Request(
            self,
            method,
            url,
            version,
            raw,
            _HEADERS_VIEW(_HEADERS(pairs)),  # type: ignore[arg-type]  # no None left
            keep_alive,
            content_length,
            RequestBody(self) if chunked or content_length else EMPTY_BODY,
            upgrade,
        )
        self._url = b""
        self._parsing = request
        if request.upgrade:
            self._upgrade_request = request
        if content_length:
            self._body_left = content_length
        elif chunked:  # (on_message_complete sets it back)
            self._chunked = True
            self._framing_bytes = 0
        queue = self._queue
        if queue or self._current is not None:
            # Pipelined behind another request: what it holds while it waits is bounded.
            request.waiting_bytes = waiting = len(url) + sum(
                len(name) + len(value) + 4 for name, value in raw
            )
            self._waiting_bytes += waiting
            if len(queue) + 1 >= MAX_PIPELINED or self._waiting_bytes > MAX_PIPELINED_BYTES:
                self._pause(PAUSED_FOR_PIPELINE)
        queue.append(request)

    def _new_name(self, name: bytes) -> tuple[str | None, bytes | None]:
        """A header name not in ``_NAMES``, as ``_header_name`` gives it; for one with an
        underscore under ``underscores_in_headers: drop | refuse``, no text, and the request is
        marked (``_underscored``)."""
        if _UNDERSCORE in name and self._server.underscores_in_headers != "allow":
            self._underscored = True
            return None, None
        return _header_name(name)

    def on_body(self, body: bytes) -> None:
        self._framing_bytes = 0
        self._body_left -= len(body)
        request = self._parsing
        if request is not None:
            request.content.feed(body)
            if request.waiting_bytes and request is not self._current:
                request.waiting_bytes += len(body)
                self._waiting_bytes += len(body)
                if self._waiting_bytes > MAX_PIPELINED_BYTES:
                    self._pause(PAUSED_FOR_PIPELINE)

    def on_message_complete(self) -> None:
        self._chunked = False
        request = self._parsing
        self._parsing = None
        if request is not None and request.body_exists:
            request.content.feed_eof()

    # -- answering ----------------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        self._current = request
        ready = self._ready
        if ready is not None:
            self._ready = None
            ready.set_result(None)
        elif self._serving is None:
            self._serving = self.loop.create_task(self._serve())

    async def _serve(self) -> None:
        """Answer the requests of this connection one after the other, until it closes."""
        handler = self._server.handler
        while True:
            request = self._current
            if request is None:
                if self._closing:
                    return
                self._ready = self.loop.create_future()
                await self._ready
                continue
            try:
                reply = await handler(request)
            except (ConnectionError, asyncio.CancelledError):
                self._abort()
                return
            except Exception:
                log.exception("error handling %s %s from %s", request.method, request.raw_path, self.remote)
                if self.transport is not None and not request.started:
                    self.transport.write(_SERVER_ERROR)
                self._abort(graceful=True)
                return
            transport = self.transport
            if self._handed_over or transport is None:
                return
            if isinstance(reply, Written):
                if reply.body:
                    transport.writelines((reply.data, reply.body))
                elif reply.data:
                    transport.write(reply.data)
                keep_alive = reply.keep_alive
            else:
                keep_alive = request.keep_alive and reply.keep_alive is not False
                transport.write(serialize(reply, request, keep_alive, self._server.date))
            self._finished(request, keep_alive)
            if self._current is request:
                return
            del request, reply  # an idle keep-alive connection holds neither, nor the answer's bytes

    def _finished(self, request: Request, keep_alive: bool) -> None:
        self._current = None
        if not keep_alive or self._closing or self.transport is None:
            self._close(linger=self._parsing is not None or bool(self._queue))
            return
        self._idle_since = self.loop.time()
        if self._parsing is request:
            # The answer went out before the whole body came in: drain the rest unread, for
            # at most ``lingering`` seconds.
            request.content.discard()
        if self._upgrade_rest is not None and request is self._upgrade_request:
            # An upgrade request that was answered without upgrading: go on with plain HTTP.
            self._upgrade_request = None
            rest = self._upgrade_rest
            self._upgrade_rest = None
            self._parser = httptools.HttpRequestParser(self._parse_events or self)
            self._resume(PAUSED_FOR_UPGRADE)
            if rest:
                self._feed(rest)
        # Read afresh (``_idle``), not as mypy saw it when this method began: the calls above
        # may have started another request, and compiled code would trust the narrowed None.
        if self._queue:
            if self._idle():
                self._next()
        elif self._refused is not None and self._idle():
            self._send_refusal()

    def _idle(self) -> bool:
        return self._current is None

    def _next(self) -> None:
        """Start the next pipelined request, unless the client is not reading its answers: then
        resume_writing will, so answers pile up in the kernel's buffers, not in Shield."""
        queue = self._queue
        if queue and self._current is None and not self._writing_paused:
            request = queue.popleft()
            self._waiting_bytes -= request.waiting_bytes
            request.waiting_bytes = 0  # no longer waiting: the rest of its body is not counted
            self._start(request)
            if (
                self._paused
                and len(queue) < MAX_PIPELINED // 2
                and self._waiting_bytes <= MAX_PIPELINED_BYTES // 2
            ):
                self._resume(PAUSED_FOR_PIPELINE)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_stalled_since = self.loop.time()
        if self.transport is not None:
            self._stalled_buffer = self.transport.get_write_buffer_size()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self._stalled_for += self.loop.time() - self._write_stalled_since
            self._taken_while_stalled += self._stalled_buffer - self.transport.get_write_buffer_size()
        super().resume_writing()
        if not self._closing and self.transport is not None:
            self._next()

    def _reset(self) -> None:
        """Abort with a reset: a plain close would leave what the kernel still buffers for a
        client that does not read to trickle out to it (megabytes, for minutes)."""
        transport = self.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._abort()

    def _abort(self, *, graceful: bool = False) -> None:
        self._closing = True
        transport = self.transport
        if transport is not None:
            if graceful:
                transport.close()
            else:
                transport.abort()

    def _close(self, *, linger: bool) -> None:
        """Close after the last answer. With ``linger`` (the client may still be sending: a body
        not read to its end, input after a refusal) Shield's side is shut down and what still
        comes is read and dropped, for at most ``lingering`` seconds and ``LINGER_BYTES``, then
        the connection closes: closing a socket with unread input sends a reset, which can
        destroy the answer before the client reads it (aiohttp and nginx linger likewise)."""
        self._closing = True
        transport = self.transport
        if transport is None:
            return
        if not linger:
            transport.close()
            return
        self._queue.clear()
        parsing = self._parsing
        if parsing is not None:
            self._parsing = None
            parsing.content.lost()
        # The connection is no longer this protocol's: one that only drops what comes takes it
        # (so connection_lost never comes here: the serving task, if idle, ends now).
        self.transport = None
        self._server.forget(self)
        ready = self._ready
        if ready is not None:
            self._ready = None
            ready.set_result(None)
        if transport.can_write_eof():
            transport.write_eof()
        transport.set_protocol(_Lingering(transport, self._server.lingering))
        transport.resume_reading()

    def _refuse(self, error: BaseException) -> None:
        """Input Shield cannot parse or will not read: the requests parsed before it are
        answered in order, then a 400 (or the refusal's own status), and the connection closes.
        Nothing of the input is echoed."""
        log.debug("refused a malformed request from %s: %s", self.remote, error)
        parsing = self._parsing
        if parsing is not None:
            self._parsing = None
            parsing.content.fail(BadHttpMessage(str(error) or "malformed request"))
            if parsing is not self._current and parsing in self._queue:
                # llhttp refuses some heads (Content-Length beside Transfer-Encoding) only after
                # reporting them complete: such a request is never answered as if it were good.
                self._queue.remove(parsing)
                self._waiting_bytes -= parsing.waiting_bytes
        # llhttp keeps the method of the last request line it read: this message's once its
        # target began (``_url``, reset when a head is taken).
        if parsing is not None:  # its head was taken: the refusal answers it
            head = parsing.method == "HEAD"
        else:
            head = bool(self._url) and self._parser.get_method() == b"HEAD"
        refusals = _HEAD_REFUSALS if head else _REFUSALS
        self._refused = refusals[error.status if isinstance(error, _HeadRefused) else 400]
        self._pause(PAUSED_FOR_REFUSAL)
        if self._current is None:
            if self._queue:
                self._next()
            else:
                self._send_refusal()

    def _send_refusal(self) -> None:
        refusal = self._refused
        self._refused = None
        if refusal is not None and self.transport is not None:
            self.transport.write(refusal)
            self._close(linger=True)

    # -- deadlines ----------------------------------------------------------------------------

    def check_deadline(self, now: float) -> None:
        """Called by the server's ticker. While a request is being answered, only the send
        timeout runs: a client that takes nothing of its answer for that long is cut off (and
        the upstream connection streaming to it closed, never pooled half-read)."""
        if self.transport is None:
            return
        server = self._server
        if self._writing_paused:
            if now - self._write_stalled_since >= server.send_timeout:
                log.debug("resetting a connection from %s: it stopped reading its answer", self.remote)
                server.client_limits["client_send"] += 1
                self._reset()
                return
            if server.min_send_rate and self._reads_too_slowly(now, server.min_send_rate, server.rate_grace):
                log.debug("resetting a connection from %s: it reads its answer too slowly", self.remote)
                server.client_limits["read_rate"] += 1
                self._reset()
                return
        if self._current is not None:
            return
        if self._head_started:
            if now - self._head_started >= server.header_timeout:
                log.debug("closing a connection from %s: request headers too slow", self.remote)
                server.client_limits["client_header"] += 1
                self._abort()
        else:
            limit = server.lingering if self._parsing is not None else server.keepalive_timeout
            if now - self._idle_since >= limit:
                self._abort(graceful=True)

    def _reads_too_slowly(self, now: float, rate: int, grace: float) -> bool:
        """Whether the client, over the time it kept Shield waiting (write buffer full), took
        less than ``rate`` bytes a second, once that time passed ``grace`` (Kestrel's
        MinResponseDataRate): a trickle reader would hold its answer's upstream connection as
        long as it likes, making just enough progress for the send timeout."""
        assert self.transport is not None
        stalled = self._stalled_for + now - self._write_stalled_since
        taken = self._taken_while_stalled + self._stalled_buffer - self.transport.get_write_buffer_size()
        return stalled > grace and taken < rate * stalled

    # -- shutdown and hand-over ---------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._current is not None

    def close_when_idle(self) -> None:
        """Graceful shutdown: close now if idle, else after the answer in progress."""
        self._closing = True
        if self._current is None and self.transport is not None:
            self._abort(graceful=True)

    async def tunnel(self, request: Request, upstream: asyncio.Transport, to_client: bytes) -> Written:
        transport = self.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        if self._upgrade_rest is None or request is not self._current or request is not self._upgrade_request:
            raise RuntimeError("only a parsed upgrade request being answered can be spliced")
        to_upstream = self._upgrade_rest
        self._upgrade_rest = None
        self._handed_over = True
        try:
            sent, _ = await splice(transport, upstream, to_upstream, to_client)
        finally:
            self.transport = None
            self._server.forget(self)
        return Written(b"", False, 101, sent)


class _Lingering(asyncio.Protocol):
    """A connection Shield closes while its client may still be sending: what still comes is
    read and dropped, for at most ``seconds`` and ``LINGER_BYTES``, then it closes."""

    def __init__(self, transport: asyncio.Transport, seconds: float) -> None:
        self._transport = transport
        self._left = LINGER_BYTES
        self._deadline = asyncio.get_running_loop().call_later(seconds, transport.abort)

    def data_received(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            self._transport.abort()

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()


class _HeadRefused(Exception):
    """A request head Shield will not take: over its limits, or not a request it forwards
    faithfully. ``status`` is the answer (400 unless said otherwise)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


def serialize(response: ShieldAnswer, request: Request, keep_alive: bool, date: DateHeader) -> bytes:
    """One of Shield's own answers (refusals, pages), framed for ``request``, as bytes."""
    body = response.body
    status = response.status
    parts = [status_line(status)]
    has_date = False
    for name, value in response.headers.items():
        lower = name.lower()
        if lower in _FRAMING:
            continue
        if lower == "date":
            has_date = True
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not has_date:
        parts.append(date.line())
    for cookie in response.cookies:
        parts.append(b"Set-Cookie: " + cookie.encode("latin-1") + b"\r\n")
    if status != 204 and status != 304:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if request.method != "HEAD" and status != 204 and status != 304:
        parts.append(bytes(body))
    return b"".join(parts)


class Http1Server:
    """Creates a connection per accepted socket and keeps them for deadlines and shutdown."""

    def __init__(
        self,
        handler: Handler,
        *,
        header_timeout: float,
        keepalive_timeout: float,
        send_timeout: float = 60.0,
        min_send_rate: int = 0,
        rate_grace: float = 5.0,
        max_line: int,
        max_headers: int,
        max_head: int = 64 * 1024,
        write_buffer: int = 0,
        lingering: float = 2.0,
        proxy_protocol: bool = False,
        underscores_in_headers: str = "drop",
        connection_caps: HeldPerClient | None = None,
        connection_key: Callable[[str], str | None] = str,
        client_limits: Counter[str] | None = None,
    ) -> None:
        """``underscores_in_headers``: what becomes of a request header whose name has an
        underscore: ``drop`` it before anything reads the request, ``refuse`` the request (400),
        or ``allow`` it. ``connection_caps``: connections each client may hold, counted under
        ``connection_key(peer address)`` (None: not counted). ``client_limits``: where each
        limit a client ran into is counted, by kind (``shield_client_limits``)."""
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.send_timeout = send_timeout
        self.min_send_rate = min_send_rate
        self.rate_grace = rate_grace
        self.max_line = max_line
        self.max_headers = max_headers
        self.max_head = max_head
        self.write_buffer = write_buffer
        self.lingering = lingering
        self.proxy_protocol = proxy_protocol
        self.underscores_in_headers = underscores_in_headers
        self.connection_caps = connection_caps
        self.connection_key = connection_key
        self.client_limits: Counter[str] = Counter() if client_limits is None else client_limits
        self.connections: set[Http1Connection] = set()
        self.date = DateHeader()
        self._ticker: asyncio.TimerHandle | None = None
        # The most connections open at once since memory was last handed back.
        self._peak_connections = 0
        self._trimmed_at = -TRIM_INTERVAL
        self._all_closed: asyncio.Event | None = None

    def __call__(self) -> Http1Connection:
        return Http1Connection(self)

    @property
    def in_flight(self) -> int:
        return sum(1 for conn in self.connections if conn.busy)

    def watch(self) -> None:
        if self._ticker is None:
            self._ticker = self.loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check_deadline(now)
        self._trim_after_a_drop(now)
        if self.connections:
            self.watch()

    def _trim_after_a_drop(self, now: float) -> None:
        """Hand freed memory back once most of a crowd of connections is gone: what a slow
        attack's connections held would otherwise stay resident at its peak."""
        open_now = len(self.connections)
        if open_now > self._peak_connections:
            self._peak_connections = open_now
        elif (
            self._peak_connections >= TRIM_AFTER_CONNECTIONS
            and open_now <= self._peak_connections // 4
            and now - self._trimmed_at >= TRIM_INTERVAL
        ):
            self._peak_connections = open_now
            self._trimmed_at = now
            release_garbage()

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now, the rest once answered; give up after ``grace``."""
        for conn in list(self.connections):
            conn.close_when_idle()
        if self.connections:
            self._all_closed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), grace)

    def forget(self, conn: Http1Connection) -> None:
        self.connections.discard(conn)
        key = conn.capped_as
        if key is not None:
            conn.capped_as = None
            assert self.connection_caps is not None
            self.connection_caps.give_back(key)
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn._abort()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

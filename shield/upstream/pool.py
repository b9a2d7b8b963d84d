"""A pooled HTTP/1.1 client for the one upstream Shield protects.

Why not aiohttp's ClientSession: on the hot path it costs more than the whole rest of Shield
(URL objects, a cookie jar, auto headers, a response object tree), and several of its defaults
must be switched off for a proxy anyway. This client writes the request head Shield already
built as bytes, parses the response with llhttp (httptools, the parser uvicorn uses), and hands
the body over chunk by chunk with flow control in both directions.

One connection carries one request at a time (no pipelining). A connection is reused only when
its last response was read to the end, the upstream allowed keep-alive, and nothing arrived
unasked in between; idle connections close before the upstream's own keep-alive timeout would.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, Final, cast

import httptools

from shield.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from shield.http.body_buffer import BodyBuffer
from shield.http.flow import WriteFlow

# How often the pool checks deadlines and idle connections: timeouts fire within this much.
TICK: Final = 0.1
# The most bytes an upstream may send before its response head is complete (headers, and any
# 1xx answers before them): a runaway head is a 502, not memory.
MAX_RESPONSE_HEAD: Final = 1024 * 1024

NO_ANSWER: Final = "upstream did not answer in time"
STALLED: Final = "upstream stalled inside its response body"

# Pause reading from the upstream when this much body is buffered and the client is slower.
_HIGH_WATER: Final = 256 * 1024


class UpstreamConnection(WriteFlow):
    """One keep-alive connection to the upstream, driven by ``UpstreamPool``; an asyncio
    protocol by its methods (``http.connection.Http1Connection`` says why not by inheritance)."""

    def __init__(self, pool: UpstreamPool) -> None:
        super().__init__()
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser: Any = httptools.HttpResponseParser(self)
        self._busy = False
        self._head_request = False
        # Set for a WebSocket handshake: a 101 is its answer, and what follows it is no longer
        # HTTP (``upgraded_rest`` holds the bytes of it read with the 101's head).
        self._upgrade = False
        self.upgraded_rest: bytes | None = None
        self._informational = False
        self.status = 0
        self._head_received = 0
        # Bytes read since llhttp last reported body data, once the head is in: chunk-size
        # lines and trailers, bounded by MAX_RESPONSE_HEAD like the head.
        self._framing_bytes = 0
        self.headers: list[tuple[bytes, bytes]] = []
        # Where the parser's fields go: ``headers`` until the head is complete.
        self._fields = self.headers
        # The answer's body as it arrives; reading from the upstream pauses while too much waits.
        self.body = BodyBuffer(
            high_water=_HIGH_WATER,
            low_water=_HIGH_WATER // 2,
            pause=self._pause_reading,
            resume=self._resume_reading,
        )
        self.headers_complete = False
        self.message_complete = False
        self.received_any = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0
        self._deadline_message = ""
        self.reusable = True
        self.idle_since = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._pool._forget(self)
        if self._busy and not self.message_complete:
            # A head without framing headers: its body ends where the connection does.
            if (
                self.headers_complete
                and not self._head_request
                and _reads_until_eof(self.status, self.headers)
            ):
                self.message_complete = True
            else:
                stage = "while sending its body" if self.headers_complete else "before responding"
                self.fail(UpstreamProtocolError(f"upstream closed the connection {stage}"))
        self._wake()
        self.writing_failed(UpstreamProtocolError("upstream closed the connection"))

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            # Bytes nobody asked for: the framing of the last response was a lie. Never reuse.
            self.close()
            return
        self.received_any = True
        if not self.headers_complete:
            self._head_received += len(data)
            if self._head_received > MAX_RESPONSE_HEAD:
                self.fail(UpstreamProtocolError("upstream response head too large"))
                self.close()
                return
        elif not self.message_complete:
            # Checked a read late: bounded all the same.
            self._framing_bytes += len(data)
            if self._framing_bytes > MAX_RESPONSE_HEAD + len(data):
                self.fail(UpstreamProtocolError("upstream chunk-size lines or trailers too large"))
                self.close()
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._upgrade and self.status == 101:
                offset = upgrade.args[0] if upgrade.args else len(data)
                self.upgraded_rest = data[offset:]
                if self.transport is not None:
                    self.transport.pause_reading()
                return
            self.fail(UpstreamProtocolError("upstream switched protocols unasked"))
            self.close()
        except httptools.HttpParserError as exc:
            if self.message_complete:
                # Bytes after a complete answer (a second answer glued to it, or garbage): never
                # part of this answer, and the connection's framing is no longer to be trusted.
                self.reusable = False
                if self.transport is not None:
                    self.transport.abort()
            else:
                cause = exc.__context__
                self.fail(
                    cause
                    if isinstance(cause, UpstreamError)
                    else UpstreamProtocolError(f"malformed upstream response: {exc}")
                )
                self.close()

    def eof_received(self) -> bool:
        return False

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # Past the head, llhttp reports trailer fields, or the head of an answer glued after
        # this one, through this same callback: they land in a list of their own, which
        # nothing reads, never in this answer's head.
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        if self.message_complete:
            raise _Surplus("the upstream sent a second answer")
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # 1xx interim answers (103 Early Hints, a stray 100) are not the response; 101 is,
            # to an upgrade Shield asked for, and refused otherwise.
            if status != 101:
                if _announces_body(self.headers):
                    # llhttp reads a body for a 1xx that announces one (Content-Length,
                    # chunked): it would be taken for the final answer's (RFC 9110 §15.2).
                    raise UpstreamProtocolError(f"upstream sent a {status} with a body")
                self._informational = True
                self.headers = self._fields = []
                return
            if not self._upgrade:
                raise UpstreamProtocolError("upstream switched protocols unasked")
            self.reusable = False
        self.status = status
        self.headers_complete = True
        self._fields = []
        if self._head_request:
            # llhttp does not know this answers a HEAD, so it never completes the message (it
            # waits for the body Content-Length announces): keep-alive is decided here.
            self.message_complete = True
            if not self._parser.should_keep_alive():
                self.reusable = False
        if self._waiter is not None:
            self._wake()

    def on_body(self, body: bytes) -> None:
        self._framing_bytes = 0
        if self._head_request:
            self.reusable = False
            return
        self.body.add(body)
        if self._waiter is not None:
            self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.message_complete = True
        if not self._parser.should_keep_alive():
            self.reusable = False
        if self._waiter is not None:
            self._wake()

    # -- driving a request ------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self.deadline = 0.0
            if not waiter.done():
                waiter.set_result(None)

    def fail(self, error: UpstreamError) -> None:
        """End the exchange with ``error``: wake whoever waits, never reuse the connection."""
        self.reusable = False
        if self._error is None:
            self._error = error
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self.deadline = 0.0
            if not waiter.done():
                waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def check_deadline(self, now: float) -> None:
        """Called by the pool's ticker: time out a wait that is overdue."""
        if self.deadline and now >= self.deadline:
            self.fail(UpstreamTimeout(self._deadline_message))

    def wait(self, timeout: float, message: str) -> asyncio.Future[None]:
        """A future for the next parser event, failed by an error or after ``timeout`` seconds.

        A plain future rather than a coroutine, and one deadline per phase kept as a field (set
        here, moved on by ``rearm``, cleared by ``_wake``) that one pool-wide ticker checks,
        rather than a timer per wait: under uvloop a ``call_at`` and its ``cancel`` cost about
        1.5 us and 10,000 instructions, against 55 ns for the field (``tests/bench/timer_cost.py``),
        which would be 6 % of a proxied request. The price: a timeout fires up to ``TICK`` late.
        """
        waiter: asyncio.Future[None] = self._loop.create_future()
        if self._error is not None:
            waiter.set_exception(self._error)
            return waiter
        self._waiter = waiter
        self.deadline = self._loop.time() + timeout
        self._deadline_message = message
        return waiter

    def start_upgrade(self, head: bytes) -> None:
        """``start`` for a head asking to switch protocols. The connection is never pooled
        again, so nothing resets ``_upgrade``."""
        self._upgrade = True
        self.start(head, head_request=False)

    def start(self, head: bytes, *, head_request: bool) -> None:
        """Send a request head (and any buffered body) and arm the parser for its response."""
        if self._head_request or self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        self._busy = True
        self._head_request = head_request
        self.status = 0
        self._head_received = 0
        self._framing_bytes = 0
        self.headers = self._fields = []
        if self.body.size:  # (never, unless an answer was left unread: such connections close)
            self.body.clear()
        self.headers_complete = False
        self.message_complete = False
        self.received_any = False
        self._error = None
        assert self.transport is not None
        self.transport.write(head)

    async def write(self, data: bytes) -> None:
        """Write part of a streamed request body, waiting while the upstream is not reading."""
        if self._error is not None:
            raise self._error
        transport = self.transport
        if transport is None or transport.is_closing():
            raise UpstreamProtocolError("upstream closed the connection while receiving the body")
        transport.write(data)
        await self.writable(self._loop)

    def rearm(self, timeout: float) -> None:
        """Give the wait in progress ``timeout`` seconds from now: its phase made progress, or
        ended and the next began (the body went up in full: now the answer is awaited)."""
        if self._waiter is not None:
            self.deadline = self._loop.time() + timeout

    async def wait_headers(self, timeout: float) -> None:
        while not self.headers_complete:
            await self.wait(timeout, NO_ANSWER)

    def _pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    async def read(self, idle_timeout: float) -> bytes:
        """The next part of the response body; ``b""`` once it is complete."""
        while not self.body.size:
            if self.message_complete:
                return b""
            await self.wait(idle_timeout, STALLED)
        return self.body.take_all()

    def finish(self) -> None:
        """The response was read to its end: return the connection to the pool."""
        self._busy = False
        self._pool.release(self)

    def close(self) -> None:
        self.reusable = False
        self._busy = False
        if self.transport is not None:
            self.transport.abort()
        self._pool._forget(self)


class _Surplus(UpstreamProtocolError):
    """Bytes after a complete answer."""


def _announces_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        lower = name.lower()
        if lower == b"transfer-encoding" or (lower == b"content-length" and value.strip(b"0 ")):
            return True
    return False


def _reads_until_eof(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    if status in (204, 304):
        return False
    for name, _ in headers:
        lower = name.lower()
        if lower == b"content-length" or lower == b"transfer-encoding":
            return False
    return True


class UpstreamPool:
    """Keep-alive connections to one upstream: reused newest first, bounded, swept when idle."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        max_connections: int,
        idle_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._max = max_connections
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._idle: deque[UpstreamConnection] = deque()
        self._open: set[UpstreamConnection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._ticker: asyncio.TimerHandle | None = None
        # The loop's time at the last tick: when a connection went idle, read without a call.
        self._now = self.loop.time()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection, if any (no await). None of them has been
        idle longer than ``idle_timeout``: the ticker closes them a tick early."""
        while self._idle:
            conn = self._idle.pop()
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                return conn
            conn.close()
        return None

    async def acquire(self, *, fresh: bool = False) -> tuple[UpstreamConnection, bool]:
        """A connection ready for a request, and whether it was reused from the pool."""
        if not fresh and (conn := self.take_idle()) is not None:
            return conn, True
        while len(self._open) >= self._max:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await waiter
            except TimeoutError:
                raise UpstreamTimeout("no upstream connection free in time") from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if self._idle and not fresh:
                return self._idle.pop(), True
        return await self._connect(), False

    async def _connect(self) -> UpstreamConnection:
        conn = UpstreamConnection(self)
        self._open.add(conn)
        self.watch()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self.loop.create_connection(
                    lambda: cast(asyncio.Protocol, conn),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            self._forget(conn)
            raise UpstreamTimeout("connecting to the upstream timed out") from None
        except (OSError, ssl.SSLError) as exc:
            self._forget(conn)
            raise UpstreamConnectError(f"cannot connect to the upstream: {exc}") from exc
        except BaseException:
            self._forget(conn)
            raise
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        transport = conn.transport
        if self._closed or not conn.reusable or transport is None or transport.is_closing():
            conn.close()
            return
        conn.idle_since = self._now
        self._idle.append(conn)
        if self._waiters:
            self._wake_one()

    def _forget(self, conn: UpstreamConnection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def watch(self) -> None:
        """Make sure the ticker runs while any connection is open (it re-arms itself while
        there is one, so only opening a connection needs to call this)."""
        if self._ticker is None and not self._closed:
            self._now = self.loop.time()
            self._ticker = self.loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        now = self._now = self.loop.time()
        # A tick early: ``idle_since`` may be a tick old, and the next tick is a tick away.
        idle_deadline = now - self._idle_timeout + TICK
        while self._idle and self._idle[0].idle_since <= idle_deadline:
            self._idle.popleft().close()
        for conn in list(self._open):
            conn.check_deadline(now)
        if self._open:
            self.watch()

    async def close(self) -> None:
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)

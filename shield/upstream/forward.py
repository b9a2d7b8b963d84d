"""Forwarding one request to the upstream and its answer back to the client.

The request head is built once as bytes from the client's raw headers (``headers``) and written
to a pooled upstream connection (``upstream``). Small, complete bodies take a fast path in both
directions; everything else streams chunk by chunk with back-pressure and byte counting, so a
1 GiB upload or download crosses Shield in bounded memory.

Failure handling (RFC 9110 §15.6): no connection -> 502; no answer in time -> 504; a failure
after the response headers went out aborts the client connection, so a truncated body is never
passed off as a complete one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Final

from aiohttp.http_exceptions import HttpProcessingError

from shield.config.model import ShieldConfig
from shield.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from shield.http.answer import ShieldAnswer, answer
from shield.http.connection import Reply, Request, Written
from shield.http.headers import RequestHeadBuilder
from shield.http.response import DateHeader, response_parts, streamed_head, switching_head
from shield.ops.metrics import ProxyStats
from shield.upstream.pool import NO_ANSWER, UpstreamConnection, UpstreamPool

log: Final = logging.getLogger("shield.proxy")

IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_EMPTY_BODY: Final = b"Content-Length: 0\r\n"
_CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
# From this size a complete answer's body is written beside its head rather than joined to it.
_BODY_APART: Final = 4096
# A C static once compiled, where ``from time import perf_counter`` is a module-dict lookup per call.
_perf_counter: Final = time.perf_counter


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    """What the proxy needs from the config, precomputed once per config load."""

    max_body_size: int
    headers_timeout: float
    upstream_idle: float
    client_idle: float
    buffer_request_body: int = 1024 * 1024
    min_data_rate: int = 240
    data_rate_grace: float = 5.0

    @classmethod
    def from_config(cls, config: ShieldConfig) -> ForwardSettings:
        limits = config.limits
        return cls(
            max_body_size=limits.max_body_size,
            headers_timeout=config.timeouts.upstream_headers,
            upstream_idle=config.timeouts.upstream_idle,
            client_idle=config.timeouts.client_idle,
            buffer_request_body=limits.buffer_request_body,
            min_data_rate=limits.min_data_rate,
            data_rate_grace=config.timeouts.data_rate_grace,
        )


def head_builder(config: ShieldConfig, *, tls: bool) -> RequestHeadBuilder:
    upstream = config.upstream
    match upstream.host_header:
        case "preserve":
            host_override = None
        case "upstream":
            host_override = upstream.authority.encode()
        case other:
            host_override = other.encode()
    return RequestHeadBuilder(
        proto="https" if tls else "http",
        via=config.forwarding.via.encode(),
        forwarded=config.forwarding.forwarded_header,
        keep_rewrite_headers=config.forwarding.keep_rewrite_headers,
        host_override=host_override,
        default_host=upstream.authority.encode(),
    )


class BodyTooLarge(Exception):
    """The client sent more body than ``limits.max_body_size``."""


class ClientBodyError(Exception):
    """The client's body could not be read: malformed, stalled or cut short."""


class BodyTooSlow(ClientBodyError):
    """The client sent its body more slowly than ``limits.min_data_rate`` (408)."""


class BodyPieces:
    """A request body piece by piece as the client sends it: each piece within
    ``timeouts.client_idle``, all of it within ``limits.max_body_size``, and once
    ``timeouts.data_rate_grace`` is over, at least ``limits.min_data_rate`` bytes a second on
    average (Kestrel's MinRequestBodyDataRate), so a trickle that never stalls is cut too."""

    def __init__(self, request: Request, settings: ForwardSettings) -> None:
        self._content = request.content
        self._settings = settings
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self.size = 0

    async def next(self) -> bytes:
        """The next piece; ``b""`` at the end of the body."""
        settings = self._settings
        content = self._content
        try:
            async with asyncio.timeout(settings.client_idle):
                piece = await content.readany()
        except (TimeoutError, HttpProcessingError) as exc:
            raise ClientBodyError(str(exc) or "client body stalled") from exc
        if not piece:
            if not content.is_eof():
                raise ClientBodyError("request body cut short")
            return b""
        self.size += len(piece)
        if self.size > settings.max_body_size:
            raise BodyTooLarge
        rate = settings.min_data_rate
        if rate:
            elapsed = self._loop.time() - self._started
            if elapsed > settings.data_rate_grace and self.size < rate * elapsed:
                raise BodyTooSlow(f"{self.size} bytes in {elapsed:.0f} s")
        return piece

    async def buffer(self, limit: int) -> tuple[bytes, bool]:
        """Read while the body fits in ``limit``: (all of it, True), or (what was read, False)
        once it is longer."""
        pieces: list[bytes] = []
        while self.size <= limit:
            piece = await self.next()
            if not piece:
                return b"".join(pieces), True
            pieces.append(piece)
        return b"".join(pieces), False


class Proxy:
    """Forwards requests over an ``UpstreamPool``; one instance per worker process."""

    def __init__(
        self,
        settings: ForwardSettings,
        heads: RequestHeadBuilder,
        pool: UpstreamPool,
        stats: ProxyStats,
        *,
        timed: bool = True,
        upstream_histogram: bool = True,
    ) -> None:
        """``timed``: measure how long the upstream takes to answer (``request.upstream_seconds``,
        for the access log, load shedding and ``upstream_histogram``); off, no clock is read."""
        self.settings = settings
        self.heads = heads
        self.pool = pool
        self.stats = stats
        self.timed = timed or upstream_histogram
        self.upstream_durations = stats.upstream_durations if upstream_histogram else None
        self.upstream_classes = stats.upstream_classes
        self.date = DateHeader()

    async def forward(
        self,
        request: Request,
        target: bytes,
        extra: bytes = b"",
        upstream: tuple[str, bytes] | None = None,
    ) -> Reply:
        """Send ``request`` upstream with ``target`` as its request-target; relay the answer,
        with Shield's ``extra`` headers (RateLimit-*, X-Shield-Rule) added. ``upstream`` is the
        X-Forwarded-For value and Shield's identity header lines (default: the peer, none)."""
        settings = self.settings
        method = request.method
        id_line = request.id_line
        extra += id_line
        body: bytes | None = None
        streamed = chunked = False
        if not request.body_exists:
            framing = _EMPTY_BODY if method in _BODY_METHODS else b""
        else:
            content_length = request.content_length
            if content_length is not None and content_length > settings.max_body_size:
                too_large = answer(413, "Request body too large.", close=True)
                if "Expect" in request.headers:
                    # The client waits for 100 Continue and never sends the body: hang up at once
                    # rather than let aiohttp linger for it.
                    too_large.force_close()
                return too_large
            _continue_if_expected(request)
            # Bodies up to buffer_request_body are read whole before an upstream connection is
            # taken, so a slow client holds none; longer ones stream (nginx's request buffering).
            pieces = BodyPieces(request, settings)
            read = b""
            if content_length is None or content_length <= settings.buffer_request_body:
                try:
                    read, complete = await pieces.buffer(settings.buffer_request_body)
                except (BodyTooLarge, ClientBodyError) as refused:  # (a name of its own: mypyc
                    # gives a variable one type for the whole function)
                    return _body_refusal(refused, self.stats.client_limits)
                if complete:
                    body = read
                    framing = b"Content-Length: %d\r\n" % len(body)
            if body is None:
                streamed = True
                chunked = content_length is None
                framing = _CHUNKED if content_length is None else b"Content-Length: %d\r\n" % content_length
        forwarded_for, who = upstream or (request.remote or "unknown", b"")
        head = self.heads.build(
            method.encode(), target, request.raw_headers, forwarded_for, framing, id_line, who
        )
        if body:
            head += body

        head_request = method == "HEAD"
        retry = not streamed and method in IDEMPOTENT
        fresh = False
        conn: UpstreamConnection | None = None
        upload: asyncio.Task[None] | None = None
        try:
            while True:
                conn = None if fresh else self.pool.take_idle()
                reused = conn is not None
                if conn is None:
                    conn, reused = await self.pool.acquire(fresh=fresh)
                try:
                    timed = self.timed
                    sent_at = _perf_counter() if timed else 0.0
                    conn.start(head, head_request=head_request)
                    if streamed:
                        upload = asyncio.get_running_loop().create_task(
                            self._upload(pieces, read, conn, chunked=chunked)
                        )
                    if upload is None:
                        while not conn.headers_complete:
                            await conn.wait(settings.headers_timeout, NO_ANSWER)
                    else:
                        # While the body goes up, the wait is the upload's: each piece written
                        # re-arms it; the answer's own wait starts once the body is all sent.
                        while not conn.headers_complete:
                            uploading = not upload.done()
                            timeout = settings.upstream_idle if uploading else settings.headers_timeout
                            await conn.wait(timeout, NO_ANSWER)
                    if timed:
                        upstream_seconds = request.upstream_seconds = _perf_counter() - sent_at
                        if self.upstream_durations is not None:
                            self.upstream_durations.append(upstream_seconds)
                    break
                except UpstreamProtocolError:
                    # A pooled connection the upstream closed while idle: retry once, on a new
                    # connection, and only what is safe to send twice (RFC 9112 §9.3.1).
                    if retry and reused and not conn.received_any:
                        retry = False
                        fresh = True
                        conn.close()
                        continue
                    raise
        except UpstreamError as error:
            if conn is not None:
                conn.close()
            if upload is not None:
                refusal = _client_body_refusal(upload, self.stats.client_limits)
                if refusal is not None:
                    return refusal
            return self._upstream_failed(error)
        except BaseException:
            if conn is not None:
                conn.close()
            if upload is not None:
                upload.cancel()
            raise

        self.upstream_classes[conn.status // 100] += 1  # (llhttp takes at most 3 digits)
        try:
            if conn.message_complete:
                return self._complete_answer(request, conn, extra, head_request)
            return await self._stream_response(request, conn, extra)
        except UpstreamProtocolError as error:  # an answer Shield would not pass on as it is
            conn.close()
            return self._upstream_failed(error)
        finally:
            if upload is not None and not upload.done():
                # The upstream answered before taking the whole body; the connection is dirty.
                upload.cancel()
                conn.close()

    async def upgrade(
        self, request: Request, target: bytes, extra: bytes, upstream: tuple[str, bytes]
    ) -> Reply:
        """Ask the upstream to switch ``request``'s connection to the protocol its Upgrade
        names (WebSocket). On a 101 the two connections are spliced until the session ends; any
        other answer (a server may decline, RFC 9110 §7.8) goes to the client as it is."""
        extra += request.id_line
        forwarded_for, who = upstream
        protocol = request.headers["Upgrade"].encode("latin-1")
        head = self.heads.build(
            request.method.encode(),
            target,
            request.raw_headers,
            forwarded_for,
            b"Connection: Upgrade\r\nUpgrade: " + protocol + b"\r\n",
            request.id_line,
            who,
        )
        conn: UpstreamConnection | None = None
        try:
            conn, _ = await self.pool.acquire(fresh=True)
            conn.start_upgrade(head)
            await conn.wait_headers(self.settings.headers_timeout)
        except UpstreamError as error:
            if conn is not None:
                conn.close()
            return self._upstream_failed(error)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        try:
            if conn.status != 101:
                conn.reusable = False
                if conn.message_complete:
                    return self._complete_answer(request, conn, extra, request.method == "HEAD")
                return await self._stream_response(request, conn, extra)
            rest = conn.upgraded_rest
            if rest is None or conn.transport is None:
                raise UpstreamProtocolError("upstream switched protocols badly")
            return await request.tunnel(conn.transport, switching_head(conn.headers, self.date, extra) + rest)
        except UpstreamProtocolError as error:
            return self._upstream_failed(error)
        finally:
            conn.close()

    def _complete_answer(
        self, request: Request, conn: UpstreamConnection, extra: bytes, head_request: bool
    ) -> Written:
        """An answer the upstream has sent in full, as the client gets it: in one piece, or
        a large body beside its head (one writev, where joining them copied the body)."""
        body = conn.body.take_all()
        conn.finish()
        keep_alive = request.keep_alive
        parts, sent = response_parts(
            conn.status,
            conn.headers,
            body,
            head_request=head_request,
            keep_alive=keep_alive,
            date=self.date,
            extra=extra,
        )
        size = 0 if head_request else len(body)
        if len(sent) < _BODY_APART:
            parts.append(sent)
            return Written(b"".join(parts), keep_alive, conn.status, size)
        return Written(b"".join(parts), keep_alive, conn.status, size, body=sent)

    async def _upload(
        self, pieces: BodyPieces, read: bytes, conn: UpstreamConnection, *, chunked: bool
    ) -> None:
        """Stream the body upstream: what was read already, then the rest as it comes."""
        settings = self.settings
        try:
            chunk = read or await pieces.next()
            while chunk:
                await conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                conn.rearm(settings.upstream_idle)
                chunk = await pieces.next()
            if chunked:
                await conn.write(b"0\r\n\r\n")
            conn.rearm(settings.headers_timeout)
        except (BodyTooLarge, ClientBodyError):
            conn.fail(UpstreamProtocolError("client body refused"))
            raise

    async def _stream_response(self, request: Request, conn: UpstreamConnection, extra: bytes) -> Written:
        """Relay an answer whose body is still coming: the head now, the body as it arrives."""
        head_request = request.method == "HEAD"
        head, chunked, keep_alive = streamed_head(
            conn.status,
            conn.headers,
            http10=request.version == "1.0",
            keep_alive=request.keep_alive,
            date=self.date,
            extra=extra,
        )
        idle = self.settings.upstream_idle
        sent = request.sent = 0
        try:
            request.send(head)
            while chunk := await conn.read(idle):
                if not head_request:
                    request.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    sent += len(chunk)
                    request.sent = sent
                    await request.drain()
        except UpstreamError as error:
            conn.close()
            self.stats.upstream_errors[error.kind] += 1
            log.warning("upstream failed mid-response, aborting the client: %s", error)
            if request.transport is not None:
                request.transport.abort()
            return Written(b"", False, conn.status, sent)
        except BaseException:
            conn.close()
            raise
        conn.finish()
        if chunked and not head_request:
            request.send(b"0\r\n\r\n")
        return Written(b"", keep_alive, conn.status, sent)

    def _upstream_failed(self, error: UpstreamError) -> ShieldAnswer:
        self.stats.upstream_errors[error.kind] += 1
        if isinstance(error, UpstreamTimeout):
            return answer(504, "The upstream did not answer in time.")
        return answer(502, "The upstream is unavailable.")


def _continue_if_expected(request: Request) -> None:
    # A request reaches this point only after Shield decided to forward it: refusals go out
    # before any body is sent. HTTP/1.0 has no 1xx answers: its expectation is ignored
    # (RFC 9110 §10.1.1).
    expect = request.headers.get("Expect")
    if (
        expect is not None
        and expect.lower() == "100-continue"
        and request.version == "1.1"
        and request.transport is not None
    ):
        request.transport.write(_CONTINUE)


def _client_body_refusal(upload: asyncio.Task[None], limits: Counter[str]) -> ShieldAnswer | None:
    """The answer for a client whose own body failed the upload, if that is what happened."""
    if not upload.done():
        upload.cancel()
        return None
    error = None if upload.cancelled() else upload.exception()
    if isinstance(error, BodyTooLarge | ClientBodyError):
        return _body_refusal(error, limits)
    return None


def _body_refusal(error: BodyTooLarge | ClientBodyError, limits: Counter[str]) -> ShieldAnswer:
    """The answer to a body that failed; one sent below the minimum rate is counted in
    ``limits`` (``shield_client_limits{limit="body_rate"}``)."""
    if isinstance(error, BodyTooLarge):
        return answer(413, "Request body too large.", close=True)
    if isinstance(error, BodyTooSlow):
        limits["body_rate"] += 1
        return answer(408, "Request body too slow.", close=True)
    return answer(400, "Incomplete request body.", close=True)

"""Forwarding one request to the upstream and its answer back to the client.

The request head is built once as bytes from the client's raw headers (filtered by
``shield.headers``) and written to a pooled upstream connection. Small, complete bodies take a
fast path in both directions; everything else streams chunk by chunk with back-pressure and byte
counting, so a 1 GiB upload or download crosses Shield in bounded memory.

Failure handling (RFC 9110 §15.6): no connection -> 502; no answer in time -> 504; a failure
after the response headers went out aborts the client connection, so a truncated body is never
passed off as a complete one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from shield.config.model import ShieldConfig
from shield.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from shield.headers import filter_request_headers, filter_response_headers, forwarding_headers
from shield.metrics import ProxyMetrics
from shield.upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger("shield.proxy")

# Bodies up to this size are read whole and sent with the head in one write.
SMALL_BODY: Final = 64 * 1024
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    """What the proxy needs from the config, precomputed once per config load."""

    via: bytes
    forwarded_header: bool
    keep_rewrite_headers: bool
    host_override: bytes | None
    upstream_authority: bytes
    upstream_scheme: str
    max_body_size: int
    headers_timeout: float
    upstream_idle: float
    client_idle: float

    @classmethod
    def from_config(cls, config: ShieldConfig) -> ForwardSettings:
        upstream = config.upstream
        match upstream.host_header:
            case "preserve":
                host_override = None
            case "upstream":
                host_override = upstream.authority.encode()
            case other:
                host_override = other.encode()
        return cls(
            via=config.forwarding.via.encode(),
            forwarded_header=config.forwarding.forwarded_header,
            keep_rewrite_headers=config.forwarding.keep_rewrite_headers,
            host_override=host_override,
            upstream_authority=upstream.authority.encode(),
            upstream_scheme=upstream.scheme,
            max_body_size=config.limits.max_body_size,
            headers_timeout=config.timeouts.upstream_headers,
            upstream_idle=config.timeouts.upstream_idle,
            client_idle=config.timeouts.client_idle,
        )


class BodyTooLarge(Exception):
    """The client sent more body than ``limits.max_body_size``."""


class ClientBodyError(Exception):
    """The client's body could not be read: malformed, stalled or cut short."""


def plain_response(status: int, text: str, *, close: bool = False) -> web.Response:
    response = web.Response(status=status, text=text + "\n")
    if close:
        response.force_close()
    return response


class Proxy:
    """Forwards requests over an ``UpstreamPool``; one instance per worker process."""

    def __init__(
        self, settings: ForwardSettings, pool: UpstreamPool, metrics: ProxyMetrics, *, tls: bool
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.proto = "https" if tls else "http"

    # -- request head ------------------------------------------------------------------------

    def request_head(
        self, request: web.BaseRequest, target: bytes, body_framing: bytes
    ) -> bytes:
        settings = self.settings
        raw = request.raw_headers
        kept = filter_request_headers(raw, keep_rewrite_headers=settings.keep_rewrite_headers)
        client_host: bytes | None = None
        inbound_via: bytes | None = None
        for name, value in raw:
            lower = name.lower()
            if lower == b"host":
                client_host = value
            elif lower == b"via":
                inbound_via = value
        host = settings.host_override or client_host or settings.upstream_authority
        added = forwarding_headers(
            client_ip=request.remote or "unknown",
            proto=self.proto,
            host=client_host,
            via=settings.via,
            inbound_via=inbound_via,
            forwarded=settings.forwarded_header,
        )
        lines = [request.method.encode(), b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
        for name, value in kept:
            lines += (name, b": ", value, b"\r\n")
        for name, value in added:
            lines += (name, b": ", value, b"\r\n")
        lines += (body_framing, b"\r\n")
        return b"".join(lines)

    def websocket_headers(self, request: web.BaseRequest) -> list[tuple[bytes, bytes]]:
        """The forwarding headers for a WebSocket handshake (its relay copies the rest)."""
        raw = request.raw_headers
        return forwarding_headers(
            client_ip=request.remote or "unknown",
            proto=self.proto,
            host=next((v for n, v in raw if n.lower() == b"host"), None),
            via=self.settings.via,
            inbound_via=None,
            forwarded=self.settings.forwarded_header,
        )

    # -- the handler -------------------------------------------------------------------------

    async def forward(self, request: web.BaseRequest, target: bytes) -> web.StreamResponse:
        """Send ``request`` upstream with ``target`` as its request-target; relay the answer."""
        settings = self.settings
        content_length = request.content_length
        has_body = request.body_exists
        if content_length is not None and content_length > settings.max_body_size:
            return plain_response(413, "Request body too large.", close=True)

        body: bytes | None = None
        streamed = False
        if not has_body:
            framing = b"Content-Length: 0\r\n" if request.method in ("POST", "PUT", "PATCH") else b""
        elif content_length is not None and content_length <= SMALL_BODY:
            self._continue_if_expected(request)
            try:
                async with asyncio.timeout(settings.client_idle):
                    body = await request.content.readexactly(content_length)
            except (TimeoutError, asyncio.IncompleteReadError, HttpProcessingError):
                return plain_response(400, "Incomplete request body.", close=True)
            framing = b"Content-Length: %d\r\n" % content_length
        else:
            self._continue_if_expected(request)
            streamed = True
            framing = (
                b"Content-Length: %d\r\n" % content_length
                if content_length is not None
                else b"Transfer-Encoding: chunked\r\n"
            )
        head = self.request_head(request, target, framing)
        if body:
            head += body

        head_request = request.method == "HEAD"
        retry = not streamed and request.method in IDEMPOTENT
        conn: UpstreamConnection | None = None
        upload: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    conn, reused = await self.pool.acquire()
                    conn.start(head, head_request=head_request)
                    if streamed:
                        upload = asyncio.get_running_loop().create_task(
                            self._upload(request, conn, chunked=content_length is None)
                        )
                    await conn.wait_headers(settings.headers_timeout)
                    break
                except UpstreamProtocolError:
                    # A pooled connection the upstream closed while idle: retry once, on a new
                    # connection, and only what is safe to send twice (RFC 9112 §9.3.1).
                    if retry and reused and conn is not None and not conn.received_any:
                        retry = False
                        conn.close()
                        conn = None
                        continue
                    raise
        except UpstreamError as error:
            if conn is not None:
                conn.close()
            if upload is not None and upload.done() and not upload.cancelled():
                client_error = upload.exception()
                if isinstance(client_error, BodyTooLarge):
                    return plain_response(413, "Request body too large.", close=True)
                if isinstance(client_error, ClientBodyError):
                    return plain_response(400, "Incomplete request body.", close=True)
            if upload is not None:
                upload.cancel()
            return self._upstream_failed(error)
        except BaseException:
            if conn is not None:
                conn.close()
            if upload is not None:
                upload.cancel()
            raise

        try:
            return await self._respond(request, conn, head_request)
        finally:
            if upload is not None and not upload.done():
                # The upstream answered before taking the whole body; the connection is dirty.
                upload.cancel()
                conn.close()

    def _continue_if_expected(self, request: web.BaseRequest) -> None:
        # aiohttp's low-level server never sends 100 Continue itself, so a request reaches this
        # point only after Shield decided to forward it: refusals go out before any body is sent.
        expect = request.headers.get("Expect")
        if expect is not None and expect.lower() == "100-continue":
            request.transport.write(_CONTINUE)  # type: ignore[union-attr]

    async def _upload(self, request: web.BaseRequest, conn: UpstreamConnection, *, chunked: bool) -> None:
        settings = self.settings
        limit = settings.max_body_size
        content = request.content
        sent = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(settings.client_idle):
                        chunk = await content.readany()
                except (TimeoutError, HttpProcessingError) as exc:
                    raise ClientBodyError(str(exc)) from exc
                if not chunk:
                    if not content.is_eof():
                        raise ClientBodyError("request body cut short")
                    break
                sent += len(chunk)
                if sent > limit:
                    raise BodyTooLarge
                await conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                await conn.write(b"0\r\n\r\n")
        except (BodyTooLarge, ClientBodyError):
            conn._fail(UpstreamProtocolError("client body refused"))
            conn.close()
            raise

    async def _respond(
        self, request: web.BaseRequest, conn: UpstreamConnection, head_request: bool
    ) -> web.StreamResponse:
        settings = self.settings
        status = conn.status
        headers = CIMultiDict[str]()
        declared_length: str | None = None
        for name, value in conn.headers:
            if name.lower() == b"content-length":
                declared_length = value.decode("latin-1")
        for name, value in filter_response_headers(conn.headers):
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        if "Server" not in headers:
            headers["Server"] = "shield"

        if conn.message_complete:
            body = conn.take_body()
            conn.finish()
            response = web.Response(status=status, headers=headers, body=body or None)
            if head_request and declared_length is not None:
                response.headers["Content-Length"] = declared_length
            return response

        response = web.StreamResponse(status=status, headers=headers)
        if declared_length is not None:
            response.content_length = int(declared_length)
        try:
            await response.prepare(request)
            while True:
                chunk = await conn.read(settings.upstream_idle)
                if not chunk:
                    break
                await response.write(chunk)
        except UpstreamError as error:
            conn.close()
            self.metrics.upstream_error(error.kind)
            log.warning("upstream failed mid-response, aborting the client: %s", error)
            if request.transport is not None:
                request.transport.abort()
            return response
        except BaseException:
            conn.close()
            raise
        conn.finish()
        await response.write_eof()
        return response

    def _upstream_failed(self, error: UpstreamError) -> web.Response:
        self.metrics.upstream_error(error.kind)
        if isinstance(error, UpstreamTimeout):
            return plain_response(504, "The upstream did not answer in time.")
        return plain_response(502, "The upstream is unavailable.")

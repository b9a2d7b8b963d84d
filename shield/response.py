"""Serializing a complete upstream answer for the client in one write. Pure apart from the clock.

The fast path of the proxy: when the upstream's whole response arrived with its headers (small
bodies, the common case), Shield writes status line, filtered headers and body to the client in
one ``transport.write``, instead of building an aiohttp response object tree per request. The
framing is Shield's own: always a Content-Length for the bytes actually sent (RFC 9112 §6.2),
no body for HEAD, 204 and 304 (RFC 9110 §6.4.1).
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from shield.headers import DROP_RESPONSE, connection_tokens, filter_response_headers

# Connection values that name no other header: the common case, decided without tokenizing.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})

_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus
}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


class DateHeader:
    """The Date header line, formatted once per second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


def response_bytes(
    status: int,
    upstream_headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    head_request: bool,
    keep_alive: bool,
    date: DateHeader,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """Status line, filtered headers and body of a complete response, framed by Content-Length.

    Framing and hop-by-hop headers of the upstream are dropped (``headers.DROP_RESPONSE`` and
    whatever its Connection field names). HEAD answers and 204/304 carry no body; for HEAD the
    upstream's Content-Length is kept, since it describes the body a GET would get.
    """
    parts = [status_line(status)]
    declared: bytes | None = None
    named: bytes | None = None
    has_date = has_server = False
    for name, value in upstream_headers:
        lower = name.lower()
        if lower in DROP_RESPONSE:
            if lower == b"content-length":
                declared = value
            elif lower == b"connection":
                named = value if named is None else named + b"," + value
            continue
        if lower == b"date":
            has_date = True
        elif lower == b"server":
            has_server = True
        parts += (name, b": ", value, b"\r\n")
    if (
        named is not None
        and named.lower() not in _PLAIN_CONNECTION
        and (connection_tokens(((b"connection", named),)) - DROP_RESPONSE)
    ):
        kept = filter_response_headers(upstream_headers)
        parts = [parts[0], *(p for n, v in kept for p in (n, b": ", v, b"\r\n"))]
    if not has_date:
        parts.append(date.line())
    if not has_server:
        parts.append(b"Server: shield\r\n")
    if head_request or status == 204 or status == 304:
        if head_request and declared is not None:
            parts += (b"Content-Length: ", declared, b"\r\n")
        body = b""
    else:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    if extra:
        for name, value in extra:
            parts += (name, b": ", value, b"\r\n")
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)

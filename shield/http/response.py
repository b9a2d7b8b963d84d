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
from typing import Final

from shield.decide.remembered import remember
from shield.errors import UpstreamProtocolError
from shield.http.headers import DROP_RESPONSE, connection_tokens, filter_response_headers

# Connection values that name no other header: the common case, decided without tokenizing.
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close"})

_STATUS_LINES: Final = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus
}


# What ``response_bytes`` does with an upstream header, by its name as sent.
# (Each a Final of its own, a C constant once compiled: see headers.py.)
_COPY: Final = 0
_DATE: Final = 1
_SERVER: Final = 2
_LENGTH: Final = 3
_CONNECTION: Final = 4
_CODING: Final = 5
_DROP: Final = 6
# The upstream's headers Shield reads, by their lower-cased name: dropped ones, and kept ones.
_DROPPED_KINDS: Final = {
    b"content-length": _LENGTH,
    b"connection": _CONNECTION,
    b"transfer-encoding": _CODING,
}
_KEPT_KINDS: Final = {b"date": _DATE, b"server": _SERVER}
# Names longer than this are classified on every response rather than remembered.
_REMEMBERED_NAME: Final = 64
_REMEMBERED_NAMES: Final = 1024


# Header name as the upstream spelled it -> its kind: one ``lower()`` per spelling, not per
# response. A plain dict: ``[]`` on a dict subclass takes a generic slot, six times the cost.
_kinds: Final[dict[bytes, int]] = {}


def _new_kind(name: bytes) -> int:
    """The kind of a spelling not in ``_kinds`` yet, remembered there. Bounded: past
    ``_REMEMBERED_NAMES`` spellings the table starts again."""
    lower = name.lower()
    kind = _DROPPED_KINDS.get(lower, _DROP) if lower in DROP_RESPONSE else _KEPT_KINDS.get(lower, _COPY)
    return remember(_kinds, name, kind, _REMEMBERED_NAMES, fits=len(name) <= _REMEMBERED_NAME)


class _LastHead:
    """The names of the last answer's headers, in order, and their kinds. An upstream answers
    with the same names in the same order time after time, and comparing a name's bytes with the
    last answer's costs a fraction of hashing a new bytes object for ``_kinds`` (some 430
    instructions a header). An answer that differs costs two list appends per header more, and
    becomes the one remembered if it has at most ``_REMEMBERED_HEAD`` short names, so what is
    held alive stays a few KiB."""

    __slots__ = ("kinds", "names")

    def __init__(self) -> None:
        self.names: list[bytes] = []
        self.kinds: list[int] = []


_last_head: Final = _LastHead()
_REMEMBERED_HEAD: Final = 32


# Body length -> its Content-Length line: answers of a service come in a limited set of sizes,
# and formatting the number cost as much as the rest of the head. Bounded like the tables of
# names and paths.
_LENGTH_LINES: Final[dict[int, bytes]] = {}
_REMEMBERED_LENGTHS: Final = 4096


def content_length_line(length: int) -> bytes:
    line = _LENGTH_LINES.get(length)
    if line is None:
        line = remember(_LENGTH_LINES, length, b"Content-Length: %d\r\n" % length, _REMEMBERED_LENGTHS)
    return line


def _unlisted_status_line(status: int) -> bytes:
    """The status line of an upstream's answer with a code Python does not list; llhttp
    accepts any three digits, but only 100 to 599 are status codes (RFC 9110 §15)."""
    if not 100 <= status <= 599:
        raise UpstreamProtocolError(f"upstream answered with status {status}")
    return status_line(status)


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


def _head(
    status: int, upstream_headers: list[tuple[bytes, bytes]], date: DateHeader
) -> tuple[list[bytes], bytes | None]:
    """The status line and the upstream's end-to-end headers (Date and Server added when it sent
    none), as parts to join; and the Content-Length it declared, if any. Raises
    ``UpstreamProtocolError`` for a transfer coding Shield does not decode.

    Framing and hop-by-hop headers of the upstream are dropped (``headers.DROP_RESPONSE`` and
    whatever its Connection field names).
    """
    parts = [_STATUS_LINES.get(status) or _unlisted_status_line(status)]
    declared: bytes | None = None
    named: bytes | None = None
    has_date = has_server = coded = False
    kinds = _kinds
    last = _last_head
    repeated = len(last.names) == len(upstream_headers)
    # This answer's names and kinds, made (and appended to) only once it differs from the last.
    if repeated:
        names, named_kinds = last.names, last.kinds
    else:
        names, named_kinds = [], []
    for index, (name, value) in enumerate(upstream_headers):
        if repeated and last.names[index] == name:
            kind = last.kinds[index]
        else:
            if repeated:
                repeated = False
                names, named_kinds = last.names[:index], last.kinds[:index]
            try:
                kind = kinds[name]
            except KeyError:
                kind = _new_kind(name)
            names.append(name)
            named_kinds.append(kind)
        if kind:
            if kind == _DATE:
                has_date = True
            elif kind == _SERVER:
                has_server = True
            else:
                if kind == _LENGTH:
                    declared = value
                elif kind == _CONNECTION:
                    named = value if named is None else named + b"," + value
                elif kind == _CODING:
                    # llhttp removed one chunked coding; any other (gzip, or chunked again in a
                    # second field) would reach the client undecoded, as if it were the content
                    # (RFC 9112 §6.1).
                    if coded or value.strip().lower() != b"chunked":
                        raise UpstreamProtocolError("upstream used a transfer coding besides chunked")
                    coded = True
                continue
        parts += (name, b": ", value, b"\r\n")
    if not repeated and len(names) <= _REMEMBERED_HEAD and all(len(n) <= _REMEMBERED_NAME for n in names):
        last.names, last.kinds = names, named_kinds
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
    return parts, declared


def response_parts(
    status: int,
    upstream_headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    head_request: bool,
    keep_alive: bool,
    date: DateHeader,
    extra: bytes = b"",
) -> tuple[list[bytes], bytes]:
    """The head of a complete response as parts to join (status line, filtered headers,
    Content-Length framing, the blank line), and the body as sent.

    HEAD answers and 204/304 carry no body; for HEAD the upstream's Content-Length is kept,
    since it describes the body a GET would get. ``extra`` is Shield's own header lines
    (``Name: value\\r\\n`` each), added as they are.
    """
    parts, declared = _head(status, upstream_headers, date)
    if head_request or status == 204 or status == 304:
        if head_request and declared is not None:
            parts.append(content_length_line(int(declared)))  # as digits, never 0005
        body = b""
    else:
        length = len(body)
        parts.append(_LENGTH_LINES.get(length) or content_length_line(length))
    if extra:
        parts.append(extra)
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return parts, body


def response_bytes(
    status: int,
    upstream_headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    head_request: bool,
    keep_alive: bool,
    date: DateHeader,
    extra: bytes = b"",
) -> bytes:
    """``response_parts`` as one piece, framed by Content-Length."""
    parts, sent = response_parts(
        status,
        upstream_headers,
        body,
        head_request=head_request,
        keep_alive=keep_alive,
        date=date,
        extra=extra,
    )
    parts.append(sent)
    return b"".join(parts)


def streamed_head(
    status: int,
    upstream_headers: list[tuple[bytes, bytes]],
    *,
    http10: bool,
    keep_alive: bool,
    date: DateHeader,
    extra: bytes = b"",
) -> tuple[bytes, bool, bool]:
    """The head of a response whose body follows as it arrives, whether that body goes chunked,
    and whether the connection stays open after it.

    Framed by the upstream's Content-Length when it gave one, else chunked, or for an HTTP/1.0
    client ended by closing the connection.
    """
    parts, declared = _head(status, upstream_headers, date)
    chunked = declared is None and not http10
    keep_alive = keep_alive and (declared is not None or chunked)
    if declared is not None:
        parts.append(content_length_line(int(declared)))
    elif chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if extra:
        parts.append(extra)
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), chunked, keep_alive


def switching_head(
    upstream_headers: list[tuple[bytes, bytes]], date: DateHeader, extra: bytes = b""
) -> bytes:
    """The head of the upstream's 101 for the client: its end-to-end headers, and the
    ``Upgrade`` it agreed to with ``Connection: Upgrade`` (hop-by-hop, so said again here)."""
    parts, _ = _head(101, upstream_headers, date)
    upgrade = next((value for name, value in upstream_headers if name.lower() == b"upgrade"), b"websocket")
    parts += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n", extra, b"\r\n")
    return b"".join(parts)

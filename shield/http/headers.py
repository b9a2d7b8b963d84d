"""Which headers cross Shield, in each direction (RFC 9110 §7.6). Pure: bytes in, bytes out.

Shield re-frames every message, so framing headers are never copied; hop-by-hop headers and any
header a Connection field names are dropped; headers that would let a client reroute a request
past per-route rules or pose as another client are stripped. Shield's own headers are added
after the filtering, so a client-named ``Connection: X-Forwarded-For`` cannot remove them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import quote

from shield.decide.remembered import remember

RawHeaders = Iterable[tuple[bytes, bytes]]

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Headers that rewrite the route or the method on many frameworks (IIS, Symfony, Rails, Laravel,
# Express method-override): a rule that closed /api/register would not see the real target.
REWRITE_HEADERS: Final = frozenset(
    {
        b"x-original-url",
        b"x-rewrite-url",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        b"x-forwarded-prefix",
        b"x-forwarded-path",
        b"x-forwarded-uri",
    }
)

# Client-address headers an application may trust. Shield sets X-Forwarded-For itself; the rest
# would let any client claim any address.
CLIENT_ADDRESS_HEADERS: Final = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"x-real-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"client-ip",
        b"x-originating-ip",
    }
)

# Who Shield saw (``forwarding.identity_headers``). Always stripped from clients, option on or
# off: an application reading them must only ever see values Shield wrote.
IDENTITY_HEADERS: Final = frozenset({b"x-shield-user", b"x-shield-client-ip", b"x-shield-authenticated"})

# Managed by Shield when it writes the upstream request: framing, Host, Via, Expect (Shield
# answers 100-continue itself, after its rules allowed the request) and X-Request-ID (the client's
# is passed on only when it is sane, see ``shield.http.request_id``).
_MANAGED_REQUEST: Final = frozenset({b"content-length", b"host", b"via", b"expect", b"x-request-id"})

_DROP_REQUEST: Final = HOP_BY_HOP | CLIENT_ADDRESS_HEADERS | IDENTITY_HEADERS | _MANAGED_REQUEST
_DROP_REQUEST_STRIP_REWRITE: Final = _DROP_REQUEST | REWRITE_HEADERS
DROP_RESPONSE: Final = HOP_BY_HOP | {b"content-length"}


def connection_tokens(headers: RawHeaders) -> frozenset[bytes]:
    """Lower-cased header names listed in every Connection field (which may repeat)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def _has_connection(headers: tuple[tuple[bytes, bytes], ...]) -> bool:
    return any(name.lower() == b"connection" for name, _ in headers)


def filter_request_headers(
    headers: tuple[tuple[bytes, bytes], ...], *, keep_rewrite_headers: bool = False
) -> list[tuple[bytes, bytes]]:
    """Headers of a client request that may go upstream, in their original order and case."""
    drop = _DROP_REQUEST if keep_rewrite_headers else _DROP_REQUEST_STRIP_REWRITE
    if _has_connection(headers):
        drop = drop | connection_tokens(headers)
    return [(name, value) for name, value in headers if name.lower() not in drop]


def filter_response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers of an upstream response that may go to the client: no framing, no hop-by-hop."""
    drop = DROP_RESPONSE
    if any(name.lower() == b"connection" for name, _ in headers):
        drop = drop | connection_tokens(headers)
    return [(name, value) for name, value in headers if name.lower() not in drop]


def _forwarded_node(ip: str) -> str:
    return f'"[{ip}]"' if ":" in ip else ip


def identity_lines(client_ip: str, user: str | None) -> bytes:
    """The X-Shield-* header lines telling the upstream who Shield saw. A user id is
    percent-encoded UTF-8, so no claim value can break the header (CR, LF, non-ASCII)."""
    lines = b"X-Shield-Client-IP: " + client_ip.encode("ascii", "replace") + b"\r\n"
    if user is None:
        return lines + b"X-Shield-Authenticated: false\r\n"
    return (
        lines
        + b"X-Shield-Authenticated: true\r\nX-Shield-User: "
        + quote(user, safe="!$&'()*+,-./:;=?@_~").encode("ascii")
        + b"\r\n"
    )


def _quoted_pair(text: str) -> str:
    # Inside a quoted-string (RFC 9110 §5.6.4) a client's '"' would end the value and let it
    # append its own for= to Shield's Forwarded element.
    return text.replace("\\", "\\\\").replace('"', '\\"')


# What ``RequestHeadBuilder.build`` does with a client header, by its name as sent.
# Each a Final of its own: mypyc makes a Final int a C constant, where a name unpacked from
# ``range`` is a module-dict lookup at every use (three per header on this path).
_COPY: Final = 0
_HOST: Final = 1
_VIA: Final = 2
_CONNECTION: Final = 3
_DROP: Final = 4
# Dropped headers Shield still reads, by their lower-cased name (the rest are just dropped).
_DROPPED_KINDS: Final = {b"host": _HOST, b"via": _VIA, b"connection": _CONNECTION}
# Client header names are remembered only while short and few: a client sending endless new
# names costs a table rebuild now and then, never memory.
_REMEMBERED_NAME: Final = 64
_REMEMBERED_NAMES: Final = 1024
_REMEMBERED_CLIENTS: Final = 4096
_REMEMBERED_CLIENT: Final = 128


class RequestHeadBuilder:
    """Builds the upstream request head in one pass over the client's raw headers.

    Configured once per config load; ``build`` runs per request and allocates little more than
    the list of byte pieces it joins.
    """

    __slots__ = (
        "_default_host",
        "_drop",
        "_for_lines",
        "_forwarded",
        "_host_override",
        "_kinds",
        "_proto",
        "_proto_line",
        "_via",
        "_via_line",
    )

    def __init__(
        self,
        *,
        proto: str,
        via: bytes,
        forwarded: bool,
        keep_rewrite_headers: bool,
        host_override: bytes | None,
        default_host: bytes,
    ) -> None:
        self._drop = _DROP_REQUEST if keep_rewrite_headers else _DROP_REQUEST_STRIP_REWRITE
        # Header name as the client spelled it -> its kind: one ``lower()`` per spelling, not per
        # request. A plain dict: ``[]`` on a dict subclass takes a generic slot, six times the cost.
        self._kinds: dict[bytes, int] = {}
        self._proto = proto
        self._proto_line = b"X-Forwarded-Proto: " + proto.encode() + b"\r\n"
        self._via = via
        self._via_line = b"Via: " + via + b"\r\n"
        self._forwarded = forwarded
        self._host_override = host_override
        self._default_host = default_host
        # X-Forwarded-For value -> its line and the X-Forwarded-Proto line, as bytes.
        self._for_lines: dict[str, bytes] = {}

    def build(
        self,
        method: bytes,
        target: bytes,
        raw: Sequence[tuple[bytes, bytes]],
        client_ip: str,
        framing: bytes,
        id_line: bytes = b"",
        who: bytes = b"",
    ) -> bytes:
        """The request line and headers, ending with the blank line; ``framing`` is
        ``Content-Length: n\\r\\n``, ``Transfer-Encoding: chunked\\r\\n`` or empty.
        ``client_ip`` is the X-Forwarded-For value: the client, or behind trusted proxies the
        chain from the client to the peer; ``who`` is Shield's identity header lines."""
        kinds = self._kinds
        host = via = None
        named: bytes | None = None
        # parts[4] becomes the Host value once the client's headers are read.
        parts = [method, b" ", target, b" HTTP/1.1\r\nHost: ", b"", b"\r\n"]
        for name, value in raw:
            try:
                kind = kinds[name]
            except KeyError:
                kind = self._new_kind(name)
            if kind:
                if kind == _HOST:
                    host = value
                elif kind == _VIA:
                    via = value if via is None else via + b", " + value
                elif kind == _CONNECTION:
                    named = value if named is None else named + b"," + value
                continue
            parts += (name, b": ", value, b"\r\n")
        if named is not None and named.lower() not in _PLAIN_CONNECTION:
            drop = self._drop
            tokens = connection_tokens(((b"connection", named),)) - drop
            if tokens:
                parts = parts[:6] + [
                    piece
                    for name, value in raw
                    if (lower := name.lower()) not in drop and lower not in tokens
                    for piece in (name, b": ", value, b"\r\n")
                ]
        parts[4] = self._host_override or host or self._default_host
        for_lines = self._for_lines.get(client_ip)
        if for_lines is None:
            for_lines = b"X-Forwarded-For: " + client_ip.encode() + b"\r\n" + self._proto_line
            remember(
                self._for_lines,
                client_ip,
                for_lines,
                _REMEMBERED_CLIENTS,
                fits=len(client_ip) <= _REMEMBERED_CLIENT,
            )
        parts.append(for_lines)
        if host is not None:
            parts += (b"X-Forwarded-Host: ", host, b"\r\n")
        if via:
            parts += (b"Via: ", via + b", " + self._via, b"\r\n")
        else:
            parts.append(self._via_line)
        if self._forwarded:
            *hops, last = client_ip.split(", ")
            forwarded = "".join(f"for={_forwarded_node(hop)}, " for hop in hops)
            forwarded += f"for={_forwarded_node(last)};proto={self._proto}"
            if host is not None:
                forwarded += f';host="{_quoted_pair(host.decode("latin-1"))}"'
            parts += (b"Forwarded: ", forwarded.encode("latin-1"), b"\r\n")
        parts += (id_line, who, framing, b"\r\n")
        return b"".join(parts)

    def _new_kind(self, name: bytes) -> int:
        """The kind of a spelling not in ``_kinds`` yet, remembered there. Bounded: past
        ``_REMEMBERED_NAMES`` spellings the table starts again."""
        lower = name.lower()
        kind = _DROPPED_KINDS.get(lower, _DROP) if lower in self._drop else _COPY
        return remember(self._kinds, name, kind, _REMEMBERED_NAMES, fits=len(name) <= _REMEMBERED_NAME)

    def forwarding_headers(
        self,
        raw: tuple[tuple[bytes, bytes], ...],
        client_ip: str,
        who: bytes = b"",
    ) -> list[tuple[bytes, bytes]]:
        """The headers ``build`` adds, as pairs (for the WebSocket handshake)."""
        head = self.build(b"GET", b"/", raw, client_ip, b"", b"", who)
        added = []
        for line in head.split(b"\r\n")[1:]:
            name, sep, value = line.partition(b": ")
            if sep and name.lower() in _ADDED:
                added.append((name, value))
        return added


_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close"})
_ADDED: Final = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via", b"forwarded"} | IDENTITY_HEADERS
)

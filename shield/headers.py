"""Which headers cross Shield, in each direction (RFC 9110 §7.6). Pure: bytes in, bytes out.

Shield re-frames every message, so framing headers are never copied; hop-by-hop headers and any
header a Connection field names are dropped; headers that would let a client reroute a request
past per-route rules or pose as another client are stripped. Shield's own headers are added
after the filtering, so a client-named ``Connection: X-Forwarded-For`` cannot remove them.
"""

from __future__ import annotations

from collections.abc import Iterable

RawHeaders = Iterable[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
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
REWRITE_HEADERS = frozenset(
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
CLIENT_ADDRESS_HEADERS = frozenset(
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

# Managed by Shield when it writes the upstream request: framing, Host, Via and Expect
# (Shield answers 100-continue itself, after its rules allowed the request).
_MANAGED_REQUEST = frozenset({b"content-length", b"host", b"via", b"expect"})

_DROP_REQUEST = HOP_BY_HOP | CLIENT_ADDRESS_HEADERS | _MANAGED_REQUEST
_DROP_REQUEST_KEEP_REWRITE = _DROP_REQUEST
_DROP_REQUEST_STRIP_REWRITE = _DROP_REQUEST | REWRITE_HEADERS
_DROP_RESPONSE = HOP_BY_HOP | {b"content-length"}


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
    drop = _DROP_REQUEST_KEEP_REWRITE if keep_rewrite_headers else _DROP_REQUEST_STRIP_REWRITE
    if _has_connection(headers):
        drop = drop | connection_tokens(headers)
    return [(name, value) for name, value in headers if name.lower() not in drop]


def filter_response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers of an upstream response that may go to the client: no framing, no hop-by-hop."""
    drop = _DROP_RESPONSE
    if any(name.lower() == b"connection" for name, _ in headers):
        drop = drop | connection_tokens(headers)
    return [(name, value) for name, value in headers if name.lower() not in drop]


def header_value(headers: RawHeaders, name: bytes) -> bytes | None:
    """The first value of ``name`` (lower-case) in raw headers, or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _forwarded_node(ip: str) -> str:
    return f'"[{ip}]"' if ":" in ip else ip


def forwarding_headers(
    *,
    client_ip: str,
    proto: str,
    host: bytes | None,
    via: bytes,
    inbound_via: bytes | None,
    forwarded: bool,
) -> list[tuple[bytes, bytes]]:
    """The headers Shield adds to every upstream request: X-Forwarded-*, Via, maybe Forwarded."""
    added = [
        (b"X-Forwarded-For", client_ip.encode()),
        (b"X-Forwarded-Proto", proto.encode()),
    ]
    if host is not None:
        added.append((b"X-Forwarded-Host", host))
    added.append((b"Via", inbound_via + b", " + via if inbound_via else via))
    if forwarded:
        value = f"for={_forwarded_node(client_ip)};proto={proto}"
        if host is not None:
            value += f';host="{host.decode("latin-1")}"'
        added.append((b"Forwarded", value.encode("latin-1")))
    return added

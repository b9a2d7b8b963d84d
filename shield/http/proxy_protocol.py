"""The PROXY protocol header (HAProxy, v1 text and v2 binary) a load balancer sends first. Pure.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt. The header carries the
client's address as the load balancer saw it; it is read only on listeners configured for it,
since on any other listener it would let a client name its own address.
"""

from __future__ import annotations

import ipaddress

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included (spec §2.1)
V2_MAX = 16 + 65535


class ProxyHeaderError(Exception):
    """The connection does not start with a valid PROXY header."""


def parse_proxy_header(data: bytes) -> tuple[int, tuple[str, int] | None] | None:
    """``(header length, (source address, port) or None)`` once ``data`` holds a whole header,
    None while more bytes are needed. The address is None for LOCAL (health checks) and
    UNKNOWN connections: the peer stays the load balancer itself."""
    if data[:1] == b"P":
        return _v1(data)
    if data[:1] == b"\r":
        return _v2(data)
    raise ProxyHeaderError("no PROXY protocol header")


def _v1(data: bytes) -> tuple[int, tuple[str, int] | None] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if not b"PROXY ".startswith(data[:6]) or len(data) >= V1_MAX:
            raise ProxyHeaderError("invalid PROXY v1 header")
        return None
    fields = data[:end].split(b" ")
    if fields[0] != b"PROXY" or len(fields) < 2:
        raise ProxyHeaderError("invalid PROXY v1 header")
    if fields[1] == b"UNKNOWN":
        return end + 2, None
    if fields[1] not in (b"TCP4", b"TCP6") or len(fields) != 6:
        raise ProxyHeaderError("invalid PROXY v1 header")
    try:
        source = ipaddress.ip_address(fields[2].decode("ascii"))
        ipaddress.ip_address(fields[3].decode("ascii"))
        port = int(fields[4])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProxyHeaderError("invalid address in PROXY v1 header") from exc
    if source.version != (4 if fields[1] == b"TCP4" else 6) or not 0 <= port <= 65535:
        raise ProxyHeaderError("invalid address in PROXY v1 header")
    return end + 2, (str(source), port)


def _v2(data: bytes) -> tuple[int, tuple[str, int] | None] | None:
    if len(data) < 16:
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyHeaderError("invalid PROXY v2 signature")
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("invalid PROXY v2 signature")
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2 or command > 1:
        raise ProxyHeaderError("unsupported PROXY v2 version or command")
    length = 16 + int.from_bytes(data[14:16], "big")
    if len(data) < length:
        return None
    if command == 0:  # LOCAL: the load balancer speaking for itself
        return length, None
    family = data[13] >> 4
    body = data[16:length]
    if family == 1 and len(body) >= 12:
        return length, (str(ipaddress.IPv4Address(body[0:4])), int.from_bytes(body[8:10], "big"))
    if family == 2 and len(body) >= 36:
        return length, (str(ipaddress.IPv6Address(body[0:16])), int.from_bytes(body[32:34], "big"))
    if family == 0:  # UNSPEC
        return length, None
    raise ProxyHeaderError("unsupported or truncated PROXY v2 address block")

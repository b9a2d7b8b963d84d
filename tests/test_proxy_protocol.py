"""PROXY protocol v1 and v2: the load balancer's header names the client, on listeners set for it."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.app.server import Shield
from shield.http.proxy_protocol import V2_SIGNATURE, ProxyHeaderError, parse_proxy_header
from tests.conftest import MakeShield

V1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 8080\r\n"


def v2(source: str, port: int = 51000, *, command: int = 1, tlv: bytes = b"") -> bytes:
    address = ipaddress.ip_address(source)
    if address.version == 4:
        family, block = 0x11, address.packed + bytes(4) + struct.pack("!HH", port, 8080)
    else:
        family, block = 0x21, address.packed + bytes(16) + struct.pack("!HH", port, 8080)
    block += tlv
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


def test_v1() -> None:
    assert parse_proxy_header(V1 + b"GET / HTTP/1.1\r\n") == (len(V1), ("203.0.113.7", 51000))
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n"
    assert parse_proxy_header(line) == (len(line), ("2001:db8::7", 51000))
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n") == (15, None)


def test_v2() -> None:
    header = v2("203.0.113.7", tlv=b"\x04\x00\x01x")  # a TLV after the addresses is skipped
    assert parse_proxy_header(header + b"GET") == (len(header), ("203.0.113.7", 51000))
    header = v2("2001:db8::7")
    assert parse_proxy_header(header) == (len(header), ("2001:db8::7", 51000))
    local = v2("192.0.2.9", command=0)
    assert parse_proxy_header(local) == (len(local), None)


@pytest.mark.parametrize("header", [V1, v2("203.0.113.7")])
def test_a_header_split_across_reads_waits_for_the_rest(header: bytes) -> None:
    for cut in range(1, len(header)):
        assert parse_proxy_header(header[:cut]) is None


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 203.0.113.7\r\n",
        b"PROXY TCP4 not-an-ip 192.0.2.1 1 2\r\n",
        b"PROXY TCP6 203.0.113.7 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2" + b" " * 120,
        V2_SIGNATURE[:11] + b"X",
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),  # version 3
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)


@pytest.fixture
async def echo(aiohttp_server: AiohttpServer) -> str:
    """An upstream that answers with the X-Forwarded-For it was sent."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("X-Forwarded-For", "-"))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def exchange(shield: Shield, *pieces: bytes) -> bytes:
    """Send ``pieces`` (with a pause between them) and read until the connection closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", shield.port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


REQUEST = b"GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("header", [V1, v2("203.0.113.7")], ids=["v1", "v2"])
async def test_the_proxy_header_names_the_client_end_to_end(
    echo: str, make_shield: MakeShield, header: bytes
) -> None:
    block = {"name": "blocked-net", "match": {"client_cidrs": ["198.51.100.0/24"]}, "action": "block"}
    shield = await make_shield(echo, listen={"proxy_protocol": True}, rules=[block])
    answer = await exchange(shield, header[:5], header[5:] + REQUEST)
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"\r\n\r\n203.0.113.7")
    blocked = await exchange(shield, b"PROXY TCP4 198.51.100.3 192.0.2.1 1 2\r\n" + REQUEST)
    assert blocked.startswith(b"HTTP/1.1 403")


async def test_a_connection_without_a_proxy_header_is_closed(echo: str, make_shield: MakeShield) -> None:
    shield = await make_shield(echo, listen={"proxy_protocol": True})
    assert await exchange(shield, REQUEST) == b""


async def test_a_local_command_keeps_the_balancer_as_the_peer(echo: str, make_shield: MakeShield) -> None:
    shield = await make_shield(echo, listen={"proxy_protocol": True})
    answer = await exchange(shield, v2("192.0.2.9", command=0) + REQUEST)
    assert answer.endswith(b"\r\n\r\n127.0.0.1")


async def test_without_the_option_a_proxy_header_is_not_believed(echo: str, make_shield: MakeShield) -> None:
    shield = await make_shield(echo)
    answer = await exchange(shield, V1 + REQUEST)
    assert b" 400 Bad Request" in answer.partition(b"\r\n")[0]
    assert b"203.0.113.7" not in answer


async def test_a_stalled_proxy_header_is_closed_after_the_header_timeout(
    echo: str, make_shield: MakeShield
) -> None:
    shield = await make_shield(echo, listen={"proxy_protocol": True}, timeouts={"client_header": 0.2})
    assert await exchange(shield, V1[:10]) == b""

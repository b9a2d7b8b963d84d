"""WebSocket upgrades through Shield: frames, close codes and the handshake, both directions."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.pytest_plugin import AiohttpServer

from shield.app.server import Shield
from tests.conftest import MakeShield


@dataclass
class Seen:
    """What the upstream's WebSocket handler saw."""

    handshakes: list[web.Request] = field(default_factory=list)
    messages: list[tuple[WSMsgType, str | bytes]] = field(default_factory=list)
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)


def echo_app(seen: Seen) -> web.Application:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        seen.handshakes.append(request)
        ws = web.WebSocketResponse(protocols=("chat.v2",))
        await ws.prepare(request)
        async for message in ws:
            seen.messages.append((message.type, message.data))
            if message.type is WSMsgType.TEXT and message.data == "close me":
                await ws.close(code=4002, message=b"upstream says bye")
            elif message.type is WSMsgType.TEXT:
                await ws.send_str(message.data.upper())
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        seen.close_code = ws.close_code
        seen.closed.set()
        return ws

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no sockets for you")

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/forbidden", refuse)
    return app


async def start(aiohttp_server: AiohttpServer, make_shield: MakeShield, seen: Seen) -> Shield:
    upstream = await aiohttp_server(echo_app(seen))
    return await make_shield(str(upstream.make_url("")).rstrip("/"))


def ws_url(shield: Shield, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{shield.port}{path}"


async def test_text_and_binary_frames_cross_both_ways(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    seen = Seen()
    shield = await start(aiohttp_server, make_shield, seen)
    async with aiohttp.ClientSession() as client, client.ws_connect(ws_url(shield)) as ws:
        await ws.send_str("hello")
        assert (await ws.receive_str(timeout=5)) == "HELLO"
        await ws.send_bytes(b"\x00\x01\x02\xff")
        assert (await ws.receive_bytes(timeout=5)) == b"\xff\x02\x01\x00"
        big = bytes(range(256)) * 4096  # 1 MiB in one frame
        await ws.send_bytes(big)
        assert (await ws.receive_bytes(timeout=5)) == big[::-1]
    assert seen.messages[:3] == [
        (WSMsgType.TEXT, "hello"),
        (WSMsgType.BINARY, b"\x00\x01\x02\xff"),
        (WSMsgType.BINARY, big),
    ]


async def test_a_ping_reaches_the_upstream_and_its_pong_comes_back(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    shield = await start(aiohttp_server, make_shield, Seen())
    async with aiohttp.ClientSession() as client, client.ws_connect(ws_url(shield), autoping=False) as ws:
        await ws.ping(b"are you there")
        message = await ws.receive(timeout=5)
        assert message.type is WSMsgType.PONG
        assert message.data == b"are you there"


async def test_a_client_close_code_reaches_the_upstream(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    seen = Seen()
    shield = await start(aiohttp_server, make_shield, seen)
    async with aiohttp.ClientSession() as client, client.ws_connect(ws_url(shield)) as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str(timeout=5)) == "HI"
        await ws.close(code=4001, message=b"client leaving")
    await asyncio.wait_for(seen.closed.wait(), 5)
    assert seen.close_code == 4001
    assert ws.close_code in (1000, 4001)  # the close reply is a normal one, not an error


async def test_an_upstream_close_code_reaches_the_client(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    seen = Seen()
    shield = await start(aiohttp_server, make_shield, seen)
    async with aiohttp.ClientSession() as client, client.ws_connect(ws_url(shield)) as ws:
        await ws.send_str("close me")
        message = await ws.receive(timeout=5)
        assert message.type is WSMsgType.CLOSE
        assert message.data == 4002
        assert message.extra == "upstream says bye"
    assert ws.close_code == 4002


async def test_a_close_without_a_code_crosses_as_it_was_sent(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    # Browsers send a Close frame with no status code on ws.close(). Shield passes the frames
    # of an accepted upgrade on as they are: the upstream reads a close without a code (no
    # protocol error), and the client gets the upstream's reply to it.
    seen = Seen()
    shield = await start(aiohttp_server, make_shield, seen)
    reader, writer = await asyncio.open_connection("127.0.0.1", shield.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
    writer.write(bytes([0x88, 0x80, 1, 2, 3, 4]))  # FIN + Close, masked, no payload
    reply = await asyncio.wait_for(reader.readexactly(4), 5)
    writer.close()
    await asyncio.wait_for(seen.closed.wait(), 5)
    assert [kind for kind, _ in seen.messages] == []  # no protocol error on the upstream's side
    assert seen.close_code == 0  # aiohttp's word for "the Close frame had no code"
    assert reply == bytes([0x88, 0x02]) + (1000).to_bytes(2, "big")


async def test_the_subprotocol_the_upstream_chose_is_echoed(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    seen = Seen()
    shield = await start(aiohttp_server, make_shield, seen)
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(ws_url(shield), protocols=("chat.v1", "chat.v2")) as ws,
    ):
        # The upstream speaks only chat.v2 of what the client offered; Shield passes that choice on.
        assert ws.protocol == "chat.v2"
        await ws.send_str("ok")
        assert (await ws.receive_str(timeout=5)) == "OK"
    offered = seen.handshakes[0].headers["Sec-WebSocket-Protocol"]
    assert [p.strip() for p in offered.split(",")] == ["chat.v1", "chat.v2"]

    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(ws_url(shield), protocols=("chat.v1",)) as ws,
    ):
        assert ws.protocol is None  # nothing in common: no subprotocol, as from the upstream itself

    async with aiohttp.ClientSession() as client, client.ws_connect(ws_url(shield)) as ws:
        assert ws.protocol is None


async def test_an_upstream_refusal_reaches_the_client_as_its_status(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    shield = await start(aiohttp_server, make_shield, Seen())
    async with aiohttp.ClientSession() as client:
        try:
            await client.ws_connect(ws_url(shield, "/forbidden"))
        except aiohttp.WSServerHandshakeError as error:
            assert error.status == 403
        else:
            raise AssertionError("the handshake succeeded")


async def test_an_upstream_that_is_down_answers_502(make_shield: MakeShield) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    shield = await make_shield(f"http://127.0.0.1:{port}")
    async with aiohttp.ClientSession() as client:
        try:
            await client.ws_connect(ws_url(shield))
        except aiohttp.WSServerHandshakeError as error:
            assert error.status == 502
        else:
            raise AssertionError("the handshake succeeded")


async def test_the_upstream_sees_the_real_client_address_only(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    seen = Seen()
    shield = await start(aiohttp_server, make_shield, seen)
    spoofed = {"X-Forwarded-For": "203.0.113.66", "X-Real-IP": "203.0.113.66"}
    async with aiohttp.ClientSession() as client, client.ws_connect(ws_url(shield), headers=spoofed) as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str(timeout=5)) == "HI"
    handshake = seen.handshakes[0].headers
    assert handshake.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert "X-Real-IP" not in handshake
    assert handshake["X-Forwarded-Proto"] == "http"


async def test_a_session_is_counted_but_its_length_is_not_a_request_duration(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    seen = Seen()
    shield = await start(aiohttp_server, make_shield, seen)
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(ws_url(shield)) as ws:
            await ws.send_str("hello")
            assert (await ws.receive_str(timeout=5)) == "HELLO"
        async with client.get(f"http://127.0.0.1:{shield.port}/forbidden") as response:
            assert response.status == 403
    await asyncio.wait_for(seen.closed.wait(), 5)
    labels = {"rule": "default", "action": "allow", "decision": "forwarded", "identity": "anonymous"}
    for _ in range(100):  # the session is recorded once both sides have closed
        if shield.registry.get_sample_value("shield_requests_total", labels) == 2:
            break
        await asyncio.sleep(0.02)
    assert shield.registry.get_sample_value("shield_requests_total", labels) == 2
    # Only the plain request is timed.
    assert shield.registry.get_sample_value("shield_request_duration_seconds_count", {"rule": "default"}) == 1

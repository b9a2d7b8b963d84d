"""TLS on both sides: Shield terminates it for clients and verifies an https upstream."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from aiohttp.test_utils import TestServer

from tests.conftest import MakeShield


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def write_cert_files(cert: trustme.LeafCert, folder: Path) -> tuple[str, str]:
    """The certificate chain and key of ``cert`` as PEM files, the way Shield's config takes them."""
    chain, key = folder / "cert.pem", folder / "key.pem"
    chain.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return str(chain), str(key)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def upstream_app(seen: list[web.Request]) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(text="hello over " + request.scheme)

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            await socket.send_str("echo: " + message.data)
        return socket

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/ws", ws)
    return app


async def https_upstream(
    aiohttp_server: AiohttpServer, ca: trustme.CA, seen: list[web.Request]
) -> TestServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return await aiohttp_server(upstream_app(seen), ssl=context)


async def test_the_tls_listener_serves_with_its_certificate(
    aiohttp_server: AiohttpServer, make_shield: MakeShield, ca: trustme.CA, tmp_path: Path
) -> None:
    seen: list[web.Request] = []
    upstream = await aiohttp_server(upstream_app(seen))
    cert, key = write_cert_files(ca.issue_cert("127.0.0.1", "localhost"), tmp_path)
    shield = await make_shield(
        str(upstream.make_url("")).rstrip("/"), listen={"tls": {"cert": cert, "key": key}}
    )
    url = f"https://127.0.0.1:{shield.port}/hello"

    async with aiohttp.ClientSession() as client:
        async with client.get(url, ssl=client_context(ca)) as response:
            assert response.status == 200
            assert await response.text() == "hello over http"
        # A client that does not trust the CA refuses the certificate: it really is the one served.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await client.get(url, ssl=client_context(trustme.CA()))
    assert len(seen) == 1
    assert seen[0].headers["X-Forwarded-Proto"] == "https"


async def test_an_https_upstream_is_verified_against_ca_file(
    aiohttp_server: AiohttpServer, make_shield: MakeShield, ca: trustme.CA, tmp_path: Path
) -> None:
    seen: list[web.Request] = []
    upstream = await https_upstream(aiohttp_server, ca, seen)
    ca_file = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    upstream_url = str(upstream.make_url("")).rstrip("/")
    assert upstream_url.startswith("https://127.0.0.1:")
    shield = await make_shield(upstream_url, upstream={"ca_file": str(ca_file)})

    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{shield.port}/hello") as response:
            assert response.status == 200
            assert await response.text() == "hello over https"
        async with client.ws_connect(f"ws://127.0.0.1:{shield.port}/ws") as ws:
            await ws.send_str("hi")
            assert await ws.receive_str(timeout=5) == "echo: hi"
    assert seen[0].headers["X-Forwarded-Proto"] == "http"


@pytest.mark.parametrize("trust", ["another CA", "system CAs"])
async def test_an_https_upstream_with_an_untrusted_certificate_answers_502(
    aiohttp_server: AiohttpServer, make_shield: MakeShield, ca: trustme.CA, tmp_path: Path, trust: str
) -> None:
    seen: list[web.Request] = []
    upstream = await https_upstream(aiohttp_server, ca, seen)
    settings: dict[str, str] = {}
    if trust == "another CA":
        ca_file = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(ca_file))
        settings["ca_file"] = str(ca_file)
    shield = await make_shield(str(upstream.make_url("")).rstrip("/"), upstream=settings)

    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{shield.port}/hello") as response:
            assert response.status == 502
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(f"ws://127.0.0.1:{shield.port}/ws")
        assert refused.value.status == 502
    assert seen == []

"""Per-client caps: one client cannot hold every connection, nor every upstream slot.

``limits.max_connections_per_client`` counts open connections by the address that connected
(a trusted proxy's are not counted: it carries many clients); past it a new connection is
closed at once. ``limits.max_requests_per_client`` counts requests forwarded and not yet
answered by the client the rules see (behind a trusted proxy, the one it names); past it the
answer is 429 with Retry-After. Both are counted in ``shield_client_limits``.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from shield.decide.client_address import ClientResolver
from shield.decide.client_caps import HeldPerClient, cap_of
from tests.conftest import MakeShield, scraped, serve, url_of
from tests.test_proxy_http import StartUpstream, proxied, raw_upstream

__all__ = ["raw_upstream"]  # the fixture, imported for this module's tests

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def test_a_cap_counts_each_client_apart_and_frees_what_ended() -> None:
    held = HeldPerClient(2)

    assert held.take("a") and held.take("a")
    assert not held.take("a")  # a third for the same client
    assert held.take("b")  # another client has its own two
    held.give_back("a")
    assert held.take("a")
    assert (held.held("a"), held.held("b")) == (2, 1)


def test_a_cap_keeps_no_entry_for_a_client_holding_nothing() -> None:
    held = HeldPerClient(1)
    for n in range(10_000):  # an attacker rotating addresses, each connecting once
        key = f"10.0.{n // 256}.{n % 256}"
        assert held.take(key)
        held.give_back(key)

    assert len(held) == 0


def test_a_cap_of_zero_is_no_cap() -> None:
    assert cap_of(0) is None
    assert cap_of(3) is not None
    with pytest.raises(ValueError, match="at least one"):
        HeldPerClient(0)


def test_connections_are_counted_by_client_key_and_trusted_proxies_not_at_all() -> None:
    resolver = ClientResolver(["10.0.0.0/8"], ipv6_prefix=64)

    assert resolver.connection_key("203.0.113.7") == "203.0.113.7"
    assert resolver.connection_key("10.1.2.3") is None  # a trusted proxy: many clients
    # Two addresses of one IPv6 /64 are one client, as for the throttles.
    assert resolver.connection_key("2001:db8::1") == resolver.connection_key("2001:db8::2")


async def open_and_ask(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A new connection that sends one GET; what it reads first (the status line, or b"")."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(GET)
    try:
        first = await asyncio.wait_for(reader.readline(), 2)
    except ConnectionError:
        first = b""
    return reader, writer, first


async def test_a_connection_past_max_connections_per_client_is_closed_and_counted(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(raw_upstream, make_shield, limits={"max_connections_per_client": 2})
    held = []
    for _ in range(2):
        reader, writer, first = await open_and_ask(shield.port)
        assert first.startswith(b"HTTP/1.1 200 ")
        held.append((reader, writer))

    _, third, first = await open_and_ask(shield.port)
    assert first == b""  # closed before it could ask
    third.close()
    assert (await scraped(shield, "shield_client_limits"))["connections_per_client"] == 1

    # Once one of the two closes, its slot is free again.
    held[0][1].close()
    await held[0][1].wait_closed()
    await asyncio.sleep(0.05)
    _, fourth, first = await open_and_ask(shield.port)
    assert first.startswith(b"HTTP/1.1 200 ")
    for _, writer in [held[1], (None, fourth)]:
        writer.close()


async def test_connections_from_a_trusted_proxy_are_not_capped(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(
        raw_upstream,
        make_shield,
        limits={"max_connections_per_client": 1},
        clients={"trusted_proxies": ["127.0.0.1/32"]},
    )
    writers = []
    for _ in range(4):
        _, writer, first = await open_and_ask(shield.port)
        assert first.startswith(b"HTTP/1.1 200 ")
        writers.append(writer)
    for writer in writers:
        writer.close()


async def test_a_client_past_max_requests_per_client_gets_429_and_others_are_served(
    aiohttp_server: AiohttpServer, make_shield: MakeShield
) -> None:
    release = asyncio.Event()

    async def upstream(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await release.wait()
        return web.Response(text="done")

    shield = await make_shield(
        await serve(aiohttp_server, upstream),
        limits={"max_requests_per_client": 2},
        clients={"trusted_proxies": ["127.0.0.1/32"]},  # the clients are who the proxy names
    )
    first_client = {"X-Forwarded-For": "203.0.113.7"}
    other_client = {"X-Forwarded-For": "203.0.113.8"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

        async def get(path: str, headers: dict[str, str]) -> tuple[int, str, str]:
            async with client.get(url_of(shield, path), headers=headers) as answer:
                return answer.status, answer.headers.get("Retry-After", ""), await answer.text()

        waiting = [asyncio.create_task(get("/slow", first_client)) for _ in range(2)]
        await asyncio.sleep(0.2)  # both are upstream now

        assert (await get("/fast", first_client))[:2] == (429, "1")
        assert await get("/fast", other_client) == (200, "", "done")
        release.set()
        assert [await task for task in waiting] == [(200, "", "done")] * 2
        assert (await get("/fast", first_client))[0] == 200  # its slots came back

    assert (await scraped(shield, "shield_client_limits"))["requests_per_client"] == 1
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{shield.admin_port}/metrics") as response,
    ):
        metrics = await response.text()
    # The refusal is a request too, with a decision of its own.
    assert (
        'shield_requests_total{action="allow",decision="capped",identity="anonymous",rule="default"} 1.0'
        in metrics
    )


async def test_the_client_limits_counter_names_every_kind_from_the_start(
    raw_upstream: StartUpstream, make_shield: MakeShield
) -> None:
    _, shield = await proxied(raw_upstream, make_shield)

    limits = await scraped(shield, "shield_client_limits")
    assert set(limits) == {
        "client_header",
        "header_total",
        "body_rate",
        "client_send",
        "read_rate",
        "connections_per_client",
        "requests_per_client",
    }
    assert set(limits.values()) == {0.0}

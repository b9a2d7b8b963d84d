"""Which address a request comes from: the peer unless a trusted proxy says otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from multidict import CIMultiDict, CIMultiDictProxy

from shield.decide.client_address import ClientResolver, parse_address
from tests.conftest import MakeShield, serve, url_of


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


XFF = "X-Forwarded-For"
LB = "10.0.0.2"


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_headers_say() -> None:
    resolver = ClientResolver()
    client = resolver.resolve("198.51.100.7", headers((XFF, "1.2.3.4"), ("Forwarded", "for=5.6.7.8")))
    assert (client.ip, client.key, client.forwarded_for) == ("198.51.100.7",) * 3


def test_an_untrusted_peer_cannot_use_the_header_either() -> None:
    resolver = ClientResolver(["10.0.0.0/8"])
    assert resolver.resolve("198.51.100.7", headers((XFF, "1.2.3.4"))).ip == "198.51.100.7"


@pytest.mark.parametrize(
    ("chain", "client"),
    [
        (["203.0.113.9"], "203.0.113.9"),
        # The left-most entry is whatever the client wrote: only the right-most untrusted counts.
        (["6.6.6.6, 203.0.113.9"], "203.0.113.9"),
        (["6.6.6.6, 203.0.113.9, 10.1.1.1"], "203.0.113.9"),
        # Several header lines are one list, in order.
        (["6.6.6.6", "203.0.113.9", "10.1.1.1, 10.2.2.2"], "203.0.113.9"),
        # Every hop trusted: the left-most.
        (["10.9.9.9, 10.1.1.1"], "10.9.9.9"),
        # A malformed hop ends the walk at the last good one.
        (["203.0.113.9, <script>, 10.1.1.1"], "10.1.1.1"),
        (["unknown"], LB),
        ([], LB),
        # Ports and brackets are tolerated.
        (["203.0.113.9:5555"], "203.0.113.9"),
        (["[2001:db8::9]:443"], "2001:db8::9"),
    ],
)
def test_behind_trusted_proxies_the_chain_is_walked_from_the_right(chain: list[str], client: str) -> None:
    resolver = ClientResolver(["10.0.0.0/8"], ipv6_prefix=128)
    assert resolver.resolve(LB, headers(*((XFF, value) for value in chain))).ip == client


def test_the_upstream_gets_the_chain_from_the_client_on_never_what_the_client_wrote() -> None:
    resolver = ClientResolver(["10.0.0.0/8"])
    client = resolver.resolve(LB, headers((XFF, "6.6.6.6, 203.0.113.9, 10.1.1.1")))
    assert client.forwarded_for == "203.0.113.9, 10.1.1.1, 10.0.0.2"


def test_forwarded_header_rfc7239() -> None:
    resolver = ClientResolver(["10.0.0.0/8"], header="Forwarded", ipv6_prefix=128)
    value = 'for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, for=10.1.1.1;by=10.0.0.2'
    client = resolver.resolve(LB, headers(("Forwarded", value), (XFF, "9.9.9.9")))
    assert client.ip == "2001:db8:cafe::17"
    # When Forwarded is the configured header, X-Forwarded-For is not believed.
    assert resolver.resolve(LB, headers((XFF, "9.9.9.9"))).ip == LB
    assert resolver.resolve(LB, headers(("Forwarded", "for=_hidden, for=10.1.1.1"))).ip == "10.1.1.1"


def test_ipv6_clients_share_a_key_per_prefix_and_keep_their_address() -> None:
    resolver = ClientResolver(ipv6_prefix=64)
    one = resolver.resolve("2001:db8:1:2::1", headers())
    other = resolver.resolve("2001:db8:1:2:ffff::9", headers())
    elsewhere = resolver.resolve("2001:db8:1:3::1", headers())
    assert one.ip == "2001:db8:1:2::1"
    assert one.key == other.key == "2001:db8:1:2::/64"
    assert elsewhere.key != one.key
    assert resolver.resolve("192.0.2.1", headers()).key == "192.0.2.1"
    assert ClientResolver(ipv6_prefix=128).resolve("2001:db8::1", headers()).key == "2001:db8::1"


def test_ipv4_mapped_addresses_are_plain_ipv4() -> None:
    resolver = ClientResolver(["10.0.0.0/8"])
    assert resolver.resolve("::ffff:192.0.2.1", headers()).ip == "192.0.2.1"
    # A mapped trusted proxy is trusted, and mapped hops are unwrapped too.
    assert resolver.resolve("::ffff:10.0.0.2", headers((XFF, "::ffff:203.0.113.9"))).ip == "203.0.113.9"
    assert str(parse_address("::FFFF:C000:0201")) == "192.0.2.1"
    assert parse_address("fe80::1%eth0") is None


def test_a_peer_is_classified_once() -> None:
    resolver = ClientResolver(["10.0.0.0/8"])
    first = resolver.resolve("198.51.100.7", headers())
    assert resolver.resolve("198.51.100.7", headers((XFF, "1.1.1.1"))) is first


@dataclass
class Seen:
    url: str = ""
    forwarded_for: list[str | None] = field(default_factory=list)


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> AsyncIterator[Seen]:
    seen = Seen()

    async def handler(request: web.Request) -> web.Response:
        if request.method != "HEAD":
            seen.forwarded_for.append(request.headers.get(XFF))
        return web.Response(text="ok")

    seen.url = await serve(aiohttp_server, handler)
    yield seen


PER_IP = {"name": "per-ip", "action": "throttle", "limit": "3/minute", "key": "ip"}


async def test_a_spoofed_x_forwarded_for_rotating_per_request_does_not_evade_a_per_ip_throttle(
    upstream: Seen, make_shield: MakeShield
) -> None:
    shield = await make_shield(upstream.url, rules=[PER_IP])
    statuses = []
    async with aiohttp.ClientSession() as session:
        for n in range(6):
            spoof = {XFF: f"203.0.113.{n}", "Forwarded": f"for=198.51.100.{n}", "X-Real-IP": f"192.0.2.{n}"}
            async with session.get(url_of(shield, "/x"), headers=spoof) as response:
                statuses.append(response.status)
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert upstream.forwarded_for == ["127.0.0.1"] * 3


async def test_behind_a_trusted_proxy_each_client_has_its_own_bucket(
    upstream: Seen, make_shield: MakeShield
) -> None:
    shield = await make_shield(upstream.url, rules=[PER_IP], clients={"trusted_proxies": ["127.0.0.0/8"]})
    statuses = []
    async with aiohttp.ClientSession() as session:
        for n in (1, 1, 1, 1, 2):
            # A client's own left-most entry changes nothing: the proxy appended the real one.
            chain = {XFF: f"6.6.6.{n * 10 + len(statuses)}, 203.0.113.{n}"}
            async with session.get(url_of(shield, "/x"), headers=chain) as response:
                statuses.append(response.status)
    assert statuses == [200, 200, 200, 429, 200]
    assert upstream.forwarded_for[-1] == "203.0.113.2, 127.0.0.1"


async def test_client_cidr_rules_see_the_resolved_client(upstream: Seen, make_shield: MakeShield) -> None:
    rule = {"name": "office", "match": {"client_cidrs": ["203.0.113.0/24"]}, "action": "block"}
    trusting = await make_shield(upstream.url, rules=[rule], clients={"trusted_proxies": ["127.0.0.1/32"]})
    direct = await make_shield(upstream.url, rules=[rule])
    async with aiohttp.ClientSession() as session:
        async with session.get(url_of(trusting, "/"), headers={XFF: "203.0.113.5"}) as response:
            assert response.status == 403
        async with session.get(url_of(direct, "/"), headers={XFF: "203.0.113.5"}) as response:
            assert response.status == 200

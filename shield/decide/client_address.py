"""Which address a request comes from: the TCP peer, or what trusted proxies say. Pure.

The peer address is the only fact a client cannot forge. X-Forwarded-For and Forwarded are
believed only when the peer is a listed trusted proxy, and then walked from the right, skipping
trusted hops: the first untrusted address is the client (nginx ``real_ip_recursive on``). Taking
the left-most entry instead would let any client pick its address per request and walk past a
per-IP throttle.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final, Literal

from multidict import MultiMapping

from shield.decide.remembered import remember

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ForwardedHeader = Literal["X-Forwarded-For", "Forwarded"]

# Distinct peers remembered; past this the memory is dropped and rebuilt (cheap, and rare).
PEER_CACHE_SIZE: Final = 8192


class Client:
    """Where a request comes from. ``key`` is the throttle key (an IPv6 client's prefix);
    ``forwarded_for`` is the X-Forwarded-For value Shield sends upstream."""

    __slots__ = ("forwarded_for", "ip", "key", "upstream", "via_proxy")

    def __init__(self, ip: str, key: str, forwarded_for: str, via_proxy: bool = False) -> None:
        self.ip = ip
        self.key = key
        self.forwarded_for = forwarded_for
        self.via_proxy = via_proxy
        # (X-Forwarded-For, extra header lines) as the proxy takes them; built once per client.
        self.upstream = (forwarded_for, b"")

    def __repr__(self) -> str:
        return f"Client({self.ip!r}, key={self.key!r}, forwarded_for={self.forwarded_for!r})"


def parse_address(text: str) -> Address | None:
    """An address as it appears in a header or a peer name, IPv4-mapped IPv6 unwrapped.

    Accepts ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]`` and
    ``[2001:db8::1]:80``; anything else (``unknown``, ``_hidden``, junk) is None.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:  # a zone id names a local interface: not a client
            return None
    return address


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` node of each element of an RFC 7239 Forwarded field, in order (§4, §6)."""
    nodes = []
    for element in value.split(","):
        node = ""  # an element without for= is an unknown hop
        for pair in element.split(";"):
            name, _, text = pair.partition("=")
            if name.strip().lower() == "for":
                node = text.strip().strip('"')
        nodes.append(node)
    return nodes


class ClientResolver:
    """Resolves ``Client`` values from the peer and, behind trusted proxies, the chain."""

    __slots__ = ("_chains", "_header", "_hops", "_peers", "_prefix", "_trusted", "_trusted_peers")

    def __init__(
        self,
        trusted_proxies: Sequence[str] = (),
        *,
        ipv6_prefix: int = 128,
        header: ForwardedHeader = "X-Forwarded-For",
    ) -> None:
        self._trusted: tuple[Network, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies
        )
        self._prefix = ipv6_prefix
        self._header = header
        # Peer text -> the Client it is, for peers that are not trusted proxies (the common
        # case, and the whole answer for them); trusted peers go to the other set.
        self._peers: dict[str, Client] = {}
        self._trusted_peers: dict[str, bool] = {}  # peers known to be trusted proxies
        # Hop text -> (address text, throttle key, is trusted), or None when it is no address:
        # parsing an address costs microseconds, and the same proxies and clients appear in
        # chain after chain.
        self._hops: dict[str, tuple[str, str, bool] | None] = {}
        # (peer, every line of the header) -> the Client walked from them.
        self._chains: dict[tuple[str, ...], Client] = {}

    def is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self._trusted if network.version == address.version)

    def key(self, address: Address) -> str:
        """The throttle key of an address: an IPv6 client is keyed by its prefix."""
        if isinstance(address, ipaddress.IPv6Address) and self._prefix < 128:
            network = ipaddress.IPv6Network((address, self._prefix), strict=False)
            return f"{network.network_address}/{self._prefix}"
        return str(address)

    def connection_key(self, peer: str) -> str | None:
        """What a connection from ``peer`` counts under for ``max_connections_per_client``:
        the key the throttles use (an IPv6 client's prefix), or None for a trusted proxy, whose
        connections carry many clients."""
        client = self._peers.get(peer)
        if client is not None:
            return client.key
        if peer in self._trusted_peers:
            return None
        address = parse_address(peer)
        if address is None:
            return peer
        if self._trusted and self.is_trusted(address):
            return None
        return self.key(address)

    def resolve(self, peer: str, headers: MultiMapping[str]) -> Client:
        client = self._peers.get(peer)
        if client is not None:
            return client
        if peer in self._trusted_peers:
            return self._walk(peer, headers)
        address = parse_address(peer)
        if address is not None and self._trusted and self.is_trusted(address):
            remember(self._trusted_peers, peer, True, PEER_CACHE_SIZE)
            return self._walk(peer, headers)
        if address is None:
            client = Client(peer, peer, peer)
        else:
            text = str(address)
            client = Client(text, self.key(address), text)
        return remember(self._peers, peer, client, PEER_CACHE_SIZE)

    def _hop(self, text: str) -> tuple[str, str, bool] | None:
        hops = self._hops
        try:
            return hops[text]
        except KeyError:
            pass
        address = parse_address(text)
        hop = None if address is None else (str(address), self.key(address), self.is_trusted(address))
        return remember(hops, text, hop, PEER_CACHE_SIZE)

    def _chain(self, lines: list[str]) -> list[str]:
        if self._header == "Forwarded":
            return [node for value in lines for node in _forwarded_for(value)]
        return [hop for value in lines for hop in value.split(",")]

    def _walk(self, peer: str, headers: MultiMapping[str]) -> Client:
        # Every line of the field, in order: reading only the first (or last) line is a known
        # way to make a limiter and an application disagree about the client.
        lines = headers.getall(self._header, [])
        memo = (peer, *lines)
        client = self._chains.get(memo)
        if client is None:
            client = remember(self._chains, memo, self._walk_chain(peer, lines), PEER_CACHE_SIZE)
        return client

    def _walk_chain(self, peer: str, lines: list[str]) -> Client:
        hop = self._hop(peer)
        assert hop is not None  # only parseable peers are found trusted
        client, key, _ = hop
        kept = [client]  # the chain sent upstream, right to left
        for text in reversed(self._chain(lines)):
            hop = self._hop(text.strip())
            if hop is None:
                break  # a malformed hop ends the walk: the last good hop is the client
            client, key, trusted = hop
            kept.append(client)
            if not trusted:
                break
        return Client(client, key, ", ".join(reversed(kept)), via_proxy=True)

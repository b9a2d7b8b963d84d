"""Which network a client address is in and which lists hold it, remembered per address. Pure.

The network databases and address lists are read elsewhere (``shield.feeds``); here they are
plain lookups handed in, and ``Directory.facts`` puts their answers together once per address:
a client seen before costs one dictionary lookup, whatever the databases and lists hold. The
table is bounded (``remember``): an attacker rotating through a million addresses costs a
rebuild now and then, never memory. When a source changes, ``forget`` drops what was found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, NamedTuple

from shield.decide.remembered import remember

# Addresses remembered; past this the table starts again (the common clients are back at once).
KNOWN_ADDRESSES: Final = 65536

AsnLookup = Callable[[str], "tuple[int, str | None] | None"]
CountryLookup = Callable[[str], "str | None"]
Membership = Callable[[str], bool]


class NetworkFacts(NamedTuple):
    """What the sources say of one address; None where a source does not know it (or is not set)."""

    asn: int | None
    organization: str | None
    country: str | None
    lists: frozenset[str]

    def describe(self) -> str:
        """One line for ``shield explain``: 'AS64500 EXAMPLE-HOSTING, country DE, lists: tor'."""
        parts = [
            f"AS{self.asn}" + (f" {self.organization}" if self.organization else "")
            if self.asn is not None
            else "ASN unknown",
            f"country {self.country}" if self.country else "country unknown",
        ]
        if self.lists:
            parts.append("lists: " + ", ".join(sorted(self.lists)))
        return ", ".join(parts)


UNKNOWN: Final = NetworkFacts(None, None, None, frozenset())


class Directory:
    """``facts`` of an address from the lookups it was given, each address worked out once."""

    __slots__ = ("_asn", "_country", "_known", "_lists", "configured")

    def __init__(
        self,
        asn: AsnLookup | None = None,
        country: CountryLookup | None = None,
        lists: Mapping[str, Membership] | None = None,
    ) -> None:
        self._asn = asn
        self._country = country
        self._lists = tuple((lists or {}).items())
        self._known: dict[str, NetworkFacts] = {}
        # Whether any source was given (else every address is ``UNKNOWN``).
        self.configured = asn is not None or country is not None or bool(self._lists)

    def facts(self, ip: str) -> NetworkFacts:
        facts = self._known.get(ip)
        if facts is None:
            facts = remember(self._known, ip, self._look_up(ip), KNOWN_ADDRESSES, fits=len(ip) <= 45)
        return facts

    def forget(self) -> None:
        """A source changed: work every address out again."""
        self._known = {}

    def _look_up(self, ip: str) -> NetworkFacts:
        found = self._asn(ip) if self._asn is not None else None
        country = self._country(ip) if self._country is not None else None
        lists = frozenset(name for name, holds in self._lists if holds(ip))
        if found is None and country is None and not lists:
            return UNKNOWN
        asn, organization = found if found is not None else (None, None)
        return NetworkFacts(asn, organization, country, lists)


NO_NETWORKS: Final = Directory()

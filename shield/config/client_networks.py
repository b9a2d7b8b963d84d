"""The ``geo:`` and ``lists:`` sections: which network a client is in, and which lists hold it.

``geo`` names MaxMind-format databases (GeoLite2-ASN, GeoLite2-Country, or any ``.mmdb`` with
the same fields); ``lists`` names files of addresses and CIDRs. Rules test both (``asns``,
``countries``, ``client_lists`` and their ``not_`` forms) and throttles key on ``asn`` and
``country``; ``shield.config.lint`` checks that what a rule names is configured here.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from shield.config.base import Section

LIST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Geo(Section):
    asn_db: str | None = Field(
        None,
        description="A MaxMind-format ASN database (GeoLite2-ASN.mmdb): autonomous_system_number "
        "and autonomous_system_organization by address. Re-read when the file changes.",
    )
    country_db: str | None = Field(
        None,
        description="A MaxMind-format country database (GeoLite2-Country.mmdb, or a City one): "
        "country.iso_code by address (registered_country where country is missing). Re-read when "
        "the file changes.",
    )


class AddressList(Section):
    file: str = Field(
        description="One address or CIDR per line (IPv4 or IPv6), '#' starts a comment. Re-read when "
        "the file changes; a file with a bad line is refused (file:line: ...) and the last good "
        "list stays in force."
    )


def check_list_names(value: dict[str, AddressList]) -> dict[str, AddressList]:
    for name in value:
        if not LIST_NAME.fullmatch(name):
            raise ValueError(f"list name {name!r}: 1-64 letters, digits, '_', '.' or '-'")
    return value


def _countries(value: list[str] | None) -> list[str] | None:
    for code in value or ():
        if not re.fullmatch(r"[A-Za-z]{2}", code):
            raise ValueError(f"invalid country {code!r}: write ISO 3166-1 alpha-2 codes such as DE, US")
    return [code.upper() for code in value] if value is not None else None


class NetworkMatch(Section):
    """The network conditions of a rule's ``match:`` (mixed into ``Match``)."""

    asns: list[int] | None = Field(
        None, min_length=1, description="The client's autonomous system is one of these (needs geo.asn_db)."
    )
    not_asns: list[int] | None = Field(
        None,
        min_length=1,
        description="The client's autonomous system is none of these, or unknown (needs geo.asn_db).",
    )
    countries: list[str] | None = Field(
        None,
        min_length=1,
        description="The client's country is one of these ISO codes, e.g. [DE, FR] (needs geo.country_db).",
    )
    not_countries: list[str] | None = Field(
        None,
        min_length=1,
        description="The client's country is none of these, or unknown (needs geo.country_db).",
    )
    client_lists: list[str] | None = Field(
        None, min_length=1, description="The client's address is on one of these lists (lists:)."
    )
    not_client_lists: list[str] | None = Field(
        None, min_length=1, description="The client's address is on none of these lists (lists:)."
    )

    _check_countries = field_validator("countries", "not_countries")(_countries)

    @field_validator("asns", "not_asns")
    @classmethod
    def _asns(cls, value: list[int] | None) -> list[int] | None:
        for number in value or ():
            if not 0 < number < 2**32:
                raise ValueError(f"invalid ASN {number}: an AS number is 1 to 4294967295")
        return value

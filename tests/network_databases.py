"""Small MaxMind-format databases written at test time with mmdb-writer: nothing is downloaded.

The networks are from the documentation ranges (RFC 5737, RFC 3849) and the private-use AS
numbers (RFC 6996), so no test names a real provider.
"""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

# network -> (ASN, organization, country)
NETWORKS: dict[str, tuple[int, str, str]] = {
    "203.0.113.0/24": (64500, "EXAMPLE-HOSTING", "DE"),
    "198.51.100.0/24": (64501, "OTHER-CLOUD", "FR"),
    "192.0.2.0/25": (64502, "SMALL-ISP", "US"),
    "2001:db8::/32": (64500, "EXAMPLE-HOSTING", "DE"),
}


def write_asn_db(path: Path, networks: dict[str, tuple[int, str, str]] = NETWORKS) -> Path:
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    for network, (asn, organization, _) in networks.items():
        writer.insert_network(
            IPSet([network]),
            {"autonomous_system_number": asn, "autonomous_system_organization": organization},
        )
    writer.to_db_file(str(path))
    return path


def write_country_db(path: Path, networks: dict[str, tuple[int, str, str]] = NETWORKS) -> Path:
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    for network, (_, _, country) in networks.items():
        writer.insert_network(IPSet([network]), {"country": {"iso_code": country, "names": {"en": country}}})
    writer.to_db_file(str(path))
    return path

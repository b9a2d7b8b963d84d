"""Rules on the client's network: ASN and country from MaxMind-format databases, per-ASN and
per-country throttles, and what ``shield explain`` says of an address."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shield.app.reload import Runtime, build_runtime
from shield.config.loader import parse_config
from shield.decide.decision import Blocked, Decision, Forward, Throttle
from shield.feeds.geo import FeedError, GeoDatabase
from shield.ops.explain import explained
from tests.conftest import MakeShield, url_of
from tests.network_databases import NETWORKS, write_asn_db, write_country_db

HOSTING = "203.0.113.7"  # AS64500 EXAMPLE-HOSTING, DE
HOSTING_TOO = "203.0.113.200"
CLOUD = "198.51.100.9"  # AS64501 OTHER-CLOUD, FR
ISP = "192.0.2.10"  # AS64502 SMALL-ISP, US
NOWHERE = "192.0.2.200"  # in no database
HOSTING_V6 = "2001:db8::5"  # AS64500, DE


@pytest.fixture
def databases(tmp_path: Path) -> tuple[Path, Path]:
    return write_asn_db(tmp_path / "asn.mmdb"), write_country_db(tmp_path / "country.mmdb")


def runtime(databases: tuple[Path, Path], rules: str) -> Runtime:
    asn, country = databases
    text = f"upstream: http://127.0.0.1:1\ngeo: {{ asn_db: {asn}, country_db: {country} }}\nrules:\n{rules}"
    return build_runtime(parse_config(text, "shield.yaml"), text)


def decided(runtime: Runtime, client_ip: str, path: str = "/signup") -> tuple[list[str], Decision | None]:
    return explained(runtime.config, "POST", path, [], client_ip, policy=runtime.policy)


def rule_of(decision: Decision | None) -> str | None:
    rule = getattr(decision, "rule", None)
    return None if rule is None else str(rule.name)


def test_the_database_gives_asn_organization_and_country(databases: tuple[Path, Path]) -> None:
    asn, country = (GeoDatabase(str(path)) for path in databases)
    assert asn.asn(HOSTING) == (64500, "EXAMPLE-HOSTING")
    assert asn.asn(HOSTING_V6) == (64500, "EXAMPLE-HOSTING")
    assert country.country(CLOUD) == "FR"
    assert asn.asn(NOWHERE) is None and country.country(NOWHERE) is None
    assert asn.asn("unknown") is None  # what a proxy names a hidden client: no lookup error


def test_a_file_that_is_no_database_is_refused_with_its_path(tmp_path: Path) -> None:
    junk = tmp_path / "asn.mmdb"
    junk.write_bytes(b"not a database")
    with pytest.raises(FeedError, match=str(junk)):
        GeoDatabase(str(junk))


BLOCK_HOSTING = """\
  - name: hosting-signups
    match: { paths: [/signup], asns: [64500, 64501] }
    action: block
"""


def test_asns_match_every_address_of_the_listed_networks(databases: tuple[Path, Path]) -> None:
    rules = runtime(databases, BLOCK_HOSTING)
    for address in (HOSTING, HOSTING_TOO, HOSTING_V6, CLOUD):
        assert isinstance(decided(rules, address)[1], Blocked), address
    for address in (ISP, NOWHERE):
        assert isinstance(decided(rules, address)[1], Forward), address
    assert isinstance(decided(rules, HOSTING, "/login")[1], Forward)  # the route still counts


def test_not_asns_and_not_countries_hold_for_unknown_addresses(databases: tuple[Path, Path]) -> None:
    rules = runtime(
        databases,
        """\
  - name: only-from-home-networks
    match: { not_asns: [64502], not_countries: [US] }
    action: block
""",
    )
    assert isinstance(decided(rules, HOSTING)[1], Blocked)
    assert isinstance(decided(rules, NOWHERE)[1], Blocked)  # in no ASN: "not in 64502" holds
    assert isinstance(decided(rules, ISP)[1], Forward)


def test_countries_are_iso_codes_in_any_case(databases: tuple[Path, Path]) -> None:
    rules = runtime(
        databases,
        """\
  - name: not-served-here
    match: { countries: [fr, us] }
    action: block
""",
    )
    assert [isinstance(decided(rules, ip)[1], Blocked) for ip in (HOSTING, CLOUD, ISP, NOWHERE)] == [
        False,
        True,
        True,
        False,
    ]


def throttle_keys(rules: Runtime, *addresses: str) -> list[str]:
    keys = []
    for address in addresses:
        decision = decided(rules, address)[1]
        assert isinstance(decision, Throttle)
        keys.append(decision.rule.state_key(_view(rules, address)))
    return keys


def _view(rules: Runtime, address: str) -> Any:
    from shield.decide.identity import ANONYMOUS
    from shield.decide.policy import RequestView

    return RequestView("POST", "/signup", "localhost", {}, "", address, ANONYMOUS)  # type: ignore[arg-type]


def test_a_per_asn_throttle_puts_a_whole_provider_in_one_bucket(databases: tuple[Path, Path]) -> None:
    rules = runtime(
        databases,
        """\
  - name: signups-per-network
    match: { paths: [/signup] }
    action: throttle
    limit: 10/minute
    key: [asn, route]
""",
    )
    hosting, hosting_too, v6, cloud, nowhere, nowhere_too = throttle_keys(
        rules, HOSTING, HOSTING_TOO, HOSTING_V6, CLOUD, NOWHERE, "192.0.2.201"
    )
    assert hosting == hosting_too == v6
    assert cloud != hosting
    # An address in no ASN falls back to its own bucket, as a missing header or user does.
    assert nowhere != nowhere_too and NOWHERE in nowhere


def test_a_per_country_key(databases: tuple[Path, Path]) -> None:
    rules = runtime(
        databases,
        """\
  - name: signups-per-country
    action: throttle
    limit: 10/minute
    key: country
""",
    )
    hosting, v6, cloud = throttle_keys(rules, HOSTING, HOSTING_V6, CLOUD)
    assert hosting == v6 != cloud


def test_explain_says_which_network_it_found(databases: tuple[Path, Path]) -> None:
    rules = runtime(databases, BLOCK_HOSTING)
    lines, _ = decided(rules, HOSTING)
    assert "network:  AS64500 EXAMPLE-HOSTING, country DE" in lines
    lines, _ = decided(rules, NOWHERE)
    assert "network:  ASN unknown, country unknown" in lines
    why = next(line for line in decided(rules, ISP)[0] if "hosting-signups" in line)
    assert "AS64502 SMALL-ISP" in why and "64500" in why


def test_a_rule_on_asns_without_a_database_is_refused_at_its_line() -> None:
    from shield.errors import ConfigError

    text = "upstream: http://127.0.0.1:1\nrules:\n" + BLOCK_HOSTING
    with pytest.raises(
        ConfigError, match=r"shield.yaml:4:\d+: rules\[1\] .hosting-signups..match.asns: needs geo.asn_db"
    ):
        parse_config(text, "shield.yaml")


XFF = "X-Forwarded-For"


async def test_a_per_asn_limit_holds_across_rotating_addresses_and_follows_a_new_database(
    databases: tuple[Path, Path], tmp_path: Path, upstream_url: str, make_shield: MakeShield
) -> None:
    asn_db, country_db = databases
    shield = await make_shield(
        upstream_url,
        clients={"trusted_proxies": ["127.0.0.1/32"]},
        geo={"asn_db": str(asn_db), "country_db": str(country_db)},
        rules=[
            {
                "name": "signups-per-network",
                "match": {"paths": ["/signup"]},
                "action": "throttle",
                "limit": "2/minute",
                "key": ["asn", "route"],
            }
        ],
    )

    async def signup(client: aiohttp.ClientSession, address: str) -> int:
        async with client.post(url_of(shield, "/signup"), headers={XFF: address}) as response:
            return response.status

    async with aiohttp.ClientSession() as client:
        # Three addresses of one provider share its two requests a minute; another provider's do not.
        assert [await signup(client, f"203.0.113.{n}") for n in (1, 2, 3)] == [200, 200, 429]
        assert await signup(client, CLOUD) == 200
        # Addresses in no network each have their own bucket...
        assert [await signup(client, "192.0.2.130") for _ in range(2)] == [200, 200]
        # ... until the database, rewritten in place (cp over it), gives their network to
        # AS64500, whose bucket is empty: the next watch of the files sees it.
        grown = dict(NETWORKS, **{"192.0.2.128/25": (64500, "EXAMPLE-HOSTING", "DE")})
        shutil.copyfile(write_asn_db(tmp_path / "next.mmdb", grown), asn_db)
        for attempt in range(50):
            if await signup(client, f"192.0.2.{140 + attempt}") == 429:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the rewritten database was not picked up")


# Address lists: one address or CIDR per line, '#' comments; the structure itself is tested in
# tests/test_address_set.py, the rules and reloads here.


def listed_runtime(tmp_path: Path, rules: str, **lists: str) -> Runtime:
    entries = []
    for name, text in lists.items():
        path = tmp_path / f"{name}.txt"
        path.write_text(text)
        entries.append(f"  {name}: {{ file: {path} }}")
    text = "upstream: http://127.0.0.1:1\nlists:\n" + "\n".join(entries) + f"\nrules:\n{rules}"
    return build_runtime(parse_config(text, "shield.yaml"), text)


def test_client_lists_and_not_client_lists(tmp_path: Path) -> None:
    rules = listed_runtime(
        tmp_path,
        """\
  - name: partners-pass
    match: { client_lists: [partners] }
    action: allow
  - name: listed-abusers
    match: { client_lists: [abusers, tor] }
    action: block
  - name: signup-from-unlisted-only
    match: { paths: [/signup], not_client_lists: [customers] }
    action: block
""",
        partners="192.0.2.1  # the partner's gateway\n",
        abusers="# from the last incident\n203.0.113.0/24\n2001:db8:bad::/48\n",
        tor="198.51.100.7\n",
        customers="192.0.2.0/24\n",
    )
    assert rule_of(decided(rules, "192.0.2.1")[1]) == "partners-pass"
    assert rule_of(decided(rules, "203.0.113.99")[1]) == "listed-abusers"
    assert rule_of(decided(rules, "2001:db8:bad:1::1")[1]) == "listed-abusers"
    assert rule_of(decided(rules, "198.51.100.7")[1]) == "listed-abusers"
    assert rule_of(decided(rules, "198.51.100.8")[1]) == "signup-from-unlisted-only"
    assert isinstance(decided(rules, "192.0.2.50")[1], Forward)  # a customer
    lines, _ = decided(rules, "203.0.113.99")
    assert "network:  ASN unknown, country unknown, lists: abusers" in lines


def test_a_rule_naming_a_list_that_is_not_configured_is_refused_at_its_line(tmp_path: Path) -> None:
    from shield.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"shield.yaml:6:29: rules\[1\] .r..match.client_lists: no list named 'tro' in lists: \(tor\)",
    ):
        listed_runtime(
            tmp_path,
            "  - name: r\n    match: { client_lists: [tro] }\n    action: block\n",
            tor="198.51.100.7\n",
        )


def test_check_names_the_list_file_and_line_of_a_bad_entry(tmp_path: Path, capsys: Any) -> None:
    from shield.cli import main

    (tmp_path / "tor.txt").write_text("198.51.100.7\n198.51.100.300\n")
    config = tmp_path / "shield.yaml"
    config.write_text(
        f"upstream: http://127.0.0.1:1\nlists: {{ tor: {{ file: {tmp_path / 'tor.txt'} }} }}\n"
        "rules:\n  - name: r\n    match: { client_lists: [tor] }\n    action: block\n"
    )
    assert main(["check", "-c", str(config)]) == 1
    error = capsys.readouterr().err
    assert f"{tmp_path / 'tor.txt'}:2: '198.51.100.300'" in error


async def test_a_list_file_reloads_on_change_and_a_broken_one_keeps_the_last_good_list(
    tmp_path: Path, upstream_url: str, make_shield: MakeShield
) -> None:
    from tests.conftest import scraped

    blocklist = tmp_path / "abusers.txt"
    blocklist.write_text("203.0.113.1\n")
    shield = await make_shield(
        upstream_url,
        clients={"trusted_proxies": ["127.0.0.1/32"]},
        lists={"abusers": {"file": str(blocklist)}},
        rules=[{"name": "listed", "match": {"client_lists": ["abusers"]}, "action": "block"}],
    )

    async def status(client: aiohttp.ClientSession, address: str) -> int:
        async with client.get(url_of(shield, "/"), headers={XFF: address}) as response:
            return response.status

    async def eventually(client: aiohttp.ClientSession, address: str, wanted: int) -> None:
        for _ in range(50):
            if await status(client, address) == wanted:
                return
            await asyncio.sleep(0.1)
        pytest.fail(f"{address} never got {wanted}")

    async with aiohttp.ClientSession() as client:
        assert [await status(client, a) for a in ("203.0.113.1", "203.0.113.2")] == [403, 200]
        blocklist.write_text("203.0.113.1\n203.0.113.0/24\n")
        await eventually(client, "203.0.113.2", 403)
        # A bad line refuses the whole file: the list before it stays, and the failure is counted.
        blocklist.write_text("203.0.113.1\nnot-an-address\n")
        for _ in range(50):
            if (await scraped(shield, "shield_list_reload_failures")).get("abusers"):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the broken list was not counted")
        assert await status(client, "203.0.113.2") == 403
        blocklist.write_text("198.51.100.0/24\n")
        await eventually(client, "203.0.113.2", 200)
        assert await status(client, "198.51.100.5") == 403

"""The README's incident walkthrough, run: a sign-up flood from one provider's addresses is seen
with ``shield ctl top --by asn --refused``, stopped with a per-ASN throttle added to the rule
file, checked with ``shield explain``, and the reloaded rule takes effect, while a customer on
another network signs up as before. ``-s`` prints each step's output, as the README shows it."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import aiohttp
import pytest

from shield import cli
from shield.app.server import Shield
from shield.config.loader import load_config
from tests.conftest import url_of
from tests.network_databases import write_asn_db, write_country_db

TOKEN = "walkthrough-token"

BEFORE = """\
rules:
  - name: signup
    match: { methods: [POST], paths: [/signup] }
    action: throttle
    limit: 5/minute          # per address: a rotating flood gets 5 a minute from each of them
"""

AFTER = """\
rules:
  - name: signup-from-hosting
    match: { methods: [POST], paths: [/signup], asns: [64500] }
    action: throttle
    limit: 10/hour
    key: [asn, route]        # the whole provider shares ten sign-ups an hour
  - name: signup
    match: { methods: [POST], paths: [/signup] }
    action: throttle
    limit: 5/minute
"""


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli.main(list(args))
    return code, out.getvalue()


async def test_a_flood_from_one_provider_found_with_top_and_stopped_with_a_per_asn_rule(
    tmp_path: Path, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asn_db, country_db = write_asn_db(tmp_path / "asn.mmdb"), write_country_db(tmp_path / "country.mmdb")
    monkeypatch.setenv("SHIELD_CTL_TOKEN", TOKEN)
    rules = tmp_path / "shield.yaml"
    head = (
        f"listen: 127.0.0.1:0\nupstream: {upstream_url}\n"
        "admin: { listen: 127.0.0.1:0, ctl: { token_env: SHIELD_CTL_TOKEN } }\n"
        "clients: { trusted_proxies: [127.0.0.1/32] }\n"
        f"geo: {{ asn_db: {asn_db}, country_db: {country_db} }}\n"
    )
    rules.write_text(head + BEFORE)
    shield = Shield(load_config(rules), config_path=str(rules))
    await shield.start()
    admin = f"http://127.0.0.1:{shield.admin_port}"
    try:
        async with aiohttp.ClientSession() as client:

            async def signup(address: str) -> int:
                headers = {"X-Forwarded-For": address}
                async with client.post(url_of(shield, "/signup"), headers=headers) as response:
                    return response.status

            # The flood: 40 addresses of AS64500, 8 sign-ups each; a customer now and then.
            flood = [await signup(f"203.0.113.{n}") for n in range(1, 41) for _ in range(8)]
            customer = [await signup("192.0.2.10") for _ in range(3)]
            assert flood.count(429) == 40 * 3 and customer == [200] * 3  # 5 of 8 pass per address

            # 1. Who is refused: by address, a spread no per-IP view makes much of; by network, one.
            code, top = await asyncio.to_thread(
                run_cli, "ctl", "--admin", admin, "top", "--by", "ip", "--refused", "--limit", "3"
            )
            print(f"$ shield ctl top --by ip --refused --limit 3\n{top}")
            assert code == 0 and [line.split()[0] for line in top.splitlines()[2:]] == ["3", "3", "3"]
            code, top = await asyncio.to_thread(
                run_cli, "ctl", "--admin", admin, "top", "--by", "asn", "--refused"
            )
            print(f"$ shield ctl top --by asn --refused\n{top}")
            assert code == 0
            assert top.splitlines()[2].split() == ["120", "100.0%", "+0", "64500"]

            # 2. A rule for that network, checked before it is applied.
            rules.write_text(head + AFTER)
            code, checked = await asyncio.to_thread(run_cli, "check", "-c", str(rules))
            assert code == 0, checked
            code, explained = await asyncio.to_thread(
                run_cli, "explain", "-c", str(rules), "POST", "/signup", "--ip", "203.0.113.77"
            )
            print(f"$ shield explain -c shield.yaml POST /signup --ip 203.0.113.77\n{explained}")
            assert code == 0
            assert "network:  AS64500 EXAMPLE-HOSTING, country DE" in explained
            assert "signup-from-hosting      MATCH" in explained

            # 3. Reloaded without a restart: the provider's fresh addresses share ten an hour.
            for _ in range(50):
                if shield.holder.current.policy.rules[0].name == "signup-from-hosting":
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the edited rule file was not reloaded")
            fresh = [await signup(f"203.0.113.{n}") for n in range(100, 120)]
            assert fresh == [200] * 10 + [429] * 10
            assert [await signup("192.0.2.10") for _ in range(2)] == [200, 200]
    finally:
        await shield.stop(grace=0.5)

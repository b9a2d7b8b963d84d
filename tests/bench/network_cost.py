"""What the network conditions and keys add to a request's decision, for a client seen before.

The 20-rule policy of ``decision_cost.py``, then the same with one more rule before its last:
an ``asns`` condition (a GeoLite2-style ASN database), a ``countries`` condition, a
``client_lists`` condition on a list of 1,000,000 entries, and a throttle keyed on
``[asn, route]``. Each is timed on a request the extra rule does not stop (so it pays for the
test and goes on to the rest), from an address already looked up: the issue's budget is 2 us
per request. The databases and the list are generated in a temporary directory (mmdb-writer,
from the test extras); nothing is downloaded. Usage:

    .venv/bin/python tests/bench/network_cost.py [--number 200000] [--entries 1000000]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import timeit
from pathlib import Path

from tests.bench.decision_cost import decider, twenty_rules
from tests.network_databases import write_asn_db, write_country_db

EXTRA = {
    "asns condition": "  - name: hosting\n    match: { asns: [64500, 64501] }\n    action: block\n",
    "countries condition": "  - name: far\n    match: { countries: [FR, NL] }\n    action: block\n",
    "client_lists condition (1M entries)": (
        "  - name: listed\n    match: { client_lists: [abusers] }\n    action: block\n"
    ),
    "throttle keyed on [asn, route]": (
        "  - name: per-network\n    match: { paths: [/2b] }\n    action: throttle\n"
        "    limit: 1000000/second\n    key: [asn, route]\n"
    ),
}


def write_list(path: Path, entries: int) -> None:
    rng = random.Random(7)
    lines = []
    for _ in range(entries):
        address = f"{rng.randrange(11, 220)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        lines.append(address if rng.random() < 0.8 else address + "/" + str(rng.choice((24, 28, 30))))
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    asn_db, country_db = write_asn_db(folder / "asn.mmdb"), write_country_db(folder / "country.mmdb")
    write_list(folder / "abusers.txt", args.entries)
    head = (
        f"upstream: http://127.0.0.1:1\ngeo: {{ asn_db: {asn_db}, country_db: {country_db} }}\n"
        f"lists: {{ abusers: {{ file: {folder / 'abusers.txt'} }} }}\nrules:\n"
    )
    base = twenty_rules().partition("rules:\n")[2]
    last = base.rindex("  - name: everything")
    configs = {"20 rules (baseline)": head + base}
    for label, rule in EXTRA.items():
        configs[label] = head + base[:last] + rule + base[last:]
    # 192.0.2.10: AS64502 (SMALL-ISP, US) in the test databases; not on the generated list.
    client = "192.0.2.10"
    results: dict[str, float] = {}
    for label, text in configs.items():
        path = folder / "shield.yaml"
        path.write_text(text)
        started = time.perf_counter()
        decide, _, _ = decider(path)
        loaded = time.perf_counter() - started
        decide("GET", "/2b", client)  # the address is looked up once, then remembered
        best = min(timeit.repeat(lambda d=decide: d("GET", "/2b", client), number=args.number, repeat=5))
        results[label] = best / args.number * 1e9
        extra = (
            ""
            if not results or label.startswith("20")
            else f"  ({results[label] - results['20 rules (baseline)']:+.0f} ns)"
        )
        print(f"  {label:<40} {results[label]:7.0f} ns per decision{extra}   loaded in {loaded:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

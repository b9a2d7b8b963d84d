"""The metrics of what Shield reads from outside: geo databases, address lists, CrowdSec.

Read when Prometheus scrapes, from the ``NetworkFeeds`` in force in this process (each worker
reads the same files) and the CrowdSec bouncer. No label carries an address or a network: one
series per database, per list the config names, per kind of decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shield.enforce.crowdsec_bouncer import CrowdsecBouncer
from shield.feeds.network_feeds import NetworkFeeds


def feed_metrics(
    feeds: Callable[[], NetworkFeeds | None], crowdsec: CrowdsecBouncer | None
) -> Callable[[], Iterator[Metric]]:
    """The families of ``feeds()`` (the config in force's) and of the bouncer, for
    ``ProxyStats.feeds``."""

    def collect() -> Iterator[Metric]:
        yield from _network_metrics(feeds())
        if crowdsec is not None:
            yield from _crowdsec_metrics(crowdsec)

    return collect


def _crowdsec_metrics(bouncer: CrowdsecBouncer) -> Iterator[Metric]:
    decisions = GaugeMetricFamily(
        "shield_crowdsec_decisions",
        "CrowdSec decisions in force here, by type (ban: the ban answer; captcha: the challenge).",
        labels=["type"],
    )
    counts = bouncer.decisions.counts()
    for kind in ("ban", "captcha"):
        decisions.add_metric([kind], counts.get(kind, 0))
    yield decisions
    yield CounterMetricFamily(
        "shield_crowdsec_polls", "Polls of the CrowdSec Local API's decision stream.", value=bouncer.polls
    )
    yield CounterMetricFamily(
        "shield_crowdsec_errors",
        "Polls of the CrowdSec Local API that failed (unreachable, refused key, bad answer); the "
        "decisions in force stay.",
        value=bouncer.errors,
    )
    yield GaugeMetricFamily(
        "shield_crowdsec_last_success_timestamp_seconds",
        "Unix time of the last poll of the CrowdSec Local API that answered (0: none yet).",
        value=bouncer.last_success or 0.0,
    )


def _network_metrics(networks: NetworkFeeds | None) -> Iterator[Metric]:
    entries = GaugeMetricFamily(
        "shield_list_entries", "Addresses and CIDRs in each address list (lists:).", labels=["list"]
    )
    list_failures = CounterMetricFamily(
        "shield_list_reload_failures",
        "Re-reads of a list file that were refused (a bad line: the last good list stays).",
        labels=["list"],
    )
    built = GaugeMetricFamily(
        "shield_geo_database_build_timestamp_seconds",
        "When each geo database in use was built (its metadata): an old one misplaces networks.",
        labels=["database"],
    )
    geo_failures = CounterMetricFamily(
        "shield_geo_reload_failures",
        "Re-reads of a geo database file that were refused (the database before stays).",
        labels=["database"],
    )
    if networks is not None:
        for name, watched in sorted(networks.lists.items()):
            entries.add_metric([name], len(watched.current))
            list_failures.add_metric([name], watched.failures)
        for role, path in (("asn", networks.geo.asn_db), ("country", networks.geo.country_db)):
            if path is not None:
                database = networks.databases[path]
                built.add_metric([role], database.build_epoch)
                geo_failures.add_metric([role], database.failures)
    yield from (entries, list_failures, built, geo_failures)

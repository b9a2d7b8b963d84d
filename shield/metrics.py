"""Every Prometheus metric Shield exports, in one place, with bounded label values.

The hot path never touches prometheus_client: it adds to plain integers on ``ProxyStats``
(one event loop per process, so no lock is needed), and a custom collector turns them into
samples when /metrics is scraped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

UPSTREAM_ERROR_KINDS = ("connect", "timeout", "reset")
STATE_BACKENDS = ("memory", "redis")


class ProxyStats:
    """Counters the proxy bumps per request; read only by the collector."""

    def __init__(self) -> None:
        # (rule, action, decision, identity) -> count
        self.requests: Counter[tuple[str, str, str, str]] = Counter()
        self.upstream_errors: Counter[str] = Counter({kind: 0 for kind in UPSTREAM_ERROR_KINDS})
        self.in_flight: Callable[[], float] = lambda: 0.0
        # (rule, would-be decision) for rules in mode: dry-run
        self.dry_run: Counter[tuple[str, str]] = Counter()
        self.config_reloads: Counter[str] = Counter({"success": 0, "failure": 0})
        self.last_reload_success = 0.0
        self.config_version = ""
        # backend -> failed calls to the shared state (Redis errors and timeouts)
        self.state_errors: Counter[str] = Counter({backend: 0 for backend in STATE_BACKENDS})


class ShieldCollector(Collector):
    def __init__(self, stats: ProxyStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._stats
        requests = CounterMetricFamily(
            "shield_requests",
            "Requests answered by Shield, by the rule that decided and what it decided.",
            labels=["rule", "action", "decision", "identity"],
        )
        for labels, count in sorted(stats.requests.items()):
            requests.add_metric(list(labels), count)
        yield requests
        errors = CounterMetricFamily(
            "shield_upstream_errors",
            "Requests the upstream failed, by kind of failure.",
            labels=["kind"],
        )
        for kind, count in sorted(stats.upstream_errors.items()):
            errors.add_metric([kind], count)
        yield errors
        yield GaugeMetricFamily(
            "shield_in_flight_requests",
            "Requests Shield is handling right now.",
            value=stats.in_flight(),
        )
        dry_run = CounterMetricFamily(
            "shield_dry_run_decisions",
            "What rules in mode dry-run would have decided (the requests were forwarded).",
            labels=["rule", "decision"],
        )
        for (rule, decision), count in sorted(stats.dry_run.items()):
            dry_run.add_metric([rule, decision], count)
        yield dry_run
        reloads = CounterMetricFamily(
            "shield_config_reloads", "Config reloads, by result.", labels=["result"]
        )
        for result, count in sorted(stats.config_reloads.items()):
            reloads.add_metric([result], count)
        yield reloads
        yield GaugeMetricFamily(
            "shield_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config load that succeeded.",
            value=stats.last_reload_success,
        )
        info = GaugeMetricFamily(
            "shield_config_info", "The config in use; version is a hash of the file.", labels=["version"]
        )
        info.add_metric([stats.config_version], 1)
        yield info
        state_errors = CounterMetricFamily(
            "shield_state_errors",
            "Calls to the shared state backend that failed or timed out.",
            labels=["backend"],
        )
        for backend, count in sorted(stats.state_errors.items()):
            state_errors.add_metric([backend], count)
        yield state_errors


def build_registry(stats: ProxyStats) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShieldCollector(stats))
    return registry

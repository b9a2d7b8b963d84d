"""Every Prometheus collector Shield exports, in one place, with bounded label values.

Label children are resolved once, when the metrics object is built, so the hot path pays one
lock-protected add per request rather than a label lookup.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase

# The *_created series double every counter and no dashboard reads them.
disable_created_metrics()

UPSTREAM_ERROR_KINDS = ("connect", "timeout", "reset")


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "shield_requests_total",
            "Requests answered by Shield, by the rule that decided and what it decided.",
            ["rule", "action", "decision", "identity"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "shield_upstream_errors_total",
            "Requests the upstream failed, by kind of failure.",
            ["kind"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "shield_in_flight_requests",
            "Requests Shield is handling right now.",
            registry=self.registry,
        )
        self._upstream_errors = {
            kind: self.upstream_errors.labels(kind=kind) for kind in UPSTREAM_ERROR_KINDS
        }
        self.forwarded = self.requests.labels(
            rule="default", action="allow", decision="forwarded", identity="anonymous"
        )
        self.refused = self.requests.labels(
            rule="default", action="allow", decision="error", identity="anonymous"
        )

    def upstream_error(self, kind: str) -> None:
        child = self._upstream_errors.get(kind)
        if child is not None:
            child.inc()

    def track_in_flight(self, read: Callable[[], float]) -> None:
        self.in_flight.set_function(read)


def collectors(metrics: ProxyMetrics) -> list[MetricWrapperBase]:
    return [metrics.requests, metrics.upstream_errors, metrics.in_flight]

"""The waiting room's metrics: who is in line, who got in, how long they waited.

Read when Prometheus scrapes, from this process's ``QueueGate``. ``shield_queue_waiting`` is an
estimate (tickets drawn past "admitted up to", as this process last saw the line: with Redis
state, the shared line; visitors who gave up count until the line passes them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from shield.enforce.queue_gate import QueueGate


def queue_metrics(gate: QueueGate) -> Callable[[], Iterator[Metric]]:
    def collect() -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "shield_queue_waiting",
            "Visitors in a queue rule's line (an estimate: tickets drawn and not yet reached).",
            labels=["rule"],
        )
        for rule, count in sorted(gate.waiting().items()):
            waiting.add_metric([rule], count)
        yield waiting
        admitted = CounterMetricFamily(
            "shield_queue_admitted", "Visitors a queue rule let in when their turn came.", labels=["rule"]
        )
        for rule, count in sorted(gate.admitted.items()):
            admitted.add_metric([rule], count)
        yield admitted
        waited = HistogramMetricFamily(
            "shield_queue_wait_seconds",
            "How long admitted visitors waited in line, from drawing their ticket to getting in.",
            labels=["rule"],
        )
        for rule, histogram in sorted(gate.waits.items()):
            waited.add_metric([rule], histogram.cumulative(), histogram.total)
        yield waited

    return collect

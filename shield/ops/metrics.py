"""Every Prometheus metric Shield exports, in one place, with bounded label values.

The hot path never touches prometheus_client. Per request it appends the request's duration to
a plain list, kept by the request's labels (``ProxyStats.durations``), and the upstream's part to
another: one dict lookup and one append, with no lock (one event loop per process). ``fold``
turns those lists into counts and histogram buckets a batch at a time (``Histogram.observe_all``),
at a fraction of a per-request ``observe``. It runs every ``FOLD_INTERVAL`` seconds and before
anything reads the stats, so the lists hold at most one interval of requests. A custom collector
turns the stats into samples when /metrics is scraped.

With ``workers: N`` each worker publishes a snapshot of its stats (``shield.ops.worker_stats``) and
the worker serving /metrics adds its peers' snapshots to its own live stats at scrape time, so
one scrape sees every worker. Label values are rule names, decisions, identity classes, error
kinds and backend names: all bounded by the config, never paths or addresses.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

UPSTREAM_ERROR_KINDS = ("connect", "timeout", "reset")
# Seconds between folds of the per-request durations into counts and buckets.
FOLD_INTERVAL: Final = 0.25
STATE_BACKENDS = ("memory", "redis")
# What a client can run into that is not a rule (``shield_client_limits``): a head too slow
# (timeouts.client_header) or too large (limits.max_header_total), a body below
# limits.min_data_rate, an answer not read (timeouts.client_send) or read below the minimum rate,
# and the per-client caps.
CLIENT_LIMIT_KINDS = (
    "client_header",
    "header_total",
    "body_rate",
    "client_send",
    "read_rate",
    "connections_per_client",
    "requests_per_client",
)

# Seconds. Shield's own answers take tens of microseconds, forwarded ones what the upstream takes:
# fine steps below 100 ms where budgets live, coarse ones up to the 60 s upstream timeout.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Histogram:
    """A Prometheus histogram as plain numbers: per-bucket (not cumulative) counts and a sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe_all(self, values: list[float]) -> None:
        """Count each of ``values`` in the first bucket whose bound it does not exceed (le = "<=").

        Sorts them (in place) first: then each bucket's count is one ``bisect`` away, where
        bucketing each value would pay several comparisons through the generic slot; sorting
        floats uses a specialized comparison."""
        values.sort()
        counts = self.counts
        below = 0
        for bucket, bound in enumerate(self.bounds):
            upto = bisect_right(values, bound, below)
            counts[bucket] += upto - below
            below = upto
        counts[-1] += len(values) - below
        self.total += sum(values)

    def add(self, other: Histogram) -> None:
        if other.bounds != self.bounds:
            raise ValueError("histograms with different buckets cannot be added")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count) pairs as the exposition format wants them, ending with +Inf."""
        running = 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return buckets


def _no_peers() -> list[ProxyStats]:
    return []


def _no_closures() -> list[tuple[str, str, bool]]:
    return []


class ProxyStats:
    """Counters the proxy bumps per request; read only by the collector."""

    def __init__(self) -> None:
        # (rule, action, decision, identity) -> count
        self.requests: dict[tuple[str, str, str, str], int] = {}
        # rule -> how long Shield took to answer requests that rule decided
        self.request_seconds: dict[str, Histogram] = {}
        # time to the upstream's response headers, for requests it answered
        self.upstream_seconds = Histogram()
        # What the hot path writes, until ``fold``: labels -> how long each request with those
        # labels took (each one is a count too), and each upstream answer's time.
        self.durations: dict[tuple[str, str, str, str], list[float]] = {}
        self.upstream_durations: list[float] = []
        self.upstream_errors: Counter[str] = Counter({kind: 0 for kind in UPSTREAM_ERROR_KINDS})
        # The upstream's answers by status // 100 (1 to 5; 0 and 6 to 9 for a status llhttp let
        # through outside 100-599), counted where its head arrives: a list, for the hot path.
        self.upstream_classes = [0] * 10
        self.client_limits: Counter[str] = Counter({kind: 0 for kind in CLIENT_LIMIT_KINDS})
        self.in_flight: Callable[[], float] = lambda: 0.0
        # (rule, would-be decision) for rules in mode: dry-run
        self.dry_run: Counter[tuple[str, str]] = Counter()
        self.config_reloads: Counter[str] = Counter({"success": 0, "failure": 0})
        self.last_reload_success = 0.0
        self.config_version = ""
        # restart-only settings the file in force changed since the process started
        self.restart_pending: list[str] = []
        # backend -> failed calls to the shared state (Redis errors and timeouts)
        self.state_errors: Counter[str] = Counter({backend: 0 for backend in STATE_BACKENDS})
        # backend -> calls that answered, and the decisions they carried (batching at work)
        self.state_calls: Counter[str] = Counter()
        self.state_decisions: Counter[str] = Counter()
        # access log lines dropped because stdout could not keep up
        self.access_log_dropped = 0
        # (rule, state) -> auto-close transitions; (rule, source, closed) of closable rules
        self.auto_close_transitions: Counter[tuple[str, str]] = Counter()
        self.closed_rules: Callable[[], list[tuple[str, str, bool]]] = _no_closures
        # bans issued (shield.enforce.ban_list); the ctl closures and bans in force, read when scraped
        self.bans_issued = 0
        self.ctl_closed: Callable[[], list[str]] = list
        self.bans_active: Callable[[], int] = int
        # the metrics of what Shield reads from outside (shield.ops.feed_metrics), this process's
        self.feeds: Callable[[], Iterable[Metric]] = tuple
        # the waiting room's (shield.ops.queue_metrics), this process's
        self.queues: Callable[[], Iterable[Metric]] = tuple
        # this worker's top-table slots as [wall-clock end, snapshot] (shield.state.top_share),
        # for worker 0's `ctl top` to add up
        self.top_slots: Callable[[], list[list[Any]]] = list
        # the other workers' latest snapshots (workers > 1); set by the runner
        self.peers: Callable[[], list[ProxyStats]] = _no_peers

    def durations_of(self, labels: tuple[str, str, str, str]) -> list[float]:
        """The list the durations of requests with ``labels`` go to until the next ``fold``."""
        durations = self.durations.get(labels)
        if durations is None:
            durations = self.durations[labels] = []
        return durations

    def count(self, labels: tuple[str, str, str, str]) -> None:
        """Count a request whose duration is not measured (a WebSocket session)."""
        self.requests[labels] = self.requests.get(labels, 0) + 1

    def fold(self) -> None:
        """Move the durations recorded since the last fold into the counts and histograms."""
        requests = self.requests
        for labels, durations in self.durations.items():
            if durations:
                requests[labels] = requests.get(labels, 0) + len(durations)
                self.rule_histogram(labels[0]).observe_all(durations)
                durations.clear()  # frees the list's storage too
        if self.upstream_durations:
            self.upstream_seconds.observe_all(self.upstream_durations)
            self.upstream_durations.clear()

    def rule_histogram(self, rule: str) -> Histogram:
        """The duration histogram of ``rule``, created on the rule's first request."""
        histogram = self.request_seconds.get(rule)
        if histogram is None:
            histogram = self.request_seconds[rule] = Histogram()
        return histogram

    def add(self, other: ProxyStats) -> None:
        """Add ``other``'s counters and histograms to these (gauges are not added)."""
        self.fold()
        other.fold()
        requests = self.requests
        for labels, count in other.requests.items():
            requests[labels] = requests.get(labels, 0) + count
        for rule, histogram in other.request_seconds.items():
            self.rule_histogram(rule).add(histogram)
        self.upstream_seconds.add(other.upstream_seconds)
        self.upstream_errors.update(other.upstream_errors)
        for index, count in enumerate(other.upstream_classes):
            self.upstream_classes[index] += count  # in place: the proxy holds the list
        self.client_limits.update(other.client_limits)
        self.dry_run.update(other.dry_run)
        self.config_reloads.update(other.config_reloads)
        self.state_errors.update(other.state_errors)
        self.state_calls.update(other.state_calls)
        self.state_decisions.update(other.state_decisions)
        self.access_log_dropped += other.access_log_dropped
        self.auto_close_transitions.update(other.auto_close_transitions)
        self.bans_issued += other.bans_issued

    def snapshot(self) -> dict[str, Any]:
        """Everything the collector exports, as JSON-ready values."""
        self.fold()
        return {
            "requests": [[*labels, count] for labels, count in self.requests.items()],
            "request_seconds": {rule: [h.counts, h.total] for rule, h in self.request_seconds.items()},
            "upstream_seconds": [self.upstream_seconds.counts, self.upstream_seconds.total],
            "upstream_errors": dict(self.upstream_errors),
            "upstream_classes": list(self.upstream_classes),
            "client_limits": dict(self.client_limits),
            "in_flight": self.in_flight(),
            "dry_run": [[*labels, count] for labels, count in self.dry_run.items()],
            "config_reloads": dict(self.config_reloads),
            "last_reload_success": self.last_reload_success,
            "config_version": self.config_version,
            "restart_pending": list(self.restart_pending),
            "state_errors": dict(self.state_errors),
            "state_calls": dict(self.state_calls),
            "state_decisions": dict(self.state_decisions),
            "access_log_dropped": self.access_log_dropped,
            "auto_close_transitions": [[*labels, n] for labels, n in self.auto_close_transitions.items()],
            "closed_rules": [list(row) for row in self.closed_rules()],
            "bans_issued": self.bans_issued,
            "top_slots": self.top_slots(),
            "buckets": list(DURATION_BUCKETS),
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> ProxyStats:
        """The stats a ``snapshot()`` was taken of (``ValueError`` if it is not one)."""
        if data.get("buckets") != list(DURATION_BUCKETS):
            raise ValueError("snapshot taken with other histogram buckets")
        stats = cls()
        for rule, action, decision, identity, count in data["requests"]:
            stats.requests[rule, action, decision, identity] = int(count)
        for rule, (counts, total) in data["request_seconds"].items():
            stats.rule_histogram(rule).add(_histogram(counts, total))
        stats.upstream_seconds = _histogram(*data["upstream_seconds"])
        stats.upstream_errors.update({k: int(v) for k, v in data["upstream_errors"].items()})
        stats.upstream_classes = [int(n) for n in data.get("upstream_classes", [0] * 10)]
        stats.client_limits.update({k: int(v) for k, v in data.get("client_limits", {}).items()})
        in_flight = float(data["in_flight"])
        stats.in_flight = lambda: in_flight
        for rule, decision, count in data["dry_run"]:
            stats.dry_run[rule, decision] = int(count)
        stats.config_reloads.update({k: int(v) for k, v in data["config_reloads"].items()})
        stats.last_reload_success = float(data["last_reload_success"])
        stats.config_version = str(data["config_version"])
        stats.restart_pending = [str(name) for name in data.get("restart_pending", [])]
        stats.state_errors.update({k: int(v) for k, v in data["state_errors"].items()})
        stats.state_calls.update({k: int(v) for k, v in data.get("state_calls", {}).items()})
        stats.state_decisions.update({k: int(v) for k, v in data.get("state_decisions", {}).items()})
        stats.access_log_dropped = int(data["access_log_dropped"])
        for rule, state, count in data.get("auto_close_transitions", []):
            stats.auto_close_transitions[rule, state] = int(count)
        closed = [(str(rule), str(source), bool(on)) for rule, source, on in data.get("closed_rules", [])]
        stats.closed_rules = lambda: closed
        stats.bans_issued = int(data.get("bans_issued", 0))
        top_slots = list(data.get("top_slots", []))
        stats.top_slots = lambda: top_slots
        return stats


def _histogram(counts: list[int], total: float) -> Histogram:
    histogram = Histogram()
    if len(counts) != len(histogram.counts):
        raise ValueError("histogram snapshot of the wrong size")
    histogram.counts = [int(c) for c in counts]
    histogram.total = float(total)
    return histogram


class ShieldCollector(Collector):
    def __init__(self, stats: ProxyStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        own = self._stats
        own.fold()
        peers = own.peers()
        workers = [own, *peers]
        stats = own
        if peers:
            stats = ProxyStats()
            for worker in workers:
                stats.add(worker)
        yield from _counters(stats)
        yield from _histograms(stats)
        yield GaugeMetricFamily(
            "shield_in_flight_requests",
            "Requests Shield is handling right now (all workers).",
            value=sum(worker.in_flight() for worker in workers),
        )
        yield GaugeMetricFamily(
            "shield_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config load that succeeded (the oldest among workers).",
            value=min(worker.last_reload_success for worker in workers),
        )
        yield GaugeMetricFamily(
            "shield_config_restart_pending",
            "1 while the file in force changed settings that take effect on restart only (the log "
            "and `shield check --running` name them), else 0.",
            value=float(any(worker.restart_pending for worker in workers)),
        )
        yield _closed_gauge(workers, own.ctl_closed())
        info = GaugeMetricFamily(
            "shield_config_info",
            "The config in use; version is a hash of the file (one series per version in use).",
            labels=["version"],
        )
        for version in sorted({worker.config_version for worker in workers}):
            info.add_metric([version], 1)
        yield info
        yield GaugeMetricFamily(
            "shield_bans_active",
            "Clients banned right now (as this process sees them).",
            value=own.bans_active(),
        )
        yield from own.feeds()
        yield from own.queues()


def _closed_gauge(workers: list[ProxyStats], ctl_closed: list[str]) -> Metric:
    """1 while a rule is closed (in any worker: auto-close triggers run per process), else 0."""
    closed: dict[tuple[str, str], bool] = {(rule, "ctl"): True for rule in ctl_closed}
    for worker in workers:
        for rule, source, on in worker.closed_rules():
            closed[rule, source] = closed.get((rule, source), False) or on
    gauge = GaugeMetricFamily(
        "shield_rule_closed",
        "1 while a rule answers 503 closed: by the file (source=file), a trigger (source=auto) "
        "or `shield ctl close` (source=ctl).",
        labels=["rule", "source"],
    )
    for (rule, source), on in sorted(closed.items()):
        gauge.add_metric([rule, source], 1.0 if on else 0.0)
    return gauge


def _counter(name: str, documentation: str, labels: list[str], values: Iterable[Any]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, count in sorted(values):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], count)
    return family


def _counters(stats: ProxyStats) -> Iterator[Metric]:
    yield _counter(
        "shield_requests",
        "Requests answered by Shield, by the rule that decided and what it decided.",
        ["rule", "action", "decision", "identity"],
        stats.requests.items(),
    )
    yield _counter(
        "shield_upstream_errors",
        "Requests the upstream failed, by kind of failure.",
        ["kind"],
        stats.upstream_errors.items(),
    )
    classes = stats.upstream_classes
    yield _counter(
        "shield_upstream_responses",
        "Answers the upstream gave, by status class (other: a status outside 100-599).",
        ["class"],
        [*((f"{n}xx", classes[n]) for n in range(1, 6)), ("other", classes[0] + sum(classes[6:]))],
    )
    yield _counter(
        "shield_client_limits",
        "Clients cut off or refused by a limit that is not a rule: a slow or oversized head, a "
        "body or a reader below the minimum rate, an answer not read, a per-client cap.",
        ["limit"],
        stats.client_limits.items(),
    )
    yield _counter(
        "shield_dry_run_decisions",
        "What rules in mode dry-run would have decided (the requests were forwarded).",
        ["rule", "decision"],
        stats.dry_run.items(),
    )
    yield _counter(
        "shield_config_reloads",
        "Config reloads, by result (each worker process reloads on its own).",
        ["result"],
        stats.config_reloads.items(),
    )
    yield _counter(
        "shield_state_errors",
        "Calls to the shared state backend that failed or timed out.",
        ["backend"],
        stats.state_errors.items(),
    )
    yield _counter(
        "shield_state_calls",
        "Calls to the shared state backend that answered; one call carries many decisions.",
        ["backend"],
        stats.state_calls.items(),
    )
    yield _counter(
        "shield_state_decisions",
        "Throttle decisions the shared state backend answered.",
        ["backend"],
        stats.state_decisions.items(),
    )
    yield _counter(
        "shield_auto_close_transitions",
        "Rules closing (state=closed) and reopening (state=open) on their auto_close trigger.",
        ["rule", "state"],
        stats.auto_close_transitions.items(),
    )
    bans = CounterMetricFamily(
        "shield_bans", "Bans issued (their requests count as rule ban, decision banned)."
    )
    bans.add_metric([], stats.bans_issued)
    yield bans
    dropped = CounterMetricFamily(
        "shield_access_log_dropped_lines",
        "Access log lines dropped because stdout did not keep up.",
    )
    dropped.add_metric([], stats.access_log_dropped)
    yield dropped


def _histograms(stats: ProxyStats) -> Iterator[Metric]:
    requests = HistogramMetricFamily(
        "shield_request_duration_seconds",
        "Time from a request's headers arriving to Shield's answer being handed to the "
        "client connection, by the rule that decided (WebSocket sessions excluded).",
        labels=["rule"],
    )
    for rule, histogram in sorted(stats.request_seconds.items()):
        requests.add_metric([rule], histogram.cumulative(), histogram.total)
    yield requests
    upstream = HistogramMetricFamily(
        "shield_upstream_duration_seconds",
        "Time from sending a request upstream to receiving the upstream's response headers, "
        "for requests the upstream answered.",
    )
    upstream.add_metric([], stats.upstream_seconds.cumulative(), stats.upstream_seconds.total)
    yield upstream


def build_registry(stats: ProxyStats) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShieldCollector(stats))
    return registry

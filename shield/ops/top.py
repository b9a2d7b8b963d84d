"""Top offenders: the heaviest clients, networks, user agents, paths and rules of the last minutes.

Counting is Misra-Gries with a batch decrement, per dimension and per slot of time. A table of
capacity ``k`` is a dict of counters. A request is only noted as it passes (its keys appended
to a list per dimension);
every quarter of a second, and every ``BATCH`` requests, the requests noted are counted into the
current slot: per dimension, ``Counter``'s C loop counts the batch's keys and each distinct key
is added to the table once. When that leaves the table over ``2k`` counters, the ``(k + 1)``-th
largest count ``d`` is subtracted from every counter and those at zero or below are dropped,
which leaves at most ``k``. That prune (a C sort of the counts and a rebuild of the dict, some
10 us for k = 64) comes at most once per batch and per ``k + 1`` new keys. Memory is at most
``2k + BATCH`` keys per table however many distinct keys arrive: a million rotating addresses
never grow it. Counting each request as it came cost the compiled hot path 5,500 instructions
per request (six dict reads and writes, a clock read) and 5 % of its throughput; noted and
counted in batches, a few hundred.

The error bound. Each prune takes ``d`` from at least ``k + 1`` counters (a batch may add many
keys before one, which changes nothing here), so the sum of every
``d`` of a table (its ``error``) is at most ``N / (k + 1)`` for ``N`` requests counted, and no
key lost more than that. Hence a reported ``count`` is a lower bound: the true count lies in
``[count, count + error]``, and a key not reported at all had at most ``error`` (or, beyond
``limit``, at most the last reported count plus ``error``). Space-Saving has the same bound but
needs a min-structure updated on every eviction; with a million rotating addresses that is a
heap operation per request, where Misra-Gries pays a C-level sort once per ``k + 1`` new keys.

The window. Time is cut into slots (15 s by default) and a ring keeps the current one plus
``slots`` complete ones (60: fifteen minutes, long enough to see an attack's start while it is
being handled, and 61 x 12 tables hold under 8 MB even with every one full of 200-character
keys; ``tests/bench/top_cost.py`` measures it). Each slot holds one table per
dimension for requests refused and one for the rest; "all requests" adds the two. A query adds
the tables of every slot that overlaps the window, so it covers the last ``window`` seconds
rounded up to whole slots (at most one slot more). Misra-Gries summaries add: the sum of tables
counts every key at most the sum of their errors low, and that sum is at most
``(N1 + N2 + ...) / (k + 1)``, the same bound over the requests of the window. A snapshot
(another replica's view, or a slot written to Redis) keeps only the ``k`` largest counts and
adds the ``(k + 1)``-th to its error, which stays within ``N / (k + 1)`` too; adding snapshots
of several replicas gives ``N / (k + 1)`` over every replica's requests.

Pure: no I/O, the clock is a parameter.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from math import inf
from typing import Any, Final

Key = str | int  # an ASN is an int; every other key is a string

# The order of a slot's tables, and the names `ctl top --by` takes.
DIMENSIONS: Final = ("ip", "asn", "country", "ua", "path", "rule")
# Long keys are cut so that the worst case (every table full of 8 KiB User-Agents) stays small.
MAX_KEY_LENGTH: Final = 200
SNAPSHOT_VERSION: Final = 1
# Every request has a rule: the rule tables' totals are the request counts.
_RULE: Final = DIMENSIONS.index("rule")
# The keys of the requests noted since the last flush: client keys, client addresses (for their
# ASN and country), User-Agents, paths, rules; keys the requests hold already, so noting one
# makes no new object.
Noted = tuple[list[str], list[str], list[str], list[str], list[str]]
# An address's (ASN, country), None where not known.
Networks = Callable[[str], tuple[int | None, str | None]]
# Requests are recorded as they come and counted in batches (``TopTables.flush``): one list
# append per request, and the counting done by C loops for thousands at once.
BATCH: Final = 4096


class Counts(dict[Key, int]):
    """One Misra-Gries table: counters, the undercount bound ``error`` and the count ``dropped``
    in prunes (so that ``total`` is every request counted)."""

    __slots__ = ("dropped", "error")

    def __init__(self, counts: Iterable[tuple[Key, int]] = (), error: int = 0, dropped: int = 0) -> None:
        super().__init__(counts)
        self.error = error
        self.dropped = dropped

    @property
    def total(self) -> int:
        return sum(self.values()) + self.dropped

    def prune(self, capacity: int) -> None:
        """Subtract the ``capacity + 1``-th largest count from all and drop what reaches zero."""
        before = sum(self.values())
        cut = sorted(self.values(), reverse=True)[capacity]  # a C sort of 2k ints beats a heap
        kept = [(key, count - cut) for key, count in self.items() if count > cut]
        self.clear()
        self.update(kept)
        self.error += cut
        self.dropped += before - sum(self.values())

    def largest(self, capacity: int) -> Counts:
        """A copy keeping only the ``capacity`` largest counters; the next one's count joins the
        error (a key dropped here had at most that many)."""
        if len(self) <= capacity:
            return Counts(self.items(), self.error, self.dropped)
        ranked = heapq.nlargest(capacity + 1, self.items(), key=_count_of)
        kept = ranked[:capacity]
        return Counts(kept, self.error + ranked[-1][1], self.total - sum(n for _, n in kept))


def _count_of(item: tuple[Key, int]) -> int:
    return item[1]


def _count_batch(
    tables: tuple[Counts, ...], noted: Noted, full: int, capacity: int, networks: Networks | None
) -> None:
    """Add the requests noted since the last flush to a slot's tables: each dimension's keys
    counted by ``Counter``'s C loop, then added to the table once per distinct key, so a burst
    of one client costs one dict write however many requests it sent. The network of each
    distinct address is asked once (``networks``), and its count goes to its ASN and country."""
    ips, addresses, uas, paths, rules = noted
    ip_table, asn_table, country_table, ua_table, path_table, rule_table = tables
    for table, keys in ((ip_table, ips), (ua_table, uas), (path_table, paths), (rule_table, rules)):
        _add(table, Counter(keys), full, capacity)
    if networks is None or not addresses:
        return
    asns: Counter[Key] = Counter()
    countries: Counter[Key] = Counter()
    for address, count in Counter(addresses).items():
        asn, country = networks(address)
        if asn is not None:
            asns[asn] += count
        if country is not None:
            countries[country] += count
    _add(asn_table, asns, full, capacity)
    _add(country_table, countries, full, capacity)


def _add(table: Counts, counted: Counter[Key], full: int, capacity: int) -> None:
    for key, count in counted.items():
        table[key] = table.get(key, 0) + count
    if len(table) > full:
        table.prune(capacity)


def _noted() -> Noted:
    return [], [], [], [], []


def _tables() -> tuple[Counts, ...]:
    return tuple(Counts() for _ in DIMENSIONS)


class Slot:
    """The tables of one slot of time: requests refused, and the others (``passed``)."""

    __slots__ = ("index", "passed", "refused")

    def __init__(self, index: int) -> None:
        self.index = index
        self.passed = _tables()
        self.refused = _tables()

    def parts(self, dimension: int, refused: bool) -> list[Counts]:
        return [self.refused[dimension]] if refused else [self.passed[dimension], self.refused[dimension]]

    def requests(self, refused: bool) -> int:
        return sum(part.total for part in self.parts(_RULE, refused))


@dataclass(frozen=True, slots=True)
class TopEntry:
    """A key and its count, a lower bound: the true count is at most ``count + error``.
    ``share`` is ``count`` over the requests of the window (all, or refused only)."""

    key: Key
    count: int
    error: int
    share: float


@dataclass(frozen=True, slots=True)
class TopReport:
    """The entries of a query and what they are out of."""

    entries: list[TopEntry]
    requests: int  # in the window, all or refused only
    error: int  # every count may be low by this much; a key not listed had at most this


class TopTables:
    """Heavy hitters per dimension over a sliding window, for all requests or refused ones."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        capacity: int = 64,
        slot_seconds: float = 15.0,
        slots: int = 60,
    ) -> None:
        if capacity < 1 or slot_seconds <= 0 or slots < 1:
            raise ValueError("capacity and slots must be at least 1, slot_seconds above 0")
        self.capacity = capacity
        self.slot_seconds = slot_seconds
        self.window_max = slots * slot_seconds
        self._full = 2 * capacity
        self._clock = clock
        # The ASN and country of a client address (the rules' geo databases), or None.
        self.networks: Networks | None = None
        self._ring: deque[Slot] = deque(maxlen=slots + 1)  # complete slots, then the current one
        self._passed: tuple[Counts, ...] = ()
        self._refused: tuple[Counts, ...] = ()
        # What was noted since the last flush, of requests refused and not.
        self._noted_passed = _noted()
        self._noted_refused = _noted()
        self._pending = 0
        self._slot_end = -inf
        self._advance(clock())

    def record(self, ip: str, address: str, ua: str | None, path: str, rule: str, refused: bool) -> None:
        """Note one request, counted at the next ``flush``: ``ip`` its client key, ``address``
        the client's address, whose ASN and country ``networks`` tells then. A missing
        User-Agent counts as the empty one; long keys are cut to ``MAX_KEY_LENGTH``."""
        ips, addresses, uas, paths, rules = self._noted_refused if refused else self._noted_passed
        ips.append(ip)
        addresses.append(address)
        uas.append("" if ua is None else ua if len(ua) <= MAX_KEY_LENGTH else ua[:MAX_KEY_LENGTH])
        paths.append(path if len(path) <= MAX_KEY_LENGTH else path[:MAX_KEY_LENGTH])
        rules.append(rule)
        self._pending += 1
        if self._pending >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Count the requests noted since the last flush into the current slot. Called with
        every metrics fold (a quarter of a second), before every query and every ``BATCH``
        requests, so a request lands in the slot of its time give or take that."""
        now = self._clock()
        if now >= self._slot_end:
            self._advance(now)
        if not self._pending:
            return
        passed, refused = self._noted_passed, self._noted_refused
        self._noted_passed, self._noted_refused, self._pending = _noted(), _noted(), 0
        _count_batch(self._passed, passed, self._full, self.capacity, self.networks)
        _count_batch(self._refused, refused, self._full, self.capacity, self.networks)

    def _advance(self, now: float) -> None:
        index = int(now // self.slot_seconds)
        slot = Slot(index)
        self._ring.append(slot)
        self._passed, self._refused = slot.passed, slot.refused
        self._slot_end = (index + 1) * self.slot_seconds

    def slots_within(self, window: float) -> list[Slot]:
        """The slots overlapping the last ``window`` seconds, oldest first (what was recorded
        counted first)."""
        if not 0 < window <= self.window_max:
            raise ValueError(f"window must be above 0 and at most {self.window_max:g}s")
        self.flush()
        start = self._clock() - window
        return [slot for slot in self._ring if (slot.index + 1) * self.slot_seconds > start]

    def report(self, by: str, *, refused: bool = False, window: float = 300.0, limit: int = 20) -> TopReport:
        dimension = _dimension(by)
        _check_limit(limit, self.capacity)
        slots = self.slots_within(window)
        parts = [part for slot in slots for part in slot.parts(dimension, refused)]
        return _ranked(parts, sum(slot.requests(refused) for slot in slots), limit)

    def top(
        self, by: str, *, refused: bool = False, window: float = 300.0, limit: int = 20
    ) -> list[TopEntry]:
        """The ``limit`` heaviest keys of dimension ``by`` over the last ``window`` seconds."""
        return self.report(by, refused=refused, window=window, limit=limit).entries

    def snapshot(self, window: float) -> dict[str, Any]:
        """The window's tables as JSON-able data, each cut to ``capacity`` counters, for
        ``merge`` with other replicas' snapshots."""
        return self._snapshot(self.slots_within(window), window)

    def slot_snapshots(self, since: int) -> list[tuple[int, float, dict[str, Any]]]:
        """``(index, seconds until its end, snapshot)`` of every slot from index ``since`` on,
        the current one last (its end is still ahead: positive)."""
        self.flush()
        now, seconds = self._clock(), self.slot_seconds
        return [
            (slot.index, (slot.index + 1) * seconds - now, self._snapshot([slot], seconds))
            for slot in self._ring
            if slot.index >= since
        ]

    @property
    def current_slot(self) -> int:
        return int(self._clock() // self.slot_seconds)

    def _snapshot(self, slots: list[Slot], window: float) -> dict[str, Any]:
        tables = {
            name: {
                "passed": _dumped(_added(slot.passed[dimension] for slot in slots), self.capacity),
                "refused": _dumped(_added(slot.refused[dimension] for slot in slots), self.capacity),
            }
            for dimension, name in enumerate(DIMENSIONS)
        }
        return {"v": SNAPSHOT_VERSION, "window": window, "capacity": self.capacity, "tables": tables}

    def sizes(self) -> list[int]:
        """How many counters each table holds (for tests and the benchmark: bounded)."""
        self.flush()
        return [len(table) for slot in self._ring for table in (*slot.passed, *slot.refused)]


def _added(parts: Iterable[Counts]) -> Counts:
    summed = Counts()
    for part in parts:
        for key, n in part.items():
            summed[key] = summed.get(key, 0) + n
        summed.error += part.error
        summed.dropped += part.dropped
    return summed


def _dumped(table: Counts, capacity: int) -> dict[str, Any]:
    table = table.largest(capacity)
    return {"counts": [[key, n] for key, n in table.items()], "error": table.error, "total": table.total}


def _loaded(data: Mapping[str, Any]) -> Counts:
    """A table from its snapshot form; ValueError if it is not one."""
    try:
        counts = [(key, int(n)) for key, n in data["counts"] if isinstance(key, str | int)]
        table = Counts(counts, int(data["error"]))
        table.dropped = int(data["total"]) - sum(n for _, n in counts)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"not a top snapshot table: {error}") from None
    return table


def _dimension(by: str) -> int:
    if by not in DIMENSIONS:
        raise ValueError(f"by must be one of {', '.join(DIMENSIONS)}, not {by!r}")
    return DIMENSIONS.index(by)


def _check_limit(limit: int, capacity: int) -> None:
    if not 1 <= limit <= capacity:
        raise ValueError(f"limit must be between 1 and {capacity} (top.capacity)")


def _ranked(parts: list[Counts], requests: int, limit: int) -> TopReport:
    summed = _added(parts)
    best = heapq.nsmallest(limit, summed.items(), key=lambda item: (-item[1], str(item[0])))
    return TopReport(
        [TopEntry(key, n, summed.error, n / requests if requests else 0.0) for key, n in best],
        requests,
        summed.error,
    )


def checked(snapshot: object) -> Mapping[str, Any]:
    """``snapshot`` if it is one of this version (every table readable), else ValueError."""
    if not isinstance(snapshot, Mapping) or snapshot.get("v") != SNAPSHOT_VERSION:
        raise ValueError(f"not a top snapshot of version {SNAPSHOT_VERSION}")
    try:
        for name in DIMENSIONS:
            for kind in ("passed", "refused"):
                _loaded(snapshot["tables"][name][kind])
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a top snapshot: {error!r}") from None
    return snapshot


def summarize(snapshots: Iterable[Mapping[str, Any]], by: str, refused: bool, limit: int) -> TopReport:
    """Snapshots (of replicas, or of slots) added into one report: the ``limit`` heaviest keys of
    ``by``, all requests or ``refused`` ones. ValueError for a bad query or snapshot."""
    dimension = DIMENSIONS[_dimension(by)]
    if limit < 1:
        raise ValueError("limit must be at least 1")
    kinds = ("refused",) if refused else ("passed", "refused")
    parts: list[Counts] = []
    requests = 0
    for snapshot in snapshots:
        tables = checked(snapshot)["tables"]
        parts.extend(_loaded(tables[dimension][kind]) for kind in kinds)
        requests += sum(_loaded(tables["rule"][kind]).total for kind in kinds)
    return _ranked(parts, requests, limit)


def merge(snapshots: Iterable[Mapping[str, Any]], by: str, refused: bool, limit: int) -> list[TopEntry]:
    """The ``limit`` heaviest keys of ``by`` over every snapshot (replicas' ``snapshot``)."""
    return summarize(snapshots, by, refused, limit).entries

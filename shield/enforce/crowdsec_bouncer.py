"""Shield as a CrowdSec bouncer: the decisions a Local API (LAPI) has in force, and the poll that
keeps them current.

``CrowdsecDecisions`` is the table the hot path reads (``verdict(ip)``); it does no I/O and is fed
the answers of the LAPI's decision stream. ``CrowdsecBouncer`` owns the HTTP client and the poll
loop. The stream (``GET /v1/decisions/stream``, header ``X-Api-Key``) answers
``{"new": [...], "deleted": [...]}``; each decision carries ``id``, ``scope``, ``value``, ``type``,
``duration`` (a Go duration left to run, ``"3h59m58.1s"``), ``scenario`` and ``origin``.
``startup=true`` answers the whole set in force; ``startup=false`` what changed since this
bouncer's previous call (the LAPI keeps that mark per bouncer key).
"""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import itertools
import json
import logging
import math
import re
from collections.abc import Callable
from typing import Final, Literal, NamedTuple

import aiohttp

from shield.config.crowdsec import Crowdsec
from shield.decide.remembered import remember

log = logging.getLogger("shield.crowdsec")

DecisionType = Literal["ban", "captcha"]
_TYPES: Final[dict[str, DecisionType]] = {"ban": "ban", "captcha": "captcha"}
_SCOPES: Final = ("ip", "range")

# Addresses whose verdict (None included) is remembered between changes of the table.
MEMO_ENTRIES: Final = 16384
# The longest address text worth remembering (a full IPv6 address with an IPv4 tail is 45).
_LONGEST_ADDRESS: Final = 45

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

_GO_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)"
_GO_DURATION = re.compile(rf"[-+]?(?:{_GO_PART})+")
_GO_PARTS = re.compile(_GO_PART)


def parse_go_duration(text: str) -> float:
    """Seconds from a Go ``time.Duration`` string: ``"3h59m58.123s"``, ``"-1.5s"``, ``"0"``."""
    if text in ("0", "+0", "-0"):
        return 0.0
    if not _GO_DURATION.fullmatch(text):
        raise ValueError(f"not a Go duration: {text!r}")
    seconds = sum(float(number) * _GO_UNITS[unit] for number, unit in _GO_PARTS.findall(text))
    return -seconds if text.startswith("-") else seconds


class CrowdsecVerdict(NamedTuple):
    """The CrowdSec decision an address is under: what to do, until when (Unix time), and why."""

    type: DecisionType
    until: float
    scenario: str
    origin: str
    value: str  # the IP or range the decision names, as the LAPI wrote it


class CrowdsecAnswerError(ValueError):
    """The LAPI answered something that is not a decision stream."""


# Where a decision applies: (IP version, prefix length, network number >> host bits).
_Slot = tuple[int, int, int]
# A decision's identity: the LAPI's id, or (scope, slot, type) for an answer without ids.
_Key = int | tuple[str, _Slot, str]


class _Decision(NamedTuple):
    key: _Key
    scope: str
    slot: _Slot
    seconds: float  # left to run when the answer came
    type: DecisionType
    scenario: str
    origin: str
    value: str


class _Held(NamedTuple):
    scope: str
    slot: _Slot
    verdict: CrowdsecVerdict


def _strength(verdict: CrowdsecVerdict) -> tuple[bool, float]:
    # A ban wins over a captcha on the same address; of two alike, the one lasting longer.
    return (verdict.type == "ban", verdict.until)


def _slot_of(scope: str, value: str) -> _Slot | None:
    try:
        if scope == "ip":
            address = ipaddress.ip_address(value)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped  # ::ffff:1.2.3.4 is 1.2.3.4, as Shield sees its clients
            return (address.version, address.max_prefixlen, int(address))
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.subnet_of(_IPV4_MAPPED)
    ):
        network = ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    host_bits = network.max_prefixlen - network.prefixlen
    return (network.version, network.prefixlen, int(network.network_address) >> host_bits)


def _text(item: dict[str, object], name: str) -> str | None:
    value = item.get(name)
    return value if isinstance(value, str) else None


class _Identity(NamedTuple):
    key: _Key
    scope: str
    slot: _Slot
    type: DecisionType
    value: str


def _identity(item: dict[str, object]) -> _Identity | None:
    """Who a decision applies to, if Shield acts on its scope and type; None for any other."""
    scope, value, kind = (_text(item, name) for name in ("scope", "value", "type"))
    if scope is None or value is None or kind is None:
        return None
    scope, kind = scope.lower(), kind.lower()
    if scope not in _SCOPES or kind not in _TYPES:
        return None
    slot = _slot_of(scope, value)
    if slot is None:
        return None
    number = item.get("id")
    key: _Key = number if isinstance(number, int) and not isinstance(number, bool) else (scope, slot, kind)
    return _Identity(key, scope, slot, _TYPES[kind], value)


def _decision(item: object) -> _Decision | None:
    if not isinstance(item, dict):
        return None
    identity = _identity(item)
    duration = _text(item, "duration")
    if identity is None or duration is None:
        return None
    try:
        seconds = parse_go_duration(duration)
    except ValueError:
        return None
    scenario, origin = _text(item, "scenario") or "", _text(item, "origin") or ""
    return _Decision(
        identity.key, identity.scope, identity.slot, seconds, identity.type, scenario, origin, identity.value
    )


def _entries(answer: object, name: str) -> list[object]:
    if not isinstance(answer, dict):
        raise CrowdsecAnswerError(
            f"expected a JSON object with 'new' and 'deleted', got {type(answer).__name__}"
        )
    entries = answer.get(name)
    if entries is None:  # the LAPI writes null for an empty list
        return []
    if not isinstance(entries, list):
        raise CrowdsecAnswerError(f"'{name}' is a {type(entries).__name__}, not a list")
    return entries


class CrowdsecDecisions:
    """The CrowdSec decisions in force, by address: ``Ip`` and ``Range`` scopes, ``ban`` and
    ``captcha`` types (others are counted in ``ignored``).

    Each decision ends ``duration`` after the answer that brought it, on the ``wall`` clock
    (Unix time). A lookup is one dict probe for an address seen since the table last changed
    (``remember``: verdicts, None included, in a bounded dict emptied on every change); else
    one probe per distinct prefix length in force: the networks are grouped by prefix length,
    keyed by their network number, so thousands of ranges cost what a handful of lengths do.
    """

    def __init__(self, *, wall: Callable[[], float], memo_entries: int = MEMO_ENTRIES) -> None:
        self._wall = wall
        self._memo_entries = memo_entries
        self.ignored = 0
        self._memo: dict[str, CrowdsecVerdict | None] = {}
        self._held: dict[_Key, _Held] = {}
        # Every decision on one network, and the strongest of them per network by prefix length.
        self._on_slot: dict[_Slot, dict[_Key, CrowdsecVerdict]] = {}
        self._strongest: dict[tuple[int, int], dict[int, CrowdsecVerdict]] = {}
        # Per IP version, (host bits, networks of that length): what a lookup probes.
        self._probes: dict[int, tuple[tuple[int, dict[int, CrowdsecVerdict]], ...]] = {4: (), 6: ()}
        self._counts: dict[DecisionType, int] = {"ban": 0, "captcha": 0}
        # (until, tiebreak, key): the next decision to run out; entries of decisions gone since
        # are skipped when they come up.
        self._ends: list[tuple[float, int, _Key]] = []
        self._tiebreak = itertools.count()
        self._next_end = math.inf

    def __len__(self) -> int:
        self._expire()
        return len(self._held)

    def counts(self) -> dict[DecisionType, int]:
        """Decisions in force by type, for a gauge."""
        self._expire()
        return dict(self._counts)

    def verdict(self, ip: str) -> CrowdsecVerdict | None:
        """The decision ``ip`` is under (a ban before a captcha), or None."""
        if not self._held:
            return None
        if self._wall() >= self._next_end:
            self._expire()
        try:
            return self._memo[ip]
        except KeyError:
            pass
        return remember(
            self._memo, ip, self._search(ip), self._memo_entries, fits=len(ip) <= _LONGEST_ADDRESS
        )

    def _search(self, ip: str) -> CrowdsecVerdict | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        number = int(address)
        found: CrowdsecVerdict | None = None
        for host_bits, networks in self._probes[address.version]:
            verdict = networks.get(number >> host_bits)
            if verdict is not None and (found is None or _strength(verdict) > _strength(found)):
                found = verdict
        return found

    def apply(self, answer: object, *, startup: bool) -> bool:
        """Take up one answer of the decision stream; True if what is in force changed.

        With ``startup`` the answer is the whole set in force and replaces the table. Else it is
        a delta: ``deleted`` goes first (by id where given, else by scope, value and type), then
        ``new``. A malformed answer raises ``CrowdsecAnswerError`` before anything changes.
        """
        new, deleted = _entries(answer, "new"), _entries(answer, "deleted")
        gone = [identity for item in deleted if isinstance(item, dict) and (identity := _identity(item))]
        gone_ids = {identity.key for identity in gone if isinstance(identity.key, int)}
        arriving: list[_Decision] = []
        for item in new:
            decision = _decision(item)
            if decision is None:
                self.ignored += 1
            elif decision.key not in gone_ids:  # said new and deleted at once: over already
                arriving.append(decision)
        now = self._wall()
        if startup:
            changed = bool(self._held)
            self._clear()
        else:
            changed = False
            for identity in gone:
                if isinstance(identity.key, int):
                    changed |= self._remove(identity.key)
                else:
                    changed |= self._remove_alike(identity)
        for decision in arriving:
            if decision.seconds <= 0:  # run out already: not in force (and over if held)
                changed |= self._remove(decision.key)
            else:
                self._remove(decision.key)
                self._add(decision, now)
                changed = True
        if changed:
            self._memo.clear()
        return changed

    def _add(self, decision: _Decision, now: float) -> None:
        until = now + decision.seconds
        verdict = CrowdsecVerdict(decision.type, until, decision.scenario, decision.origin, decision.value)
        self._held[decision.key] = _Held(decision.scope, decision.slot, verdict)
        self._on_slot.setdefault(decision.slot, {})[decision.key] = verdict
        self._restrongest(decision.slot)
        self._counts[decision.type] += 1
        if len(self._ends) > 2 * len(self._held) + 64:  # mostly entries of decisions gone: rebuild
            self._ends = [(held.verdict.until, next(self._tiebreak), key) for key, held in self._held.items()]
            heapq.heapify(self._ends)
        else:
            heapq.heappush(self._ends, (until, next(self._tiebreak), decision.key))
        self._next_end = self._ends[0][0]

    def _remove(self, key: _Key) -> bool:
        held = self._held.pop(key, None)
        if held is None:
            return False
        on_slot = self._on_slot[held.slot]
        del on_slot[key]
        if not on_slot:
            del self._on_slot[held.slot]
        self._restrongest(held.slot)
        self._counts[held.verdict.type] -= 1
        return True

    def _remove_alike(self, identity: _Identity) -> bool:
        """Remove the decisions of ``identity``'s scope, value and type, whatever their ids."""
        alike = [
            key
            for key, verdict in self._on_slot.get(identity.slot, {}).items()
            if verdict.type == identity.type and self._held[key].scope == identity.scope
        ]
        for key in alike:
            self._remove(key)
        return bool(alike)

    def _restrongest(self, slot: _Slot) -> None:
        version, length, network = slot
        group = (version, length)
        verdicts = self._on_slot.get(slot)
        networks = self._strongest.get(group)
        if verdicts:
            if networks is None:
                networks = self._strongest[group] = {}
                self._reprobe()
            networks[network] = max(verdicts.values(), key=_strength)
        elif networks is not None:
            networks.pop(network, None)
            if not networks:
                del self._strongest[group]
                self._reprobe()

    def _reprobe(self) -> None:
        bits = {4: 32, 6: 128}
        self._probes = {
            version: tuple(
                (bits[version] - length, networks)
                for (v, length), networks in sorted(self._strongest.items(), reverse=True)
                if v == version
            )
            for version in (4, 6)
        }

    def _expire(self) -> None:
        now = self._wall()
        if now < self._next_end:
            return
        ends, removed = self._ends, False
        while ends and ends[0][0] <= now:
            until, _, key = heapq.heappop(ends)
            held = self._held.get(key)
            if held is not None and held.verdict.until == until:
                removed |= self._remove(key)
        self._next_end = ends[0][0] if ends else math.inf
        if removed:
            self._memo.clear()

    def _clear(self) -> None:
        self._held.clear()
        self._on_slot.clear()
        self._strongest.clear()
        self._probes = {4: (), 6: ()}
        self._counts = {"ban": 0, "captcha": 0}
        self._ends.clear()
        self._next_end = math.inf
        self._memo.clear()


class _PollFailed(Exception):
    """One failed poll: ``kind`` says what went wrong in a word (a new kind is logged again)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


USER_AGENT: Final = "shield-bouncer"


class CrowdsecBouncer:
    """Polls a CrowdSec LAPI's decision stream into ``decisions``, every ``config.poll``.

    A failed poll (LAPI unreachable, too slow, refusing the key, answering an error or nonsense)
    keeps the decisions in force as they are, counts an error and is logged once per outage (a
    different kind of failure is logged again), and the next poll tries again. Decisions still
    run out by their own end time meanwhile.

    After a failed poll the next one asks for the whole set again (``startup=true``) and replaces
    the table with it. CrowdSec's own bouncers (go-cs-bouncer) carry on with deltas, trusting
    the mark of the last pull the LAPI keeps per bouncer in its database; that survives a plain
    restart, but not everything does: the LAPI's flush removes old alerts and their decisions
    for good, a LAPI rebuilt or restored (the same key registered again, ``cscli bouncers add
    -k``) or another replica behind the same URL has other ids and marks, and a decision deleted
    meanwhile would never be reported deleted: it would stay banned here until its end. The
    whole set is one larger answer once per outage and leaves nothing stale; until it arrives
    the old table stays in force. (A LAPI rebuilt between two polls, with no failed poll to
    notice, is not caught: deltas go on from its new, empty mark.)
    """

    def __init__(self, config: Crowdsec, *, wall: Callable[[], float]) -> None:
        self.config = config
        self.decisions = CrowdsecDecisions(wall=wall)
        self.polls = 0
        self.errors = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._wall = wall
        self._whole_set = True  # the next poll asks startup=true
        self._failing: str | None = None  # the kind of failure of the outage under way
        self._failed_polls = 0
        self._failing_since = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        # One poll at a time: answers must be taken up in the order the LAPI gave them.
        self._polling = asyncio.Lock()

    @property
    def bans(self) -> int:
        return self.decisions.counts()["ban"]

    @property
    def captchas(self) -> int:
        return self.decisions.counts()["captcha"]

    def follow(self, config: Crowdsec) -> None:
        """Take up a reloaded ``crowdsec:`` section; the decisions in force are kept. Another URL
        or key makes the next poll fetch the whole set (another LAPI's ids mean nothing here)."""
        if (config.url, config.api_key) != (self.config.url, self.config.api_key):
            self._whole_set = True
        self.config = config

    async def start(self) -> None:
        """Poll once (bounded by ``config.timeout``), then every ``config.poll``. A LAPI that does
        not answer now does not stop the start: the failure is logged and the loop retries."""
        self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        await self.poll_once()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="crowdsec-poll")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll)
            try:
                await self.poll_once()
            except Exception:  # a bug here must not end the following; the table stays
                self.errors += 1
                log.exception("CrowdSec poll failed unexpectedly")

    async def poll_once(self) -> bool:
        """Ask the stream once and take up its answer; False (and counted) if that failed."""
        async with self._polling:
            return await self._poll()

    async def _poll(self) -> bool:
        whole_set = self._whole_set
        self.polls += 1
        try:
            answer = await self._fetch(whole_set)
            try:
                self.decisions.apply(answer, startup=whole_set)
            except CrowdsecAnswerError as exc:
                raise _PollFailed(
                    "answer", f"answered something that is not a decision stream: {exc}"
                ) from exc
        except _PollFailed as failure:
            self._failed(failure)
            return False
        self._whole_set = False
        self.last_success = self._wall()
        self.last_error = None
        if self._failing is not None:
            log.warning(
                "CrowdSec LAPI %s answers again after %d failed polls over %.0fs; took up its whole set: "
                "%d decisions in force",
                self.config.url,
                self._failed_polls,
                self.last_success - self._failing_since,
                len(self.decisions),
            )
            self._failing = None
        elif whole_set:
            counts = self.decisions.counts()
            log.info(
                "following CrowdSec LAPI %s: %d bans, %d captchas in force",
                self.config.url,
                counts["ban"],
                counts["captcha"],
            )
        return True

    def _failed(self, failure: _PollFailed) -> None:
        self.errors += 1
        self.last_error = str(failure)
        # Any outage, however short, ends with the whole set: deltas may have been lost in it.
        self._whole_set = True
        if self._failing is None:
            self._failed_polls = 0
            self._failing_since = self._wall()
        self._failed_polls += 1
        if failure.kind != self._failing:
            log.error(
                "CrowdSec LAPI %s %s; the decisions in force (%d) are kept, polling again every %gs",
                self.config.url,
                failure,
                len(self.decisions),
                self.config.poll,
            )
            self._failing = failure.kind
        else:
            log.debug("CrowdSec LAPI %s still failing: %s", self.config.url, failure)

    async def _fetch(self, whole_set: bool) -> object:
        assert self._session is not None, "start() first"
        config = self.config
        url = config.url.rstrip("/") + "/v1/decisions/stream"
        try:
            async with self._session.get(
                url,
                params={"startup": "true" if whole_set else "false"},
                headers={"X-Api-Key": config.api_key},
                timeout=aiohttp.ClientTimeout(total=config.timeout),
                # A redirect would carry the key elsewhere; the LAPI never sends one.
                allow_redirects=False,
            ) as response:
                body = await response.read()
                status = response.status
        except TimeoutError as exc:
            raise _PollFailed("timeout", f"did not answer within {config.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise _PollFailed("unreachable", f"is unreachable ({exc or type(exc).__name__})") from exc
        if status in (401, 403):
            raise _PollFailed(
                "key",
                f"refused the bouncer key (HTTP {status}{_message(body)}): is the key in "
                f"{config.key_source} one `cscli bouncers add` made on that LAPI?",
            )
        if status != 200:
            raise _PollFailed(f"http {status}", f"answered HTTP {status}{_message(body)}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise _PollFailed("answer", f"answered something that is not JSON ({exc})") from exc


def _message(body: bytes) -> str:
    """``: <the LAPI's error message>`` from an error answer's body, shortened; "" for none."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace").strip()
    return f": {str(message)[:200]}" if message else ""

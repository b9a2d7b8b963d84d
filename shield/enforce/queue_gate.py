"""The waiting room of ``action: queue`` rules: draw a ticket, wait your turn, walk in.

``decide`` has read the client's cookies already (``read``): an admitted client is forwarded
like any other, a client without an admission comes here with the ticket it holds, if any
(``shield.decide.decision.Queue``). ``enter`` asks the queue state where the line stands
(``shield.state.queue_state``: a number in memory, or ``INCR`` and one script in Redis, so every
replica admits from the one line) and answers:

- the client's turn has come (its ticket is at or below the line's "admitted up to"): forward,
  setting the admission cookie for the rule's ``session``;
- not yet: the waiting page, with its place and an estimate, refreshing itself; a new ticket
  comes with its cookie;
- a client drawing tickets faster than ``queue.draw_limit``: 429, and no new place.

The rate is the rule's ``admit`` (its ``burst`` at once after a quiet spell), or, for a rule
``shield ctl queue`` put in a waiting room, the pace the operator gave (as many at once): any
rule can queue, and the line is the rule's either way.

The estimate: ``(ticket - admitted up to) / rate``. Tickets of visitors who gave up are passed
over as the line advances at the admit rate whether or not they come back, so nobody behind
them waits longer for them; the price is paid in admissions: a ticket abandoned is a place
nobody takes, and the rate of visitors who do walk in is the admit rate less the abandoned
share. That is what keeps the line stateless (nothing is kept per visitor) and the estimate
honest (it never grows for someone already in line).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Final, NamedTuple

from shield.clock import Clock
from shield.config.rules import parse_limit
from shield.config.state import OnStateError
from shield.config.waiting_room import WaitingRoom
from shield.decide.decision import CtlQueue, Queue, no_queue
from shield.decide.gcra import Gcra
from shield.decide.policy import CompiledRule, RequestView
from shield.decide.queue_tickets import QueueTickets, Ticket, cookie_name
from shield.enforce import answers
from shield.enforce.challenge_gate import ChallengeGate
from shield.enforce.queue_page import queued
from shield.http.answer import ShieldAnswer
from shield.http.connection import Request
from shield.ops.metrics import Histogram
from shield.state.memory_throttle import MemoryLimiter
from shield.state.queue_state import MemoryQueues, QueueStanding, RedisQueues
from shield.state.records import SharedStateError

log: Final = logging.getLogger("shield.queue")

DEFAULT_SESSION: Final = 900.0
# How long admitted visitors waited, in seconds: a queue's waits run to hours.
WAIT_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)


class QueueGate:
    def __init__(
        self,
        config: WaitingRoom,
        *,
        challenge: ChallengeGate,
        wall: Clock,
        shared: RedisQueues | None = None,
        on_error: OnStateError = "allow",
        status_path: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``challenge``: whose key signs the cookies and whose binding ties them to a client;
        ``shared``: the Redis line every replica shares (None: this process's own);
        ``on_error``: what a Redis that does not answer means (``state.on_error``)."""
        self.challenge = challenge
        self.wall = wall
        self.local = MemoryQueues()
        self.shared = shared
        self.on_error = on_error
        self.status_path = status_path
        self.draws = MemoryLimiter(100_000)
        # For the metrics: visitors admitted, how long they waited, the line as last seen.
        self.admitted: Counter[str] = Counter()
        self.waits: dict[str, Histogram] = {}
        self.standings: dict[str, QueueStanding] = {}
        self._signer: QueueTickets | None = None
        self._signer_of: tuple[bytes, float] = (b"", 0.0)
        # The waiting rooms ``shield ctl queue`` opened (``Switches.queued``), for ``rules_waiting``.
        self.ctl_queue: Callable[[str], CtlQueue | None] = no_queue
        self.follow(config)

    def follow(self, config: WaitingRoom) -> None:
        """Take up a reloaded ``queue:`` section (every setting is live)."""
        self.config = config
        count, period = parse_limit(config.draw_limit)
        self.draw_rate = Gcra(count, period, None)
        per_asn = config.draw_limit_per_asn
        self.draw_rate_per_asn = Gcra(*parse_limit(per_asn), None) if per_asn is not None else None

    def _tickets(self) -> QueueTickets:
        """The signer, under the challenge's key: the one replicas share (or this process's
        random one), as it is after the last reload."""
        key, ticket_for = self.challenge.key, self.config.ticket_for
        signer = self._signer
        if signer is None or self._signer_of != (key, ticket_for):
            signer = self._signer = QueueTickets(key, ticket_for=ticket_for)
            self._signer_of = (key, ticket_for)
        return signer

    def read(self, rule: str, view: RequestView) -> tuple[bool, Ticket | None]:
        """What the client's cookies say of ``rule``'s queue: admitted, and the ticket it holds
        (``Rulebook.queue_cookies``)."""
        names = (self.config.session_cookie, self.config.ticket_cookie)
        bound = self.challenge.bound(view.client_key)
        return self._tickets().read(view.cookies, rule, bound, self.wall.now(), names)

    async def enter(self, request: Request, decision: Queue) -> tuple[str, ShieldAnswer | Admission]:
        """``("admitted", Set-Cookie lines for the forward)`` or ``(outcome, Shield's answer)``:
        ``queued`` (the waiting page), ``throttled`` (too many tickets), ``error`` (no state)."""
        rule, ticket, ctl = decision
        per_second, burst = _pace(rule, ctl)
        now = self.wall.now()
        bound = self.challenge.bound(request.client_key)
        tickets = self._tickets()
        accept = request.headers.get("Accept")
        drawn: str | None = None
        try:
            if ticket is None:
                if not self._may_draw(rule, request.client_ip, bound, now):
                    return "throttled", _too_many_tickets(accept)
                number, standing = await self._draw(rule.name, per_second, burst, now)
                ticket = Ticket(number, now)
                drawn = tickets.ticket(rule.name, bound, number, now)
            else:
                standing = await self._standing(rule.name, per_second, burst, now)
        except SharedStateError as error:
            if self.on_error == "deny":
                log.debug("queue %s: the shared line did not answer: %s", rule.name, error)
                return "error", answers.unavailable(accept=accept, extra={})
            return "admitted", Admission([])  # on_error: allow lets the visitor in (no cookie)
        self.standings[rule.name] = standing
        if ticket.number <= standing.admitted:
            self.admitted[rule.name] += 1
            self._wait_of(rule.name).observe_all([max(0.0, now - ticket.issued)])
            session = rule.config.session or DEFAULT_SESSION
            cookies = [
                _set_cookie(
                    cookie_name(self.config.session_cookie, rule.name),
                    tickets.admission(rule.name, bound, now, session),
                    int(session),
                    request.secure,
                )
            ]
            if decision.ticket is not None:  # the ticket has served: gone from the browser
                cookies.append(
                    _set_cookie(cookie_name(self.config.ticket_cookie, rule.name), "", 0, request.secure)
                )
            return "admitted", Admission(cookies)
        ahead = max(0, ticket.number - math.floor(standing.admitted) - 1)
        wait = (ticket.number - standing.admitted) / per_second
        page = queued(
            position=ahead,
            wait=wait,
            refresh=max(1.0, min(wait, self.config.refresh)),
            message=(ctl.message if ctl is not None else "")
            or rule.config.message
            or "Lots of people want in right now. Thank you for waiting.",
            title=rule.config.public_name,
            accept=accept,
            status_path=self.status_path(),
        )
        if drawn is not None:
            page.set_cookie(
                cookie_name(self.config.ticket_cookie, rule.name),
                drawn,
                max_age=int(self.config.ticket_for),
                secure=request.secure,
            )
        return "queued", page

    def _may_draw(self, rule: CompiledRule, client_ip: str, bound: str, now: float) -> bool:
        """Whether this client may draw a ticket now: within ``draw_limit``, and its network
        (when ``draw_limit_per_asn`` is set and the geo database knows it) within that."""
        if not self.draws.hit(f"{rule.name}|{bound}", self.draw_rate, now).allowed:
            return False
        per_asn = self.draw_rate_per_asn
        if per_asn is None:
            return True
        asn = rule.networks.facts(client_ip).asn
        return asn is None or self.draws.hit(f"{rule.name}|asn:{asn}", per_asn, now).allowed

    async def _draw(self, name: str, rate: float, burst: int, now: float) -> tuple[int, QueueStanding]:
        """A new ticket from the shared line, or this process's (memory state, or Redis away
        with ``on_error: local``)."""
        if self.shared is not None:
            try:
                return await self.shared.draw(name, rate, burst, now)
            except SharedStateError:
                if self.on_error != "local":
                    raise
        return self.local.draw(name, rate, burst, now)

    async def _standing(self, name: str, rate: float, burst: int, now: float) -> QueueStanding:
        if self.shared is not None:
            try:
                return await self.shared.standing(name, rate, burst, now)
            except SharedStateError:
                if self.on_error != "local":
                    raise
        return self.local.standing(name, rate, burst, now)

    def _wait_of(self, rule: str) -> Histogram:
        histogram = self.waits.get(rule)
        if histogram is None:
            histogram = self.waits[rule] = Histogram(WAIT_BUCKETS)
        return histogram

    def waiting(self) -> dict[str, float]:
        """Rule -> visitors in line, as last seen: tickets drawn past "admitted up to" (an
        estimate: it counts those who gave up too)."""
        return {rule: float(max(0, s.issued - math.floor(s.admitted))) for rule, s in self.standings.items()}

    def admitted_up_to(self) -> dict[str, int]:
        """Rule -> the last ticket its line has let in, as this process last saw it (``shield
        explain`` turns a ticket into a place with it)."""
        return {rule: math.floor(s.admitted) for rule, s in self.standings.items()}

    def rules_waiting(self, rules: tuple[CompiledRule, ...]) -> list[tuple[CompiledRule, float]]:
        """The rules of ``rules`` in a waiting room (queue rules, and those ``shield ctl queue``
        put in one) with someone in line, and the wait at the back of it."""
        found = []
        for rule in rules:
            standing = self.standings.get(rule.name)
            if standing is None or rule.dry_run:
                continue
            ctl = self.ctl_queue(rule.name)
            if ctl is None and rule.action != "queue":
                continue
            behind = standing.issued - math.floor(standing.admitted)
            if behind > 0:
                found.append((rule, behind / _pace(rule, ctl)[0]))
        return found


def _pace(rule: CompiledRule, ctl: CtlQueue | None) -> tuple[float, int]:
    """Admissions a second and how many at once after a quiet spell: ``ctl``'s (as many at once
    as it lets in per period), else the queue rule's ``admit`` and ``burst``."""
    if ctl is not None:
        return ctl.count / ctl.period, ctl.count
    rate = rule.config.admission
    assert rate is not None
    return rate.count / rate.period, rule.config.burst or rate.count


class Admission(NamedTuple):
    """A visitor let in: the cookies to set (``Set-Cookie`` values), on the forwarded answer
    (``lines``) or on Shield's own (``ShieldAnswer.cookies``)."""

    cookies: list[str]

    @property
    def lines(self) -> bytes:
        return b"".join(b"Set-Cookie: " + cookie.encode("latin-1") + b"\r\n" for cookie in self.cookies)


def _set_cookie(name: str, value: str, max_age: int, secure: bool) -> str:
    """A ``Set-Cookie`` value (Shield's own answers have ``ShieldAnswer.set_cookie`` too)."""
    jar: SimpleCookie = SimpleCookie()
    jar[name] = value
    morsel = jar[name]
    morsel["max-age"] = str(max_age)
    morsel["path"] = "/"
    morsel["samesite"] = "Lax"
    morsel["httponly"] = True
    morsel["secure"] = secure
    return morsel.OutputString()


def _too_many_tickets(accept: str | None) -> ShieldAnswer:
    """A client drawing tickets faster than ``queue.draw_limit`` (dropping its cookie to try for a
    better place): no new place, and a minute to think it over."""
    headers = {"Retry-After": "60", "Cache-Control": "no-store"}
    if answers.wants_json(accept):
        body = '{"error": "Too many tickets drawn: keep the one you have.", "retry_after": 60}'
        return ShieldAnswer(status=429, text=body, content_type="application/json", headers=headers)
    text = "Too many tickets drawn from this address. Keep the page you had open; it holds your place.\n"
    return ShieldAnswer(status=429, text=text, headers=headers)

"""What Shield does with one request: ``decide`` returns it, the gatekeeper acts on it. Pure.

``decide`` takes the request as rules see it (a ``RequestView``: canonical path, client,
identity), what Shield knows of the client beyond the request (a ban in force) and the
``Rulebook`` in force, and returns one ``Decision``. It awaits nothing and writes nothing but
the auto-close triggers' counts; ``shield explain`` calls it too, so what explain prints is
what the proxy does. The gatekeeper turns a decision into an answer or a forward in one
``match`` (``Gatekeeper.act``).

A throttle is decided in two steps, as envoy's ratelimit does (limits, then the cache, then the
answer): ``decide`` names the bucket and the rate (``Throttle``), the throttle state says what
is left of it, and ``after_throttle`` makes that a forward carrying the RateLimit fields or a
429. Dry-run rules met on the way come wrapped around the decision (``DryRuns``): their
verdicts are counted, never enforced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

from shield.config.rules import DEFAULT_CLOSE_MESSAGE
from shield.decide.gcra import Gcra, RateLimitResult
from shield.decide.policy import CompiledRule, Policy, RequestView
from shield.decide.queue_tickets import Ticket

# What a client's cookies say of a queue rule (its name): admitted already, and the ticket held.
QueueCookies = Callable[[str, RequestView], tuple[bool, Ticket | None]]


class Forward(NamedTuple):
    """Send the request upstream. ``rule``: the rule that let it through (None: no rule
    applied); ``limit``: the throttle's verdict when a throttle did, for its RateLimit fields."""

    rule: CompiledRule | None
    limit: RateLimitResult | None = None


class Throttle(NamedTuple):
    """Ask the throttle state about the request's bucket (``rule.state_key``) at ``rate``;
    ``after_throttle`` decides on the answer. One per rule and identity class, made at load."""

    rule: CompiledRule
    rate: Gcra


class Throttled(NamedTuple):
    """429: the bucket is empty."""

    rule: CompiledRule
    limit: RateLimitResult


class Unavailable(NamedTuple):
    """503: the shared throttle state did not answer and ``state.on_error`` is ``deny``."""

    rule: CompiledRule


class Blocked(NamedTuple):
    """403 by a ``block`` rule."""

    rule: CompiledRule


class Challenged(NamedTuple):
    """The proof-of-work page: a ``challenge`` rule and no valid pass."""

    rule: CompiledRule


@dataclass(frozen=True, slots=True)
class CtlQueue:
    """A rule ``shield ctl queue`` put in a waiting room until ``until`` (Unix seconds): ``count``
    new visitors let in per ``period`` seconds (as many at once after a quiet spell), as the
    operator wrote it (``admit``); ``message`` is the waiting page's ("": the rule's or the
    default)."""

    rule: str
    admit: str
    count: int
    period: float
    message: str
    until: float


class Queue(NamedTuple):
    """The waiting room of a rule, for a client not admitted yet: with the place in line its
    cookie holds (``ticket``), or None to draw one. The queue state says whether its turn has
    come (``Gatekeeper.act``). ``ctl``: the waiting room ``shield ctl queue`` put the rule in,
    whose pace replaces the rule's ``admit`` (None: a ``queue`` rule's own)."""

    rule: CompiledRule
    ticket: Ticket | None
    ctl: CtlQueue | None = None


class Closed(NamedTuple):
    """503 with the close page: by the rule file, an auto-close trigger or ``shield ctl close``.

    ``action`` is what the metrics call it (the rule's action, or ``ctl-close``), ``why`` what
    the debug header says; ``retry_after`` is in seconds from now."""

    rule: CompiledRule
    action: str
    why: str
    message: str
    retry_after: float


class Banned(NamedTuple):
    """The ban answer: the client is banned for ``retry_after`` more seconds, by ``source``
    (``ban``: Shield's own bans; ``crowdsec``: a CrowdSec decision)."""

    retry_after: float
    source: str = "ban"


class ServeStatusPage(NamedTuple):
    """Shield's public status page, answered before any rule."""


class CheckSolution(NamedTuple):
    """A posted challenge solution, for the challenge gate to check."""


class DryRuns(NamedTuple):
    """``then``, after counting what ``rules`` (in dry-run) would have done."""

    rules: list[CompiledRule]
    then: Decision


Decision = (
    Forward
    | Throttle
    | Throttled
    | Unavailable
    | Blocked
    | Challenged
    | Queue
    | Closed
    | Banned
    | ServeStatusPage
    | CheckSolution
    | DryRuns
)

FORWARD_UNRULED: Final = Forward(None)
STATUS_PAGE: Final = ServeStatusPage()
CHALLENGE_SOLUTION: Final = CheckSolution()


class CtlClosure(Protocol):
    """A rule ``shield ctl close`` closed: its message and when it opens (Unix seconds)."""

    @property
    def message(self) -> str: ...

    @property
    def until(self) -> float: ...


def no_closure(name: str) -> CtlClosure | None:
    """The ctl closure lookup where there is no ctl: nothing is closed."""
    return None


def no_queue(name: str) -> CtlQueue | None:
    """The ctl queue lookup where there is no ctl: no rule is queued."""
    return None


class Rulebook(NamedTuple):
    """What decisions need besides the request, one per config in force.

    ``now`` is the monotonic clock triggers run on, ``wall`` Unix time (bans and ctl closures
    end at a wall time); ``pages`` are the paths Shield answers itself (``own_pages``);
    ``ctl_closed`` is the live table of ctl closures (read for emptiness, the common case) and
    ``ctl_closure`` looks one up, as ``ctl_queued`` and ``ctl_queue`` for ``shield ctl queue``
    (the gatekeeper gives one table for both: ctl's switches); ``passes`` checks the challenge
    pass (the value of cookie ``challenge_cookie``) for a client key; ``queue_cookies`` reads
    a waiting room's cookies."""

    policy: Policy
    default_retry_after: float
    now: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    pages: Mapping[str, Decision] = {}
    challenge_cookie: str = ""
    passes: Callable[[str | None, str], bool] | None = None
    ctl_closed: Mapping[str, object] = {}
    ctl_closure: Callable[[str], CtlClosure | None] = no_closure
    ctl_queued: Mapping[str, object] = {}
    ctl_queue: Callable[[str], CtlQueue | None] = no_queue
    queue_cookies: QueueCookies | None = None


def own_pages(
    policy: Policy,
    status_path: str | None,
    challenge_path: str | None,
    *,
    challenges_without_rules: bool = False,
) -> dict[str, Decision]:
    """The paths Shield answers itself, before any rule: the status page when it is on, and
    where challenge solutions are posted when a rule challenges (or, with
    ``challenges_without_rules``, something else may: CrowdSec's captcha decisions)."""
    pages: dict[str, Decision] = {}
    if challenge_path is not None and (policy.has_challenge or challenges_without_rules):
        pages[challenge_path] = CHALLENGE_SOLUTION
    if status_path is not None:
        pages[status_path] = STATUS_PAGE  # (the status page wins where both are set to one path)
    return pages


def decide(
    view: RequestView,
    rules: Rulebook,
    banned_until: float | None = None,
    banned_by: str = "ban",
    challenged_by: CompiledRule | None = None,
) -> Decision:
    """What to do with ``view``. What Shield knows of the client beyond the request comes
    first: ``banned_until``, the end of a ban on it (Unix time) by ``banned_by``; and
    ``challenged_by``, a rule that challenges this client whatever it asks (a CrowdSec
    ``captcha`` decision) unless it holds a pass. Shield's own pages come before the challenge,
    so a challenged client can post its solution.

    ctl's overrides come before the rule's own action: a ctl closure of the deciding rule or of
    a dry-run rule met before it, then a ctl queue of the deciding rule (``_queued_by_ctl``)."""
    if banned_until is not None:
        return Banned(banned_until - rules.wall(), banned_by)
    path = view.path
    page = rules.pages.get(path)
    if page is not None:
        return page
    if challenged_by is not None and not _passes(view, rules):
        return Challenged(challenged_by)
    policy = rules.policy
    if not policy.rules:
        return FORWARD_UNRULED
    try:  # what ``policy.match(view)`` does, without the call
        match = policy.known[view.method, path]
    except KeyError:
        match = policy.matcher(view.method, path)
    rule, dry_runs = match(view)
    if rules.ctl_closed and (closed := _closed_by_ctl(rules, rule, dry_runs)) is not None:
        decision: Decision = closed
    elif rule is None:
        decision = FORWARD_UNRULED
    elif (
        rules.ctl_queued
        and (queued := rules.ctl_queue(rule.name)) is not None
        and (waiting := _queued_by_ctl(view, rules, rule, queued)) is not None
    ):
        decision = waiting
    elif (trigger := rule.trigger) is not None and trigger.hit(now := rules.now()):
        message = trigger.config.message or DEFAULT_CLOSE_MESSAGE
        decision = Closed(rule, rule.action, "auto-closed", message, trigger.retry_after(now))
    elif (action := rule.action) == "throttle":
        decision = rule.throttles[view.identity.authenticated]
    elif action == "allow":
        decision = rule.forward
    elif action == "challenge":
        decision = rule.forward if _passes(view, rules) else Challenged(rule)
    elif action == "block":
        decision = Blocked(rule)
    elif action == "queue":
        cookies = rules.queue_cookies
        assert cookies is not None
        admitted, ticket = cookies(rule.name, view)
        if admitted:
            decision = rule.forward
        elif rule.config.challenge_first and not _passes(view, rules):
            decision = Challenged(rule)  # (solve, then queue: a script never takes a place)
        else:
            decision = Queue(rule, ticket)
    else:
        message = rule.config.message or DEFAULT_CLOSE_MESSAGE
        retry_after = rule.config.retry_after or rules.default_retry_after
        decision = Closed(rule, action, "closed", message, retry_after)
    return decision if dry_runs is None else DryRuns(dry_runs, decision)


def _passes(view: RequestView, rules: Rulebook) -> bool:
    """Whether the client holds a valid challenge pass (the cookie ``challenge_cookie``)."""
    passes = rules.passes
    assert passes is not None
    return passes(view.cookies.get(rules.challenge_cookie), view.client_key)


def _closed_by_ctl(
    rules: Rulebook, rule: CompiledRule | None, dry_runs: list[CompiledRule] | None
) -> Closed | None:
    """The close decision when ``shield ctl close`` closed the deciding rule or a dry-run rule
    met before it (a ctl closure is enforced even on a rule the file runs in dry-run)."""
    for candidate in (*(dry_runs or ()), *((rule,) if rule is not None else ())):
        closure = rules.ctl_closure(candidate.name)
        if closure is not None:
            return Closed(
                candidate, "ctl-close", "closed by ctl", closure.message, closure.until - rules.wall()
            )
    return None


def _queued_by_ctl(view: RequestView, rules: Rulebook, rule: CompiledRule, queued: CtlQueue) -> Queue | None:
    """The waiting room ``shield ctl queue`` put ``rule`` in, for a client not admitted yet; None
    lets the rule's own action decide: for a client admitted (a throttle still counts its
    requests, from the one after it walked in; a challenge still asks for its pass), and for one
    the rule refuses anyway (a block or close
    rule, an auto-close in force, a challenge without a pass: a place in line would only lead
    to the refusal, and the challenge first keeps scripts from taking the places). A ctl queue
    adds a gate; it never lets in what the rule keeps out."""
    action = rule.action
    if action == "block" or action == "close":
        return None
    trigger = rule.trigger
    if trigger is not None and trigger.update(rules.now()):
        return None
    if (action == "challenge" or rule.config.challenge_first) and not _passes(view, rules):
        return None
    cookies = rules.queue_cookies
    assert cookies is not None
    admitted, ticket = cookies(rule.name, view)
    return None if admitted else Queue(rule, ticket, queued)


def after_throttle(rule: CompiledRule, limit: RateLimitResult | None, deny_on_error: bool) -> Decision:
    """What the throttle state's answer means: None is a state that did not answer. Allowed,
    it is ``rule.forward`` (the RateLimit fields are ``limit``'s)."""
    if limit is None:
        return Unavailable(rule) if deny_on_error else rule.forward
    if limit.allowed:
        return rule.forward
    return Throttled(rule, limit)

"""Every request a Shield in this suite decides is also put to ``shield explain``: they must agree.

``explain`` reads the config on its own (it compiles the rules, resolves the client and the
identity itself) and ends in the same ``decide``; ``comparing_every_decision`` listens to the
gatekeeper's ``decision_listeners`` so that each decision the proxy makes is compared with
explain's for the same request. What explain cannot know by design is left out, each for its
reason: bans and auto-close states (runtime state of the running Shield), identities from
introspection (explain makes no call), challenge passes and queue cookies when no key is
configured (each process makes its own), and queue cookies when the Shield runs on a fake wall
clock (explain reads the real one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from shield.clock import FakeClock
from shield.decide.decision import (
    Banned,
    Blocked,
    Challenged,
    CheckSolution,
    Closed,
    Decision,
    DryRuns,
    Forward,
    Queue,
    ServeStatusPage,
    Throttle,
    Throttled,
    Unavailable,
)
from shield.decide.network_facts import Directory
from shield.decide.policy import Policy, RequestView
from shield.enforce.gatekeeper import Gatekeeper, decision_listeners
from shield.ops.explain import explained


def summary(decision: Decision, view: RequestView) -> tuple[Any, ...]:
    """What two decisions must share to be the same decision (not the seconds left)."""
    match decision:
        case DryRuns(rules, then):
            return ("dry runs", tuple(rule.name for rule in rules), summary(then, view))
        case Forward(rule, _):
            return ("forward", rule.name if rule is not None else None)
        case Throttle(rule, rate):
            return ("throttle", rule.name, rate.signature(), rule.state_key(view))
        case Closed(rule, action, why, message, _):
            return ("closed", rule.name, action, why, message)
        case Blocked(rule) | Challenged(rule) | Throttled(rule, _) | Unavailable(rule):
            return (type(decision).__name__, rule.name)
        case Banned() | ServeStatusPage() | CheckSolution():
            return (type(decision).__name__,)
        case Queue(rule, ticket, ctl):
            return ("queue", rule.name, ticket, None if ctl is None else (ctl.count, ctl.period, ctl.message))


def _beyond_explain(gatekeeper: Gatekeeper, decision: Decision) -> bool:
    """Decisions that rest on what explain cannot know (the module docstring says why)."""
    while isinstance(decision, DryRuns):
        decision = decision.then
    if isinstance(decision, Banned) or gatekeeper.introspector is not None:
        return True
    if isinstance(decision, Challenged) and decision.rule is gatekeeper.crowdsec_rule:
        return True  # a CrowdSec decision: the running bouncer's, which explain does not ask
    if isinstance(decision, Closed) and decision.why == "auto-closed":
        return True
    rule = getattr(decision, "rule", None)
    config = gatekeeper.holder.current.config
    if rule is None:
        return False
    switches = gatekeeper.switches
    queued = rule.action == "queue" or (switches is not None and switches.queued(rule.name) is not None)
    if rule.action != "challenge" and not queued:
        return False
    # Passes and queue cookies are checked with the challenge key (without one configured, each
    # process makes its own, which explain cannot know) and against the wall clock (explain
    # reads the real one; a test's Shield may run on a fake one).
    fake_wall = isinstance(getattr(gatekeeper.wall, "__self__", None), FakeClock)
    return not config.challenge.secret or (queued and fake_wall)


class Agreement:
    """The disagreements seen, and the compiled policy of each config explain was given."""

    def __init__(self) -> None:
        self.disagreements: list[str] = []
        self.compared = 0
        self._policies: dict[int, tuple[object, Policy]] = {}

    def policy_of(self, config: Any, networks: Directory) -> Policy:
        """The compiled rules of ``config``, kept between requests (compiled afresh, as the
        command does, where auto-close triggers would count explain's requests), asking the
        running Shield's ``networks`` as ``shield explain`` asks the same files."""
        if any(rule.auto_close is not None for rule in config.rules):
            return Policy(config.rules, config.policy, networks=networks)
        known = self._policies.get(id(config))
        if known is None or known[0] is not config:
            policy = Policy(config.rules, config.policy, networks=networks)
            known = self._policies[id(config)] = (config, policy)
        return known[1]

    def check(self, gatekeeper: Gatekeeper, request: Any, decision: Decision, view: RequestView) -> None:
        if _beyond_explain(gatekeeper, decision):
            return
        runtime = gatekeeper.holder.current
        switches = gatekeeper.switches
        closures = {c.rule: c.message for c in switches.closures()} if switches is not None else {}
        queues = {q.rule: q for q in switches.queues()} if switches is not None else {}
        headers = [f"{name}: {value}" for name, value in request.headers.items()]
        if "Host" not in request.headers:
            headers.append("Host:")  # explain would otherwise assume one
        lines, theirs = explained(
            runtime.config,
            request.method,
            request.raw_path,
            headers,
            request.remote or "unknown",
            identities=gatekeeper.identities or runtime.identities,
            closures=closures,
            queues=queues,
            ctl=switches is not None,
            policy=self.policy_of(runtime.config, runtime.policy.networks),
        )
        self.compared += 1
        ours = summary(decision, view)
        said = summary(theirs, view) if theirs is not None else None
        if said != ours:
            self.disagreements.append(
                f"{request.method} {request.raw_path}: the proxy decided {ours}, explain {said}\n  "
                + "\n  ".join(lines)
            )


@contextlib.contextmanager
def comparing_every_decision(agreement: Agreement) -> Iterator[None]:
    """Compare explain with the proxy on every decision ``handle`` makes inside the block (the
    gatekeeper's ``decision_listeners``: compiled code cannot be wrapped from outside)."""

    def compared(gatekeeper: Gatekeeper, request: Any, decision: Decision) -> None:
        agreement.check(gatekeeper, request, decision, request)

    decision_listeners.append(compared)
    try:
        yield
    finally:
        decision_listeners.remove(compared)

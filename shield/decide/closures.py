"""What is closed right now, as records the status page lists.

A ``Closure`` is the one shape every source of closures produces: rules the file closes
(``action: close``), rules an auto-close trigger closed, and, later, switches flipped with
``shield ctl``. The page reads only these records, so a new source adds a provider, not a page.
Only what the operator chose to show leaves here: the public name (or rule name) and message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from shield.config.rules import DEFAULT_CLOSE_MESSAGE
from shield.decide.policy import Policy

Source = Literal["file", "auto", "ctl"]


@dataclass(frozen=True, slots=True)
class Closure:
    rule: str
    title: str  # what the public sees: the rule's public_name, else its name
    message: str
    source: Source
    until: float | None  # Unix time it is expected to reopen; None: until further notice


ClosureSource = Callable[[], Iterable[Closure]]


def policy_closures(policy: Policy, now: float, wall: float) -> list[Closure]:
    """Closures the rule file makes: close rules and auto-closed rules.

    ``now`` is the monotonic time triggers run on and ``wall`` the Unix time at that instant.
    """
    found = []
    for rule in policy.rules:
        config = rule.config
        title = config.public_name or rule.name
        if rule.action == "close" and not rule.dry_run:
            message = config.message or DEFAULT_CLOSE_MESSAGE
            found.append(Closure(rule.name, title, message, "file", None))
        elif (trigger := rule.trigger) is not None and trigger.update(now):
            message = trigger.config.message or DEFAULT_CLOSE_MESSAGE
            until = wall + trigger.retry_after(now)
            found.append(Closure(rule.name, title, message, "auto", until))
    return found


def runtime_closures(policy: Policy, closed: Iterable[tuple[str, str, float]]) -> list[Closure]:
    """Closures made at runtime (``shield ctl close``): (rule, message, until) of rules in force."""
    titles = {rule.name: rule.config.public_name or rule.name for rule in policy.rules}
    return [
        Closure(name, titles[name], message, "ctl", until)
        for name, message, until in closed
        if name in titles
    ]

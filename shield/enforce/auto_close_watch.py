"""Auto-close bookkeeping: move idle triggers along, log and count every transition.

Triggers decide on the request path (``Trigger.hit``) and queue their transitions; this ticker
drains them once a second, so a rule also reopens on time with no traffic at all, and the
request path never formats a log line. Triggers live in the compiled policy and are carried
across reloads there; this only reads the policy in force.
"""

from __future__ import annotations

import asyncio
import logging

from shield.app.reload import PolicyHolder
from shield.clock import Clock
from shield.decide.trigger import CLOSED
from shield.ops.metrics import ProxyStats

log = logging.getLogger("shield.auto_close")


class AutoCloseWatch:
    def __init__(self, holder: PolicyHolder, clock: Clock, stats: ProxyStats) -> None:
        self.holder = holder
        self.clock = clock
        self.stats = stats
        stats.closed_rules = self.closed_rules

    def tick(self) -> None:
        now = self.clock.now()
        for rule, trigger in self.holder.current.policy.triggers:
            trigger.update(now)
            for state, _ in trigger.transitions:
                self.stats.auto_close_transitions[rule.name, state] += 1
                if state == CLOSED:
                    log.warning(
                        "rule %s auto-closed: %s held for %gs; reopens in %gs at the earliest",
                        rule.name,
                        trigger.condition.describe(),
                        trigger.hold,
                        trigger.reopen_after,
                    )
                else:
                    log.warning(
                        "rule %s reopened: %s no longer holds", rule.name, trigger.condition.describe()
                    )
            trigger.transitions.clear()

    def closed_rules(self) -> list[tuple[str, str, bool]]:
        """(rule, source, closed) for every rule that can be closed: the shield_rule_closed gauge."""
        rows = []
        for rule in self.holder.current.policy.rules:
            if rule.action == "close" and not rule.dry_run:
                rows.append((rule.name, "file", True))
            elif rule.trigger is not None:
                rows.append((rule.name, "auto", rule.trigger.closed))
        return rows

    async def run(self, interval: float = 1.0) -> None:
        while True:
            self.tick()
            await asyncio.sleep(interval)

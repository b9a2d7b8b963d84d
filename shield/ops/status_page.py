"""The public status page: closed features and when they are expected back.

It reads ``Closure`` records from providers (``shield.decide.closures``) and knows nothing about
where they come from; a new source of closures (``shield ctl`` switches) adds a provider. Only
public names, messages and reopening times are shown: no paths, matchers, limits or addresses.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from importlib import resources
from string import Template

from shield.decide.closures import Closure, ClosureSource
from shield.enforce.answers import ShieldAnswer, answer, human_duration, wants_json

_ROW = Template('<li><h2>$title</h2><p>$message</p><p class="until">$until</p></li>')
_QUEUED_ROW = Template('<li class="queued"><h2>$title</h2><p>$message</p><p class="until">$wait</p></li>')


@dataclass(frozen=True, slots=True)
class Queued:
    """A feature with a waiting room in front of it (``action: queue``) and a line: what the
    public sees of it (its public name), and the wait at the back of the line."""

    title: str
    message: str
    wait: float  # seconds


def _stamp(until: float | None) -> str | None:
    if until is None:
        return None
    return datetime.fromtimestamp(round(until), UTC).isoformat().replace("+00:00", "Z")


def _back_at(until: float, now: float) -> str:
    """'Expected back in about 10 minutes (3 Dec 2026, 13:24 UTC)', the instant machine-readable."""
    moment = datetime.fromtimestamp(round(until), UTC)
    shown = f"{moment.day} {moment:%b %Y, %H:%M} UTC"
    return (
        f"Expected back in about {human_duration(until - now)} "
        f'(<time datetime="{_stamp(until)}">{shown}</time>)'
    )


class StatusPage:
    def __init__(
        self,
        sources: Iterable[ClosureSource],
        wall: Callable[[], float] = time.time,
        queues: Callable[[], list[Queued]] = list,
    ) -> None:
        """``queues``: the waiting rooms with a line, listed after the closures."""
        self.sources = list(sources)
        self.wall = wall
        self.queues = queues
        text = resources.files("shield.ops").joinpath("templates/status.html").read_text(encoding="utf-8")
        self.template = Template(text)

    def closures(self) -> list[Closure]:
        found = [closure for source in self.sources for closure in source()]
        return sorted(found, key=lambda c: (c.until is None, c.until or 0.0, c.title))

    def answer(self, method: str, accept: str | None) -> ShieldAnswer:
        if method not in ("GET", "HEAD"):
            response = answer(405, "Method not allowed.")
            response.headers["Allow"] = "GET, HEAD"
            return response
        closures = self.closures()
        queued = sorted(self.queues(), key=lambda q: q.title)
        headers = {"Cache-Control": "no-store"}
        if wants_json(accept):
            body = {
                "status": "degraded" if closures or queued else "operational",
                "closed": [
                    {"name": c.title, "message": c.message, "source": c.source, "until": _stamp(c.until)}
                    for c in closures
                ],
                "queued": [
                    {"name": q.title, "message": q.message, "wait_seconds": math.ceil(q.wait)} for q in queued
                ],
            }
            return ShieldAnswer(text=json.dumps(body), content_type="application/json", headers=headers)
        now = self.wall()
        rows = "\n".join(
            _ROW.substitute(
                title=escape(c.title),
                message=escape(c.message),
                until="Until further notice" if c.until is None else _back_at(c.until, now),
            )
            for c in closures
        )
        rows += "\n".join(
            _QUEUED_ROW.substitute(
                title=escape(q.title),
                message=escape(q.message),
                wait=f"Busy: new visitors wait in line, about {human_duration(q.wait)} right now",
            )
            for q in queued
        )
        if closures:
            summary = "Some features are temporarily unavailable."
        elif queued:
            summary = "Some features are busy: new visitors wait in line a while."
        else:
            summary = "All systems operational."
        page = self.template.safe_substitute(summary=summary, closures=rows)
        return ShieldAnswer(text=page, content_type="text/html", headers=headers)

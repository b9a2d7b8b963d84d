"""Turning a decision into the answer a client sees: 403, 503 with a friendly page, 429.

Each is a ``ShieldAnswer`` (``shield.http.answer``), so nothing downstream mistakes it for an
upstream response (an outcome-counting throttle never charges Shield's own refusals).
"""

from __future__ import annotations

import json
import math
from html import escape
from importlib import resources
from pathlib import Path
from string import Template
from typing import Final, TypeVar

from shield.config.rules import DEFAULT_CLOSE_MESSAGE
from shield.decide.gcra import Gcra, RateLimitResult
from shield.decide.remembered import remember
from shield.http.answer import ShieldAnswer, answer

__all__ = [
    "DEFAULT_CLOSE_MESSAGE",
    "Capped",
    "Shed",
    "ShieldAnswer",
    "answer",
    "banned",
    "blocked",
    "closed",
    "ratelimit_headers",
    "ratelimit_lines",
    "shed",
    "throttled",
    "too_many_in_flight",
    "unavailable",
]


_Answer = TypeVar("_Answer", bound=ShieldAnswer)


def wants_json(accept: str | None) -> bool:
    """True when the client asked for JSON and not for HTML (API clients, fetch())."""
    if not accept:
        return False
    accept = accept.lower()
    return ("application/json" in accept or "+json" in accept) and "text/html" not in accept


def human_duration(seconds: float) -> str:
    whole = max(1, math.ceil(seconds))
    for unit, size in (("hour", 3600), ("minute", 60)):
        if whole >= size:
            count = round(whole / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{whole} second{'s' if whole != 1 else ''}"


def load_close_template(path: str | None) -> Template:
    if path is None:
        text = resources.files("shield.enforce").joinpath("templates/closed.html").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return Template(text)


def closed(
    *,
    message: str,
    retry_after: float,
    accept: str | None,
    template: Template,
    extra: dict[str, str],
    title: str | None = None,
    end_known: bool = True,
    status_path: str | None = None,
) -> ShieldAnswer:
    """The 503 of a closed feature. ``title``: the feature's public name; ``end_known``: whether
    the closure has an end (an auto-close cool-down, a ctl closure's time) or lasts until the
    rule file changes, said as the status page says it; ``status_path``: the status page, linked
    when it is on. ``retry_after`` is the Retry-After either way (a polling hint without an end)."""
    seconds = max(1, math.ceil(retry_after))
    headers = {"Retry-After": str(seconds), "Cache-Control": "no-store", **extra}
    if wants_json(accept):
        body = json.dumps({"error": message, "retry_after": seconds})
        return ShieldAnswer(status=503, text=body, content_type="application/json", headers=headers)
    later = human_duration(seconds)
    when = (
        f"Expected back in about {later}."
        if end_known
        else f"Closed until further notice; check back in about {later}."
    )
    link = f' <a href="{escape(status_path)}">See what else is affected.</a>' if status_path else ""
    page = template.safe_substitute(
        message=escape(message),
        retry_after=later,
        title=escape(title or "This feature"),
        when=when,
        status_link=link,
    )
    return ShieldAnswer(status=503, text=page, content_type="text/html", headers=headers)


def ratelimit_headers(
    result: RateLimitResult, rule: str | None = None, rate: Gcra | None = None
) -> list[tuple[str, str]]:
    """The RateLimit header fields of an answer, plus Retry-After when the request was refused.

    ``RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (the form clients read today: the
    burst, what may be sent at once now, seconds until the bucket is full again), and, given the
    ``rule`` and its ``rate``, the current IETF draft's pair (draft-ietf-httpapi-ratelimit-
    headers-11): ``RateLimit-Policy: "login";q=10;w=60`` (the quota per window, as the rule file
    says it) and ``RateLimit: "login";r=4;t=6`` (remaining now, seconds to reset)."""
    reset = math.ceil(result.reset_after)
    values = [
        ("RateLimit-Limit", str(result.limit)),
        ("RateLimit-Remaining", str(result.remaining)),
        ("RateLimit-Reset", str(reset)),
    ]
    if rule is not None and rate is not None:
        name = _sf_string(rule)
        values.append(("RateLimit-Policy", f"{name};q={rate.count};w={math.ceil(rate.period)}"))
        values.append(("RateLimit", f"{name};r={result.remaining};t={reset}"))
    if not result.allowed:
        values.append(("Retry-After", str(max(1, math.ceil(result.retry_after)))))
    return values


def _sf_string(text: str) -> str:
    """``text`` as a Structured Fields String (RFC 8941 3.3.3): printable ASCII only, with
    backslash and double quote escaped; any other character becomes '?'."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


# (rule, rate, remaining, reset) -> ``ratelimit_lines``: a bucket is mostly in one of a few
# states, and formatting the fields costs more than the GCRA step itself. Bounded.
_REMEMBERED_LINES: Final = 4096
_known_lines: Final[dict[tuple[object, ...], bytes]] = {}


def ratelimit_lines(result: RateLimitResult, rule: str, rate: Gcra) -> bytes:
    """``ratelimit_headers`` of a forwarded request as header lines, for the proxy to add."""
    if result is rate.fresh:  # the verdict of a full bucket: one entry per rule and rate
        state: tuple[object, ...] = (rule, rate)
    else:
        state = (rule, rate, result.remaining, math.ceil(result.reset_after))
    lines = _known_lines.get(state)
    if lines is None:
        fields = [(n, v) for n, v in ratelimit_headers(result, rule, rate) if n != "Retry-After"]
        text = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in fields)
        lines = remember(_known_lines, state, text, _REMEMBERED_LINES)
    return lines


def throttled(
    result: RateLimitResult, rule: str, rate: Gcra, *, accept: str | None, extra: dict[str, str]
) -> ShieldAnswer:
    headers = dict(ratelimit_headers(result, rule, rate))
    headers.update(extra)
    headers["Cache-Control"] = "no-store"
    retry = headers["Retry-After"]
    if wants_json(accept):
        body = json.dumps({"error": "Too many requests.", "retry_after": int(retry)})
        return ShieldAnswer(status=429, text=body, content_type="application/json", headers=headers)
    return ShieldAnswer(status=429, text=f"Too many requests. Please retry in {retry} s.\n", headers=headers)


def blocked(*, accept: str | None, extra: dict[str, str]) -> ShieldAnswer:
    if wants_json(accept):
        body = json.dumps({"error": "Forbidden."})
        return ShieldAnswer(status=403, text=body, content_type="application/json", headers=extra)
    return ShieldAnswer(status=403, text="Forbidden.\n", headers=extra)


def banned(*, status: int, retry_after: float, accept: str | None) -> ShieldAnswer:
    """A banned client: 403, or 429 with the ban's remaining time as Retry-After."""
    headers = {"Cache-Control": "no-store"}
    if status == 429:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    text = "Too many violations; this client is banned for a while."
    if wants_json(accept):
        body = json.dumps({"error": text})
        return ShieldAnswer(status=status, text=body, content_type="application/json", headers=headers)
    return ShieldAnswer(status=status, text=text + "\n", headers=headers)


def unavailable(*, accept: str | None, extra: dict[str, str]) -> ShieldAnswer:
    """A throttle that cannot reach its shared state and was told to fail closed (on_error: deny)."""
    message = "The service is busy. Please try again shortly."
    return _retry_later(ShieldAnswer, 503, message, 1, accept, extra)


class Capped(ShieldAnswer):
    """A 429 for a client with ``limits.max_requests_per_client`` requests forwarded already."""


def too_many_in_flight(*, accept: str | None) -> Capped:
    message = "Too many requests at once. Please wait for the others to finish."
    return _retry_later(Capped, 429, message, 1, accept, {})


class Shed(ShieldAnswer):
    """A 503 from load shedding: the upstream is saturated and better-placed requests went first."""


def shed(retry_after: float, *, accept: str | None) -> Shed:
    message = "The service is under heavy load. Please try again shortly."
    return _retry_later(Shed, 503, message, max(1, math.ceil(retry_after)), accept, {})


def _retry_later(
    kind: type[_Answer], status: int, message: str, seconds: int, accept: str | None, extra: dict[str, str]
) -> _Answer:
    """A short refusal that says when to come back (Retry-After), never cached, in JSON for an
    API client."""
    headers = {"Retry-After": str(seconds), "Cache-Control": "no-store", **extra}
    if wants_json(accept):
        body = json.dumps({"error": message, "retry_after": seconds})
        return kind(status=status, text=body, content_type="application/json", headers=headers)
    return kind(status=status, text=message + "\n", headers=headers)

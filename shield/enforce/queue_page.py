"""The ``queue`` action's waiting room: a visitor's place in line and an honest estimate, on a
page that asks again by itself, or the same in JSON for an API client.

The page reloads with a ``Refresh`` header and its ``<meta>`` twin, so it works with scripts
off; when the visitor's turn comes the same URL reaches the upstream.
"""

from __future__ import annotations

import json
import math
from functools import cache
from html import escape
from importlib import resources
from string import Template

from shield.enforce.answers import human_duration, wants_json
from shield.http.answer import ShieldAnswer

__all__ = ["DEFAULT_HEADING", "queued"]

DEFAULT_HEADING = "You're in line"


@cache
def _template() -> Template:
    """templates/queue.html with the challenge pages' card (templates/challenge_card.css) filled in."""
    templates = resources.files("shield.enforce").joinpath("templates")
    style = templates.joinpath("challenge_card.css").read_text(encoding="utf-8")
    text = templates.joinpath("queue.html").read_text(encoding="utf-8")
    return Template(text.replace("$card_style", style.split("*/\n", 1)[1].rstrip("\n")))


def queued(
    *,
    position: int,
    wait: float,
    refresh: float,
    message: str,
    title: str | None,
    accept: str | None,
    status_path: str | None = None,
    extra: dict[str, str] | None = None,
    cookies: list[str] | None = None,
) -> ShieldAnswer:
    """The answer to a visitor waiting in line: ``position`` visitors ahead (0: next), about
    ``wait`` seconds to go, asked again in ``refresh`` seconds (at least 1).

    A browser gets a 200 page that refreshes itself; an API client (``wants_json``) a 429 with
    ``Retry-After``. ``message`` is the operator's text, ``title`` the page's heading (else
    "You're in line"); ``status_path``, when given, is linked. ``extra`` headers are added to
    either; ``cookies`` are Set-Cookie values, apart from ``extra`` because a dict holds one
    value per name and a ticket may need a second cookie beside it."""
    position = max(0, position)
    seconds = max(1, math.ceil(refresh))
    if wants_json(accept):
        body = json.dumps(
            {
                "error": "queued",
                "message": message,
                "position": position,
                "wait_seconds": max(0, math.ceil(wait)),
                "retry_after": seconds,
            }
        )
        headers = {"Retry-After": str(seconds), "Cache-Control": "no-store", **(extra or {})}
        response = ShieldAnswer(status=429, text=body, content_type="application/json", headers=headers)
    else:
        headers = {"Refresh": str(seconds), "Cache-Control": "no-store", **(extra or {})}
        response = ShieldAnswer(
            status=200,
            text=_page(position, wait, seconds, message, title, status_path),
            content_type="text/html",
            headers=headers,
        )
    response.cookies.extend(cookies or ())
    return response


def _page(
    position: int, wait: float, refresh: int, message: str, title: str | None, status_path: str | None
) -> str:
    if position == 0:
        place = "<strong>You're next</strong>"
        place_text = "You're next"
        ahead = "Nobody is ahead of you."
    else:
        place = f"You're number <strong>{position + 1:,}</strong> in line"
        place_text = f"You're number {position + 1:,} in line"
        ahead = "1 person is ahead of you." if position == 1 else f"{position:,} people are ahead of you."
    heading = escape(title) if title else DEFAULT_HEADING
    link = (
        f' <a href="{escape(status_path)}">See how the rest of the site is doing.</a>' if status_path else ""
    )
    return _template().safe_substitute(
        refresh=str(refresh),
        tab_title=f"{place_text} · {heading}" if title else place_text,
        heading=heading,
        message=escape(message),
        place=place,
        ahead=ahead,
        wait=human_duration(wait),
        every=human_duration(refresh).removeprefix("1 "),  # "every minute", not "every 1 minute"
        status_link=link,
    )

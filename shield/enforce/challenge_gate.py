"""The ``challenge`` action over HTTP: the puzzle page, the pass check, and the solution endpoint.

The puzzle and pass logic is ``shield.decide.challenge_tokens`` (pure); this module renders the page
(JSON clients get a 429-style JSON answer instead), takes solutions posted to ``challenge.path``
and answers them with the pass cookie and a redirect back, only ever to a path on this site.
"""

from __future__ import annotations

import json
import logging
import secrets
from html import escape
from importlib import resources
from string import Template
from urllib.parse import parse_qs

from shield.clock import Clock
from shield.config.attack import Challenge
from shield.decide.challenge_tokens import Challenger, binding
from shield.enforce.answers import ShieldAnswer, wants_json
from shield.http.connection import Request

log = logging.getLogger("shield.challenge")

MAX_SOLUTION_BYTES = 4096


def safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/``: never an open redirect."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 0x20 or c == "\x7f" for c in target)
    ):
        return "/"
    return target


def _page(name: str) -> Template:
    """A challenge page's template with the card style the two pages share filled in."""
    templates = resources.files("shield.enforce").joinpath("templates")
    style = templates.joinpath("challenge_card.css").read_text(encoding="utf-8")
    text = templates.joinpath(name).read_text(encoding="utf-8")
    return Template(text.replace("$card_style", style.split("*/\n", 1)[1].rstrip("\n")))


class ChallengeGate:
    def __init__(self, config: Challenge, *, wall: Clock) -> None:
        self.wall = wall
        # Without secret_env or secret_file: one random key for the life of the process, kept
        # across reloads so that passes already given stay valid.
        self._random_key = secrets.token_bytes(32)
        # Said once, when the first puzzle is issued: configs without challenge rules stay quiet.
        self._warn_random_key = not config.secret
        self.template = _page("challenge.html")
        self.failed_template = _page("challenge_failed.html")
        self._take(config)

    def follow(self, config: Challenge) -> None:
        """Take up a reloaded ``challenge:`` section: every setting is live, and a pass signed
        with the key in force before stays valid while the key is the same."""
        if config != self.config:
            self._take(config)

    def _take(self, config: Challenge) -> None:
        self.config = config
        # The key that signs passes, and the waiting room's tickets (shield.enforce.queue_gate).
        self.key = config.secret or self._random_key
        self.challenger = Challenger(
            self.key,
            difficulty=config.difficulty,
            solve_within=config.solve_within,
            pass_for=config.pass_for,
        )
        self.path = config.path
        self.cookie = config.cookie

    def bound(self, client_key: str) -> str:
        return binding(client_key, self.config.ipv4_prefix)

    def passes(self, cookie: str | None, client_key: str) -> bool:
        return self.challenger.passes(cookie, self.bound(client_key), self.wall.now())

    def page(self, client_key: str, target: str, accept: str | None, extra: dict[str, str]) -> ShieldAnswer:
        headers = {"Cache-Control": "no-store", **extra}
        if wants_json(accept):
            headers["Retry-After"] = "60"
            body = json.dumps({"error": "Too many requests: open this page in a browser to continue."})
            return ShieldAnswer(status=429, text=body, content_type="application/json", headers=headers)
        if self._warn_random_key:
            self._warn_random_key = False
            log.warning(
                "challenge: no secret_env or secret_file; using a random key: passes end at restart "
                "and are not valid on other replicas"
            )
        token = self.challenger.puzzle(self.bound(client_key), self.wall.now())
        page = self.template.safe_substitute(
            action=escape(self.path),
            token=escape(token),
            next=escape(safe_next(target)),
            difficulty=str(self.challenger.difficulty),
        )
        # 429 rather than 200: a script that does not solve the puzzle sees a refusal.
        return ShieldAnswer(status=429, text=page, content_type="text/html", headers=headers)

    async def submit(self, request: Request, client_key: str) -> tuple[ShieldAnswer, bool]:
        """Check a posted solution: the redirect with a pass cookie, or a 403; and whether it passed."""
        if request.method != "POST":
            return ShieldAnswer(status=405, text="POST a solution here.\n", headers={"Allow": "POST"}), False
        if (request.content_length or 0) > MAX_SOLUTION_BYTES:
            return ShieldAnswer(status=413, text="Too large.\n"), False
        body = await request.content.read(MAX_SOLUTION_BYTES + 1)
        form = parse_qs(body.decode("utf-8", "replace")) if len(body) <= MAX_SOLUTION_BYTES else {}
        token = (form.get("token") or [""])[0]
        counter = (form.get("counter") or [""])[0]
        bound = self.bound(client_key)
        now = self.wall.now()
        refused = self.challenger.check_solution(token, counter, bound, now)
        target = safe_next((form.get("next") or [""])[0])
        if refused is not None:
            log.debug("challenge solution refused: %s", refused)
            accept = request.headers.get("Accept", "")
            if "text/html" in accept:  # a browser posting the page's form: a way back, in words
                page = self.failed_template.safe_substitute(next=escape(target))
                return ShieldAnswer(status=403, text=page, content_type="text/html"), False
            return ShieldAnswer(status=403, text=f"Challenge failed: {refused}.\n"), False
        value, max_age = self.challenger.pass_cookie(bound, now)
        answer = ShieldAnswer(status=303, text="Passed.\n", headers={"Location": target})
        answer.set_cookie(
            self.cookie,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=request.secure,
        )
        return answer, True

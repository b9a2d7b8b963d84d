"""The rule file's ``rules:`` list and ``policy:`` options: the typed model, validated at load.

Strings an operator writes (limits like ``10/minute``, paths, CIDRs, regexes) are checked here,
so ``shield check`` points at the line of a bad one; ``shield.decide`` compiles the valid model.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from shield.config.auto_close import AutoClose
from shield.config.base import Section
from shield.config.client_networks import NetworkMatch
from shield.config.units import Duration

# The period units a limit may name, and nothing else: "10/ms" must not pass as ten a minute.
_UNITS = {
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
}
UNITS_TEXT = "s, sec, second(s), m, min, minute(s), h, hr, hour(s), d, day(s)"
_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")\s*$")
DEFAULT_CLOSE_MESSAGE = "This feature is temporarily unavailable."
KEY_PARTS = ("ip", "user", "route", "asn", "country")


def parse_limit(value: object) -> tuple[int, float]:
    """``"10/minute"`` -> (10, 60.0); ``"5/10s"`` -> (5, 10.0)."""
    if not isinstance(value, str) or not (match := _LIMIT.match(value)):
        raise ValueError(
            f"invalid limit {value!r}: write N/PERIOD or N/10PERIOD (10/minute, 5/10s); PERIOD: {UNITS_TEXT}"
        )
    count, multiple, unit = int(match.group(1)), match.group(2), match.group(3)
    period = _UNITS[unit] * (int(multiple) if multiple else 1)
    if count <= 0 or period <= 0:
        raise ValueError(f"invalid limit {value!r}: count and period must be positive")
    return count, float(period)


class Limit:
    """A rate: ``count`` requests per ``period`` seconds, as the operator wrote it."""

    __slots__ = ("count", "period", "text")

    def __init__(self, text: str) -> None:
        self.count, self.period = parse_limit(text)
        self.text = text.strip()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Limit) and (self.count, self.period) == (other.count, other.period)

    def __hash__(self) -> int:
        return hash((self.count, self.period))

    def __repr__(self) -> str:
        return f"Limit({self.text!r})"


def _limit(value: object) -> str:
    parse_limit(value)
    return str(value)


LimitText = Annotated[
    str,
    BeforeValidator(_limit),
    WithJsonSchema({"type": "string", "pattern": _LIMIT.pattern, "description": "e.g. 10/minute, 5/10s"}),
]


class IdentityLimits(Section):
    """One limit for anonymous clients and another for authenticated users."""

    anonymous: LimitText = Field(description="e.g. 60/minute")
    authenticated: LimitText = Field(description="e.g. 600/minute")


def _limit_kind(value: object) -> str:
    return "function-identity-limits" if isinstance(value, dict | IdentityLimits) else "function-limit"


# A tagged union, so a bad value reports the one error of the form it has, not one per form.
# The tags start with "function-" so the loader leaves them out of the key path it reports.
RuleLimit = Annotated[
    Annotated[LimitText, Tag("function-limit")] | Annotated[IdentityLimits, Tag("function-identity-limits")],
    Discriminator(_limit_kind),
]


class ValueMatch(Section):
    """How a header, cookie or query parameter must look: present, equal to, or matching a regex."""

    present: bool | None = None
    equals: str | None = None
    regex: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if value == "present":
            return {"present": True}
        if value == "absent":
            return {"present": False}
        if isinstance(value, str):
            return {"equals": value}
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex {value!r}: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _one_test(self) -> ValueMatch:
        if sum(x is not None for x in (self.present, self.equals, self.regex)) != 1:
            raise ValueError(
                "say exactly one of: present, equals, regex (or write 'present', 'absent' or a value)"
            )
        return self


def _check_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"path pattern {value!r} must start with '/'")
    for segment in value.split("/")[1:]:
        if "**" in segment and segment != "**":
            raise ValueError(f"path pattern {value!r}: '**' must be a whole segment")
    if "**" in value.split("/")[1:-1]:
        raise ValueError(f"path pattern {value!r}: '**' is only allowed as the last segment")
    return value


PathPattern = Annotated[str, BeforeValidator(lambda v: _check_path(v) if isinstance(v, str) else v)]


class Match(NetworkMatch):
    """Every condition given must hold; a list means any of its items."""

    methods: list[str] | None = Field(None, min_length=1, description="HTTP methods, e.g. [POST, PUT].")
    paths: list[PathPattern] | None = Field(
        None,
        min_length=1,
        description="Normalized path patterns: '/api/login' exact, '/api/*' one segment, "
        "'/api/**' the prefix at any depth (and '/api' itself), '/api/reg*' a name prefix.",
    )
    hosts: list[str] | None = Field(
        None, min_length=1, description="Host names (case-insensitive, port ignored); '*.example.com'."
    )
    headers: dict[str, ValueMatch] | None = Field(
        None, description="Header name -> present / equals / regex."
    )
    cookies: dict[str, ValueMatch] | None = Field(
        None, description="Cookie name -> present / equals / regex."
    )
    query: dict[str, ValueMatch] | None = Field(
        None, description="Query parameter -> present / equals / regex."
    )
    client_cidrs: list[str] | None = Field(
        None, min_length=1, description="Client addresses, e.g. [10.0.0.0/8, 2001:db8::/32]."
    )
    user_agents: list[str] | None = Field(
        None, min_length=1, description="Regexes searched in the User-Agent header."
    )

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for method in value:
            if not re.fullmatch(r"[A-Za-z]+", method):
                raise ValueError(f"invalid method {method!r}")
        return [m.upper() for m in value]

    @field_validator("client_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str] | None) -> list[str] | None:
        for cidr in value or ():
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"invalid CIDR {cidr!r}") from exc
        return value

    @field_validator("user_agents")
    @classmethod
    def _regexes(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or ():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
        return value


# The conditions that pick clients or requests across routes rather than a route itself.
FILTERS = (
    "hosts",
    "headers",
    "cookies",
    "query",
    "client_cidrs",
    "user_agents",
    *NetworkMatch.model_fields,
)


class Count(Section):
    status: list[int] = Field(description="Charge the bucket only when the upstream answers one of these.")


def _key(value: object) -> object:
    parts = value if isinstance(value, list) else [value]
    for part in parts:
        if not isinstance(part, str):
            raise ValueError("a key part must be a string")
        kind, _, name = part.partition(":")
        if kind in KEY_PARTS and not name:
            continue
        if kind in ("header", "cookie") and name:
            continue
        raise ValueError(
            f"invalid key {part!r}: use ip, user, route, asn, country, header:NAME, cookie:NAME, "
            "or a list of them"
        )
    return value


ThrottleKey = Annotated[str | list[str], BeforeValidator(_key)]


# The actions a rule key applies to (the rest: throttle).
_ACTIONS_OF: dict[str, tuple[str, ...]] = {
    "message": ("close", "queue"),
    "retry_after": ("close",),
    "burst": ("throttle", "queue"),
    "admit": ("queue",),
    "session": ("queue",),
    "challenge_first": ("queue",),
}


class Rule(Section):
    name: str = Field(description="Unique; used in metrics, logs and `shield explain`.")
    match: Match = Field(default_factory=Match, description="Which requests the rule applies to.")
    for_: Literal["anonymous", "authenticated", "everyone"] = Field(
        "everyone", alias="for", description="Which clients the rule applies to."
    )
    action: Literal["allow", "block", "close", "throttle", "challenge", "queue"]
    mode: Literal["enforce", "dry-run"] = Field(
        "enforce", description="dry-run: decide, count and log, but forward; later rules still apply."
    )
    # close, queue
    message: str | None = Field(None, description="close, queue: the text shown to clients.")
    retry_after: Duration | None = Field(None, description="close: Retry-After, e.g. 10m.")
    # throttle
    limit: RuleLimit | None = Field(
        None,
        description="throttle: N/second|minute|hour|day or N/10s, or "
        "{anonymous: LIMIT, authenticated: LIMIT}.",
    )
    burst: int | None = Field(
        None,
        ge=1,
        description="throttle: requests allowed at once (default: N); queue: visitors let in at once "
        "after a quiet spell (default: N).",
    )
    key: ThrottleKey = Field(
        "ip",
        description="throttle: ip, user, route, asn, country, header:NAME, cookie:NAME or a list; "
        "a missing header, cookie, user, ASN or country is replaced by the client IP.",
    )
    count: Count | None = Field(None, description="throttle: charge only matching upstream answers.")
    # queue
    admit: LimitText | None = Field(
        None,
        description="queue: new visitors let in, N/PERIOD across all replicas (with Redis state), "
        "first come first served; the rest wait in line.",
    )
    session: Duration | None = Field(
        None, description="queue: how long an admitted visitor stays in without queueing again (15m)."
    )
    challenge_first: bool | None = Field(
        None,
        description="queue: visitors solve the challenge page before they draw a ticket, so a "
        "script that cannot solve it never takes a place in line.",
    )
    # attack mode
    priority: Literal["critical", "normal", "low"] = Field(
        "normal",
        description="overload: who goes first when the upstream is saturated (authenticated users "
        "first, then anonymous clients of critical rules, then the rest).",
    )
    auto_close: AutoClose | None = Field(
        None, description="allow, throttle: close the rule while a trigger holds, e.g. rate > 50/second."
    )
    public_name: str | None = Field(
        None, description="The name /status shows for this rule (default: the rule name)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", value):
            raise ValueError("a rule name is 1-64 letters, digits, '_', '.', ':' or '-'")
        return value

    @field_validator(
        "limit", "burst", "count", "message", "retry_after", "admit", "session", "challenge_first"
    )
    @classmethod
    def _for_its_action(cls, value: object, info: ValidationInfo) -> object:
        # Field validators run in declaration order, so ``action`` is known here and the error
        # points at the offending key rather than at the whole rule.
        action = info.data.get("action")
        field = str(info.field_name)
        allowed = _ACTIONS_OF.get(field, ("throttle",))
        if value is not None and action is not None and action not in allowed:
            raise ValueError(f"'{field}' only applies to action: {' or '.join(allowed)}, not {action}")
        return value

    @field_validator("auto_close")
    @classmethod
    def _auto_close_applies(cls, value: AutoClose | None, info: ValidationInfo) -> AutoClose | None:
        action, mode = info.data.get("action"), info.data.get("mode")
        if value is not None and action in ("block", "close", "queue"):
            raise ValueError(f"'auto_close' applies to action: allow or throttle, not {action}")
        if value is not None and mode == "dry-run":
            raise ValueError("'auto_close' does not apply to dry-run rules (they never answer)")
        return value

    @model_validator(mode="after")
    def _throttle_has_limit(self) -> Rule:
        if self.action == "throttle" and self.limit is None:
            raise ValueError("a throttle rule needs a limit, e.g. limit: 10/minute")
        if self.action == "queue" and self.admit is None:
            raise ValueError("a queue rule needs an admission rate, e.g. admit: 30/minute")
        return self

    @property
    def admission(self) -> Limit | None:
        """queue: the rate new visitors are let in."""
        return Limit(self.admit) if self.admit is not None else None

    @property
    def rate(self) -> Limit | None:
        """The limit of anonymous clients (the only one when a single limit is given)."""
        if isinstance(self.limit, IdentityLimits):
            return Limit(self.limit.anonymous)
        return Limit(self.limit) if self.limit is not None else None

    @property
    def authenticated_rate(self) -> Limit | None:
        if isinstance(self.limit, IdentityLimits):
            return Limit(self.limit.authenticated)
        return self.rate

    @property
    def limit_text(self) -> str | None:
        if isinstance(self.limit, IdentityLimits):
            return f"{self.limit.anonymous} anonymous, {self.limit.authenticated} authenticated"
        return self.limit


class PolicyOptions(Section):
    case_insensitive_paths: bool = Field(
        False, description="Match paths ignoring case (for case-insensitive upstream routers)."
    )
    debug_header: bool = Field(False, description="Add 'X-Shield-Rule: NAME; decision' to answers.")
    close_page: str | None = Field(
        None,
        description="HTML template file for close answers; $message and $retry_after are replaced.",
    )
    default_retry_after: Duration = Field(600.0, description="Retry-After of close rules that set none.")

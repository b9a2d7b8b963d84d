"""Attack-mode settings: the ``admin.ctl`` API, ``bans:`` escalation and the ``challenge:`` action.

Secrets (the ctl token, the challenge key) are read at load from the environment variable or
file named, like ``auth:`` secrets, so ``shield check`` reports a missing one at its line.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from shield.config.auth import secret_from
from shield.config.base import Section
from shield.config.units import Duration


class Ctl(Section):
    """Operator overrides through the admin listener; always behind a bearer token."""

    token_env: str | None = Field(None, description="Environment variable holding the ctl token.")
    token_file: str | None = Field(None, description="File holding the ctl token.")
    default_duration: Duration = Field(
        3600.0, gt=0, description="How long `ctl close` and `ctl queue` last when --for is not given."
    )
    max_duration: Duration = Field(
        86400.0,
        gt=0,
        description="The longest a ctl closure or waiting room may last: nothing stays closed or "
        "queued by accident.",
    )

    _token: bytes = PrivateAttr(b"")

    @model_validator(mode="after")
    def _one_token(self) -> Ctl:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("the ctl API needs a token: give exactly one of token_env, token_file")
        token = secret_from(self.token_env, self.token_file)
        if len(token) < 16:
            raise ValueError("the ctl token must be at least 16 characters long")
        self._token = token
        if self.default_duration > self.max_duration:
            raise ValueError("default_duration must not exceed max_duration")
        return self

    @property
    def token(self) -> bytes:
        return self._token


class Bans(Section):
    """fail2ban-style: ``after`` violations within ``within`` ban for duration x factor^(n-1)."""

    after: int = Field(20, ge=1, description="Violations (throttled or blocked answers) that earn a ban.")
    within: Duration = Field(60.0, gt=0, description="...counted over this sliding window.")
    duration: Duration = Field(600.0, gt=0, description="The first ban's length.")
    factor: float = Field(2.0, ge=1.0, description="Each later ban lasts this many times longer...")
    max_duration: Duration = Field(86400.0, gt=0, description="...up to this.")
    remember: Duration = Field(
        86400.0, gt=0, description="A client's ban count is forgotten this long after its last ban."
    )
    answer: Literal[403, 429] = Field(403, description="What a banned client gets.")
    max_entries: int = Field(
        100_000, ge=100, description="Clients tracked at most (violations and bans); oldest go first."
    )

    @model_validator(mode="after")
    def _cap(self) -> Bans:
        if self.duration > self.max_duration:
            raise ValueError("duration must not exceed max_duration")
        return self


class Challenge(Section):
    """The proof-of-work page of ``action: challenge`` rules and the pass cookie it earns."""

    difficulty: int = Field(16, ge=1, le=32, description="Leading zero bits of SHA-256 to find.")
    pass_for: Duration = Field(3600.0, gt=0, description="How long a solved puzzle's pass cookie lasts.")
    solve_within: Duration = Field(300.0, gt=0, description="A puzzle expires this long after issue.")
    cookie: str = Field("shield_pass", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Pass cookie name.")
    path: str = Field(
        "/.shield/challenge", pattern=r"^/[A-Za-z0-9._/-]+$", description="Where solutions are posted."
    )
    ipv4_prefix: int = Field(
        32, ge=8, le=32, description="A pass is valid for the client's address within this prefix."
    )
    secret_env: str | None = Field(None, description="Environment variable holding the signing key.")
    secret_file: str | None = Field(
        None,
        description="File holding the signing key. Neither: a random key per process (passes do "
        "not survive restarts and are not shared by replicas).",
    )

    _secret: bytes = PrivateAttr(b"")

    @model_validator(mode="after")
    def _load_secret(self) -> Challenge:
        if self.secret_env is not None and self.secret_file is not None:
            raise ValueError("give at most one of secret_env, secret_file")
        self._secret = secret_from(self.secret_env, self.secret_file)
        return self

    @property
    def secret(self) -> bytes:
        """The configured key, or b"" when one must be generated at start."""
        return self._secret

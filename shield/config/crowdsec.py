"""The ``crowdsec:`` section: Shield follows a CrowdSec Local API (LAPI) as a bouncer.

The bouncer key is read at load from the environment variable or file named, like the other
secrets, so ``shield check`` reports a missing one at its line; it never sits in the file.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, field_validator, model_validator

from shield.config.auth import secret_from
from shield.config.base import Section
from shield.config.units import Duration


class Crowdsec(Section):
    """A CrowdSec Local API whose ``ban`` and ``captcha`` decisions on IPs and ranges apply here."""

    url: str = Field(
        "http://127.0.0.1:8080",
        description="Base URL of the CrowdSec Local API (http:// or https://), as bouncers are "
        "given it; the decision stream is asked at its v1/decisions/stream.",
    )
    api_key_env: str | None = Field(
        None, description="Environment variable holding the bouncer key (`cscli bouncers add NAME`)."
    )
    api_key_file: str | None = Field(
        None, description="File holding the bouncer key, instead of api_key_env."
    )
    poll: Duration = Field(10.0, gt=0, description="How often the decision stream is asked for what changed.")
    timeout: Duration = Field(
        5.0,
        gt=0,
        description="How long one call to the Local API may take; past it the poll counts as failed "
        "and the decisions in force stay.",
    )

    answer: Literal[403, 429] = Field(
        403, description="What a client CrowdSec bans gets (captcha decisions get the challenge page)."
    )

    _api_key: str = PrivateAttr("")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"crowdsec.url must be an http:// or https:// URL with a host, not {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("crowdsec.url must not carry a query or fragment")
        return value

    @model_validator(mode="after")
    def _one_key(self) -> Crowdsec:
        if (self.api_key_env is None) == (self.api_key_file is None):
            raise ValueError("the bouncer key: give exactly one of api_key_env, api_key_file")
        key = secret_from(self.api_key_env, self.api_key_file)
        where = self.key_source
        if not key:
            raise ValueError(f"the bouncer key in {where} is empty")
        # It travels in the X-Api-Key header: no whitespace or control characters (cscli's are hex).
        if not all(0x21 <= byte <= 0x7E for byte in key):
            raise ValueError(f"the bouncer key in {where} holds whitespace or non-ASCII characters")
        self._api_key = key.decode("ascii")
        return self

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def key_source(self) -> str:
        """Where the key comes from, for messages: ``environment variable NAME`` or ``file PATH``."""
        if self.api_key_env is not None:
            return f"environment variable {self.api_key_env}"
        return f"file {self.api_key_file}"

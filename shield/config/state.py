"""The ``state:`` section: where throttle counters (and later bans and switches) live."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator

from shield.config.base import Section
from shield.config.units import Duration

REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
OnStateError = Literal["allow", "deny", "local"]


@dataclass(frozen=True)
class SeedList:
    """The parts of a multi-host URL: credentials, (host, port) seeds and the path segments."""

    username: str | None
    password: str | None
    hosts: list[tuple[str, int]]
    path: list[str]
    tls: bool


def parse_seed_url(url: str, default_port: int) -> SeedList:
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    hosts = []
    for item in hostlist.split(","):
        item = item.strip()
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        if not host:
            raise ValueError(f"state.url {url!r}: a seed host is empty")
        if port and not port.isdigit():
            raise ValueError(f"state.url {url!r}: invalid port {port!r}")
        hosts.append((host, int(port) if port else default_port))
    return SeedList(
        username=unquote(username) or None,
        password=unquote(password) or None,
        hosts=hosts,
        path=[segment for segment in parts.path.split("/") if segment],
        tls=parts.scheme.startswith("rediss"),
    )


class Breaker(Section):
    """Stop calling a failing Redis for a while instead of making every request wait out the timeout."""

    failures: int = Field(5, ge=1, description="Consecutive failed calls that open the breaker.")
    open_for: Duration = Field(
        2.0, gt=0, description="How long an open breaker skips Redis before one probe call may try it."
    )


class StateConfig(Section):
    backend: Literal["memory", "redis"] = Field(
        "memory",
        description="memory: counters in this process (one replica); redis: shared by every replica.",
    )
    max_keys: int = Field(
        1_000_000,
        ge=100,
        description="Throttle buckets kept in memory at most (about 250 bytes each); the least "
        "recently charged go first. Also bounds the redis backend's local caches.",
    )
    url: str | None = Field(
        None,
        description="redis://[:password@]host:6379/0, rediss:// for TLS, unix:///path.sock; "
        "redis+sentinel://host:26379,host2:26379/SERVICE/0; redis+cluster://host:7000,host2:7001.",
    )
    key_prefix: str = Field("shield:", description="Prefix of every Redis key Shield writes.")
    on_error: OnStateError = Field(
        "allow",
        description="When Redis fails or is too slow: allow (fail open), deny (503), or local "
        "(count in this process's memory until Redis answers again).",
    )
    timeout: Duration = Field(
        0.025, gt=0, description="Longest wait for one Redis call before on_error applies."
    )
    connect_timeout: Duration = Field(0.5, gt=0, description="Connecting to Redis.")
    pool_size: int = Field(
        4,
        ge=1,
        le=64,
        description="Redis connections for throttle decisions, which are batched onto them "
        "(the other shared state has a pool of as many).",
    )
    breaker: Breaker = Field(default_factory=Breaker)
    per_worker_limits: bool = Field(
        False,
        description="Accept that with workers > 1 and memory state each worker counts alone, so "
        "every limit is multiplied by the number of workers.",
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            scheme = urlsplit(value).scheme
            if scheme not in REDIS_SCHEMES:
                raise ValueError(
                    f"state.url must start with one of {', '.join(s + '://' for s in REDIS_SCHEMES)}"
                )
            if scheme.endswith("+sentinel"):
                seeds = parse_seed_url(value, 26379)
                if not seeds.path or (len(seeds.path) > 1 and not seeds.path[1].isdigit()):
                    raise ValueError(f"state.url {value!r}: write .../SERVICE or .../SERVICE/DB")
            elif scheme.endswith("+cluster"):
                parse_seed_url(value, 6379)
        return value

    @model_validator(mode="after")
    def _redis_needs_url(self) -> StateConfig:
        if self.backend == "redis" and self.url is None:
            raise ValueError("backend: redis needs a url, e.g. url: redis://127.0.0.1:6379/0")
        return self

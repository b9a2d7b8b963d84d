"""The typed model of Shield's config file.

Every section forbids unknown keys, so a typo is an error with a location, never a silently
ignored setting. Later features add sections here; the loader needs no change to report their
errors at the right line.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from shield.config.attack import Bans, Challenge, Ctl
from shield.config.auth import Auth, Clients
from shield.config.base import Section
from shield.config.client_networks import AddressList, Geo, check_list_names
from shield.config.crowdsec import Crowdsec
from shield.config.offenders import Top
from shield.config.overload import Overload, StatusPage
from shield.config.rules import PolicyOptions, Rule
from shield.config.state import StateConfig
from shield.config.units import Duration, Size
from shield.config.waiting_room import WaitingRoom


def _split_host_port(value: str, default_host: str) -> tuple[str, int]:
    text = value.strip()
    if text.isdigit():
        return default_host, int(text)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"invalid address {value!r}: expected '[v6addr]:port'")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"invalid address {value!r}: expected 'host:port' or a port")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid port in {value!r}")
    return host or default_host, int(port)


class TLSListener(Section):
    cert: str = Field(description="PEM certificate chain file.")
    key: str = Field(description="PEM private key file.")


class Listener(Section):
    """Where a listener binds. Written as ``"host:port"``, a bare port, or a mapping."""

    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    tls: TLSListener | None = None
    proxy_protocol: bool = Field(
        False,
        description="Every connection starts with a PROXY protocol v1/v2 header (HAProxy, AWS NLB) "
        "whose source address is the peer; a connection without one is closed.",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"port": value}
        if isinstance(value, str):
            # A bare port binds where this kind of listener binds by default.
            host, port = _split_host_port(value, cls.model_fields["host"].default)
            return {"host": host, "port": port}
        return value


class AdminListener(Listener):
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)

    @field_validator("proxy_protocol")
    @classmethod
    def _public_only(cls, value: bool) -> bool:
        if value:
            raise ValueError("proxy_protocol applies to the public listener only")
        return value


class Admin(Section):
    listen: AdminListener = Field(default_factory=AdminListener)
    ready_grace: Duration = Field(
        10.0, description="Report ready after this long even if the upstream never answered."
    )
    ctl: Ctl | None = Field(
        None,
        description="The ctl API (/ctl/...): close, queue and open rules, list and lift bans, top "
        "offenders. Off without it.",
    )
    request_metrics: bool = Field(
        True,
        description="Count and time every request for /metrics (shield_requests_total and the two "
        "duration histograms). Off, those stay empty and each request costs a little less.",
    )


class Pool(Section):
    max_connections: int = Field(512, ge=1, description="Upstream connections at most.")
    idle_timeout: Duration = Field(
        4.0,
        description="Close idle upstream connections after this long; keep it below the "
        "upstream's own keep-alive timeout (gunicorn 2s, Node 5s, nginx 75s).",
    )


class Upstream(Section):
    url: str = Field(description="http://host:port or https://host:port of the protected service.")
    host_header: str = Field(
        "preserve",
        description="'preserve' passes the client's Host; 'upstream' sends the upstream's; "
        "any other value is sent as is.",
    )
    ca_file: str | None = Field(None, description="CA bundle for an https upstream (default: system CAs).")
    pool: Pool = Field(default_factory=Pool)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: object) -> object:
        return {"url": value} if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http:// or https:// URL with a host, not {value!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("upstream URL must not carry a path, query or fragment")
        return value

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname
        assert host is not None  # checked by _check_url
        return host

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        return port if port is not None else (443 if self.scheme == "https" else 80)

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class Timeouts(Section):
    connect: Duration = Field(5.0, description="Connecting to the upstream.")
    upstream_headers: Duration = Field(60.0, description="Waiting for the upstream's response headers.")
    upstream_idle: Duration = Field(60.0, description="Longest pause inside the upstream's response body.")
    client_header: Duration = Field(10.0, description="Receiving a request's headers (slowloris guard).")
    client_idle: Duration = Field(60.0, description="Longest pause inside a client's request body.")
    data_rate_grace: Duration = Field(
        5.0, description="How long a body may run below limits.min_data_rate before it counts."
    )
    client_send: Duration = Field(
        60.0,
        description="A client that takes nothing of its answer for this long is cut off, and the "
        "upstream connection streaming to it closed (nginx's send_timeout).",
    )
    keepalive: Duration = Field(75.0, description="Idle client keep-alive connections close after this.")
    shutdown_grace: Duration = Field(30.0, description="On SIGTERM, in-flight requests get this long.")


class Limits(Section):
    max_header_size: Size = Field(
        8190, ge=256, description="Request line and each header line (400 past it)."
    )
    max_headers: int = Field(128, ge=8, description="Header lines per request.")
    max_header_total: Size = Field(
        64 * 1024,
        ge=1024,
        description="A request's whole head, request line and headers (431 past it, checked while "
        "it arrives): within the per-line and count limits alone, a head could hold a megabyte.",
    )
    max_body_size: Size = Field(100 * 1024**2, ge=0, description="Request body bytes (413 past it).")
    buffer_request_body: Size = Field(
        1024 * 1024,
        ge=0,
        description="Request bodies up to this size are read whole before an upstream connection "
        "is taken, so a slow client holds none; longer ones stream (nginx's request buffering).",
    )
    buffer_response: Size = Field(
        256 * 1024,
        ge=0,
        description="Up to this much of an answer waits in Shield for a slow client, so an answer "
        "this size goes back to the pool's connection whatever the client's speed, and a longer "
        "one holds it only past it (nginx's proxy_buffering; bytes go to the client as they "
        "come either way). 0: the transport's default (64 KiB).",
    )
    min_data_rate: int = Field(
        240,
        ge=0,
        description="Bytes a second a body must average, each way, once timeouts.data_rate_grace "
        "is over: a slower upload gets 408, a slower reader of a streamed answer is cut off "
        "(Kestrel's minimum data rates). 0: no minimum.",
    )
    max_connections_per_client: int = Field(
        0,
        ge=0,
        description="Connections one address may hold open at once; past it a new one is closed "
        "at once (nginx's limit_conn). Trusted proxies are not counted (they carry many "
        "clients); an IPv6 client counts by clients.ipv6_prefix. 0: no cap.",
    )
    max_requests_per_client: int = Field(
        0,
        ge=0,
        description="Requests one client (its throttle key: behind trusted proxies, the client "
        "they name) may have forwarded at once; past it 429 with Retry-After. Shield's own "
        "answers and WebSocket sessions are not counted. 0: no cap.",
    )


class Forwarding(Section):
    forwarded_header: bool = Field(False, description="Also send an RFC 7239 Forwarded header.")
    keep_rewrite_headers: bool = Field(
        False,
        description="Pass X-Original-URL, X-Rewrite-URL and X-HTTP-Method-Override style headers "
        "through. They let a client reroute a request past per-route rules on many frameworks.",
    )
    via: str = Field("1.1 shield", description="The Via value added to forwarded requests.")
    identity_headers: bool = Field(
        False,
        description="Tell the upstream who Shield saw: X-Shield-Client-IP, X-Shield-Authenticated, "
        "X-Shield-User. Clients' own X-Shield-* identity headers are always stripped.",
    )
    underscores_in_headers: Literal["drop", "refuse", "allow"] = Field(
        "drop",
        description="Request headers whose name has an underscore (X_Evil): drop them before the "
        "rules read the request (nginx's default), refuse the request with 400, or allow them. "
        "WSGI and CGI applications read X_Evil and X-Evil as the same HTTP_X_EVIL, so a rule on "
        "one is sidestepped with the other when they are allowed.",
    )


class AccessLog(Section):
    enabled: bool = Field(False, description="Write one JSON line per request to stdout.")
    sample: float = Field(
        1.0, gt=0.0, le=1.0, description="Share of requests logged (0.01 logs one in a hundred)."
    )


class ShieldConfig(Section):
    """The whole config file."""

    listen: Listener = Field(default_factory=Listener)
    upstream: Upstream
    admin: Admin = Field(default_factory=Admin)
    state: StateConfig = Field(default_factory=StateConfig)
    workers: int = Field(1, ge=1, le=256, description="Processes sharing the listen port (SO_REUSEPORT).")
    timeouts: Timeouts = Field(default_factory=Timeouts)
    limits: Limits = Field(default_factory=Limits)
    forwarding: Forwarding = Field(default_factory=Forwarding)
    access_log: AccessLog = Field(default_factory=AccessLog)
    clients: Clients = Field(default_factory=Clients)
    auth: Auth = Field(default_factory=Auth)
    policy: PolicyOptions = Field(default_factory=PolicyOptions)
    bans: Bans | None = Field(None, description="Ban clients that keep hitting throttles or blocks.")
    challenge: Challenge = Field(
        default_factory=Challenge, description="The proof-of-work page of action: challenge rules."
    )
    geo: Geo = Field(
        default_factory=Geo, description="Network databases: the client's ASN and country for rules."
    )
    lists: dict[str, AddressList] = Field(
        default_factory=dict,
        description="Address lists by name, for the client_lists condition: NAME: {file: PATH}.",
    )
    crowdsec: Crowdsec | None = Field(
        None,
        description="Follow a CrowdSec Local API as a bouncer: its ban decisions answered as bans, "
        "its captcha decisions with the challenge page.",
    )
    queue: WaitingRoom = Field(
        default_factory=WaitingRoom,
        description="The waiting room of action: queue rules: refresh, ticket lifetime, draw limit, cookies.",
    )
    rules: list[Rule] = Field(default_factory=list, description="First match wins, top to bottom.")
    overload: Overload | None = Field(None, description="Priority load shedding (restart to change).")
    status_page: StatusPage = Field(default_factory=StatusPage)
    top: Top = Field(
        default_factory=Top, description="Top offenders for `shield ctl top` (restart to change)."
    )
    schema_: str | None = Field(None, alias="$schema", description="JSON Schema reference for editors.")

    _list_names = field_validator("lists")(check_list_names)

    @model_validator(mode="after")
    def _admin_apart_from_public(self) -> ShieldConfig:
        if self.admin.listen.port == self.listen.port and self.listen.port != 0:
            raise ValueError("admin.listen must not share the public listen port")
        return self

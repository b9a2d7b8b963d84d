"""What is known about one request as it crosses Shield: made by the observer, filled in by the
gatekeeper (what rules see of it) and the proxy, read by the observer for metrics and the log."""

from __future__ import annotations

from shield.decide.policy import RequestView


class Exchange(RequestView):
    """What is known about one request as it crosses Shield.

    It is the request's ``RequestView``: the gatekeeper sets the parts rules look at (method,
    canonical path, client, identity...) on it, so one record per request serves the rules,
    the metrics and the access log. Until then ``client_ip`` and ``path`` are empty."""

    __slots__ = ("id_line", "labels", "sent", "upstream_seconds")

    def __init__(self, id_line: bytes) -> None:
        # "X-Request-ID: <id>\r\n" (``RequestIds.line_of``): the form the hot path sends.
        self.id_line = id_line
        # (rule, action, decision, identity) once decided: the request counter's key as it is.
        self.labels: tuple[str, str, str, str] | None = None
        self.client_ip = ""
        # The client's throttle key (an IPv6 client's prefix), what per-client caps count by.
        self.client_key = ""
        self.path = ""
        self._host = None
        self.upstream_seconds: float | None = None
        self.sent = -1  # body bytes of a streamed answer, counted by the proxy

    @property
    def request_id(self) -> str:
        return self.id_line[14:-2].decode("latin-1")

    def decided(self, rule: str, action: str, decision: str, identity: str) -> None:
        self.labels = (rule, action, decision, identity)

    @property
    def rule(self) -> str | None:
        return self.labels[0] if self.labels is not None else None

    @property
    def decision(self) -> str | None:
        return self.labels[2] if self.labels is not None else None

    @property
    def identity_label(self) -> str:
        """The identity class of the decision's labels ("anonymous" before any decision)."""
        return self.labels[3] if self.labels is not None else "anonymous"

"""What is known about one request as it crosses Shield: filled by the gatekeeper and the proxy,
read by the observer for metrics and the access log."""

from __future__ import annotations


class Exchange:
    """What is known about one request as it crosses Shield."""

    __slots__ = (
        "action",
        "client_ip",
        "decision",
        "identity",
        "path",
        "request_id",
        "rule",
        "sent",
        "upstream_seconds",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.rule: str | None = None
        self.action = ""
        self.decision: str | None = None
        self.identity = "anonymous"
        self.client_ip: str | None = None
        self.path: str | None = None
        self.upstream_seconds: float | None = None
        self.sent = -1  # body bytes of a streamed answer, counted by the proxy

    def decided(self, rule: str, action: str, decision: str, identity: str) -> None:
        self.rule = rule
        self.action = action
        self.decision = decision
        self.identity = identity

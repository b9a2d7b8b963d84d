"""Shield's exceptions, in one tree.

ShieldError
  ConfigError      the config file is unreadable or invalid; carries every issue found
  UpstreamError    the upstream could not be reached or answered badly
    UpstreamConnectError   connecting failed (refused, DNS, TLS)       -> 502
    UpstreamTimeout        connect, response headers or body idle      -> 504
    UpstreamProtocolError  malformed response, reset mid-message       -> 502
"""

from __future__ import annotations

from dataclasses import dataclass


class ShieldError(Exception):
    """Base of every error Shield raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file, located at a line and column (both 1-based)."""

    file: str
    line: int
    column: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else f"{self.severity}: "
        return f"{self.file}:{self.line}:{self.column}: {prefix}{self.message}"


class ConfigError(ShieldError):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


class UpstreamError(ShieldError):
    """The upstream failed; ``kind`` is a bounded label for metrics and logs."""

    kind = "error"


class UpstreamConnectError(UpstreamError):
    kind = "connect"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamProtocolError(UpstreamError):
    kind = "reset"

"""Recognizing a WebSocket handshake (RFC 6455 §4.1). The upgrade itself is the upstream's to
accept: ``Proxy.upgrade`` asks, and on its 101 ``shield.upstream.tunnel`` splices the connections."""

from __future__ import annotations

from collections.abc import Mapping


def is_websocket_upgrade(headers: Mapping[str, str]) -> bool:
    upgrade = headers.get("Upgrade")
    if upgrade is None or upgrade.lower() != "websocket":
        return False
    connection = headers.get("Connection", "")
    return "upgrade" in (token.strip().lower() for token in connection.split(","))

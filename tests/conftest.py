"""Shared fixtures: a Shield started in-process in front of a test's own upstream."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from shield.config.model import ShieldConfig
from shield.server import Shield

MakeShield = Callable[..., Awaitable[Shield]]


def shield_config(upstream_url: str, **sections: Any) -> ShieldConfig:
    """A config for tests: ephemeral public and admin ports, the given sections merged in."""
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"listen": {"host": "127.0.0.1", "port": 0}},
        "upstream": {"url": upstream_url},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return ShieldConfig.model_validate(data)


@pytest.fixture
async def make_shield() -> AsyncIterator[MakeShield]:
    """``await make_shield(upstream_url, timeouts={...}, ...)`` starts a Shield; stopped after."""
    started: list[Shield] = []

    async def make(upstream_url: str, **sections: Any) -> Shield:
        shield = Shield(shield_config(upstream_url, **sections))
        await shield.start()
        started.append(shield)
        return shield

    yield make
    for shield in started:
        await shield.stop(grace=1.0)


def free_port() -> int:
    """A TCP port free on loopback right now, for configs of subprocesses."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def url_of(shield: Shield, path: str = "/") -> str:
    return f"http://127.0.0.1:{shield.port}{path}"

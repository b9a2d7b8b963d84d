"""The admin listener: liveness, readiness, Prometheus metrics and the config report, never on the
public port."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass
class AdminState:
    """What /readyz reports: ready once the upstream answered, or once the grace period passed."""

    ready_grace: float
    started: float = field(default_factory=time.monotonic)
    upstream_seen: bool = False
    shutting_down: bool = False
    # Why a dependency Shield can serve without (the shared state) is failing, or None.
    degraded: Callable[[], str | None] = lambda: None

    def readiness(self) -> tuple[bool, str]:
        """Ready or not, and why. A degraded state backend stays ready: the failure policy
        serves requests, and failing every replica's readiness at once would be an outage."""
        if self.shutting_down:
            return False, "shutting down"
        if self.upstream_seen:
            reason = "ready"
        elif time.monotonic() - self.started >= self.ready_grace:
            reason = "ready (upstream not seen yet; grace period over)"
        else:
            return False, "waiting for the upstream to answer"
        degraded = self.degraded()
        return True, reason if degraded is None else f"{reason}; degraded: {degraded}"


STATE = web.AppKey("state", AdminState)
METRICS = web.AppKey("metrics", CollectorRegistry)
ConfigReport = Callable[[], dict[str, Any]]
CONFIG: web.AppKey[ConfigReport] = web.AppKey("config")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    ready, reason = request.app[STATE].readiness()
    return web.Response(status=200 if ready else 503, text=reason + "\n")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def config_report(request: web.Request) -> web.Response:
    """The config version in force, the settings waiting for a restart, and a digest of each
    restart-only setting the process runs with (``shield check --running`` compares a file to
    them; ``shield.config.reloadable.digests`` says why digests and not values)."""
    return web.json_response(request.app[CONFIG]())


def build_admin_app(
    state: AdminState,
    registry: CollectorRegistry,
    ctl: web.Application | None = None,
    config: ConfigReport | None = None,
) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app[METRICS] = registry
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if config is not None:
        app[CONFIG] = config
        app.router.add_get("/config", config_report)
    if ctl is not None:
        app.add_subapp("/ctl/", ctl)
    return app

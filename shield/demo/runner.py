"""``shield demo``: the demo service and Shield in front of it, in one process."""

from __future__ import annotations

import asyncio
import os
import secrets

from aiohttp import web
from yarl import URL

from shield.app.processes import serve
from shield.app.server import Shield, install_uvloop
from shield.config.attack import Ctl
from shield.config.model import ShieldConfig
from shield.demo.service import build_demo_app, try_lines


async def _demo(config: ShieldConfig, config_path: str, upstream_port: int, ctl_token: str) -> None:
    runner = web.AppRunner(build_demo_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.upstream.host, upstream_port)
    await site.start()

    async def announce(shield: Shield) -> None:
        public = f"http://{config.listen.host}:{shield.port}"
        admin = f"http://{config.admin.listen.host}:{shield.admin_port}"
        print(try_lines(public, admin, ctl_token), flush=True)

    try:
        await serve(config, config_path=config_path, started=announce)
    finally:
        await runner.cleanup()


_DEMO_TOKEN = "SHIELD_DEMO_CTL_TOKEN"


def run_demo(config: ShieldConfig, *, config_path: str, upstream_port: int | None = None) -> int:
    install_uvloop()
    if upstream_port is not None and upstream_port != config.upstream.port:
        # The demo service listens on --upstream-port: Shield must forward there, not to the file's.
        url = str(URL(config.upstream.url).with_port(upstream_port))
        config = config.model_copy(update={"upstream": config.upstream.model_copy(update={"url": url})})
    if config.admin.ctl is None:
        config = _with_ctl(config)
    ctl = config.admin.ctl
    assert ctl is not None
    asyncio.run(_demo(config, config_path, config.upstream.port, ctl.token.decode()))
    return 0


def _with_ctl(config: ShieldConfig) -> ShieldConfig:
    """``config`` with the ctl API on under a fresh token, printed for the tour (so the demo's
    own file stays checkable without a token to give)."""
    os.environ.setdefault(_DEMO_TOKEN, secrets.token_urlsafe(18))
    admin = config.admin.model_copy(update={"ctl": Ctl(token_env=_DEMO_TOKEN)})
    return config.model_copy(update={"admin": admin})

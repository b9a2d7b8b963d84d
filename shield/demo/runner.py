"""``shield demo``: the demo service and Shield in front of it, in one process."""

from __future__ import annotations

import asyncio

from aiohttp import web
from yarl import URL

from shield.app.processes import serve
from shield.app.server import Shield, install_uvloop
from shield.config.model import ShieldConfig
from shield.demo.service import build_demo_app, try_lines


async def _demo(config: ShieldConfig, config_path: str, upstream_port: int) -> None:
    runner = web.AppRunner(build_demo_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.upstream.host, upstream_port)
    await site.start()

    async def announce(shield: Shield) -> None:
        public = f"http://{config.listen.host}:{shield.port}"
        admin = f"http://{config.admin.listen.host}:{shield.admin_port}"
        print(try_lines(public, admin), flush=True)

    try:
        await serve(config, config_path=config_path, started=announce)
    finally:
        await runner.cleanup()


def run_demo(config: ShieldConfig, *, config_path: str, upstream_port: int | None = None) -> int:
    install_uvloop()
    if upstream_port is not None and upstream_port != config.upstream.port:
        # The demo service listens on --upstream-port: Shield must forward there, not to the file's.
        url = str(URL(config.upstream.url).with_port(upstream_port))
        config = config.model_copy(update={"upstream": config.upstream.model_copy(update={"url": url})})
    asyncio.run(_demo(config, config_path, config.upstream.port))
    return 0

"""A real CrowdSec Local API (LAPI) of a test's own: ``crowdsec -no-cs`` on a free port.

The binaries come from Debian's crowdsec package, which scripts/test.sh unpacks into
``.venv/crowdsec`` (installing it would run its postinst, which registers with CrowdSec's Central
API and fails offline). The config written here runs only the LAPI: no acquisition or parsers
(``-no-cs``), no Central API (no ``online_client``), no hub, no Prometheus listener, a sqlite
database in the test's directory; so it works offline and needs no root. ``cscli`` talks to the
same database directly (bouncers, machines) and to the LAPI with a machine login (decisions).
Only missing binaries skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
UNPACKED = REPO / ".venv" / "crowdsec" / "usr" / "bin"
MACHINE = "shield-tests"


@dataclass(frozen=True)
class Binaries:
    crowdsec: str
    cscli: str


def crowdsec_binaries() -> Binaries:
    """crowdsec and cscli: $CROWDSEC_BIN_DIR, the package scripts/test.sh unpacks, or installed."""
    places = [Path(os.environ["CROWDSEC_BIN_DIR"])] if os.environ.get("CROWDSEC_BIN_DIR") else []
    places += [UNPACKED, Path("/usr/bin")]
    for place in places:
        crowdsec, cscli = place / "crowdsec", place / "cscli"
        if os.access(crowdsec, os.X_OK) and os.access(cscli, os.X_OK):
            return Binaries(str(crowdsec), str(cscli))
    crowdsec_found, cscli_found = shutil.which("crowdsec"), shutil.which("cscli")
    if crowdsec_found and cscli_found:
        return Binaries(crowdsec_found, cscli_found)
    pytest.skip(
        f"no crowdsec and cscli binaries (looked in {', '.join(map(str, places))} and PATH): "
        "scripts/test.sh unpacks Debian's crowdsec package into .venv/crowdsec"
    )


CONFIG = """\
common:
  daemonize: false
  log_media: stdout
  log_level: info
config_paths:
  config_dir: {dir}/
  data_dir: {dir}/data/
  hub_dir: {dir}/hub/
  index_path: {dir}/hub/.index.json
  simulation_path: {dir}/simulation.yaml
db_config:
  type: sqlite
  db_path: {dir}/data/crowdsec.db
  use_wal: true
api:
  client:
    credentials_path: {dir}/local_api_credentials.yaml
  server:
    listen_uri: 127.0.0.1:{port}
    profiles_path: {dir}/profiles.yaml
prometheus:
  enabled: false
"""
# The LAPI reads its profiles at start; decisions added with cscli do not go through them.
PROFILES = """\
name: default_ip_remediation
filters:
  - Alert.Remediation == true && Alert.GetScope() == "Ip"
decisions:
  - type: ban
    duration: 4h
on_success: break
"""


@dataclass
class Lapi:
    """One LAPI process on ``port`` with its files in ``directory``; ``stop`` kills it, ``start``
    brings it back on the same port and database (``wipe`` in between: an empty one)."""

    directory: Path
    binaries: Binaries = field(default_factory=crowdsec_binaries)
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def log(self) -> Path:
        return self.directory / "crowdsec.log"

    async def start(self) -> None:
        """Launch the LAPI (writing its config the first time) and wait until it answers."""
        assert self.process is None, "already running"
        if not self.config.exists():
            for sub in ("data", "hub"):
                (self.directory / sub).mkdir(parents=True, exist_ok=True)
            self.config.write_text(CONFIG.format(dir=self.directory, port=self.port))
            (self.directory / "profiles.yaml").write_text(PROFILES)
            (self.directory / "simulation.yaml").write_text("simulation: false\n")
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                self.binaries.crowdsec, "-c", str(self.config), "-no-cs", stdout=log, stderr=log
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        async with aiohttp.ClientSession() as client:
            while True:
                assert self.process.returncode is None, f"crowdsec exited:\n{self.log.read_text()}"
                try:
                    # Without a key the stream answers 403: the LAPI is up and its database open.
                    async with client.get(f"{self.url}/v1/decisions/stream") as response:
                        if response.status == 403:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert loop.time() < deadline, f"crowdsec did not answer:\n{self.log.read_text()}"
                await asyncio.sleep(0.02)
        if not (self.directory / "local_api_credentials.yaml").exists():
            # cscli decisions add logs in to the LAPI as a machine (watcher).
            await self.cscli(
                "machines", "add", MACHINE, "--auto", "--force", "--url", self.url,
                "-f", str(self.directory / "local_api_credentials.yaml"),
            )  # fmt: skip

    async def stop(self) -> None:
        """Kill the LAPI (SIGKILL: no goodbye to its clients) and wait for it to be gone."""
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        self.process = None

    def wipe(self) -> None:
        """Forget every bouncer, machine and decision: a LAPI rebuilt from scratch (stopped first)."""
        assert self.process is None, "stop it first"
        for path in (self.directory / "data").glob("crowdsec.db*"):
            path.unlink()
        (self.directory / "local_api_credentials.yaml").unlink(missing_ok=True)

    async def cscli(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            self.binaries.cscli, "-c", str(self.config), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        assert process.returncode == 0, f"cscli {' '.join(args)}: {err.decode()}"
        return out.decode()

    async def add_bouncer(self, name: str, key: str | None = None) -> str:
        """Register a bouncer (with ``key``, or one cscli makes up); its API key."""
        return (await self.cscli("bouncers", "add", name, "-o", "raw", *(["-k", key] if key else []))).strip()

    async def add_decision(
        self, *, ip: str | None = None, range: str | None = None, type: str = "ban", duration: str = "1h"
    ) -> None:
        target = ["--ip", ip] if ip is not None else ["--range", str(range)]
        await self.cscli("decisions", "add", *target, "--duration", duration, "--type", type)

    async def delete_decisions(self, *, ip: str | None = None, range: str | None = None) -> None:
        target = ["--ip", ip] if ip is not None else ["--range", str(range)]
        await self.cscli("decisions", "delete", *target)


@asynccontextmanager
async def running_lapi(directory: Path) -> AsyncIterator[Lapi]:
    """A LAPI started in ``directory``, killed at the end whatever state the test left it in."""
    lapi = Lapi(directory)
    await lapi.start()
    try:
        yield lapi
    finally:
        await lapi.stop()

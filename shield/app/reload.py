"""The policy in force, and swapping it for a new one without dropping a request.

A reload builds the complete new ``Runtime`` first (parse, validate, compile) and then replaces
one reference; a request reads that reference once, so it sees either the old rules or the new,
never a mix. A file that fails to load is logged with every error, counted, and ignored: the
rules in force keep serving. Reloads happen on SIGHUP and when the file changes on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from string import Template

from shield.config.loader import parse_config
from shield.config.model import ShieldConfig
from shield.config.reloadable import restart_pending
from shield.decide.credentials import Authenticator
from shield.decide.identity import IdentityResolver, NoIdentity
from shield.decide.policy import Policy
from shield.enforce.answers import load_close_template
from shield.errors import ConfigError
from shield.feeds.network_feeds import NetworkFeeds
from shield.ops.metrics import ProxyStats

log = logging.getLogger("shield.reload")


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything the hot path reads that comes from one config file."""

    config: ShieldConfig
    policy: Policy
    close_template: Template
    version: str
    debug_header: bool
    identities: IdentityResolver = field(default_factory=NoIdentity)
    status_path: str | None = None  # the public status page, answered before any rule
    networks: NetworkFeeds | None = None  # the geo databases and address lists rules ask


def identity_resolver(config: ShieldConfig) -> IdentityResolver:
    """JWT and signed-cookie checks per ``auth:``; nobody is authenticated without them."""
    auth = config.auth
    if auth.jwt is None and auth.signed_cookie is None:
        return NoIdentity()
    return Authenticator(auth, time.time)


def build_runtime(config: ShieldConfig, text: str, previous: Runtime | None = None) -> Runtime:
    try:
        template = load_close_template(config.policy.close_page)
    except OSError as exc:
        raise ValueError(f"policy.close_page: cannot read {config.policy.close_page}: {exc}") from exc
    # A database or list file that cannot be read refuses the config (FeedError, a ValueError).
    networks = NetworkFeeds.following(config, previous.networks if previous is not None else None)
    return Runtime(
        config=config,
        policy=Policy(
            config.rules,
            config.policy,
            previous.policy if previous is not None else None,
            networks=networks.directory,
        ),
        networks=networks,
        close_template=template,
        version=hashlib.sha256(text.encode()).hexdigest()[:12],
        debug_header=config.policy.debug_header,
        identities=identity_resolver(config),
        status_path=config.status_page.path if config.status_page.enabled else None,
    )


class PolicyHolder:
    def __init__(self, runtime: Runtime, stats: ProxyStats, path: str | None = None) -> None:
        self.current = runtime
        self.path = path
        # What the process started with: restart-only settings are compared against it.
        self.started = runtime.config
        self._stats = stats
        self._stamp = self._file_stamp()
        self._reloading = asyncio.Lock()
        stats.config_version = runtime.version
        stats.last_reload_success = time.time()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> bool:
        """Load the file again; swap the rules in if it is valid, keep the old ones if not."""
        if self.path is None:
            return False
        self._stamp = self._file_stamp()
        return self._swap(self._build(self.current))

    async def reload_off_loop(self) -> bool:
        """``reload``, with the file read and the rules compiled in a worker thread.

        Loading a big rule file takes a while (0.7 s for 1,000 rules, most of it parsing and
        checking the YAML); on the event loop that would stall every request for as long. In a
        thread the interpreter keeps switching back to the loop, which serves on with the old
        rules until the swap. Reloads queue up rather than overlap, so a slow build of the file
        as it was never replaces a newer one.
        """
        if self.path is None:
            return False
        async with self._reloading:
            self._stamp = self._file_stamp()
            built = await asyncio.to_thread(self._build, self.current)
            return self._swap(built)

    def _build(self, previous: Runtime) -> Runtime | None:
        """The runtime of the file as it is now, or None (logged and counted) if it is refused."""
        assert self.path is not None
        try:
            with open(self.path, encoding="utf-8") as file:
                text = file.read()
            config = parse_config(text, self.path)
            return build_runtime(config, text, previous)
        except ConfigError as error:
            log.error("config reload refused, the rules in force keep serving:\n%s", error)
        except Exception as error:  # anything that stops the new rules from compiling
            log.error("config reload refused, the rules in force keep serving: %s", error)
        return None

    def _swap(self, runtime: Runtime | None) -> bool:
        """Put ``runtime`` in force, or count the refusal (None); on the event loop only."""
        if runtime is None:
            self._stats.config_reloads["failure"] += 1
            return False
        config = runtime.config
        pending = restart_pending(self.started, config)
        if pending:
            log.warning(
                "config settings changed that take effect on restart only "
                "(shield_config_restart_pending): %s",
                ", ".join(pending),
            )
        elif self._stats.restart_pending:
            log.info("config settings waiting for a restart are back as the process started with them")
        self._stats.restart_pending = pending
        self.current = runtime
        self._stats.config_reloads["success"] += 1
        self._stats.last_reload_success = time.time()
        self._stats.config_version = runtime.version
        log.info("config reloaded: version %s, %d rules", runtime.version, len(config.rules))
        return True

    async def watch(self, interval: float = 1.0) -> None:
        """Reload whenever the file's mtime, size or inode changes (editors replace files), and
        re-read the geo databases and address lists that changed."""
        while True:
            await asyncio.sleep(interval)
            stamp = self._file_stamp()
            if stamp is not None and stamp != self._stamp:
                await self.reload_off_loop()
            networks = self.current.networks
            if networks is not None:
                await networks.refresh_off_loop()

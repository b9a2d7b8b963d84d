"""Assembly: the public listener, the admin listener, the upstream pool, and their lifecycle.

The public listener is Shield's own HTTP/1.1 protocol (``shield.http.connection``): the observer and the
gatekeeper are the whole request path. Graceful shutdown stops accepting, lets in-flight
requests finish within ``timeouts.shutdown_grace``, then closes upstream connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from shield import build
from shield.app.reload import PolicyHolder, build_runtime
from shield.clock import Clock, MonotonicClock, WallClock
from shield.config.model import ShieldConfig
from shield.config.reloadable import digests
from shield.decide.client_caps import cap_of
from shield.decide.closures import Closure, policy_closures, runtime_closures
from shield.decide.identity import IdentityResolver
from shield.enforce.auto_close_watch import AutoCloseWatch
from shield.enforce.ban_list import BanList
from shield.enforce.challenge_gate import ChallengeGate
from shield.enforce.crowdsec_bouncer import CrowdsecBouncer
from shield.enforce.gatekeeper import Gatekeeper
from shield.enforce.introspection import Introspector, introspection_cache
from shield.enforce.overload_gate import OverloadGate
from shield.enforce.queue_gate import QueueGate
from shield.enforce.switches import Switches
from shield.errors import UpstreamError
from shield.http.connection import Http1Server
from shield.ops.access_log import AccessLog
from shield.ops.admin import AdminState, build_admin_app
from shield.ops.ctl_api import CtlApi, build_ctl_app
from shield.ops.feed_metrics import feed_metrics
from shield.ops.metrics import FOLD_INTERVAL, ProxyStats, build_registry
from shield.ops.observer import Observer
from shield.ops.queue_metrics import queue_metrics
from shield.ops.status_page import Queued, StatusPage
from shield.ops.top import TopTables
from shield.state import StateBackend
from shield.state.connect import connect
from shield.state.queue_state import RedisQueues
from shield.state.records import RecordStore, RedisChannel
from shield.state.top_share import TopShare
from shield.upstream.forward import ForwardSettings, Proxy, head_builder
from shield.upstream.pool import UpstreamPool

log = logging.getLogger("shield")


def require_c_parser() -> None:
    """Refuse aiohttp's pure-Python HTTP parser, which carried most of its smuggling CVEs."""
    from aiohttp import http_parser

    if http_parser.HttpRequestParser.__module__ != "aiohttp._http_parser":
        raise RuntimeError(
            "aiohttp's C HTTP parser is not in use (AIOHTTP_NO_EXTENSIONS set, or no wheel for "
            "this platform); Shield refuses to run on the pure-Python parser"
        )


def upstream_ssl_context(config: ShieldConfig) -> ssl.SSLContext | None:
    if config.upstream.scheme != "https":
        return None
    return ssl.create_default_context(cafile=config.upstream.ca_file)


def listener_ssl_context(config: ShieldConfig) -> ssl.SSLContext | None:
    tls = config.listen.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    return context


class Shield:
    """One Shield process: serve ``config`` until ``stop()``.

    With ``config_path`` the rules reload on ``reload()`` (SIGHUP) and when the file changes.
    """

    def __init__(
        self,
        config: ShieldConfig,
        *,
        config_path: str | None = None,
        admin: bool = True,
        reuse_port: bool = False,
        clock: Clock | None = None,
        identities: IdentityResolver | None = None,
        wall: Clock | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._with_admin = admin
        self._reuse_port = reuse_port
        self.clock = clock or MonotonicClock()
        # None: the resolver of the config in force (``auth:``, reloaded with it).
        self.identities = identities
        self.stats = ProxyStats()
        self.registry = build_registry(self.stats)
        self.admin_state = AdminState(ready_grace=config.admin.ready_grace)
        text = Path(config_path).read_text(encoding="utf-8") if config_path else config.model_dump_json()
        self.holder = PolicyHolder(build_runtime(config, text), self.stats, config_path)
        self.state = StateBackend(config.state, clock=self.clock, stats=self.stats)
        self.admin_state.degraded = self.state.health
        # Switches and bans expire on wall-clock time, which replicas share.
        self.wall = wall or WallClock()
        state = config.state
        self.channel = (
            RedisChannel(
                connect(state.model_copy(update={"pool_size": 1})),
                key_prefix=state.key_prefix,
                timeout=state.timeout,
            )
            if state.backend == "redis"
            else None
        )
        self.switches = Switches(
            RecordStore("switch", wall=self.wall, stats=self.stats, shared=self.channel, max_entries=1000),
            wall=self.wall,
            ctl=config.admin.ctl,
        )
        self.stats.ctl_closed = lambda: [c.rule for c in self.switches.closures()]
        self.bans: BanList | None = None
        if config.bans is not None:
            store = RecordStore(
                "ban",
                wall=self.wall,
                stats=self.stats,
                shared=self.channel,
                max_entries=config.bans.max_entries,
            )
            self.bans = BanList(config.bans, store, wall=self.wall, stats=self.stats)
            self.stats.bans_active = lambda: len(store.live())
        # The waiting rooms' shared lines (Redis state): a connection of their own, as the channel.
        self.queues = (
            RedisQueues(
                connect(state.model_copy(update={"pool_size": 2})),
                key_prefix=state.key_prefix,
                timeout=state.timeout,
                max_in_flight=2,
                stats=self.stats,
            )
            if state.backend == "redis"
            else None
        )
        # CrowdSec's decisions, followed while Shield runs (started with the listeners).
        self.crowdsec = (
            CrowdsecBouncer(config.crowdsec, wall=self.wall.now) if config.crowdsec is not None else None
        )
        self.stats.feeds = feed_metrics(lambda: self.holder.current.networks, self.crowdsec)
        self._server: Http1Server | None = None
        self._listener: asyncio.Server | None = None
        self._admin_runner: web.AppRunner | None = None
        self._admin_site: web.TCPSite | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pool: UpstreamPool | None = None
        self.gatekeeper: Gatekeeper | None = None
        self.introspector: Introspector | None = None
        self.auto_close = AutoCloseWatch(self.holder, self.clock, self.stats)
        # Where /status reads closures from; `shield ctl` switches will add a source here.
        self.queue: QueueGate | None = None  # (made at start, with the gatekeeper)
        self.status_page = StatusPage([self._rule_closures, self._ctl_closures], queues=self._queued)
        log_settings = config.access_log
        self.access_log = AccessLog(self.stats, sample=log_settings.sample) if log_settings.enabled else None
        top = config.top
        self.top: TopTables | None = None
        self.top_share: TopShare | None = None
        if top.enabled:
            self.top = TopTables(
                capacity=top.capacity, slot_seconds=top.slot, slots=top.slots, clock=self.clock.now
            )
            self.top_share = TopShare(
                self.top,
                channel=self.channel,
                wall=self.wall,
                stats=self.stats,
                interval=top.publish_interval,
            )
            if self.channel is None:  # workers: N with memory state: worker 0 adds the others' up
                self.stats.top_slots = self.top_share.wall_slots

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    @property
    def admin_port(self) -> int:
        assert self._admin_runner is not None
        return int(self._admin_runner.addresses[0][1])

    def _in_flight(self) -> float:
        """Requests being handled, counted when scraped rather than on every request."""
        server = self._server
        if server is None:
            return 0.0
        return float(server.in_flight)

    def reload(self) -> bool:
        return self.holder.reload()

    async def reload_off_loop(self) -> bool:
        return await self.holder.reload_off_loop()

    def _rule_closures(self) -> list[Closure]:
        return policy_closures(self.holder.current.policy, self.clock.now(), time.time())

    def _queued(self) -> list[Queued]:
        """The waiting rooms with someone in line, as the status page shows them."""
        if self.queue is None:
            return []
        return [
            Queued(rule.config.public_name or rule.name, rule.config.message or "", wait)
            for rule, wait in self.queue.rules_waiting(self.holder.current.policy.rules)
        ]

    def _ctl_closures(self) -> list[Closure]:
        closed = [(c.rule, c.message, c.until) for c in self.switches.closures()]
        return runtime_closures(self.holder.current.policy, closed)

    def _config_report(self) -> dict[str, Any]:
        holder = self.holder
        return {
            "version": holder.current.version,
            "restart_pending": list(self.stats.restart_pending),
            "settings": digests(holder.started),
        }

    async def start(self) -> None:
        require_c_parser()
        config = self.config
        upstream_tls = upstream_ssl_context(config)
        self.pool = UpstreamPool(
            host=config.upstream.host,
            port=config.upstream.port,
            ssl_context=upstream_tls,
            max_connections=config.upstream.pool.max_connections,
            idle_timeout=config.upstream.pool.idle_timeout,
            connect_timeout=config.timeouts.connect,
        )
        await self.state.start()
        await self.switches.store.start()
        if self.top_share is not None:
            await self.top_share.start()
        if self.bans is not None:
            await self.bans.store.start()
        if self.queues is not None:
            await self.queues.start()
        if self.crowdsec is not None:
            await self.crowdsec.start()  # (a Local API that does not answer is retried, not fatal)
        listener_tls = listener_ssl_context(config)
        proxy = Proxy(
            ForwardSettings.from_config(config),
            head_builder(config, tls=listener_tls is not None),
            self.pool,
            self.stats,
            timed=self.access_log is not None or config.overload is not None,
            upstream_histogram=config.admin.request_metrics,
        )
        introspection = config.auth.introspection
        if introspection is not None:
            self.introspector = Introspector(
                introspection,
                config.upstream,
                self.state.identity_cache(introspection_cache(introspection, self.clock)),
                ssl_context=upstream_tls,
            )
        challenge = ChallengeGate(config.challenge, wall=self.wall)
        self.queue = QueueGate(
            config.queue,
            challenge=challenge,
            wall=self.wall,
            shared=self.queues,
            on_error=config.state.on_error,
            status_path=lambda: self.holder.current.status_path if self.status_page is not None else None,
        )
        self.stats.queues = queue_metrics(self.queue)
        gatekeeper = Gatekeeper(
            holder=self.holder,
            proxy=proxy,
            state=self.state,
            identities=self.identities,
            clock=self.clock,
            stats=self.stats,
            introspector=self.introspector,
            identity_headers=config.forwarding.identity_headers,
            overload=OverloadGate(config.overload, proxy, self.clock) if config.overload else None,
            status=self.status_page,
            switches=self.switches,
            bans=self.bans,
            challenge=challenge,
            requests_per_client=cap_of(config.limits.max_requests_per_client),
            wall=self.wall,
            crowdsec=self.crowdsec,
            queue=self.queue,
        )
        self.gatekeeper = gatekeeper
        # Where the waiting room and ctl's switches meet: the gate paces the lines of rules
        # ``ctl queue`` put in one, and ``ctl status`` shows those lines.
        self.queue.ctl_queue = self.switches.queued
        self.switches.waiting = self.queue.waiting
        self.switches.admitted = self.queue.admitted_up_to
        self.stats.in_flight = self._in_flight
        limits = config.limits
        observer = Observer(
            gatekeeper.handle,
            stats=self.stats,
            access_log=self.access_log,
            metrics=config.admin.request_metrics,
            top=self.top,
        )
        if self.top is not None:
            self.top.networks = gatekeeper.network_of  # (asked once per address and flush)
        self._server = Http1Server(
            observer.handle,
            header_timeout=config.timeouts.client_header,
            keepalive_timeout=config.timeouts.keepalive,
            send_timeout=config.timeouts.client_send,
            min_send_rate=config.limits.min_data_rate,
            rate_grace=config.timeouts.data_rate_grace,
            max_line=limits.max_header_size,
            max_headers=limits.max_headers,
            max_head=limits.max_header_total,
            write_buffer=limits.buffer_response,
            # After a refusal, read and discard the rest of a body for at most this long (and
            # after a last answer, what the client still sends before it reads it).
            lingering=2.0,
            proxy_protocol=config.listen.proxy_protocol,
            underscores_in_headers=config.forwarding.underscores_in_headers,
            connection_caps=cap_of(limits.max_connections_per_client),
            # Read through the gatekeeper: clients: reloads live.
            connection_key=lambda peer: gatekeeper.clients.connection_key(peer),
            client_limits=self.stats.client_limits,
        )
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            cast("Callable[[], asyncio.Protocol]", self._server),  # a protocol by its methods
            config.listen.host,
            config.listen.port,
            ssl=listener_tls,
            reuse_port=self._reuse_port or None,
            backlog=1024,
        )
        for sock in self._listener.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._with_admin:
            ctl = config.admin.ctl
            ctl_app = None
            if ctl is not None:
                api = CtlApi(
                    ctl.token, self.holder, self.switches, self.bans, self.state.name, self.top_share
                )
                ctl_app = build_ctl_app(api)
            self._admin_runner = web.AppRunner(
                build_admin_app(self.admin_state, self.registry, ctl_app, self._config_report),
                access_log=None,
            )
            await self._admin_runner.setup()
            self._admin_site = web.TCPSite(
                self._admin_runner, config.admin.listen.host, config.admin.listen.port
            )
            await self._admin_site.start()
        self._tasks.append(loop.create_task(self._probe_upstream()))
        self._tasks.append(loop.create_task(self._fold_metrics()))
        self._tasks.append(loop.create_task(self.auto_close.run()))
        # The rule file (when there is one), and the geo databases and address lists it names.
        self._tasks.append(loop.create_task(self.holder.watch()))
        log.info(
            "shield listening on %s:%d, forwarding to %s, %d rules (%s)",
            config.listen.host,
            self.port,
            config.upstream.url,
            len(config.rules),
            build(),
        )

    async def _probe_upstream(self) -> None:
        """Mark Shield ready once the upstream answers anything at all over HTTP."""
        assert self.pool is not None
        head = b"HEAD / HTTP/1.1\r\nHost: " + self.config.upstream.authority.encode() + b"\r\n\r\n"
        while not self.admin_state.upstream_seen:
            try:
                conn, _ = await self.pool.acquire(fresh=True)
                conn.start(head, head_request=True)
                await conn.wait_headers(self.config.timeouts.upstream_headers)
                conn.close()
                self.admin_state.upstream_seen = True
            except UpstreamError:
                await asyncio.sleep(1.0)

    async def _fold_metrics(self) -> None:
        """Keep the per-request durations to one ``FOLD_INTERVAL`` of requests (``ProxyStats.fold``),
        and the requests the top tables noted."""
        while True:
            await asyncio.sleep(FOLD_INTERVAL)
            self.stats.fold()
            if self.top is not None:
                self.top.flush()  # (the requests it noted since, into their slot)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, finish in-flight requests within ``grace`` seconds, release all."""
        grace = self.config.timeouts.shutdown_grace if grace is None else grace
        self.admin_state.shutting_down = True
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            # Close idle keep-alive connections now; busy ones close once their request is done.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.shutdown(grace), grace + 1.0)
            if self._server.connections:
                log.warning("grace period over, closing %d connections", len(self._server.connections))
            self._server.close_all()
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
        for task in self._tasks:
            task.cancel()
        if self.pool is not None:
            await self.pool.close()
        await self.switches.store.close()
        if self.bans is not None:
            await self.bans.close()
            await self.bans.store.close()
        if self.crowdsec is not None:
            await self.crowdsec.close()
        if self.queues is not None:
            await self.queues.close()
        if self.top_share is not None:
            await self.top_share.close()  # (its last write goes through the channel)
        if self.channel is not None:
            await self.channel.close()
        await self.state.close()
        if self.introspector is not None:
            await self.introspector.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.access_log is not None:
            self.access_log.close()


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True

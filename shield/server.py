"""Assembly: the public listener, the admin listener, the upstream pool, and their lifecycle.

The public listener is aiohttp's low-level ``web.Server`` (no router, no middleware chain): the
handler below is the whole request path. Graceful shutdown stops accepting, lets in-flight
requests finish within ``timeouts.shutdown_grace``, then closes upstream connections.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from shield.access_log import AccessLog
from shield.admin import AdminState, build_admin_app
from shield.auto_close import AutoCloseWatch
from shield.bans import BanList
from shield.challenge import ChallengeGate
from shield.clock import Clock, MonotonicClock, WallClock
from shield.config.model import ShieldConfig
from shield.ctl import CtlApi, build_ctl_app
from shield.errors import UpstreamError
from shield.gatekeeper import Gatekeeper
from shield.introspect import Introspector, introspection_cache
from shield.metrics import ProxyStats, build_registry
from shield.observe import Observer
from shield.overload import OverloadGate
from shield.policy.client_ip import ClientResolver
from shield.policy.closures import Closure, policy_closures, runtime_closures
from shield.policy.identity import IdentityResolver
from shield.proxy import ForwardSettings, Proxy, head_builder
from shield.proxy_protocol import ProxyHeaderError, parse_proxy_header
from shield.reload import PolicyHolder, build_runtime
from shield.state import StateBackend
from shield.state.connect import connect
from shield.state.records import RecordStore, RedisChannel
from shield.status import StatusPage
from shield.switches import Switches
from shield.upstream import UpstreamPool
from shield.websocket import WebSocketRelay

log = logging.getLogger("shield")


def require_c_parser() -> None:
    """Refuse aiohttp's pure-Python HTTP parser, which carried most of its smuggling CVEs."""
    from aiohttp import http_parser

    if http_parser.HttpRequestParser.__module__ != "aiohttp._http_parser":
        raise RuntimeError(
            "aiohttp's C HTTP parser is not in use (AIOHTTP_NO_EXTENSIONS set, or no wheel for "
            "this platform); Shield refuses to run on the pure-Python parser"
        )


_KNOWN_STATUSES = frozenset(s.value for s in HTTPStatus)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler plus a deadline for receiving a request's headers.

    aiohttp has no header-read timeout: a client trickling one header byte at a time holds a
    connection forever (slowloris). Its keep-alive timer only closes connections with *no*
    pending bytes, so once the first byte of a request arrives, this guard arms a deadline; if
    the same wait for a request is still unfinished when it fires, the connection is closed.
    """

    def __init__(
        self, manager: web.Server, *, header_timeout: float, proxy_protocol: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None
        self._guarded_wait: object = None
        # With PROXY protocol on, bytes wait here until the PROXY header is complete.
        self._proxy_pending: bytes | None = b"" if proxy_protocol else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._proxy_pending is not None:
            self._header_deadline = self._loop.call_later(self._header_timeout, self._proxy_overdue)

    def _proxy_overdue(self) -> None:
        self._header_deadline = None
        if self._proxy_pending is not None and self.transport is not None:
            self.transport.close()

    def _proxy_header(self, data: bytes) -> bytes | None:
        """The bytes after the PROXY header, or None while it is incomplete (or refused)."""
        assert self._proxy_pending is not None
        buffered = self._proxy_pending + data
        try:
            parsed = parse_proxy_header(buffered)
        except ProxyHeaderError as error:
            log.debug("closing a connection without a valid PROXY header: %s", error)
            self._proxy_pending = b""
            if self.transport is not None:
                self.transport.close()
            return None
        if parsed is None:
            self._proxy_pending = buffered
            return None
        length, source = parsed
        self._proxy_pending = None
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        if source is not None:
            # aiohttp caches the transport's peername on the protocol (RequestHandler.peername,
            # an under_cached_property) and every request reads it: request.remote is the client.
            self._cache["peername"] = source
        return buffered[length:]

    def data_received(self, data: bytes) -> None:
        if self._proxy_pending is not None:
            rest = self._proxy_header(data)
            if not rest:
                return
            data = rest
        super().data_received(data)
        # A whole request in one read (the common case) resolves the waiter: no timer needed.
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self._guarded_wait is not waiter:
            self._guarded_wait = waiter
            if self._header_deadline is not None:
                self._header_deadline.cancel()
            self._header_deadline = self._loop.call_later(self._header_timeout, self._header_overdue)

    def _header_overdue(self) -> None:
        self._header_deadline = None
        waiter = self._waiter
        if waiter is not None and not waiter.done() and waiter is self._guarded_wait:
            self.force_close()
            if self.transport is not None:
                self.transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own error answers (malformed requests), without echoing the bad input back
        and without announcing the aiohttp version. Logged at debug level only: under attack a
        flood of malformed requests must not become a flood of tracebacks."""
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.debug("refused a malformed request with %d: %s", status, exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; the connection is broken")
        reason = HTTPStatus(status).phrase if status in _KNOWN_STATUSES else "Error"
        answer = web.Response(status=status, text=f"{reason}.\n", headers={"Server": "shield"})
        answer.force_close()
        return answer

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        super().connection_lost(exc)


class PublicServer(web.Server):
    def __init__(
        self, handler: Any, *, header_timeout: float, proxy_protocol: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(handler, handler_cancellation=True, **kwargs)
        self._header_timeout = header_timeout
        self._proxy_protocol = proxy_protocol

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(
            self,
            loop=self._loop,
            header_timeout=self._header_timeout,
            proxy_protocol=self._proxy_protocol,
            **self._kwargs,
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
        self._server: PublicServer | None = None
        self._listener: asyncio.Server | None = None
        self._admin_runner: web.AppRunner | None = None
        self._admin_site: web.TCPSite | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pool: UpstreamPool | None = None
        self.gatekeeper: Gatekeeper | None = None
        self.introspector: Introspector | None = None
        self.websockets: WebSocketRelay | None = None
        self.auto_close = AutoCloseWatch(self.holder, self.clock, self.stats)
        # Where /status reads closures from; `shield ctl` switches will add a source here.
        self.status_page = StatusPage([self._rule_closures, self._ctl_closures])
        log_settings = config.access_log
        self.access_log = AccessLog(self.stats, sample=log_settings.sample) if log_settings.enabled else None

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
        return float(sum(1 for conn in server.connections if conn._request_in_progress))

    def reload(self) -> bool:
        return self.holder.reload()

    def _rule_closures(self) -> list[Closure]:
        return policy_closures(self.holder.current.policy, self.clock.now(), time.time())

    def _ctl_closures(self) -> list[Closure]:
        closed = [(c.rule, c.message, c.until) for c in self.switches.closures()]
        return runtime_closures(self.holder.current.policy, closed)

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
        if self.bans is not None:
            await self.bans.store.start()
        listener_tls = listener_ssl_context(config)
        proxy = Proxy(
            ForwardSettings.from_config(config),
            head_builder(config, tls=listener_tls is not None),
            self.pool,
            self.stats,
        )
        self.websockets = WebSocketRelay(
            config.upstream.url,
            tls=upstream_tls if upstream_tls is not None else True,
            connect_timeout=config.timeouts.connect,
            max_msg_size=4 * 1024 * 1024,
        )
        introspection = config.auth.introspection
        if introspection is not None:
            self.introspector = Introspector(
                introspection,
                config.upstream,
                self.state.identity_cache(introspection_cache(introspection, self.clock)),
                ssl_context=upstream_tls,
            )
        clients = config.clients
        gatekeeper = Gatekeeper(
            holder=self.holder,
            proxy=proxy,
            websockets=self.websockets,
            state=self.state,
            identities=self.identities,
            clock=self.clock,
            stats=self.stats,
            clients=ClientResolver(
                clients.trusted_proxies, ipv6_prefix=clients.ipv6_prefix, header=clients.header
            ),
            introspector=self.introspector,
            identity_headers=config.forwarding.identity_headers,
            overload=OverloadGate(config.overload, proxy, self.clock) if config.overload else None,
            status=self.status_page,
            switches=self.switches,
            bans=self.bans,
            challenge=ChallengeGate(config.challenge, wall=self.wall),
        )
        self.gatekeeper = gatekeeper
        self.stats.in_flight = self._in_flight
        limits = config.limits
        observer = Observer(gatekeeper.handle, stats=self.stats, access_log=self.access_log)
        self._server = PublicServer(
            observer.handle,
            header_timeout=config.timeouts.client_header,
            proxy_protocol=config.listen.proxy_protocol,
            keepalive_timeout=config.timeouts.keepalive,
            max_line_size=limits.max_header_size,
            max_field_size=limits.max_header_size,
            max_headers=limits.max_headers,
            auto_decompress=False,
            access_log=None,
            # After a refusal, read and discard the rest of a body for at most this long.
            lingering_time=2.0,
        )
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._server,
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
                api = CtlApi(ctl.token, self.holder, self.switches, self.bans, self.state.name)
                ctl_app = build_ctl_app(api)
            self._admin_runner = web.AppRunner(
                build_admin_app(self.admin_state, self.registry, ctl_app), access_log=None
            )
            await self._admin_runner.setup()
            self._admin_site = web.TCPSite(
                self._admin_runner, config.admin.listen.host, config.admin.listen.port
            )
            await self._admin_site.start()
        self._tasks.append(loop.create_task(self._probe_upstream()))
        self._tasks.append(loop.create_task(self.auto_close.run()))
        if self.config_path is not None:
            self._tasks.append(loop.create_task(self.holder.watch()))
        log.info(
            "shield listening on %s:%d, forwarding to %s, %d rules",
            config.listen.host,
            self.port,
            config.upstream.url,
            len(config.rules),
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

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, finish in-flight requests within ``grace`` seconds, release all."""
        grace = self.config.timeouts.shutdown_grace if grace is None else grace
        self.admin_state.shutting_down = True
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            # Close idle keep-alive connections now; busy ones close once their request is done.
            self._server.pre_shutdown()
            try:
                await asyncio.wait_for(self._server.shutdown(grace), grace + 1.0)
            except TimeoutError:
                log.warning("grace period over, closing %d connections", len(self._server.connections))
                self._server.pre_shutdown()
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
        for task in self._tasks:
            task.cancel()
        if self.websockets is not None:
            await self.websockets.close()
        if self.pool is not None:
            await self.pool.close()
        await self.switches.store.close()
        if self.bans is not None:
            await self.bans.close()
            await self.bans.store.close()
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

"""The per-request path: view the request, identify the client, match a rule, decide, act.

``Gatekeeper.handle`` is the handler of the public listener. It reads the policy in force once,
canonicalizes the path (refusing what cannot be made unambiguous), asks the policy for the
rule, consults throttle state, and either answers itself (403, 429, 503) or forwards the
request with the canonical target the rules matched.
"""

from __future__ import annotations

import logging

from aiohttp import hdrs

from shield.app.reload import PolicyHolder
from shield.clock import Clock
from shield.decide.admission import priority_class
from shield.decide.client_address import ClientResolver
from shield.decide.client_caps import HeldPerClient
from shield.decide.gcra import RateLimitResult, ratelimit_lines
from shield.decide.identity import ANONYMOUS, Identity, IdentityResolver, NoIdentity
from shield.decide.paths import UnsafePath, canonical_raw_path
from shield.decide.policy import CompiledRule, RequestView
from shield.enforce import answers
from shield.enforce.answers import Capped, Shed, ShieldAnswer, answer
from shield.enforce.ban_list import BanList
from shield.enforce.challenge_gate import ChallengeGate
from shield.enforce.introspection import Introspector
from shield.enforce.overload_gate import OverloadGate
from shield.enforce.switches import Switches
from shield.http.connection import Reply, Request, Written
from shield.http.headers import identity_lines
from shield.http.target import request_target
from shield.http.websocket import is_websocket_upgrade
from shield.ops.metrics import ProxyStats
from shield.ops.status_page import StatusPage
from shield.state import StateBackend
from shield.upstream.forward import Proxy

log = logging.getLogger("shield.rules")

_DEFAULT = "default"
# The labels of a request no rule matched and the upstream answered, by ``identity.authenticated``.
_DEFAULT_FORWARDED = (
    (_DEFAULT, "allow", "forwarded", "anonymous"),
    (_DEFAULT, "allow", "forwarded", "authenticated"),
)
# The admission class of requests no rule matched, by ``identity.authenticated``.
_DEFAULT_RANKS = (priority_class("normal", False), priority_class("normal", True))


class Gatekeeper:
    def __init__(
        self,
        *,
        holder: PolicyHolder,
        proxy: Proxy,
        state: StateBackend,
        identities: IdentityResolver | None,
        clock: Clock,
        stats: ProxyStats,
        clients: ClientResolver | None = None,
        introspector: Introspector | None = None,
        identity_headers: bool = False,
        overload: OverloadGate | None = None,
        status: StatusPage | None = None,
        switches: Switches | None = None,
        bans: BanList | None = None,
        challenge: ChallengeGate | None = None,
        requests_per_client: HeldPerClient | None = None,
    ) -> None:
        """``requests_per_client``: how many requests each client may have forwarded at once
        (``limits.max_requests_per_client``; None: no cap)."""
        self.holder = holder
        self.proxy = proxy
        self.limiter = state.memory
        self.shared = state.redis
        self.on_state_error = state.config.on_error
        self.identities = identities
        self.now = clock.now
        self.stats = stats
        self.clients = clients or ClientResolver()
        self.introspector = introspector
        self.identity_headers = identity_headers
        self.overload = overload
        self.status = status
        self.switches = switches
        # The ctl closures in force here: empty (falsy) almost always, all the hot path checks.
        self.ctl_closures = switches.local if switches is not None else {}
        self.bans = bans
        self.challenge = challenge
        self.challenge_path = challenge.path if challenge is not None else None
        self.requests_per_client = requests_per_client

    async def handle(self, request: Request) -> Reply:
        method = request.method
        if method == "CONNECT":
            return answer(405, "CONNECT is not allowed.")
        headers = request.headers
        host = headers.get(hdrs.HOST)
        target = request.target
        # find(), not ``in``: bytes.__contains__ first tries its argument as an integer and pays
        # for a TypeError on every request.
        if target[:1] != b"/" or target.find(b"#") >= 0:
            # Absolute or asterisk form, or a fragment: what request_target makes of it.
            checked = request_target(request.raw_path, host, method)
            if checked is None:
                return answer(400, "Bad request target.")
            target = checked
        runtime = self.holder.current
        policy = runtime.policy
        raw_path, sep, query = target.partition(b"?")
        if raw_path == b"*":
            match_path = "*"
        else:
            try:
                match_path, forward = canonical_raw_path(raw_path, case_insensitive=policy.case_insensitive)
            except UnsafePath as error:
                return answer(400, f"Bad request path: {error}.")
            if forward is not None:
                target = forward + sep + query
        client = self.clients.resolve(request.remote or "unknown", headers)
        client_ip = client.ip
        if self.bans is not None and (ban := self.bans.banned(client.key)) is not None:
            return self._banned(request, client_ip, ban.until)
        resolver = self.identities or runtime.identities
        identity = ANONYMOUS if type(resolver) is NoIdentity else resolver.identify(headers, client_ip)
        if self.introspector is not None and not identity.authenticated:
            identity = await self.introspector.identify(headers, identity)
        # What the upstream is told: the client chain, and who Shield saw when asked to say.
        upstream = (
            (client.forwarded_for, identity_lines(client_ip, identity.user))
            if self.identity_headers
            else client.upstream
        )
        exchange = request.exchange
        exchange.client_ip = client_ip
        exchange.client_key = client.key
        exchange.path = match_path
        if match_path == runtime.status_path and self.status is not None:
            return self.status.answer(method, headers.get("Accept"))
        if match_path == self.challenge_path and policy.has_challenge:
            return await self._challenge_submit(request, client.key, identity.label)

        if not policy.rules:
            return await self._forward(request, target, b"", None, identity, upstream)

        query_string = query.decode("latin-1") if query else ""
        client_key = client.key
        try:
            match = policy.known[method, match_path]
        except KeyError:
            match = policy.matcher(method, match_path)
        rule, dry_runs = match(
            method, match_path, host, headers, query_string, client_ip, identity, client_key
        )
        view = None  # made only for a decision that needs more than the rule and the client
        if dry_runs is not None:
            view = RequestView(
                method, match_path, host, headers, query_string, client_ip, identity, client_key
            )
            if self.shared is None:
                self._record_dry_runs(dry_runs, view)
            else:
                await self._record_shared_dry_runs(dry_runs, view)
        if self.ctl_closures:
            closed_by_ctl = self._ctl_closure(request, rule, dry_runs, identity.label)
            if closed_by_ctl is not None:
                return closed_by_ctl
        if rule is None:
            return await self._forward(request, target, b"", None, identity, upstream)
        lanes = rule.ip_lanes
        if lanes is not None and self.shared is None:
            # The common case, allowed: header lines straight from the limiter, no verdict built.
            prefix, rate = lanes[identity.authenticated]
            lines = self.limiter.admit(prefix + client_key, rate, self.now())  # what state_key says
            if lines is not None:
                if runtime.debug_header:
                    lines += _forwarded(True, rule)
                return await self._forward(request, target, lines, rule, identity, upstream)
        if view is None:
            view = RequestView(
                method, match_path, host, headers, query_string, client_ip, identity, client_key
            )

        debug = runtime.debug_header
        action = rule.action
        trigger = rule.trigger
        if trigger is not None and trigger.hit(self.now()):
            exchange.decided(rule.name, action, "closed", identity.label)
            closed = answers.closed(
                message=trigger.config.message or answers.DEFAULT_CLOSE_MESSAGE,
                retry_after=trigger.retry_after(self.now()),
                accept=headers.get("Accept"),
                template=runtime.close_template,
                extra=_debug(debug, rule, "auto-closed"),
            )
            return self._refusal(request, closed)
        if action == "throttle":
            return await self._throttle(request, target, view, rule, upstream, debug)
        if action == "challenge":
            gate = self.challenge
            assert gate is not None
            if not gate.passes(view.cookies.get(gate.cookie), view.client_key):
                exchange.decided(rule.name, action, "challenged", identity.label)
                page = gate.page(
                    view.client_key,
                    target.decode("latin-1"),
                    headers.get("Accept"),
                    _debug(debug, rule, "challenged"),
                )
                return self._refusal(request, page)
        if action == "allow" or action == "challenge":
            return await self._forward(request, target, _forwarded(debug, rule), rule, identity, upstream)
        if action == "block":
            exchange.decided(rule.name, action, "blocked", identity.label)
            if self.bans is not None:
                self.bans.violation(view.client_key)
            return self._refusal(
                request, answers.blocked(accept=headers.get("Accept"), extra=_debug(debug, rule, "blocked"))
            )
        # close
        exchange.decided(rule.name, action, "closed", identity.label)
        config = rule.config
        closed = answers.closed(
            message=config.message or answers.DEFAULT_CLOSE_MESSAGE,
            retry_after=config.retry_after or runtime.config.policy.default_retry_after,
            accept=headers.get("Accept"),
            template=runtime.close_template,
            extra=_debug(debug, rule, "closed"),
        )
        return self._refusal(request, closed)

    async def _throttle(
        self,
        request: Request,
        target: bytes,
        view: RequestView,
        rule: CompiledRule,
        upstream: tuple[str, bytes],
        debug: bool,
    ) -> Reply:
        """A throttle rule's decision where ``handle``'s fast path does not apply (Redis state,
        counting on outcomes, an auto-close trigger) or did not allow the request."""
        identity = view.identity
        rate = rule.rates[identity.authenticated]
        assert rate is not None
        key = rule.state_key(view)
        counting = rule.count_statuses
        shared = self.shared
        result: RateLimitResult | None
        if shared is not None:
            result = await shared.decide(key, rate, 1 if counting is None else 0)
        elif counting is None:
            result = self.limiter.hit(key, rate, self.now())
        else:
            result = self.limiter.peek(key, rate, self.now())
        exchange = request.exchange
        accept = request.headers.get("Accept")
        if result is None:
            # The shared state did not answer in time; on_error says what that means.
            if self.on_state_error == "deny":
                exchange.decided(rule.name, rule.action, "error", identity.label)
                refusal = answers.unavailable(accept=accept, extra=_debug(debug, rule, "state unavailable"))
                return self._refusal(request, refusal)
            extra = _forwarded(debug, rule)
        elif not result.allowed:
            exchange.decided(rule.name, rule.action, "throttled", identity.label)
            if self.bans is not None:
                self.bans.violation(view.client_key)
            refusal = answers.throttled(result, accept=accept, extra=_debug(debug, rule, "throttled"))
            return self._refusal(request, refusal)
        else:
            extra = ratelimit_lines(result)
            if debug:
                extra += _forwarded(debug, rule)
        forwarded = await self._forward(request, target, extra, rule, identity, upstream)
        if (
            counting is not None
            and forwarded.status in counting
            and (isinstance(forwarded, Written) or not isinstance(forwarded, ShieldAnswer))
        ):
            if shared is not None:
                shared.charge(key, rate)
            else:
                self.limiter.hit(key, rate, self.now())
        return forwarded

    async def _forward(
        self,
        request: Request,
        target: bytes,
        extra: bytes,
        rule: CompiledRule | None,
        identity: Identity,
        upstream: tuple[str, bytes],
    ) -> Reply:
        """Forward upstream as ``rule`` decided (None: no rule applied), and record the outcome."""
        if request.upgrade and not request.body_exists and is_websocket_upgrade(request.headers):
            # (An upgrade request with a body goes on as a plain request: Upgrade is hop-by-hop.)
            return await self._websocket(request, target, extra, rule, identity, upstream)
        if self.overload is None and self.requests_per_client is None:
            response = await self.proxy.forward(request, target, extra, upstream)  # the common case
        else:
            response = await self._forward_within_limits(request, target, extra, rule, identity, upstream)
        exchange = request.exchange
        if rule is None:
            exchange.labels = (
                _DEFAULT_FORWARDED[identity.authenticated]
                if isinstance(response, Written)
                else (_DEFAULT, "allow", _outcome(response), identity.label)
            )
            return response
        exchange.labels = (
            rule.forwarded_labels[identity.authenticated]
            if isinstance(response, Written)
            else (rule.name, rule.action, _outcome(response), identity.label)
        )
        trigger = rule.trigger
        if trigger is not None and (isinstance(response, Written) or not isinstance(response, Shed | Capped)):
            trigger.answered(self.now(), response.status >= 500)
        return response

    async def _forward_within_limits(
        self,
        request: Request,
        target: bytes,
        extra: bytes,
        rule: CompiledRule | None,
        identity: Identity,
        upstream: tuple[str, bytes],
    ) -> Reply:
        """Forward within the client's cap on requests in flight and through the overload gate,
        as far as either is configured."""
        held = self.requests_per_client
        key = request.exchange.client_key
        if held is not None and not held.take(key):
            self.stats.client_limits["requests_per_client"] += 1
            return answers.too_many_in_flight(accept=request.headers.get("Accept"))
        try:
            if self.overload is None:
                return await self.proxy.forward(request, target, extra, upstream)
            ranks = _DEFAULT_RANKS if rule is None else rule.ranks
            return await self.overload.forward(
                request, target, extra, upstream, ranks[identity.authenticated]
            )
        finally:
            if held is not None:
                held.give_back(key)

    async def _websocket(
        self,
        request: Request,
        target: bytes,
        extra: bytes,
        rule: CompiledRule | None,
        identity: Identity,
        upstream: tuple[str, bytes],
    ) -> Reply:
        response = await self.proxy.upgrade(request, target, extra, upstream)
        if rule is None:
            request.exchange.decided(_DEFAULT, "allow", _outcome(response), identity.label)
        else:
            request.exchange.decided(rule.name, rule.action, _outcome(response), identity.label)
        return response

    async def _challenge_submit(self, request: Request, client_key: str, identity: str) -> Reply:
        assert self.challenge is not None
        response, passed = await self.challenge.submit(request, client_key)
        request.exchange.decided("challenge", "challenge", "passed" if passed else "refused", identity)
        return response

    def _banned(self, request: Request, client_ip: str, until: float) -> ShieldAnswer:
        assert self.bans is not None
        exchange = request.exchange
        exchange.client_ip = client_ip
        exchange.decided("ban", "ban", "banned", "anonymous")
        refusal = answers.banned(
            status=self.bans.config.answer,
            retry_after=until - self.bans.wall.now(),
            accept=request.headers.get("Accept"),
        )
        return self._refusal(request, refusal)

    def _ctl_closure(
        self,
        request: Request,
        rule: CompiledRule | None,
        dry_runs: list[CompiledRule] | None,
        identity: str,
    ) -> ShieldAnswer | None:
        """The close answer when ``shield ctl close`` closed the deciding rule or a dry-run rule
        met before it (a ctl closure is enforced even on a rule the file runs in dry-run)."""
        assert self.switches is not None
        for candidate in (*(dry_runs or ()), *((rule,) if rule is not None else ())):
            closure = self.switches.closure(candidate.name)
            if closure is None:
                continue
            runtime = self.holder.current
            request.exchange.decided(candidate.name, "ctl-close", "closed", identity)
            closed = answers.closed(
                message=closure.message,
                retry_after=closure.until - self.switches.wall.now(),
                accept=request.headers.get("Accept"),
                template=runtime.close_template,
                extra=_debug(runtime.debug_header, candidate, "closed by ctl"),
            )
            return self._refusal(request, closed)
        return None

    @staticmethod
    def _refusal(request: Request, response: ShieldAnswer) -> ShieldAnswer:
        # A client waiting for 100 Continue never sends its body: close rather than wait for it.
        if "Expect" in request.headers and request.body_exists:
            response.force_close()
        return response

    def _record_dry_runs(self, rules: list[CompiledRule], view: RequestView) -> None:
        for rule in rules:
            if rule.action == "throttle":
                rate = rule.rates[view.identity.authenticated]
                assert rate is not None
                result = self.limiter.hit(rule.state_key(view), rate, self.now())
                self._record_dry_run(rule, view, "forwarded" if result.allowed else "throttled")
            else:
                self._record_dry_run(rule, view, rule.outcome)

    async def _record_shared_dry_runs(self, rules: list[CompiledRule], view: RequestView) -> None:
        assert self.shared is not None
        for rule in rules:
            if rule.action == "throttle":
                rate = rule.rates[view.identity.authenticated]
                assert rate is not None
                result = await self.shared.decide(rule.state_key(view), rate)
                self._record_dry_run(
                    rule, view, "throttled" if result and not result.allowed else "forwarded"
                )
            else:
                self._record_dry_run(rule, view, rule.outcome)

    def _record_dry_run(self, rule: CompiledRule, view: RequestView, outcome: str) -> None:
        self.stats.dry_run[(rule.name, outcome)] += 1
        if outcome != "forwarded":
            log.info(
                "dry-run rule %s would have %s %s %s from %s",
                rule.name,
                outcome,
                view.method,
                view.path,
                view.client_ip,
            )


def _outcome(response: Reply) -> str:
    """'error' for Shield's own failure answers (502, 504, 413...), 'shed' for load shedding,
    'capped' for a client over limits.max_requests_per_client, else 'forwarded'."""
    if isinstance(response, Written):
        return "forwarded"
    if isinstance(response, ShieldAnswer):
        if isinstance(response, Shed):
            return "shed"
        return "capped" if isinstance(response, Capped) else "error"
    return "forwarded"


def _forwarded(enabled: bool, rule: CompiledRule) -> bytes:
    """The debug header line of a forwarded request (empty when off)."""
    return b"X-Shield-Rule: " + rule.name.encode() + b"; forwarded\r\n" if enabled else b""


def _debug(enabled: bool, rule: CompiledRule, outcome: str) -> dict[str, str]:
    return {"X-Shield-Rule": f"{rule.name}; {outcome}"} if enabled else {}

"""The per-request path: read the request, decide, act.

``Gatekeeper.handle`` is the handler of the public listener. It reads the request as rules see
it (the canonical path, refusing what cannot be made unambiguous; the client; who it proves to
be), asks ``shield.decide.decision.decide`` what to do, and hands the decision to ``act``: the
one ``match`` that answers (403, 429, 503, Shield's pages) or forwards the request with the
canonical target the rules matched, consulting the throttle state where a throttle decided.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, assert_never

from aiohttp import hdrs

from shield.app.reload import PolicyHolder, Runtime
from shield.clock import Clock, WallClock
from shield.config.auth import Clients
from shield.config.model import ShieldConfig
from shield.config.rules import PolicyOptions, Rule
from shield.decide.admission import priority_class
from shield.decide.client_address import ClientResolver
from shield.decide.client_caps import HeldPerClient
from shield.decide.decision import (
    Banned,
    Blocked,
    Challenged,
    CheckSolution,
    Closed,
    Decision,
    DryRuns,
    Forward,
    Queue,
    Rulebook,
    ServeStatusPage,
    Throttle,
    Throttled,
    Unavailable,
    after_throttle,
    decide,
    no_closure,
    no_queue,
    own_pages,
)
from shield.decide.gcra import RateLimitResult
from shield.decide.identity import ANONYMOUS, IdentityResolver, NoIdentity
from shield.decide.paths import UnsafePath, canonical_raw_path
from shield.decide.policy import CompiledRule, RequestView
from shield.enforce import answers
from shield.enforce.answers import Capped, Shed, ShieldAnswer, answer, ratelimit_lines
from shield.enforce.ban_list import BanList
from shield.enforce.challenge_gate import ChallengeGate
from shield.enforce.crowdsec_bouncer import CrowdsecBouncer
from shield.enforce.introspection import Introspector
from shield.enforce.overload_gate import OverloadGate
from shield.enforce.queue_gate import Admission, QueueGate
from shield.enforce.switches import Switches
from shield.http.connection import Reply, Request, Written
from shield.http.headers import identity_lines
from shield.http.target import request_target
from shield.http.websocket import is_websocket_upgrade
from shield.ops.metrics import ProxyStats
from shield.ops.status_page import StatusPage
from shield.state import StateBackend
from shield.upstream.forward import Proxy

log: Final = logging.getLogger("shield.rules")

# What the upstream is told of the client: its X-Forwarded-For chain and the identity lines.
Upstream = tuple[str, bytes]

_DEFAULT: Final = "default"
# The labels of a request no rule matched and the upstream answered, by ``identity.authenticated``.
_DEFAULT_FORWARDED: Final = (
    (_DEFAULT, "allow", "forwarded", "anonymous"),
    (_DEFAULT, "allow", "forwarded", "authenticated"),
)
_NO_NETWORK: Final[tuple[int | None, str | None]] = (None, None)
# Names from modules mypyc does not compile (or values made at import) bound as Finals: a C
# static each, where the imported name is a module-dict lookup on every request.
_HOST: Final = hdrs.HOST
_ANONYMOUS: Final = ANONYMOUS
_NO_IDENTITY: Final = NoIdentity
# The admission class of requests no rule matched, by ``identity.authenticated``.
_DEFAULT_RANKS: Final = (priority_class("normal", False), priority_class("normal", True))


# Told of each decision ``handle`` makes, with the gatekeeper and the request it is about: the
# test suite compares ``shield explain`` with the proxy here (tests/explain_agreement.py).
# Empty in production, where it costs one truth test per request.
decision_listeners: Final[list[Callable[[Gatekeeper, Request, Decision], None]]] = []


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
        introspector: Introspector | None = None,
        identity_headers: bool = False,
        overload: OverloadGate | None = None,
        status: StatusPage | None = None,
        switches: Switches | None = None,
        bans: BanList | None = None,
        challenge: ChallengeGate | None = None,
        requests_per_client: HeldPerClient | None = None,
        wall: Clock | None = None,
        crowdsec: CrowdsecBouncer | None = None,
        queue: QueueGate | None = None,
    ) -> None:
        """``requests_per_client``: how many requests each client may have forwarded at once
        (``limits.max_requests_per_client``; None: no cap). ``crowdsec``: the bouncer whose
        decisions on client addresses apply before any rule."""
        self.holder = holder
        self.proxy = proxy
        self.limiter = state.memory
        self.shared = state.redis
        # state.on_error: deny: a throttle whose shared state does not answer refuses (503).
        self.deny_on_state_error = state.config.on_error == "deny"
        self.identities = identities
        self.now = clock.now
        self.wall = (wall or WallClock()).now
        self.stats = stats
        self.clients = ClientResolver()
        self._clients_of: Clients | None = None  # the clients: section self.clients was made of
        self.introspector = introspector
        self.identity_headers = identity_headers
        self.overload = overload
        self.status = status
        self.switches = switches
        self.bans = bans
        self.challenge = challenge
        self.requests_per_client = requests_per_client
        self.crowdsec = crowdsec
        self.queue = queue
        # What a CrowdSec captcha decision is counted and debugged as: a challenge rule of its own.
        self.crowdsec_rule = CompiledRule(Rule(name="crowdsec", action="challenge"), PolicyOptions())
        # The config in force and what ``decide`` needs of it, and its policy.debug_header.
        self._rulebook: tuple[Runtime, Rulebook]
        self.debug_header = False
        self.rulebook(holder.current)

    def rulebook(self, runtime: Runtime) -> Rulebook:
        """What ``decide`` needs besides the request, for the config in force: made at the first
        request after each reload, and kept. The gates take up their live settings then too."""
        self._follow(runtime.config)
        challenge = self.challenge
        switches = self.switches
        rulebook = Rulebook(
            runtime.policy,
            runtime.config.policy.default_retry_after,
            now=self.now,
            wall=self.wall,
            pages=own_pages(
                runtime.policy,
                runtime.status_path if self.status is not None else None,
                challenge.path if challenge is not None else None,
                challenges_without_rules=self.crowdsec is not None,
            ),
            challenge_cookie=challenge.cookie if challenge is not None else "",
            passes=challenge.passes if challenge is not None else None,
            ctl_closed=switches.local if switches is not None else {},
            ctl_closure=switches.closure if switches is not None else no_closure,
            # (one table for both: ctl's switches, closures and queues alike)
            ctl_queued=switches.local if switches is not None else {},
            ctl_queue=switches.queued if switches is not None else no_queue,
            queue_cookies=self.queue.read if self.queue is not None else None,
        )
        self._rulebook = (runtime, rulebook)
        # policy.debug_header: say in a header which rule decided (read by ``act``).
        self.debug_header = runtime.debug_header
        return rulebook

    def network_of(self, client_ip: str) -> tuple[int | None, str | None]:
        """The client's ASN and country as the rules in force see them (None: not known, or
        no geo database), for the top tables."""
        networks = self._rulebook[1].policy.networks
        if not networks.configured:
            return _NO_NETWORK
        facts = networks.facts(client_ip)
        return facts.asn, facts.country

    def _follow(self, config: ShieldConfig) -> None:
        """The live settings outside the rules (``shield.config.reloadable.LIVE``)."""
        clients = config.clients
        if clients != self._clients_of:
            self.clients = ClientResolver(
                clients.trusted_proxies, ipv6_prefix=clients.ipv6_prefix, header=clients.header
            )
            self._clients_of = clients
        if self.challenge is not None:
            self.challenge.follow(config.challenge)
        if self.bans is not None and config.bans is not None:
            self.bans.follow(config.bans)
        if self.crowdsec is not None and config.crowdsec is not None:
            self.crowdsec.follow(config.crowdsec)
        if self.queue is not None:
            self.queue.follow(config.queue)

    async def handle(self, request: Request) -> Reply:
        """Read the request as rules see it, decide (``shield.decide.decision``), act."""
        method = request.method
        if method == "CONNECT":
            return answer(405, "CONNECT is not allowed.")
        headers = request.headers
        host = headers.get(_HOST)
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
        known, rulebook = self._rulebook
        if known is not runtime:
            rulebook = self.rulebook(runtime)
        raw_path, sep, query = target.partition(b"?")
        try:
            match_path, forward = canonical_raw_path(
                raw_path, case_insensitive=rulebook.policy.case_insensitive
            )
        except UnsafePath as error:
            return answer(400, f"Bad request path: {error}.")
        if forward is not None:
            target = forward + sep + query
        client = self.clients.resolve(request.remote or "unknown", headers)
        client_ip = client.ip
        ban = self.bans.banned(client.key) if self.bans is not None else None
        banned_until = ban.until if ban is not None else None
        banned_by = "ban"
        challenged_by: CompiledRule | None = None
        if self.crowdsec is not None and banned_until is None:
            verdict = self.crowdsec.decisions.verdict(client_ip)
            if verdict is None:
                pass
            elif verdict.type == "ban":
                banned_until, banned_by = verdict.until, "crowdsec"
            else:
                challenged_by = self.crowdsec_rule
        if banned_until is not None:
            identity = _ANONYMOUS  # a ban is answered whoever the client says it is
        else:
            resolver = self.identities or runtime.identities
            identity = _ANONYMOUS if type(resolver) is _NO_IDENTITY else resolver.identify(headers, client_ip)
            if self.introspector is not None and not identity.authenticated:
                identity = await self.introspector.identify(headers, identity)
        # The request as rules see it (a ``Request`` is a ``RequestView``: method and headers set).
        request.path = match_path
        request.host_header = host
        request.query_string = query.decode("latin-1") if query else ""
        request.client_ip = client_ip
        request.identity = identity
        request.client_key = client.key
        decision = decide(request, rulebook, banned_until, banned_by, challenged_by)
        if decision_listeners:
            for listener in decision_listeners:
                listener(self, request, decision)
        # What the upstream is told: the client chain, and who Shield saw when asked to say.
        upstream = (
            (client.forwarded_for, identity_lines(client_ip, identity.user))
            if self.identity_headers
            else client.upstream
        )
        acted = self.act(request, decision, target, upstream)
        return acted if isinstance(acted, ShieldAnswer) else await acted

    def act(
        self,
        request: Request,
        decision: Decision,
        target: bytes,
        upstream: Upstream,
    ) -> ShieldAnswer | Awaitable[Reply]:
        """Do what was decided: the one place a decision becomes an answer or a forward.

        Two decisions lead to another: dry runs are counted, then what they wrap is done; a
        throttle asks the state, and its verdict is done (a 429 when the bucket is empty, and for
        shared state ``after_throttle`` says what an unanswered call means). Not a coroutine
        itself: it returns Shield's answer, or the forward (or state call) for ``handle`` to
        await, so a forwarded request costs no extra coroutine frame."""
        while True:
            match decision:
                case Throttle():
                    rule, rate = decision
                    if self.shared is not None:
                        return self._throttle_shared(request, decision, target, upstream)
                    key = rule.state_key(request)
                    counting = rule.count_statuses
                    if counting is None:
                        limit = self.limiter.hit(key, rate, self.now())
                    else:
                        limit = self.limiter.peek(key, rate, self.now())
                    if not limit.allowed:  # (the memory state always answers: no after_throttle)
                        decision = Throttled(rule, limit)
                        continue
                    extra = ratelimit_lines(limit, rule.name, rate)
                    if self.debug_header:
                        extra += _forwarded_line(rule)
                    if counting is not None:
                        return self._forward_counted(request, rule, extra, target, upstream)
                    return self._forward(request, target, extra, rule, upstream)
                case Forward():
                    by = decision.rule
                    extra = _forwarded_line(by) if self.debug_header and by is not None else b""
                    return self._forward(request, target, extra, by, upstream)
                case DryRuns(rules, then):
                    if self.shared is not None:
                        return self._dry_runs_shared(request, decision, target, upstream)
                    self._record_dry_runs(rules, request)
                    decision = then
                case Throttled(rule, limit):
                    self._violation(request, rule, "throttled")
                    quota = rule.rates[request.identity.authenticated]
                    assert quota is not None
                    debug = self._debug(rule, "throttled")
                    refusal = answers.throttled(limit, rule.name, quota, accept=_accept(request), extra=debug)
                    return self._refusal(request, refusal)
                case Unavailable(rule):
                    request.decided(rule.name, rule.action, "error", request.identity.label)
                    debug = self._debug(rule, "state unavailable")
                    return self._refusal(request, answers.unavailable(accept=_accept(request), extra=debug))
                case Blocked(rule):
                    self._violation(request, rule, "blocked")
                    debug = self._debug(rule, "blocked")
                    return self._refusal(request, answers.blocked(accept=_accept(request), extra=debug))
                case Challenged(rule):
                    assert self.challenge is not None
                    request.decided(rule.name, rule.action, "challenged", request.identity.label)
                    page = self.challenge.page(
                        request.client_key,
                        target.decode("latin-1"),
                        _accept(request),
                        self._debug(rule, "challenged"),
                    )
                    return self._refusal(request, page)
                case Queue():
                    return self._queue(request, decision, target, upstream)
                case Closed(rule, action, why, message, retry_after):
                    request.decided(rule.name, action, "closed", request.identity.label)
                    runtime = self.holder.current
                    closed = answers.closed(
                        message=message,
                        retry_after=retry_after,
                        accept=_accept(request),
                        template=runtime.close_template,
                        extra=self._debug(rule, why),
                        title=rule.config.public_name,  # (no rule names on a page end users read)
                        # A close rule lasts until the file changes; auto and ctl closures end.
                        end_known=why != "closed",
                        status_path=runtime.status_path if self.status is not None else None,
                    )
                    return self._refusal(request, closed)
                case Banned(retry_after, source):
                    request.decided(source, "ban", "banned", "anonymous")
                    status = self._ban_answer(source)
                    refusal = answers.banned(status=status, retry_after=retry_after, accept=_accept(request))
                    return self._refusal(request, refusal)
                case ServeStatusPage():
                    assert self.status is not None
                    return self.status.answer(request.method, _accept(request))
                case CheckSolution():
                    return self._check_solution(request)
                case _:
                    assert_never(decision)

    async def _queue(self, request: Request, decision: Queue, target: bytes, upstream: Upstream) -> Reply:
        """``act`` for the waiting room: the client's turn has come (forward, with the admission
        cookie), or the waiting page (``shield.enforce.queue_gate``). The metrics call a ctl
        queue's answers ``ctl-queue``, as they call a ctl closure's ``ctl-close``."""
        assert self.queue is not None
        rule = decision.rule
        outcome, entered = await self.queue.enter(request, decision)
        if isinstance(entered, Admission):
            if decision.ctl is not None and rule.throttles:
                return await self._throttled_walk_in(request, rule, entered, target, upstream)
            extra = entered.lines + (_forwarded_line(rule) if self.debug_header else b"")
            return await self._forward(request, target, extra, rule, upstream)
        by_ctl = decision.ctl is not None
        request.decided(rule.name, "ctl-queue" if by_ctl else rule.action, outcome, request.identity.label)
        if self.debug_header:
            entered.headers["X-Shield-Rule"] = f"{rule.name}; {outcome}{' by ctl' if by_ctl else ''}"
        return self._refusal(request, entered)

    async def _throttled_walk_in(
        self, request: Request, rule: CompiledRule, admission: Admission, target: bytes, upstream: Upstream
    ) -> Reply:
        """A visitor let in from the waiting room ``ctl queue`` put a throttle rule in: the
        request that walks in is the throttle's to judge, as the ones after it are. Refused, it
        keeps its admission (its place is used; the 429 says when to come back)."""
        rate = rule.rates[request.identity.authenticated]
        assert rate is not None
        key = rule.state_key(request)
        charge = rule.count_statuses is None
        limit: RateLimitResult | None
        if self.shared is not None:
            limit = await self.shared.decide(key, rate, 1 if charge else 0)
        elif charge:
            limit = self.limiter.hit(key, rate, self.now())
        else:
            limit = self.limiter.peek(key, rate, self.now())
        verdict = after_throttle(rule, limit, self.deny_on_state_error)
        if verdict is not rule.forward:
            refused = await self._done(self.act(request, verdict, target, upstream))
            if isinstance(refused, ShieldAnswer):
                refused.cookies.extend(admission.cookies)
            return refused
        extra = admission.lines + (b"" if limit is None else ratelimit_lines(limit, rule.name, rate))
        if self.debug_header:
            extra += _forwarded_line(rule)
        if not charge:
            return await self._forward_counted(request, rule, extra, target, upstream)
        return await self._forward(request, target, extra, rule, upstream)

    def _ban_answer(self, source: str) -> int:
        """The status of a ban by ``source``: Shield's own (``bans.answer``) or CrowdSec's."""
        if source == "crowdsec":
            assert self.crowdsec is not None
            return self.crowdsec.config.answer
        assert self.bans is not None
        return self.bans.config.answer

    async def _throttle_shared(
        self,
        request: Request,
        decision: Throttle,
        target: bytes,
        upstream: Upstream,
    ) -> Reply:
        """``act`` for a throttle whose state is shared (Redis): ask it, then act on the verdict."""
        assert self.shared is not None
        rule, rate = decision
        counting = rule.count_statuses
        limit = await self.shared.decide(rule.state_key(request), rate, 1 if counting is None else 0)
        verdict = after_throttle(rule, limit, self.deny_on_state_error)
        if verdict is not rule.forward:
            return await self._done(self.act(request, verdict, target, upstream))
        extra = (b"" if limit is None else ratelimit_lines(limit, rule.name, rate)) + (
            _forwarded_line(rule) if self.debug_header else b""
        )
        if counting is not None:
            return await self._forward_counted(request, rule, extra, target, upstream)
        return await self._forward(request, target, extra, rule, upstream)

    async def _dry_runs_shared(
        self,
        request: Request,
        decision: DryRuns,
        target: bytes,
        upstream: Upstream,
    ) -> Reply:
        """``act`` for dry runs with shared state: count their verdicts, then act on the rest."""
        await self._record_shared_dry_runs(decision.rules, request)
        return await self._done(self.act(request, decision.then, target, upstream))

    @staticmethod
    async def _done(acted: ShieldAnswer | Awaitable[Reply]) -> Reply:
        """What ``act`` returned, awaited where it is still to be done."""
        return acted if isinstance(acted, ShieldAnswer) else await acted

    async def _check_solution(self, request: Request) -> Reply:
        assert self.challenge is not None
        response, passed = await self.challenge.submit(request, request.client_key)
        request.decided("challenge", "challenge", "passed" if passed else "refused", request.identity.label)
        return response

    def _debug(self, rule: CompiledRule, outcome: str) -> dict[str, str]:
        """The debug header of Shield's own answer (none unless ``policy.debug_header``)."""
        return {"X-Shield-Rule": f"{rule.name}; {outcome}"} if self.debug_header else {}

    async def _forward_counted(
        self,
        request: Request,
        rule: CompiledRule,
        extra: bytes,
        target: bytes,
        upstream: Upstream,
    ) -> Reply:
        """Forward for a throttle that counts only some answers (``count.status``): the bucket is
        charged once the upstream's status is known, never for Shield's own answers."""
        assert rule.count_statuses is not None
        forwarded = await self._forward(request, target, extra, rule, upstream)
        if forwarded.status in rule.count_statuses and not isinstance(forwarded, ShieldAnswer):
            rate = rule.rates[request.identity.authenticated]
            assert rate is not None
            key = rule.state_key(request)
            if self.shared is not None:
                self.shared.charge(key, rate)
            else:
                self.limiter.hit(key, rate, self.now())
        return forwarded

    def _violation(self, request: Request, rule: CompiledRule, outcome: str) -> None:
        """A refusal that counts towards a ban (``bans.after`` of them)."""
        request.decided(rule.name, rule.action, outcome, request.identity.label)
        if self.bans is not None:
            self.bans.violation(request.client_key)

    async def _forward(
        self, request: Request, target: bytes, extra: bytes, rule: CompiledRule | None, upstream: Upstream
    ) -> Reply:
        """Forward upstream as ``rule`` decided (None: no rule applied), with Shield's ``extra``
        header lines and what the upstream is told of the client; record the outcome."""
        if request.upgrade and not request.body_exists and is_websocket_upgrade(request.headers):
            # (An upgrade request with a body goes on as a plain request: Upgrade is hop-by-hop.)
            return await self._websocket(request, target, extra, rule, upstream)
        if self.overload is None and self.requests_per_client is None:
            response = await self.proxy.forward(request, target, extra, upstream)  # the common case
        else:
            response = await self._forward_within_limits(request, target, extra, rule, upstream)
        identity = request.identity
        if rule is None:
            request.labels = (
                _DEFAULT_FORWARDED[identity.authenticated]
                if isinstance(response, Written)
                else (_DEFAULT, "allow", _outcome(response), identity.label)
            )
            return response
        request.labels = (
            rule.forwarded_labels[identity.authenticated]
            if isinstance(response, Written)
            else (rule.name, rule.action, _outcome(response), identity.label)
        )
        trigger = rule.trigger
        if trigger is not None and not isinstance(response, Shed | Capped):
            trigger.answered(self.now(), response.status >= 500)
        return response

    async def _forward_within_limits(
        self, request: Request, target: bytes, extra: bytes, rule: CompiledRule | None, upstream: Upstream
    ) -> Reply:
        """Forward within the client's cap on requests in flight and through the overload gate,
        as far as either is configured."""
        held = self.requests_per_client
        key = request.client_key
        if held is not None and not held.take(key):
            self.stats.client_limits["requests_per_client"] += 1
            return answers.too_many_in_flight(accept=request.headers.get("Accept"))
        try:
            if self.overload is None:
                return await self.proxy.forward(request, target, extra, upstream)
            ranks = _DEFAULT_RANKS if rule is None else rule.ranks
            rank = ranks[request.identity.authenticated]
            return await self.overload.forward(request, target, extra, upstream, rank)
        finally:
            if held is not None:
                held.give_back(key)

    async def _websocket(
        self, request: Request, target: bytes, extra: bytes, rule: CompiledRule | None, upstream: Upstream
    ) -> Reply:
        response = await self.proxy.upgrade(request, target, extra, upstream)
        name, action = (_DEFAULT, "allow") if rule is None else (rule.name, rule.action)
        request.decided(name, action, _outcome(response), request.identity.label)
        return response

    @staticmethod
    def _refusal(request: Request, response: ShieldAnswer) -> ShieldAnswer:
        # A client waiting for 100 Continue never sends its body: close rather than wait for it.
        if "Expect" in request.headers and request.body_exists:
            response.force_close()
        return response

    def _record_dry_runs(self, rules: list[CompiledRule], request: RequestView) -> None:
        for rule in rules:
            if rule.action == "throttle":
                rate = rule.rates[request.identity.authenticated]
                assert rate is not None
                result = self.limiter.hit(rule.state_key(request), rate, self.now())
                self._record_dry_run(rule, request, "forwarded" if result.allowed else "throttled")
            elif (admission := rule.admission) is not None:
                # A queue in dry-run draws no tickets (they would move the real line): a request
                # past the admit rate, all clients together, is one that would have waited.
                result = self.limiter.hit(rule.state_prefix + "dry-run queue", admission, self.now())
                self._record_dry_run(rule, request, "forwarded" if result.allowed else "queued")
            else:
                self._record_dry_run(rule, request, rule.outcome)

    async def _record_shared_dry_runs(self, rules: list[CompiledRule], request: RequestView) -> None:
        assert self.shared is not None
        for rule in rules:
            if rule.action == "throttle":
                rate = rule.rates[request.identity.authenticated]
                assert rate is not None
                result = await self.shared.decide(rule.state_key(request), rate)
                self._record_dry_run(
                    rule, request, "throttled" if result and not result.allowed else "forwarded"
                )
            elif (admission := rule.admission) is not None:  # (as in _record_dry_runs)
                result = await self.shared.decide(rule.state_prefix + "dry-run queue", admission)
                self._record_dry_run(
                    rule, request, "queued" if result and not result.allowed else "forwarded"
                )
            else:
                self._record_dry_run(rule, request, rule.outcome)

    def _record_dry_run(self, rule: CompiledRule, request: RequestView, outcome: str) -> None:
        self.stats.dry_run[(rule.name, outcome)] += 1
        if outcome != "forwarded":
            log.info(
                "dry-run rule %s would have %s %s %s from %s",
                rule.name,
                outcome,
                request.method,
                request.path,
                request.client_ip,
            )


def _outcome(response: Reply) -> str:
    """'error' for Shield's own failure answers (502, 504, 413...), 'shed' for load shedding,
    'capped' for a client over limits.max_requests_per_client, else 'forwarded'."""
    if isinstance(response, Written):
        return "forwarded"
    if isinstance(response, Shed):
        return "shed"
    return "capped" if isinstance(response, Capped) else "error"


def _accept(request: Request) -> str | None:
    """What the client accepts: Shield's own answers come as JSON to API clients."""
    return request.headers.get("Accept")


def _forwarded_line(rule: CompiledRule) -> bytes:
    """The debug header line of a request ``rule`` forwarded (``policy.debug_header``)."""
    return b"X-Shield-Rule: " + rule.name.encode() + b"; forwarded\r\n"

"""``shield explain``: what Shield would do with one request, and why. Pure: returns text.

Runs the same code as the proxy: path canonicalization, the client address, the identity
check, and the decision itself (``shield.decide.decision.decide``, with the status page, the
challenge, ctl closures and ctl waiting rooms as the running Shield has them), so the decision
it prints is the proxy's. The per-rule lines say why each rule before the deciding one did not apply.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple, assert_never
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from shield.config.model import ShieldConfig
from shield.config.rules import DEFAULT_CLOSE_MESSAGE
from shield.decide import decision as decided
from shield.decide.challenge_tokens import Challenger, binding
from shield.decide.client_address import Client, ClientResolver
from shield.decide.credentials import Authenticator, cookie_value
from shield.decide.identity import Identity, IdentityResolver, NoIdentity
from shield.decide.paths import UnsafePath, canonical_raw_path
from shield.decide.policy import CompiledRule, Policy, RequestView
from shield.decide.queue_tickets import QueueTickets, Ticket
from shield.http.target import request_target


def parse_header_args(values: list[str]) -> CIMultiDict[str]:
    headers = CIMultiDict[str]()
    for value in values:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"invalid header {value!r}: write 'Name: value'")
        headers.add(name.strip(), rest.strip())
    return headers


def parse_cookie_args(values: list[str]) -> str | None:
    """``["a=1", "b=2"]`` -> the Cookie header ``a=1; b=2``."""
    for value in values:
        if "=" not in value or not value.partition("=")[0].strip():
            raise ValueError(f"invalid cookie {value!r}: write 'name=value'")
    return "; ".join(v.strip() for v in values) or None


def _client_text(config: ShieldConfig, peer: str, client: Client) -> str:
    trusted = config.clients.trusted_proxies
    if not client.via_proxy:
        why = "no trusted proxies" if not trusted else "not a trusted proxy"
        return f"client:   {client.ip}  (the TCP peer, {why}: forwarding headers ignored; key {client.key})"
    return (
        f"client:   {client.ip}  (peer {peer} is a trusted proxy; {config.clients.header} walked "
        f"from the right past trusted hops; key {client.key}; "
        f"upstream gets X-Forwarded-For: {client.forwarded_for})"
    )


def _identify(config: ShieldConfig, headers: CIMultiDictProxy[str], client_ip: str) -> Identity:
    auth = config.auth
    resolver: IdentityResolver = NoIdentity()
    if auth.jwt is not None or auth.signed_cookie is not None:
        resolver = Authenticator(auth, time.time)
    identity = resolver.identify(headers, client_ip)
    spec = auth.introspection
    if identity.authenticated or spec is None:
        return identity
    cookie = cookie_value(headers.get("Cookie", ""), spec.cookie) if spec.cookie else None
    header = headers.get(spec.header) if spec.header else None
    if not cookie and not header:
        return identity
    sent = f"cookie {spec.cookie}" if cookie else f"header {spec.header}"
    return Identity(
        False,
        None,
        f"{identity.how}; Shield would ask the upstream at {spec.path} with the {sent} "
        "(explain makes no call: anonymous here, whatever the answer)",
    )


def _action_text(rule: CompiledRule, default_retry_after: float) -> str:
    config = rule.config
    if rule.action == "close":
        # The Retry-After the client gets (see actions.closed), not the raw config value.
        seconds = max(1, math.ceil(config.retry_after or default_retry_after))
        return f"close (503, Retry-After {seconds}s): {config.message or DEFAULT_CLOSE_MESSAGE!r}"
    if rule.action == "throttle":
        assert rule.rate is not None
        counting = f", counting only answers {sorted(rule.count_statuses)}" if rule.count_statuses else ""
        return f"throttle {config.limit_text}, burst {rule.rate.burst}, key {config.key}{counting}"
    if rule.action == "challenge":
        return "challenge (proof-of-work page until a pass cookie is earned; JSON clients get 429)"
    if rule.action == "queue":
        session = int(config.session or 900)
        return f"queue (waiting room: {config.admit} let in, first come first served; in for {session}s)"
    return {"allow": "allow (forward, skip later rules)", "block": "block (403)"}[rule.action]


def explained(
    config: ShieldConfig,
    method: str,
    url: str,
    header_args: list[str],
    client_ip: str,
    identities: IdentityResolver | None = None,
    cookie_args: list[str] | None = None,
    closures: dict[str, str] | None = None,
    ctl: bool = False,
    policy: Policy | None = None,
    queues: dict[str, decided.CtlQueue] | None = None,
    queue_lines: dict[str, int] | None = None,
) -> tuple[list[str], decided.Decision | None]:
    """The lines ``shield explain`` prints, and the decision they end with (None: refused before
    any rule, 400); ``client_ip`` is the TCP peer.

    With ``ctl`` (the config enables the ctl API) the runtime overrides are shown: ``closures``
    maps each closed rule to a description, None when the running Shield could not be asked;
    ``queues`` each rule ``ctl queue`` put in a waiting room to that waiting room;
    ``queue_lines`` each waiting room's last ticket let in, so a ticket's place can be said.
    ``policy``: the config's rules, compiled already (compiled here when None)."""
    headers = parse_header_args(header_args)
    cookies = parse_cookie_args(cookie_args or [])
    if cookies is not None:
        headers.add("Cookie", cookies)
    parts = urlsplit(url)
    if parts.scheme and parts.netloc and "Host" not in headers:
        headers["Host"] = parts.netloc
    headers.setdefault("Host", "localhost")
    raw = url if not parts.scheme else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    method = method.upper()
    lines = [f"request:  {method} {raw}  (Host: {headers['Host']}, client {client_ip})"]
    target = request_target(raw, headers["Host"], method)
    if target is None:
        return [
            *lines,
            "decision: 400 Bad Request (the request-target is not a path, or names another host)",
        ], None
    raw_path, _, query = target.partition(b"?")
    if policy is None:
        policy = Policy(config.rules, config.policy)
    try:
        match_path, forward = canonical_raw_path(raw_path, case_insensitive=policy.case_insensitive)
    except UnsafePath as error:
        return [*lines, f"decision: 400 Bad Request ({error}); no rule is consulted"], None
    forwarded = (forward or raw_path).decode("utf-8", "surrogateescape")
    lines.append(f"path:     {match_path}  (forwarded upstream as {forwarded})")
    clients = config.clients
    peer = client_ip
    client = ClientResolver(clients.trusted_proxies, ipv6_prefix=clients.ipv6_prefix, header=clients.header)
    resolved = client.resolve(peer, CIMultiDictProxy(headers))
    client_ip = resolved.ip
    view_headers = CIMultiDictProxy(headers)
    if identities is not None:
        identity = identities.identify(view_headers, client_ip)
    else:
        identity = _identify(config, view_headers, client_ip)
    who = f"{identity.label}" + (f" as {identity.user}" if identity.user else "")
    lines.append(f"identity: {who} ({identity.how})")
    lines.append(_client_text(config, peer, resolved))
    if policy.networks.configured:
        lines.append(f"network:  {policy.networks.facts(client_ip).describe()}")
    view = RequestView(
        method,
        match_path,
        headers.get("Host"),
        headers,
        query.decode("latin-1"),
        client_ip,
        identity,
        resolved.key,
    )
    lines.append("rules:")
    candidates = set(map(id, policy.candidates(method, match_path)))
    deciding: CompiledRule | None = None
    matched: list[CompiledRule] = []
    retry = config.policy.default_retry_after
    for number, rule in enumerate(policy.rules, start=1):
        label = f"  {number:>2}. {rule.name:<24}"
        if deciding is not None:
            lines.append(f"{label} not reached (first match wins)")
            continue
        reason = rule.mismatch(view)
        if reason is not None:
            lines.append(f"{label} no: {reason}")
            continue
        if id(rule) not in candidates:  # the index must agree with the full check
            lines.append(f"{label} INDEX DISAGREES: matched but was not a candidate (a bug; please report)")
        matched.append(rule)
        if rule.dry_run:
            lines.append(f"{label} MATCH in dry-run: would {_action_text(rule, retry)}; matching goes on")
            continue
        lines.append(f"{label} MATCH: {_action_text(rule, retry)}")
        deciding = rule
    queues = queues or {}
    if ctl:
        if closures is None:
            lines.append(
                "overrides: ctl closures and waiting rooms are runtime-only and the admin listener "
                "did not answer; `shield ctl status` lists them"
            )
        else:
            closed = next((rule for rule in matched if rule.name in closures), None)
            queued = queues.get(deciding.name) if deciding is not None else None
            if closed is not None:
                lines.append(f"override: rule {closed.name!r} is closed by ctl: {closures[closed.name]}")
            elif queued is not None:
                said = f": {queued.message!r}" if queued.message else ""
                lines.append(
                    f"override: rule {queued.rule!r} is queued by ctl at {queued.admit} "
                    f"for {max(0.0, queued.until - time.time()):.0f}s more{said}"
                )
            else:
                closed_text, queued_text = ", ".join(closures) or "none", ", ".join(queues) or "none"
                lines.append(
                    "overrides: no ctl closure or waiting room applies "
                    f"(closed by ctl: {closed_text}; queued by ctl: {queued_text})"
                )
    decision = decided.decide(view, _rulebook(config, policy, closures or {}, queues))
    return [*lines, _decision_text(decision, view, config, queues, queue_lines or {})], decision


class _CtlSaid(NamedTuple):
    """A ctl closure as the running Shield described it."""

    message: str
    until: float


def _ago(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"{whole // 60} min {whole % 60} s" if whole >= 60 else f"{whole} s"


def _rulebook(
    config: ShieldConfig, policy: Policy, closures: dict[str, str], queues: dict[str, decided.CtlQueue]
) -> decided.Rulebook:
    """The running Shield's rulebook, as far as its config and ctl status tell."""
    challenge = config.challenge
    # With no configured key a pass cannot be checked here (each process makes its own key).
    challenger = (
        Challenger(
            challenge.secret,
            difficulty=challenge.difficulty,
            solve_within=challenge.solve_within,
            pass_for=challenge.pass_for,
        )
        if challenge.secret
        else None
    )

    def passes(cookie: str | None, client_key: str) -> bool:
        bound = binding(client_key, challenge.ipv4_prefix)
        return challenger is not None and challenger.passes(cookie, bound, time.time())

    # The waiting room's cookies are signed with the same key (none configured: none checks).
    tickets = QueueTickets(challenge.secret, ticket_for=config.queue.ticket_for) if challenge.secret else None

    def queue_cookies(rule: str, view: RequestView) -> tuple[bool, Ticket | None]:
        if tickets is None:
            return False, None
        names = (config.queue.session_cookie, config.queue.ticket_cookie)
        return tickets.read(
            view.cookies, rule, binding(view.client_key, challenge.ipv4_prefix), time.time(), names
        )

    return decided.Rulebook(
        policy,
        config.policy.default_retry_after,
        pages=decided.own_pages(
            policy,
            config.status_page.path if config.status_page.enabled else None,
            challenge.path,
            challenges_without_rules=config.crowdsec is not None,
        ),
        challenge_cookie=challenge.cookie,
        passes=passes,
        ctl_closed=closures,
        ctl_closure=lambda name: _CtlSaid(closures[name], time.time()) if name in closures else None,
        ctl_queued=queues,
        ctl_queue=queues.get,
        queue_cookies=queue_cookies,
    )


def _decision_text(
    decision: decided.Decision,
    view: RequestView,
    config: ShieldConfig,
    queues: dict[str, decided.CtlQueue],
    queue_lines: dict[str, int],
) -> str:
    """The last line of ``explain``: what Shield does, as ``decide`` said."""
    match decision:
        case decided.DryRuns(_, then):
            return _decision_text(then, view, config, queues, queue_lines)
        case decided.Forward(rule, _):
            if rule is None:
                return "decision: forward to the upstream (no rule matched)"
            passed = " (its challenge pass is valid)" if rule.action == "challenge" else ""
            if rule.action == "queue" or rule.name in queues:
                passed = " (admitted from its waiting room: the admission cookie is valid)"
            return f"decision: forwarded by rule {rule.name!r}{passed}"
        case decided.Throttle(rule, rate):
            identity = view.identity
            limit = rule.config.authenticated_rate if identity.authenticated else rule.config.rate
            return (
                f"decision: throttle by {rule.name!r}: forwarded while bucket {rule.state_key(view)!r} "
                f"has room ({rate.burst} at once, then {limit.text if limit else ''}); 429 beyond"
            )
        case decided.Closed(rule, "ctl-close", _, _, _):
            return f"decision: closed (503) by ctl on rule {rule.name!r}"
        case decided.Closed(rule, _, "auto-closed", _, _):
            return f"decision: closed (503) by rule {rule.name!r}'s auto-close trigger"
        case decided.Closed(rule) | decided.Blocked(rule) | decided.Challenged(rule):
            return f"decision: {rule.outcome} by rule {rule.name!r}"
        case decided.Queue(rule, ticket, ctl):
            admit = f"queued by ctl, {ctl.admit}" if ctl is not None else rule.config.admit
            if ticket is None:
                return (
                    f"decision: waiting room of rule {rule.name!r} ({admit} let in): no ticket yet: "
                    "it draws one, at the back of the line"
                )
            held = f"its ticket, number {ticket.number}, drawn {_ago(time.time() - ticket.issued)} ago"
            let_in = queue_lines.get(rule.name)
            if let_in is None:
                where = "its place depends on the line as it stands (`shield ctl status` shows the line)"
            elif ticket.number <= let_in:
                where = "its turn has come: the next request walks in"
            else:
                where = (
                    f"{ticket.number - let_in - 1} ahead of it, as the running Shield last saw the "
                    f"line (up to ticket {let_in} let in)"
                )
            return f"decision: waiting room of rule {rule.name!r} ({admit} let in): {held}; {where}"
        case decided.ServeStatusPage():
            return (
                f"decision: Shield answers its status page ({config.status_page.path}); no rule is consulted"
            )
        case decided.CheckSolution():
            return (
                f"decision: Shield checks a challenge solution posted to {config.challenge.path}; "
                "no rule is consulted"
            )
        case decided.Throttled(rule, _) | decided.Unavailable(rule):
            return f"decision: {rule.outcome} by rule {rule.name!r}"  # (a throttle's verdict, not made here)
        case decided.Banned():
            return "decision: banned"  # (explain knows no bans: the running Shield's are runtime state)
        case _:
            assert_never(decision)

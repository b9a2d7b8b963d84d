"""The ctl API on the admin listener: close, queue and open rules for a while, list and lift bans,
status, and the top offenders of the last minutes (``GET /ctl/top``, read-only).

Mounted at ``/ctl/`` only when ``admin.ctl`` names a token; every call must carry it as
``Authorization: Bearer TOKEN`` (compared in constant time). Answers are JSON. The rule file
stays the source of truth: only rules it names can be closed or queued, a closure or a waiting
room always ends, and ``open`` removes ctl's own only (a rule the file closes stays closed, a
rule the file queues stays queued at its own rate).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from shield.app.reload import PolicyHolder
from shield.config.units import parse_duration
from shield.decide.decision import CtlQueue
from shield.decide.policy import CompiledRule
from shield.enforce.ban_list import BanList
from shield.enforce.switches import Closure, Switches
from shield.ops.top import TopEntry
from shield.state.records import SharedStateError
from shield.state.top_share import TopShare

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class CtlApi:
    token: bytes
    holder: PolicyHolder
    switches: Switches
    bans: BanList | None
    state: str  # the backend's name: memory (per process) or redis (every replica)
    top: TopShare | None = None  # None: ``top.enabled`` is off


CTL = web.AppKey("ctl", CtlApi)


def _json(status: int, data: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(data, indent=1) + "\n",
        content_type="application/json",
        headers=headers,
    )


def require_token(*, token: bytes) -> Middleware:
    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how much of a guessed token was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            return _json(401, {"error": "missing or wrong ctl token"}, {"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check_token


def closure_record(closure: Closure, now: float) -> dict[str, Any]:
    return {
        "rule": closure.rule,
        "message": closure.message,
        "source": closure.source,
        "until": closure.until,
        "remaining": round(max(0.0, closure.until - now), 1),
    }


def queue_record(queue: CtlQueue, now: float, waiting: float, admitted: int | None = None) -> dict[str, Any]:
    """A ctl waiting room as ``ctl status`` lists it: with the visitors in its line as this
    process last saw it (an estimate, those who gave up included), the wait at its back and the
    last ticket let in (None: no line seen yet)."""
    return {
        "admitted_up_to": admitted,
        "rule": queue.rule,
        "admit": queue.admit,
        "message": queue.message,
        "source": "ctl",
        "until": queue.until,
        "remaining": round(max(0.0, queue.until - now), 1),
        "waiting": waiting,
        "wait_seconds": round(waiting * queue.period / queue.count, 1),
    }


def _file_queue(rule: CompiledRule, waiting: float, admitted: int | None) -> dict[str, Any]:
    """A queue rule of the file as ``ctl status`` lists it, with its line (as ``queue_record``)."""
    rate = rule.config.admission
    assert rate is not None
    return {
        "admitted_up_to": admitted,
        "rule": rule.name,
        "admit": rate.text,
        "waiting": waiting,
        "wait_seconds": round(waiting * rate.period / rate.count, 1),
    }


def _rule_names(api: CtlApi) -> list[str]:
    return [rule.name for rule in api.holder.current.policy.rules]


def _unknown_rule(api: CtlApi, name: str) -> web.Response:
    known = ", ".join(_rule_names(api)) or "none"
    return _json(404, {"error": f"no rule named {name!r} in the rule file (rules: {known})"})


async def status(request: web.Request) -> web.Response:
    api = request.app[CTL]
    switches = api.switches
    now = switches.wall.now()
    runtime = api.holder.current
    waiting = switches.waiting()
    admitted = switches.admitted()
    enforced = [r for r in runtime.policy.rules if not r.dry_run]
    return _json(
        200,
        {
            "state": api.state,
            "scope": "every replica" if api.state == "redis" else "this process only",
            "config_version": runtime.version,
            "closures": [closure_record(c, now) for c in switches.closures()],
            "closed_by_file": [r.name for r in enforced if r.action == "close"],
            "queues": [
                queue_record(q, now, waiting.get(q.rule, 0.0), admitted.get(q.rule))
                for q in switches.queues()
            ],
            "queued_by_file": [
                _file_queue(r, waiting.get(r.name, 0.0), admitted.get(r.name))
                for r in enforced
                if r.action == "queue"
            ],
            "bans": {"enabled": api.bans is not None, "active": len(api.bans.bans()) if api.bans else 0},
        },
    )


async def close_rule(request: web.Request) -> web.Response:
    api = request.app[CTL]
    name = request.match_info["rule"]
    if name not in _rule_names(api):
        return _unknown_rule(api, name)
    try:
        _, seconds, message = await _override(request)
        closure = await api.switches.close(name, seconds, message)
    except json.JSONDecodeError:
        return _json(400, {"error": "the body must be JSON"})
    except ValueError as error:
        return _json(400, {"error": str(error)})
    except SharedStateError as error:
        return _json(503, {"error": f"closed on this replica only: {error}"})
    return _json(200, {"closed": closure_record(closure, api.switches.wall.now())})


async def _override(request: web.Request) -> tuple[dict[str, Any], float | None, str | None]:
    """The body of a ``close`` or ``queue`` call, its ``for`` (seconds; None: the default) and
    its ``message``; ValueError (or JSONDecodeError) for a body that is not one."""
    body = await request.json() if request.can_read_body else {}
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    duration = body.get("for")
    message = body.get("message")
    if message is not None and not isinstance(message, str):
        raise ValueError("message must be a string")
    return body, None if duration is None else parse_duration(duration), message


async def queue_rule(request: web.Request) -> web.Response:
    """``{"admit": "20/minute", "for": "1h", "message": ...}``: the rule's matching requests go
    through a waiting room letting ``admit`` in, until it ends or ``open`` lifts it."""
    api = request.app[CTL]
    name = request.match_info["rule"]
    rule = next((r for r in api.holder.current.policy.rules if r.name == name), None)
    if rule is None:
        return _unknown_rule(api, name)
    if rule.dry_run:
        return _json(409, {"error": f"rule {name!r} runs in dry-run: it never answers, so it cannot queue"})
    if rule.action in ("block", "close"):
        verb = "blocks" if rule.action == "block" else "closes"
        return _json(
            409,
            {"error": f"rule {name!r} {verb} every request it matches: a waiting room would lead nowhere"},
        )
    try:
        body, seconds, message = await _override(request)
        admit = body.get("admit")
        if not isinstance(admit, str):
            raise ValueError("admit is required: the visitors let in, e.g. 20/minute")
        queue = await api.switches.queue(name, admit, seconds, message)
    except json.JSONDecodeError:
        return _json(400, {"error": "the body must be JSON"})
    except ValueError as error:
        return _json(400, {"error": str(error)})
    except SharedStateError as error:
        return _json(503, {"error": f"queued on this replica only: {error}"})
    now = api.switches.wall.now()
    return _json(200, {"queued": queue_record(queue, now, api.switches.waiting().get(name, 0.0))})


async def open_rule(request: web.Request) -> web.Response:
    api = request.app[CTL]
    name = request.match_info["rule"]
    known = name in _rule_names(api)
    if not known and api.switches.closure(name) is None and api.switches.queued(name) is None:
        return _unknown_rule(api, name)
    try:
        opened = await api.switches.open(name)
    except SharedStateError as error:
        return _json(503, {"error": f"opened on this replica only: {error}"})
    if not any(opened) and any(
        r.name == name and r.action == "close" for r in api.holder.current.policy.rules
    ):
        return _json(
            409, {"error": f"rule {name!r} is closed by the rule file; ctl only lifts its own closures"}
        )
    return _json(200, {"opened": name, "was_closed": opened.closed, "was_queued": opened.queued})


async def list_bans(request: web.Request) -> web.Response:
    api = request.app[CTL]
    if api.bans is None:
        return _json(200, {"enabled": False, "bans": []})
    now = api.bans.wall.now()
    bans = [
        {
            "client": r.name,
            "until": r.until,
            "remaining": round(max(0.0, r.until - now), 1),
            "level": r.data.get("level", 1),
        }
        for r in api.bans.bans()
    ]
    return _json(200, {"enabled": True, "bans": bans})


async def lift_ban(request: web.Request) -> web.Response:
    api = request.app[CTL]
    client = request.match_info["client"]
    if api.bans is None:
        return _json(404, {"error": "bans are not enabled (no bans: section)"})
    try:
        lifted = await api.bans.lift(client)
    except SharedStateError as error:
        return _json(503, {"error": f"lifted on this replica only: {error}"})
    if not lifted:
        return _json(404, {"error": f"{client} is not banned"})
    return _json(200, {"unbanned": client})


def _entry(entry: TopEntry) -> dict[str, Any]:
    return {"key": entry.key, "count": entry.count, "share": round(entry.share, 6), "error": entry.error}


def _flag(value: str) -> bool:
    if value.lower() in ("", "0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise ValueError(f"refused must be true or false, not {value!r}")


async def top(request: web.Request) -> web.Response:
    """``?by=ip|asn|country|ua|path|rule&refused=1&window=5m&limit=20``: the heaviest keys."""
    api = request.app[CTL]
    if api.top is None:
        return _json(200, {"enabled": False, "entries": []})
    query = request.query
    try:
        by = query.get("by", "ip")
        refused = _flag(query.get("refused", ""))
        window = parse_duration(query.get("window", "5m"))
        limit = int(query.get("limit", "20"))
        shared = await api.top.report(by, refused=refused, window=window, limit=limit)
    except ValueError as error:
        return _json(400, {"error": str(error)})
    report, tables = shared.report, api.top.tables
    return _json(
        200,
        {
            "enabled": True,
            "by": by,
            "refused": refused,
            "window": window,
            # Whole slots: the counts cover between `window` and `window + slot` seconds.
            "slot": tables.slot_seconds,
            "capacity": tables.capacity,
            "requests": report.requests,
            "error": report.error,
            "replicas": shared.replicas,
            "partial": shared.partial,
            "entries": [_entry(e) for e in report.entries],
        },
    )


def build_ctl_app(api: CtlApi) -> web.Application:
    app = web.Application(middlewares=[require_token(token=api.token)])
    app[CTL] = api
    app.router.add_get("/status", status)
    app.router.add_post("/rules/{rule}/close", close_rule)
    app.router.add_post("/rules/{rule}/queue", queue_rule)
    app.router.add_post("/rules/{rule}/open", open_rule)
    app.router.add_get("/bans", list_bans)
    app.router.add_delete("/bans/{client:.+}", lift_ban)
    app.router.add_get("/top", top)
    return app

"""``shield ctl``: the ctl API's client. Synchronous (one call per command), standard library only."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode


class CtlError(Exception):
    """The API refused (``status`` >= 400) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def call(
    base: str, token: str, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base.rstrip("/") + "/ctl" + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("error", error.reason)
        except ValueError:
            message = str(error.reason)
        raise CtlError(error.code, f"{error.code}: {message}") from None
    except (urllib.error.URLError, OSError) as error:
        raise CtlError(0, f"cannot reach the admin listener at {base}: {error}") from None


def running_config(base: str, timeout: float = 1.0) -> dict[str, Any]:
    """The admin listener's ``/config`` report (no token: it holds digests, never values)."""
    try:
        with urllib.request.urlopen(base.rstrip("/") + "/config", timeout=timeout) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as error:
        message = f"{base}/config answered {error.code}: not a Shield of this version?"
        raise CtlError(error.code, message) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise CtlError(0, f"cannot reach the admin listener at {base}: {error}") from None


def _when(until: float, remaining: float) -> str:
    return f"until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(until))} ({remaining:.0f}s left)"


def close(base: str, token: str, rule: str, duration: str | None, message: str | None) -> list[str]:
    body = {"for": duration, "message": message}
    closed = call(base, token, "POST", f"/rules/{quote(rule, safe='')}/close", body)["closed"]
    return [f"closed {closed['rule']} {_when(closed['until'], closed['remaining'])}: {closed['message']!r}"]


def queue(
    base: str, token: str, rule: str, admit: str, duration: str | None, message: str | None
) -> list[str]:
    body = {"admit": admit, "for": duration, "message": message}
    queued = call(base, token, "POST", f"/rules/{quote(rule, safe='')}/queue", body)["queued"]
    said = repr(queued["message"]) if queued["message"] else "the rule's or the default waiting page message"
    return [
        f"queued {queued['rule']} at {queued['admit']} {_when(queued['until'], queued['remaining'])}: {said}"
    ]


def open_(base: str, token: str, rule: str) -> list[str]:
    answer = call(base, token, "POST", f"/rules/{quote(rule, safe='')}/open")
    closed, queued = answer["was_closed"], answer.get("was_queued", False)
    if closed and queued:
        return [f"opened {rule}: its ctl closure and its ctl waiting room are lifted"]
    if queued:
        return [f"opened {rule}: its ctl waiting room is lifted"]
    return [f"opened {rule}" if closed else f"{rule} had no ctl closure or waiting room; nothing changed"]


def bans(base: str, token: str) -> list[str]:
    answer = call(base, token, "GET", "/bans")
    if not answer["enabled"]:
        return ["bans are not enabled (no bans: section in the config)"]
    lines = [
        f"{b['client']:<40} ban {b['level']} {_when(b['until'], b['remaining'])}" for b in answer["bans"]
    ]
    return lines or ["nobody is banned"]


def unban(base: str, token: str, client: str) -> list[str]:
    call(base, token, "DELETE", f"/bans/{quote(client, safe='/:')}")
    return [f"unbanned {client}"]


def status(base: str, token: str) -> list[str]:
    answer = call(base, token, "GET", "/status")
    lines = [f"state: {answer['state']} (ctl changes apply to {answer['scope']})"]
    lines.append(f"config version: {answer['config_version']}")
    closures = answer["closures"]
    if closures:
        lines.append("closed by ctl (temporary overrides of the rule file):")
        for c in closures:
            lines.append(f"  {c['rule']:<24} {_when(c['until'], c['remaining'])}: {c['message']!r}")
    else:
        lines.append("closed by ctl: none")
    lines.append(f"closed by the rule file: {', '.join(answer['closed_by_file']) or 'none'}")
    queues = answer.get("queues", [])
    if queues:
        lines.append("queued by ctl (temporary waiting rooms):")
        for q in queues:
            line = f"  {q['rule']:<24} {q['admit']} {_when(q['until'], q['remaining'])}, {_line(q)}"
            lines.append(line + (f": {q['message']!r}" if q["message"] else ""))
    else:
        lines.append("queued by ctl: none")
    by_file = answer.get("queued_by_file", [])
    if by_file:
        lines.append("queued by the rule file:")
        lines.extend(f"  {q['rule']:<24} {q['admit']}, {_line(q)}" for q in by_file)
    else:
        lines.append("queued by the rule file: none")
    ban_info = answer["bans"]
    lines.append(f"bans: {ban_info['active']} active" if ban_info["enabled"] else "bans: not enabled")
    return lines


def _line(queue: dict[str, Any]) -> str:
    """The line of a waiting room as this replica last saw it."""
    waiting = int(queue["waiting"])
    if not waiting:
        return "nobody waiting"
    return f"{waiting} waiting (about {queue['wait_seconds']:.0f}s at the back)"


def top_answer(base: str, token: str, by: str, refused: bool, window: str, limit: int) -> dict[str, Any]:
    query = urlencode({"by": by, "refused": "1" if refused else "0", "window": window, "limit": limit})
    return call(base, token, "GET", f"/top?{query}")


def top_lines(answer: dict[str, Any]) -> list[str]:
    """``ctl top``'s table: count, share and error bound aligned, then the key (the long ones,
    user agents and paths, last)."""
    if not answer["enabled"]:
        return ["top tables are not enabled (top.enabled is false in the config)"]
    which = "refused requests" if answer["refused"] else "requests"
    replicas = len(answer["replicas"])
    lines = [
        f"top {answer['by']} over the last {_seconds(answer['window'])}: {answer['requests']} {which}"
        + (f" on {replicas} replicas" if replicas > 1 else "")
        + f"; a count is low by at most {answer['error']} (ERROR)"
    ]
    if answer["partial"]:
        lines.append(f"this replica only: {answer['partial']}")
    entries = answer["entries"]
    if not entries:
        return [*lines, f"no {which} in the window"]
    rows = [(str(e["count"]), f"{e['share'] * 100:.1f}%", f"+{e['error']}", _key(e["key"])) for e in entries]
    header = ("COUNT", "SHARE", "ERROR", answer["by"].upper())
    wide = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for count, share, error, key in [header, *rows]:
        lines.append(f"{count:>{wide[0]}}  {share:>{wide[1]}}  {error:>{wide[2]}}  {key}")
    return lines


def _seconds(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _key(key: object) -> str:
    return "(none)" if key == "" else str(key)

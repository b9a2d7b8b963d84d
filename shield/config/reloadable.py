"""Which settings a reload changes in a running Shield, and which wait for a restart.

Every top-level section is in exactly one of the two tables below (a test holds them to the
model, so a new section must be placed). A reload applies the live ones at once; for the others
it compares the new file with the config the process *started* with and names every setting
that differs, down to the leaf (``timeouts.client_header``): that list is logged, exported as
``shield_config_restart_pending``, and given to ``shield check --running``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shield.config.model import ShieldConfig

# Section -> what a reload does with it, as the README's table says it.
LIVE: dict[str, str] = {
    "rules": "swapped whole; throttle state of unchanged rules is kept",
    "policy": "close page, debug header, default Retry-After, path matching",
    "status_page": "on/off and path",
    "auth": "JWT and signed-cookie checks (auth.introspection: restart)",
    "challenge": "difficulty, pass and puzzle lifetimes, cookie, path, key; passes signed with an "
    "unchanged key stay valid",
    "clients": "trusted proxies, forwarded header, IPv6 prefix",
    "bans": "thresholds, durations and answer (turning bans on or off: restart)",
    "geo": "the databases; a database file that changes is re-read without a reload",
    "lists": "the lists and their files; a list file that changes is re-read without a reload",
    "crowdsec": "URL, key, poll interval, timeout and answer (turning it on or off: restart)",
    "queue": "refresh, ticket lifetime, draw limit and cookies of the waiting room",
}
RESTART: dict[str, str] = {
    "listen": "the public socket",
    "upstream": "the connection pool",
    "admin": "the admin socket, ctl API and request metrics",
    "state": "the state backend's connections",
    "workers": "the processes",
    "timeouts": "set on each connection as it opens",
    "limits": "set on each connection as it opens",
    "forwarding": "the request head builder",
    "access_log": "the log writer",
    "overload": "the load-shedding gate",
    "top": "the top tables' capacity, slots and publishing",
}
# Parts of live sections that a reload does not change, as (section, key): key None for the
# section being there at all.
RESTART_PARTS: tuple[tuple[str, str | None], ...] = (
    ("auth", "introspection"),
    ("bans", None),
    ("crowdsec", None),
)
IGNORED = ("schema_",)  # $schema: for editors only


def restart_pending(started: ShieldConfig, loaded: ShieldConfig) -> list[str]:
    """The settings in which ``loaded`` differs from ``started`` that only a restart applies."""
    return _differing(settings(started), settings(loaded))


def settings(config: ShieldConfig) -> dict[str, str]:
    """Each restart-only setting of ``config`` as dotted name -> its value in canonical JSON."""
    found: dict[str, str] = {}
    for section in RESTART:
        found.update(_leaves(section, _dumped(config, section)))
    for section, key in RESTART_PARTS:
        value = _dumped(config, section)
        if key is None:
            found[section] = '"on"' if value is not None else "null"
        elif isinstance(value, dict):
            found.update(_leaves(f"{section}.{key}", value.get(key)))
    return found


def digests(config: ShieldConfig) -> dict[str, str]:
    """``settings`` with each value hashed, for the admin API to publish and ``check`` to compare.

    The password in ``state.url`` is left out before hashing (a short one could be guessed from
    its hash), so a changed password alone is not seen by ``check --running``; the running
    Shield's own log and gauge do see it.
    """
    values = settings(config)
    url = values.get("state.url")
    if url is not None:
        values["state.url"] = json.dumps(_without_password(json.loads(url)))
    return {name: hashlib.sha256(value.encode()).hexdigest()[:16] for name, value in values.items()}


def pending_against(running: dict[str, str], loaded: ShieldConfig) -> list[str]:
    """The restart-only settings of ``loaded`` whose digest differs from a running Shield's."""
    return _differing(running, digests(loaded))


def _differing(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Names whose values differ, a section named alone where it was turned on or off."""
    names = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    return sorted(name for name in names if not any(part in names for part in _ancestors(name)))


def _ancestors(name: str) -> Iterator[str]:
    while "." in name:
        name = name.rpartition(".")[0]
        yield name


def _dumped(config: ShieldConfig, section: str) -> Any:
    value = getattr(config, section)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _leaves(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    """Dotted names and JSON texts of the leaves under ``value`` (lists count as one leaf)."""
    if isinstance(value, dict) and value:
        yield prefix, '"on"'
        for key, inner in value.items():
            yield from _leaves(f"{prefix}.{key}", inner)
    else:
        yield prefix, json.dumps(value, sort_keys=True)


def _without_password(url: Any) -> Any:
    if not isinstance(url, str):
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if user else f":***@{host}"))

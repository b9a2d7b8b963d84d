"""The site a request is for, from its Host header, as host conditions of rules compare it."""

from __future__ import annotations

from shield.decide.remembered import remember

# Host header value -> host_name of it. Bounded: a client sending endless Host values costs a
# table rebuild now and then, never memory.
_HOSTS = 1024
_HOST_LENGTH = 256
_hosts: dict[str, str] = {}


def host_name(host_header: str | None) -> str:
    """The host part of a Host header, lower-cased, without port or trailing dot."""
    if not host_header:
        return ""
    name = _hosts.get(host_header)
    if name is not None:
        return name
    host = host_header.lower()
    name = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0].rstrip(".")
    return remember(_hosts, host_header, name, _HOSTS, fits=len(host_header) <= _HOST_LENGTH)

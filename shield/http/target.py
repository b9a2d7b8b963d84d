"""The request-target Shield forwards, derived from what the client sent. Pure.

aiohttp's ``raw_path`` keeps a fragment and, for an absolute-form target
(``GET http://host/path``), the scheme and authority too. Shield forwards origin-form only and
refuses an absolute-form target whose authority is not the Host the client named: rules and the
upstream must agree on which site a request is for (RFC 9112 §3.2.2).
"""

from __future__ import annotations


def request_target(raw_path: str, host: str | None, method: str) -> bytes | None:
    """The origin-form target to forward, or None when the request must be refused (400).
    The asterisk-form is for OPTIONS only (RFC 9112 §3.2.4)."""
    if raw_path[:1] == "/" and "#" not in raw_path:
        return raw_path.encode("utf-8", "surrogateescape")
    target = raw_path.partition("#")[0] if "#" in raw_path else raw_path
    if target.startswith("/"):
        return target.encode("utf-8", "surrogateescape")
    if target == "*":
        return b"*" if method == "OPTIONS" else None
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    authority, _, path = rest.partition("/")
    if "?" in authority:
        authority, _, query = authority.partition("?")
        path = "?" + query
    if not authority or "@" in authority:
        return None
    if host is None or authority.lower().rstrip(".") != host.lower().rstrip("."):
        return None
    return ("/" + path).encode("utf-8", "surrogateescape")

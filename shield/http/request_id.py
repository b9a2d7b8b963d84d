"""The request id that ties a client's request, Shield's log line and the upstream's logs together.

A client's (or an edge proxy's) ``X-Request-ID`` is kept when it is short and made of safe
characters; anything else is replaced, because the id is copied into logs and headers and must
not carry log-injection or header-splitting bytes. Generated ids are a random per-process prefix
and a counter: unique across workers and restarts, and ten times cheaper than a UUID.
"""

from __future__ import annotations

import re
import secrets
from itertools import count
from typing import Final

MAX_LENGTH: Final = 128
_SAFE: Final = re.compile(r"[A-Za-z0-9._:+=/@-]{1,128}")


class RequestIds:
    """Hands out the id of each request; one instance per process."""

    __slots__ = ("_line_template", "_next", "_template")

    def __init__(self, prefix: str | None = None) -> None:
        prefix = prefix if prefix is not None else secrets.token_hex(6)
        self._template = prefix.replace("%", "%%") + "-%x"
        self._line_template = b"X-Request-ID: " + self._template.encode("latin-1") + b"\r\n"
        self._next = count(1).__next__

    def new(self) -> str:
        return self._template % self._next()

    def of(self, offered: str | None) -> str:
        """``offered`` if it is a sane id, else a new one."""
        if offered is not None and _SAFE.fullmatch(offered):
            return offered
        return self._template % self._next()

    def line_of(self, offered: str | None) -> bytes:
        """``of(offered)`` as the ``X-Request-ID`` header line Shield sends both ways: built once,
        where the id is made, rather than encoded and framed again for each use."""
        if offered is not None and _SAFE.fullmatch(offered):
            return b"X-Request-ID: " + offered.encode("ascii") + b"\r\n"
        return self._line_template % self._next()

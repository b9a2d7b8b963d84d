"""One canonical path per request: what rules match and what the upstream receives.

Rules must see the path the upstream's router will see, or a request can be shaped to miss a
rule and still reach the route (``/api//register``, ``/api/%72egister``,
``/static/%2e%2e/api/register``). Shield therefore decodes, resolves dot segments (RFC 3986
§5.2.4), collapses slashes and drops ``;params``, matches on the result, and forwards that same
form, re-encoded. What cannot be made unambiguous is refused with 400: an encoded slash, semicolon or
backslash, a NUL or control character, a backslash, a double-encoded dot or slash.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple
from urllib.parse import quote, unquote

from shield.decide.remembered import remember

# A path that is already canonical: segments of plain characters, none "." or "..".
_CANONICAL: Final = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._~!$&'()*+,=:@-]+)*/?")
_FORBIDDEN_DECODED: Final = re.compile(r"[\x00-\x1f\x7f\\]")
_DOUBLE_ENCODED: Final = re.compile(r"%(?:2[eEfF]|5[cC]|00)")
_SAFE: Final = "!$&'()*+,=:@-._~"
# Canonical forms already worked out, by raw path, one table per case_insensitive value: most
# requests ask for a path seen moments ago. Bounded in entries and in the length of a path kept,
# so a flood of distinct paths costs a table rebuild now and then, never memory.
_KNOWN_ENTRIES: Final = 4096
_KNOWN_LENGTH: Final = 256
_known: Final[tuple[dict[str, CanonicalPath], dict[str, CanonicalPath]]] = ({}, {})


class CanonicalPath(NamedTuple):
    """``match`` is what rules see (no trailing slash, maybe case-folded); ``forward`` is the
    encoded form sent upstream (the same segments, the client's trailing slash kept)."""

    match: str
    forward: str


# NamedTuple's generated __new__ is a Python function; the tuple constructor is not.
_new_path: Final = tuple.__new__


class UnsafePath(ValueError):
    """The path cannot be normalized without guessing what the upstream would make of it."""


def canonical_path(raw: str, *, case_insensitive: bool = False) -> CanonicalPath:
    """The canonical form of a raw request path (no query); raises ``UnsafePath``."""
    known = _known[case_insensitive]
    path = known.get(raw)
    if path is not None:
        return path
    if _CANONICAL.fullmatch(raw):
        forward = raw
        match = raw[:-1] if len(raw) > 1 and raw[-1] == "/" else raw
    else:
        forward, match = _normalize(raw)
    path = _new_path(CanonicalPath, (fold_case(match) if case_insensitive else match, forward))
    return remember(known, raw, path, _KNOWN_ENTRIES, fits=len(raw) <= _KNOWN_LENGTH)


# Raw path as received -> (the path rules match, the path to forward when it is not the raw one),
# one table per case_insensitive value: the gatekeeper's form of ``canonical_path``, which spares
# it a decode and a comparison per request. Bounded like ``_known``.
_known_raw: Final[tuple[dict[bytes, tuple[str, bytes | None]], dict[bytes, tuple[str, bytes | None]]]] = (
    {},
    {},
)


def canonical_raw_path(raw: bytes, *, case_insensitive: bool = False) -> tuple[str, bytes | None]:
    """``canonical_path`` of a raw path as bytes: its ``match``, and its ``forward`` encoded when
    it differs from ``raw`` (None when ``raw`` is forwarded as it is). Raises ``UnsafePath``.

    The asterisk-form target (``OPTIONS *``, the only method that may send it) matches as ``*``."""
    known = _known_raw[case_insensitive]
    found = known.get(raw)
    if found is not None:
        return found
    if raw == b"*":
        found = ("*", None)
    else:
        text = raw.decode("utf-8", "surrogateescape")
        path = canonical_path(text, case_insensitive=case_insensitive)
        found = (path.match, None if path.forward == text else path.forward.encode())
    return remember(known, raw, found, _KNOWN_ENTRIES, fits=len(raw) <= _KNOWN_LENGTH)


def fold_case(text: str) -> str:
    """The case-insensitive form of a path or path pattern.

    Upper-casing first folds letters whose capital is ASCII (U+0131 dotless i -> 'I', U+017F
    long s -> 'S') the way routers that compare upper-cased strings (.NET OrdinalIgnoreCase) do;
    otherwise ``/api/reg%C4%B1ster`` would miss a rule for ``/api/register`` yet reach that route.
    """
    return text.lower() if text.isascii() else text.upper().lower()


def _normalize(raw: str) -> tuple[str, str]:
    if not raw.startswith("/"):
        raise UnsafePath("the path must start with '/'")
    if "\\" in raw:
        raise UnsafePath("backslash in path")
    segments: list[str] = []
    pieces = raw.split("/")
    for piece in pieces[1:]:
        piece = piece.partition(";")[0]
        if "%" in piece:
            lowered = piece.lower()
            # An encoded ';' too: some containers decode before they strip ;params.
            if "%2f" in lowered or "%5c" in lowered or "%00" in lowered or "%3b" in lowered:
                raise UnsafePath("encoded slash, backslash, semicolon or NUL in path")
            try:
                piece = unquote(piece, encoding="utf-8", errors="strict")
            except UnicodeDecodeError:
                raise UnsafePath("path is not valid UTF-8 once decoded") from None
            if _DOUBLE_ENCODED.search(piece):
                raise UnsafePath("double-encoded dot, slash, backslash or NUL in path")
        if _FORBIDDEN_DECODED.search(piece):
            raise UnsafePath("control character or backslash in path")
        if piece == "" or piece == ".":
            continue
        if piece == "..":
            if segments:
                segments.pop()
            continue
        segments.append(piece)
    match = "/" + "/".join(segments)
    try:
        encoded = "/" + "/".join(quote(s, safe=_SAFE) for s in segments)
    except UnicodeEncodeError:
        raise UnsafePath("path bytes are not valid UTF-8") from None
    trailing = len(pieces) > 2 and pieces[-1] == "" and segments
    return (encoded + "/" if trailing else encoded), match

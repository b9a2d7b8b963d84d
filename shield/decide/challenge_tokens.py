"""The proof-of-work challenge: puzzles and pass cookies, signed so Shield keeps no state. Pure.

A puzzle is a token ``expires.difficulty.salt.signature``, the signature an HMAC over the client
binding and the other fields: Shield needs no memory of what it issued, and a token solved by
one client is worth nothing to another. Solving it means finding a counter whose
``SHA-256(token + counter)`` starts with ``difficulty`` zero bits: about 2**difficulty hashes for
the client, one hash and one HMAC for Shield to check. The pass earned is a cookie
``expires.signature`` bound the same way, so it cannot be forged, kept past its end, or shared
with another client.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

MAX_COUNTER_DIGITS = 20
# A Unix time in whole seconds, as the tokens carry it (13 digits last until the year 318857).
MAX_TIME_DIGITS = 13


def whole_number(text: str, digits: int) -> bool:
    """Whether ``text`` is a number ``int()`` reads: ASCII digits only (``str.isdigit`` takes
    '²' too, which ``int`` refuses) and at most ``digits`` of them (past 4,300 ``int`` refuses
    as well): a cookie is the client's to write, and neither may become a 500."""
    return 0 < len(text) <= digits and text.isascii() and text.isdigit()


def binding(client_key: str, ipv4_prefix: int) -> str:
    """What a pass is bound to: the client key (IPv6 already cut to its prefix), IPv4 to ``ipv4_prefix``."""
    try:
        address = ipaddress.ip_address(client_key)
    except ValueError:
        return client_key
    if address.version == 4 and ipv4_prefix < 32:
        return str(ipaddress.ip_network(f"{address}/{ipv4_prefix}", strict=False))
    return client_key


def same_signature(given: str, expected: str) -> bool:
    """``hmac.compare_digest`` of a signature a client sent with the one expected: in constant
    time, and a plain no for text that is not ASCII (which ``compare_digest`` refuses with a
    TypeError: a 500 on the request path)."""
    return given.isascii() and hmac.compare_digest(given, expected)


def leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte:
            return bits + 8 - byte.bit_length()
        bits += 8
    return bits


def solves(token: str, counter: str, difficulty: int) -> bool:
    return leading_zero_bits(hashlib.sha256((token + counter).encode()).digest()) >= difficulty


def solve(token: str, difficulty: int) -> str:
    """The first counter that solves ``token`` (what the page's script does; tests use it)."""
    counter = 0
    while not solves(token, str(counter), difficulty):
        counter += 1
    return str(counter)


class Challenger:
    """Issues and checks puzzles and passes under one key; the caller gives the time."""

    __slots__ = ("_key", "difficulty", "pass_for", "solve_within")

    def __init__(self, key: bytes, *, difficulty: int, solve_within: float, pass_for: float) -> None:
        self._key = key
        self.difficulty = difficulty
        self.solve_within = solve_within
        self.pass_for = pass_for

    def _sign(self, *parts: str) -> str:
        return hmac.new(self._key, "|".join(parts).encode(), hashlib.sha256).hexdigest()[:32]

    def puzzle(self, bound_to: str, now: float) -> str:
        expires = str(int(now + self.solve_within))
        salt = secrets.token_hex(8)
        fields = (expires, str(self.difficulty), salt)
        return ".".join((*fields, self._sign("puzzle", bound_to, *fields)))

    def check_solution(self, token: str, counter: str, bound_to: str, now: float) -> str | None:
        """None when ``counter`` solves a puzzle issued to ``bound_to`` and not expired; else why not."""
        parts = token.split(".")
        if len(parts) != 4 or not whole_number(parts[0], MAX_TIME_DIGITS) or not whole_number(parts[1], 3):
            return "malformed puzzle"
        expires, difficulty, salt, signature = parts
        if not same_signature(signature, self._sign("puzzle", bound_to, expires, difficulty, salt)):
            return "puzzle not issued to this client"
        if int(expires) < now:
            return "puzzle expired"
        if not whole_number(counter, MAX_COUNTER_DIGITS):
            return "malformed solution"
        if not solves(token, counter, int(difficulty)):
            return "wrong solution"
        return None

    def pass_cookie(self, bound_to: str, now: float) -> tuple[str, int]:
        """The pass cookie's value and its lifetime in seconds."""
        expires = str(int(now + self.pass_for))
        return f"{expires}.{self._sign('pass', bound_to, expires)}", int(self.pass_for)

    def passes(self, cookie: str | None, bound_to: str, now: float) -> bool:
        if not cookie:
            return False
        expires, _, signature = cookie.partition(".")
        if not whole_number(expires, MAX_TIME_DIGITS) or int(expires) < now:
            return False
        return same_signature(signature, self._sign("pass", bound_to, expires))

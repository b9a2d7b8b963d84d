"""The waiting room's cookies: a ticket (a place in line) and an admission, signed. Pure.

Nothing is stored per visitor. A ticket is ``number.issued.signature``: its number in the
rule's line and when it was drawn, signed (HMAC) with the rule's name and the client's binding
(its address, an IPv4 one within ``challenge.ipv4_prefix``, an IPv6 one within its prefix), so a
client cannot forge a lower number, keep one past ``ticket_for`` or hand its place to another
client. An admission is ``expires.signature``, bound the same way and valid for the rule's
``session``. A client that drops its cookies draws a new ticket: at the back of the line.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Final, NamedTuple

from shield.decide.challenge_tokens import MAX_TIME_DIGITS, same_signature, whole_number

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
MAX_TICKET_DIGITS: Final = 18


def cookie_name(base: str, rule: str) -> str:
    """The cookie of ``rule``'s queue: one per rule, so two queues keep their own places."""
    return f"{base}_{_UNSAFE.sub('_', rule)}"


class Ticket(NamedTuple):
    """A place in ``rule``'s line: ``number`` and when it was drawn (Unix seconds)."""

    number: int
    issued: float


class QueueTickets:
    """Signs and checks tickets and admissions under one key; the caller gives the time."""

    __slots__ = ("_key", "ticket_for")

    def __init__(self, key: bytes, *, ticket_for: float) -> None:
        self._key = key
        self.ticket_for = ticket_for

    def _sign(self, *parts: str) -> str:
        return hmac.new(self._key, "|".join(parts).encode(), hashlib.sha256).hexdigest()[:32]

    def ticket(self, rule: str, bound_to: str, number: int, now: float) -> str:
        issued = str(int(now))
        return f"{number}.{issued}.{self._sign('ticket', rule, bound_to, str(number), issued)}"

    def read_ticket(self, cookie: str | None, rule: str, bound_to: str, now: float) -> Ticket | None:
        """The ticket ``cookie`` holds, if this client drew it for this rule and it still counts."""
        if not cookie:
            return None
        parts = cookie.split(".")
        if len(parts) != 3:
            return None
        number, issued, signature = parts
        if not (whole_number(number, MAX_TICKET_DIGITS) and whole_number(issued, MAX_TIME_DIGITS)):
            return None
        if not same_signature(signature, self._sign("ticket", rule, bound_to, number, issued)):
            return None
        if not 0 <= now - int(issued) <= self.ticket_for:
            return None
        return Ticket(int(number), float(issued))

    def admission(self, rule: str, bound_to: str, now: float, lasts: float) -> str:
        expires = str(int(now + lasts))
        return f"{expires}.{self._sign('admitted', rule, bound_to, expires)}"

    def admitted(self, cookie: str | None, rule: str, bound_to: str, now: float) -> bool:
        """Whether ``cookie`` admits this client to this rule's feature now."""
        if not cookie:
            return False
        expires, _, signature = cookie.partition(".")
        if not whole_number(expires, MAX_TIME_DIGITS) or int(expires) < now:
            return False
        return same_signature(signature, self._sign("admitted", rule, bound_to, expires))

    def read(
        self, cookies: Mapping[str, str], rule: str, bound_to: str, now: float, names: tuple[str, str]
    ) -> tuple[bool, Ticket | None]:
        """What a client's ``cookies`` say of ``rule``'s queue: admitted already, or the ticket
        held (if any). ``names``: the base names of the admission and ticket cookies."""
        session, ticket = names
        if self.admitted(cookies.get(cookie_name(session, rule)), rule, bound_to, now):
            return True, None
        return False, self.read_ticket(cookies.get(cookie_name(ticket, rule)), rule, bound_to, now)

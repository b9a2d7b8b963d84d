"""The ``queue:`` section: how the waiting room of ``action: queue`` rules treats its visitors.

A queue rule says how fast new visitors are let in (``admit``) and for how long one admitted
stays in (``session``); this section holds what all queues share: how often the page asks again,
how long a ticket keeps its place, how many tickets one client may draw, and the cookies. The
cookies are signed with the challenge's key (``challenge.secret_env`` or ``secret_file``), which
replicas must share for a ticket drawn on one to count on another.
"""

from __future__ import annotations

from pydantic import Field

from shield.config.base import Section
from shield.config.rules import LimitText
from shield.config.units import Duration


class WaitingRoom(Section):
    refresh: Duration = Field(
        5.0, ge=1.0, le=300.0, description="The waiting page asks again after at most this long."
    )
    ticket_for: Duration = Field(
        3600.0,
        gt=0,
        description="How long a ticket keeps its place in line: a visitor who comes back later "
        "than this draws a new one, at the back.",
    )
    draw_limit: LimitText = Field(
        "10/minute",
        description="Tickets one client (its address, IPv4 by challenge.ipv4_prefix) may draw: a "
        "client that drops its cookie to draw again goes to the back, and cannot flood the line.",
    )
    draw_limit_per_asn: LimitText | None = Field(
        None,
        description="Tickets all the clients of one network (ASN, from geo.asn_db) may draw between "
        "them, e.g. 100/minute: a flood rotating through a provider's addresses cannot fill the "
        "line. Clients of no known network are held to draw_limit alone.",
    )
    ticket_cookie: str = Field(
        "shield_ticket", pattern=r"^[A-Za-z0-9_-]{1,48}$", description="Ticket cookie name (per rule)."
    )
    session_cookie: str = Field(
        "shield_admitted",
        pattern=r"^[A-Za-z0-9_-]{1,48}$",
        description="Cookie of an admitted visitor (per rule), valid for the rule's session.",
    )

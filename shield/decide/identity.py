"""Who is asking. Until verified credentials are configured, every client is anonymous.

``IdentityResolver`` is the seam the authentication feature plugs into: it gets the request's
headers and client address and returns an ``Identity``; the rules engine only reads
``identity.authenticated`` and ``identity.user``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Identity:
    authenticated: bool
    user: str | None = None
    how: str = "no credentials configured"
    # "authenticated" or "anonymous": a field, not a property, since every request reads it.
    label: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", "authenticated" if self.authenticated else "anonymous")


ANONYMOUS = Identity(False)


class IdentityResolver(Protocol):
    def identify(self, headers: Mapping[str, str], client_ip: str) -> Identity: ...


class NoIdentity:
    """The default resolver: nobody is authenticated."""

    __slots__ = ()

    def identify(self, headers: Mapping[str, str], client_ip: str) -> Identity:
        return ANONYMOUS

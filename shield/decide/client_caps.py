"""Per-client caps: how much one client may hold open at once (nginx's ``limit_conn``).

A throttle bounds how often a client may ask; a cap bounds how much it may hold at the same
time: connections (``limits.max_connections_per_client``, counted by the address that
connected) and requests in flight upstream (``limits.max_requests_per_client``, counted by the
client key the rules use, so a client behind a trusted proxy is counted as itself). Without
caps, one address may take every connection a slow attack needs. Pure.
"""

from __future__ import annotations


class HeldPerClient:
    """How many of something each client holds now, against ``cap`` (at least 1; a cap that
    is off is no ``HeldPerClient`` at all, so the hot path tests one attribute for None).

    Only clients holding something have an entry, so the table is bounded by what is held at
    once (each of which costs far more than its entry): an attacker rotating addresses leaves
    nothing behind."""

    __slots__ = ("_held", "cap")

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("a cap holds at least one")
        self.cap = cap
        self._held: dict[str, int] = {}

    def take(self, key: str) -> bool:
        """Count one more for ``key``; False (and nothing counted) when it holds ``cap``."""
        held = self._held.get(key, 0)
        if held >= self.cap:
            return False
        self._held[key] = held + 1
        return True

    def give_back(self, key: str) -> None:
        """One that ``take`` counted for ``key`` ended."""
        held = self._held.pop(key) - 1
        if held:
            self._held[key] = held

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def __len__(self) -> int:
        """Clients holding anything now."""
        return len(self._held)


def cap_of(limit: int) -> HeldPerClient | None:
    """The cap a ``limits.max_*_per_client`` value asks for (0: none)."""
    return HeldPerClient(limit) if limit > 0 else None

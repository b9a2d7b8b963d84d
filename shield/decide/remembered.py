"""Bounded tables of answers worked out before: header names, paths, hosts, client addresses.

Each such table is a plain dict, read with ``get`` (or ``[]``) where requests pass; on a miss the
answer is worked out and handed to ``remember``, the one place that bounds them all: it keeps
the answer only when its key is small enough (``fits``), and empties the table once it holds
``entries``. A client inventing endless keys costs a rebuild now and then, never memory, and
the common keys are back after a few requests. (Here in ``decide`` so that every layer may use
it; nothing in it decides anything.)
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(table: dict[K, V], key: K, value: V, entries: int, *, fits: bool = True) -> V:
    """``value``, kept in ``table`` under ``key`` if it ``fits``; the table emptied when full."""
    if fits:
        if len(table) >= entries:
            table.clear()
        table[key] = value
    return value

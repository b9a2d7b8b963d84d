"""A condition on one header value, remembered for the values seen lately.

Most requests repeat a handful of User-Agent and Host values, so a rule's answer for a value is
worth keeping: a hit is one dictionary lookup done in C (the compiled matchers subscript the memo
directly), where working the answer out again costs a Python call, a lower-casing and a search
or two. The memo stays bounded against a client that rotates values: a value longer than
``MAX_LENGTH`` is never kept, and the table is emptied when it reaches ``MAX_ENTRIES``.

A dict subclass, so that a miss fills it from inside an expression (``__missing__``). ``[]`` on
a subclass goes through a generic slot, some 12 ns dearer than on a plain dict, but any Python
fallback a plain dict would need there costs more than that on every hit.
"""

from __future__ import annotations

from collections.abc import Callable

from shield.decide.remembered import remember

MAX_ENTRIES = 512
MAX_LENGTH = 512  # a browser's User-Agent is 100 to 250 characters


class Memo(dict[str | None, bool]):
    """``memo[value]`` is ``test(value)``; at most MAX_ENTRIES values of MAX_LENGTH kept."""

    __slots__ = ("test",)

    def __init__(self, test: Callable[[str | None], bool]) -> None:
        super().__init__()
        self.test = test

    def __missing__(self, value: str | None) -> bool:
        answer = self.test(value)
        return remember(self, value, answer, MAX_ENTRIES, fits=value is None or len(value) <= MAX_LENGTH)

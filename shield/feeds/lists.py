"""Address-list files: read one, and keep it in step with the disk.

The list itself (``AddressSet``, ``parse_list``) is pure, in ``shield.decide.address_set``;
here is the reading of the file. ``WatchedList.refresh`` may run in a worker thread (the parse
of a million lines takes a second or two), and ``shield.feeds.network_feeds`` runs it there.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from shield.decide.address_set import AddressSet, ListError, parse_list

log = logging.getLogger("shield.lists")


def load_list(path: str) -> AddressSet:
    """The address list in the file at ``path``: UTF-8 (a byte order mark allowed), lines ending
    in LF or CRLF."""
    return parse_list(_read(path), path)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ListError(f"{path}: cannot read: {error.strerror or error}") from error
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ListError(f"{path}:{line}: not UTF-8 text (the byte {data[error.start]:#04x})") from error


def _stamp(path: str) -> tuple[int, int, int] | None:
    """What tells a new version of the file: editors replace files (a new inode) as often as
    they rewrite them."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class WatchedList:
    """An address list kept in step with its file; a file that fails to load changes nothing.

    ``current`` is the set in force: read it once per request, as ``refresh`` replaces it
    whole. A refused file is logged, counted in ``failures`` and kept in ``last_error`` (None
    again once a good file loads) until the file changes again. ``clock`` stamps ``loaded_at``.
    """

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._stamp = _stamp(path)
        self.current = load_list(path)
        self.loaded_at = clock()
        self.failures = 0
        self.last_error: str | None = None

    @property
    def entries(self) -> int:
        return len(self.current)

    def refresh(self) -> bool:
        """Load the file again if it changed; whether the addresses in force changed.

        Safe to run in a worker thread (``asyncio.to_thread``), one refresh at a time: the new
        set is built aside and swapped in by one assignment.
        """
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        # Taken before the read: a change during it is seen, and loaded, next time.
        self._stamp = stamp
        try:
            loaded = load_list(self.path)
        except ListError as error:
            self.failures += 1
            self.last_error = str(error)
            log.error("address list refused, the last good one stays in force: %s", error)
            return False
        changed = loaded != self.current
        self.current = loaded
        self.loaded_at = self._clock()
        self.last_error = None
        log.info("address list %s loaded: %d entries in %d intervals", self.path, len(loaded), loaded.size)
        return changed

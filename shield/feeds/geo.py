"""A MaxMind-format database (GeoLite2-ASN, GeoLite2-Country, any ``.mmdb`` with their fields).

Read with ``maxminddb``'s C extension on a memory map: a lookup is about half a microsecond,
and ``shield.decide.network_facts.Directory`` remembers it per address anyway. The map is of a
private copy of the file, unlinked once open: a database rewritten in place (``cp`` over it)
would otherwise shrink under the map, and a lookup there kills the process (SIGBUS). The file is watched
like the rule file (mtime, size, inode): a new database replaces the old one; one that does not
open is logged and the old one stays.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

import maxminddb

log = logging.getLogger("shield.geo")

Stamp = tuple[int, int, int]


class FeedError(ValueError):
    """A database or list file that cannot be used, said as ``path: what is wrong``."""


def file_stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _open(path: str) -> Any:
    """A reader of a private copy of ``path`` (the module docstring says why)."""
    try:
        with tempfile.NamedTemporaryFile(prefix="shield-geo-", suffix=".mmdb") as copy:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, copy)
            copy.flush()
            return maxminddb.open_database(copy.name)
    except (OSError, maxminddb.InvalidDatabaseError, ValueError) as error:
        raise FeedError(f"{path}: cannot read the database: {error}") from error


class GeoDatabase:
    """One ``.mmdb`` file: ``asn`` and ``country`` of an address, None where it has no answer."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp = file_stamp(path)
        self._reader = _open(path)
        self.failures = 0
        self.last_error: str | None = None

    @property
    def build_epoch(self) -> int:
        """When the database was built (its metadata), for the operator to see it is current."""
        return int(self._reader.metadata().build_epoch)

    def _record(self, ip: str) -> Any:
        try:
            return self._reader.get(ip)
        except ValueError:  # not an address ('unknown' behind a proxy that names none)
            return None

    def asn(self, ip: str) -> tuple[int, str | None] | None:
        record = self._record(ip)
        if not isinstance(record, dict):
            return None
        number = record.get("autonomous_system_number")
        if not isinstance(number, int):
            return None
        organization = record.get("autonomous_system_organization")
        return number, organization if isinstance(organization, str) else None

    def country(self, ip: str) -> str | None:
        record = self._record(ip)
        if not isinstance(record, dict):
            return None
        for field in ("country", "registered_country"):
            place = record.get(field)
            if isinstance(place, dict) and isinstance(code := place.get("iso_code"), str):
                return code.upper()
        return None

    def refresh(self) -> bool:
        """Open the file again if it changed; True when a new database is in force."""
        stamp = file_stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            reader = _open(self.path)
        except FeedError as error:
            self.failures += 1
            self.last_error = str(error)
            log.error("%s; the database loaded before stays in force", error)
            return False
        # The old reader is not closed here: a lookup on the loop may hold it while a worker
        # thread refreshes, and it closes its map when the last reference goes.
        self._reader = reader
        self.last_error = None
        log.info("geo database %s re-read (built %d)", self.path, self.build_epoch)
        return True

    def close(self) -> None:
        self._reader.close()

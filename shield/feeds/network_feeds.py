"""The ``geo:`` databases and ``lists:`` files of one config, behind one ``Directory``.

Built with the rest of a config (``shield.app.reload.build_runtime``, off the event loop), so a
database or list that cannot be read refuses the config as a bad rule would. A reload that
keeps a file reuses what was loaded (a million-line list is not read again because a rule
changed), and a reload that changes neither section keeps the whole ``NetworkFeeds`` with what
its ``Directory`` remembered. Between reloads ``refresh`` re-reads the files that changed on
disk and makes the directory forget what it had worked out from them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shield.config.client_networks import AddressList, Geo
from shield.config.model import ShieldConfig
from shield.decide.network_facts import Directory
from shield.feeds.geo import GeoDatabase
from shield.feeds.lists import WatchedList


class NetworkFeeds:
    def __init__(self, geo: Geo, lists: dict[str, AddressList], previous: NetworkFeeds | None = None) -> None:
        self.geo = geo
        self.list_config = dict(lists)
        before = previous.databases if previous is not None else {}
        self.databases: dict[str, GeoDatabase] = {}
        for path in {geo.asn_db, geo.country_db} - {None}:
            assert path is not None
            self.databases[path] = before.get(path) or GeoDatabase(path)
        old_lists = previous.lists if previous is not None else {}
        self.lists: dict[str, WatchedList] = {}
        for name, source in lists.items():
            kept = old_lists.get(name)
            same_file = kept is not None and kept.path == source.file
            self.lists[name] = kept if kept is not None and same_file else WatchedList(source.file)
        asn = self.databases[geo.asn_db].asn if geo.asn_db is not None else None
        country = self.databases[geo.country_db].country if geo.country_db is not None else None
        self.directory = Directory(
            asn=asn,
            country=country,
            lists={name: _holds(watched) for name, watched in self.lists.items()},
        )

    @classmethod
    def following(cls, config: ShieldConfig, previous: NetworkFeeds | None) -> NetworkFeeds:
        """The feeds of ``config``: ``previous`` itself when its sections are unchanged."""
        if previous is not None and previous.geo == config.geo and previous.list_config == config.lists:
            return previous
        return cls(config.geo, config.lists, previous)

    @property
    def configured(self) -> bool:
        return bool(self.databases or self.lists)

    def refresh(self) -> bool:
        """Re-read the files that changed; True (and the directory forgets) when one did."""
        changed = self._refresh_files()
        if changed:
            self.directory.forget()
        return changed

    async def refresh_off_loop(self) -> bool:
        """``refresh`` with the reading and parsing in a worker thread, the swap on the loop.

        A list of a million lines takes a second or two to parse; on the loop that would stall
        every request. The directory forgets on the loop, where lookups happen."""
        if not self.configured:
            return False
        changed = await asyncio.to_thread(self._refresh_files)
        if changed:
            self.directory.forget()
        return changed

    def _refresh_files(self) -> bool:
        changed = False
        for database in self.databases.values():
            changed = database.refresh() or changed
        for watched in self.lists.values():
            changed = watched.refresh() or changed
        return changed


def _holds(watched: WatchedList) -> Callable[[str], bool]:
    """Membership in the list as it is at the time of the lookup (a refresh swaps it)."""
    return lambda ip: watched.current.contains(ip)

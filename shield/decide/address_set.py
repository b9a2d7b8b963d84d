"""Address lists: the clients a blocklist or allowlist names, looked up by bisection. Pure.

A list file holds one IPv4 or IPv6 address or CIDR per line; ``#`` starts a comment (a whole
line or the end of one), and blank lines and surrounding whitespace do not count. A CIDR with
host bits set (``10.0.0.1/8``) stands for its network (``10.0.0.0/8``), as
``ipaddress.ip_network(..., strict=False)`` reads it: an operator who wrote a host inside the
range meant the range. Netmask forms (``10.0.0.0/255.0.0.0``) are read as ``ipaddress`` reads
them.

An ``AddressSet`` keeps each family as sorted, merged, non-overlapping intervals of integers,
so a lookup is a bisection or three whatever the size of the list, and a million entries cost
about ten megabytes, not the 400 that as many ``ip_network`` objects would. An address
and its IPv4-mapped IPv6 form (``1.2.3.4``, ``::ffff:1.2.3.4``) are one client: a lookup of
either, and a list entry in either form, mean the IPv4 address.

Everything here is pure; ``shield.feeds.lists`` reads the files and keeps them in step.
"""

from __future__ import annotations

import ipaddress
import re
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, MutableSequence
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_U64: Final = (1 << 64) - 1
_U32: Final = (1 << 32) - 1
# ::ffff:0.0.0.0 to ::ffff:255.255.255.255 (RFC 4291 §2.5.5.2): IPv4 clients seen by an IPv6
# socket. Their part of any IPv6 entry is kept with the IPv4 intervals as well.
_MAPPED: Final = 0xFFFF << 32
_MAPPED_LAST: Final = _MAPPED | _U32

# 'I' is four bytes on every platform CPython runs on, which holds any IPv4 address.
_V4_TYPE: Final = "I" if array("I").itemsize >= 4 else "L"

# Decimal octet text -> its value, shifted to its place. A dict lookup is faster than int() of
# a short string, and it is also the validation: only "0" to "255" without leading zeros,
# signs, spaces or other digits are keys, exactly what ``ipaddress`` accepts.
_OCTET: Final = {str(n): n for n in range(256)}
_OCTET_8: Final = {text: n << 8 for text, n in _OCTET.items()}
_OCTET_16: Final = {text: n << 16 for text, n in _OCTET.items()}
_OCTET_24: Final = {text: n << 24 for text, n in _OCTET.items()}
# Prefix length text ("" for a plain address) -> the host bits under it.
_HOST_BITS: Final = {"": 0, **{str(p): (1 << (32 - p)) - 1 for p in range(33)}}

_OCT = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Exactly one match per line of the file, whatever the line holds (the last line, after a
# final newline, is empty): the match's place in ``findall`` is the line's number. Groups 1-5
# are the common shapes, an IPv4 address or CIDR in canonical decimal, read without
# ``ipaddress``; group 6 is any other entry (trailing whitespace included), for ``ipaddress``
# to read or refuse; a blank or comment line fills no group. ``[^\S\n]`` is whitespace as
# ``str.strip`` sees it, short of the line's end; digits are [0-9] because ``\d`` takes in
# other scripts' digits, which ``ipaddress`` refuses.
_LINE: Final = re.compile(
    rf"^[^\S\n]*(?:{_OCT}\.{_OCT}\.{_OCT}\.{_OCT}(?:/(3[0-2]|[12]?[0-9]))?"
    r"|([^#\s][^#\n]*))?[^\S\n]*(?:#[^\n]*)?$",
    re.MULTILINE,
)
# Lines are read 256 kB at a time: a bound on the memory for the regex's answers, and on the
# time a load in a worker thread holds the GIL, so the event loop, in one piece (some 10 ms).
_CHUNK: Final = 1 << 18

# Interval keys, ``start << 32 | end`` (IPv4) or ``start << 128 | end`` (IPv6), in 256 buckets
# by the first byte of the start, sorted and merged one bucket at a time: one sort of a million
# keys holds the GIL for 0.3 s, a stall of every request when the list reloads.
Buckets = list[list[int]]


class ListError(ValueError):
    """An address list that cannot be used: ``source:line: what is wrong``, or ``path: cannot
    read: why``."""


class AddressSet:
    """A set of IPv4 and IPv6 addresses, from networks, as merged intervals looked up by bisection.

    ``len()`` is the number of entries it was built from (duplicates and overlaps included);
    ``size`` the number of intervals they merged into. Two sets are equal when they hold the
    same addresses.
    """

    __slots__ = ("_entries", "_v4_ends", "_v4_starts", "_v6_ends", "_v6_starts")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        v4, v6 = _buckets(), _buckets()
        entries = 0
        for network in networks:
            first, last = int(network.network_address), int(network.broadcast_address)
            _add_interval(network.version, first, last, v4, v6)
            entries += 1
        self._fill(v4, v6, entries)

    @classmethod
    def _of_keys(cls, v4: Buckets, v6: Buckets, entries: int) -> AddressSet:
        made = cls.__new__(cls)
        made._fill(v4, v6, entries)
        return made

    def _fill(self, v4: Buckets, v6: Buckets, entries: int) -> None:
        self._entries = entries
        self._v4_starts = array(_V4_TYPE)
        self._v4_ends = array(_V4_TYPE)
        _merge(v4, 32, self._v4_starts, self._v4_ends)
        # 128-bit ints in a list cost about 50 bytes each; as two arrays of 64-bit halves, 16.
        starts: list[int] = []
        ends: list[int] = []
        _merge(v6, 128, starts, ends)
        self._v6_starts = (array("Q", [s >> 64 for s in starts]), array("Q", [s & _U64 for s in starts]))
        self._v6_ends = (array("Q", [e >> 64 for e in ends]), array("Q", [e & _U64 for e in ends]))

    def __len__(self) -> int:
        return self._entries

    @property
    def size(self) -> int:
        """The number of intervals, IPv4 and IPv6, the entries merged into."""
        return len(self._v4_starts) + len(self._v6_starts[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AddressSet):
            return NotImplemented
        return (
            self._v4_starts == other._v4_starts
            and self._v4_ends == other._v4_ends
            and self._v6_starts == other._v6_starts
            and self._v6_ends == other._v6_ends
        )

    __hash__ = None  # type: ignore[assignment]  # compared by content: no dict key

    def __repr__(self) -> str:
        return f"<AddressSet: {self._entries} entries in {self.size} intervals>"

    def contains(self, ip: str) -> bool:
        """Whether the address written ``ip`` is in the set; text that is no address is not."""
        # Dual-stack listeners name IPv4 peers ::ffff:1.2.3.4: read those without ipaddress too.
        value = _ipv4_int(ip[7:] if ip[:7] in ("::ffff:", "::FFFF:") else ip)
        if value is not None:
            return self.contains_int(4, value)
        try:
            address = ipaddress.IPv6Address(ip)
        except ValueError:
            return False
        return self.contains_int(6, int(address))

    def contains_int(self, version: int, value: int) -> bool:
        """Whether the address ``value`` of IP ``version`` (4 or 6) is in the set."""
        if version == 4:
            i = bisect_right(self._v4_starts, value)
            return i > 0 and self._v4_ends[i - 1] >= value
        if version != 6:
            raise ValueError(f"IP version {version}: 4 or 6")
        if _MAPPED <= value <= _MAPPED_LAST:
            return self.contains_int(4, value & _U32)
        # The last interval starting at or below (hi, lo): by the high halves, and where
        # starts share the high half hi, by the low halves of that run.
        hi, lo = value >> 64, value & _U64
        start_hi, start_lo = self._v6_starts
        i = bisect_right(start_hi, hi)
        if i and start_hi[i - 1] == hi:
            i = bisect_right(start_lo, lo, bisect_left(start_hi, hi, 0, i), i)
        if i == 0:
            return False
        end_hi, end_lo = self._v6_ends
        return end_hi[i - 1] > hi or (end_hi[i - 1] == hi and end_lo[i - 1] >= lo)


def _ipv4_int(text: str) -> int | None:
    """The IPv4 address written ``text`` in dotted decimal, as ``ipaddress`` reads it, or None."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    try:
        return _OCTET_24[parts[0]] | _OCTET_16[parts[1]] | _OCTET_8[parts[2]] | _OCTET[parts[3]]
    except KeyError:
        return None


def _buckets() -> Buckets:
    return [[] for _ in range(256)]


def _interval(entry: str) -> tuple[int, int, int]:
    """(IP version, first, last address) of the network written ``entry``, as
    ``ipaddress.ip_network(entry, strict=False)`` reads it, or ValueError.

    An IPv6 entry is read as an address and a prefix length, in half the time of the network
    object (``ip_network`` tries IPv4 first, and builds three address objects).
    """
    if ":" not in entry:
        network = ipaddress.ip_network(entry, strict=False)
        return network.version, int(network.network_address), int(network.broadcast_address)
    address, slash, prefix = entry.partition("/")
    value = int(ipaddress.IPv6Address(address))
    if not slash:
        return 6, value, value
    if not (prefix.isascii() and prefix.isdigit() and int(prefix) <= 128):
        raise ValueError(f"{prefix!r} is no IPv6 prefix length")
    host = (1 << (128 - int(prefix))) - 1
    return 6, value & ~host, value | host


def _add_interval(version: int, start: int, end: int, v4: Buckets, v6: Buckets) -> None:
    """Add the key of the interval to ``v4`` or ``v6``; the IPv4-mapped part of an IPv6 one to
    ``v4`` as well."""
    if version == 4:
        v4[start >> 24].append(start << 32 | end)
        return
    v6[start >> 120].append(start << 128 | end)
    if start <= _MAPPED_LAST and end >= _MAPPED:
        start, end = max(start, _MAPPED) & _U32, min(end, _MAPPED_LAST) & _U32
        v4[start >> 24].append(start << 32 | end)


def _merge(keys: Buckets, bits: int, starts: MutableSequence[int], ends: MutableSequence[int]) -> None:
    """Append to ``starts`` and ``ends`` the intervals keyed in ``keys``, in order, overlapping and
    adjacent ones joined. Each bucket is sorted in place."""
    mask = (1 << bits) - 1
    last = -2
    for bucket in keys:
        bucket.sort()
        for key in bucket:
            start, end = key >> bits, key & mask
            if start > last + 1:
                starts.append(start)
                ends.append(end)
                last = end
            elif end > last:
                ends[-1] = last = end


def parse_list(text: str, source: str) -> AddressSet:
    """The addresses and networks listed in ``text`` (the format is in the module docstring).

    A bad line raises ``ListError``: ``source:line: what is wrong`` for the first one, and how
    many more there are, so that a list is never half used.
    """
    v4 = _buckets()  # one key per line in the common shapes
    others_v4, others_v6 = _buckets(), _buckets()
    others = 0
    first_error = ""
    more_errors = 0
    for number, (a, b, c, d, prefix, other) in enumerate(_lines(text), 1):
        if a:
            host = _HOST_BITS[prefix]
            start = (_OCTET_24[a] | _OCTET_16[b] | _OCTET_8[c] | _OCTET[d]) & ~host
            v4[start >> 24].append(start << 32 | start | host)
        elif other:
            entry = other.rstrip()
            try:
                version, first, last = _interval(entry)
            except ValueError:
                if first_error:
                    more_errors += 1
                else:
                    first_error = f"{source}:{number}: {_what_is_wrong(entry)}"
                continue
            _add_interval(version, first, last, others_v4, others_v6)
            others += 1
    if first_error:
        if more_errors:
            s = "s" if more_errors > 1 else ""
            first_error += f" (and {more_errors} more bad line{s} after it)"
        raise ListError(first_error)
    entries = sum(map(len, v4)) + others
    for bucket, more in zip(v4, others_v4, strict=True):
        bucket += more
    return AddressSet._of_keys(v4, others_v6, entries)


def _lines(text: str) -> Iterator[tuple[str, str, str, str, str, str]]:
    """The groups of ``_LINE`` for each line of ``text``, a chunk at a time (all at once, a million
    lines would be a million tuples of strings, some 300 MB)."""
    start = 0
    while (end := text.find("\n", start + _CHUNK)) >= 0:
        yield from _LINE.findall(text, start, end)  # start follows a newline: ^ matches there
        start = end + 1
    yield from _LINE.findall(text, start)


def _what_is_wrong(entry: str) -> str:
    address, slash, prefix = entry.partition("/")
    if slash:
        try:
            version = ipaddress.ip_address(address).version
        except ValueError:
            pass
        else:
            most = 32 if version == 4 else 128
            return f"{entry!r} has a bad prefix length {prefix!r}: IPv{version} takes /0 to /{most}"
    if any(char.isspace() or char in ",;" for char in entry):
        return f"{entry!r} is not an IPv4 or IPv6 address or CIDR (write one per line)"
    return f"{entry!r} is not an IPv4 or IPv6 address or CIDR"

"""Address lists (``shield/decide/address_set.py``): the merged intervals answer as the standard
library's ``ipaddress`` does, a list file reads as operators write it, a bad line is named by its
number, and a watched list keeps the last good version through a broken file."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shield.decide.address_set import AddressSet, ListError, parse_list
from shield.feeds.lists import WatchedList, load_list

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAPPED = 0xFFFF << 32


def listed(networks: list[Network], address: Address) -> bool:
    """What the set should answer, from ``ipaddress`` alone: an address and its ::ffff:-mapped
    form are one client, whichever of them a lookup or a list entry is written as."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    forms: list[Address] = [address]
    if isinstance(address, ipaddress.IPv4Address):
        forms.append(ipaddress.IPv6Address(MAPPED | int(address)))
    return any(form in network for form in forms for network in networks if network.version == form.version)


# Networks drawn near a few bases, so that they overlap, nest and touch as real lists do.
V4_BASES = st.sampled_from([0, 0x0A000000, 0x0A000100, 0xC0A80000, 0xFFFFFF00, 0x7F000001])
V6_BASES = st.sampled_from([0, 0x20010DB8 << 96, MAPPED, MAPPED | 0x0A000000, (1 << 128) - 256, 1 << 127])


@st.composite
def ipv4_networks(draw: st.DrawFn) -> ipaddress.IPv4Network:
    if draw(st.booleans()):
        value = (draw(V4_BASES) + draw(st.integers(0, 600))) % (1 << 32)
    else:
        value = draw(st.integers(0, (1 << 32) - 1))
    prefix = draw(st.one_of(st.integers(20, 32), st.integers(0, 32)))
    return ipaddress.IPv4Network((value, prefix), strict=False)


@st.composite
def ipv6_networks(draw: st.DrawFn) -> ipaddress.IPv6Network:
    if draw(st.booleans()):
        value = (draw(V6_BASES) + draw(st.integers(0, 600))) % (1 << 128)
    else:
        value = draw(st.integers(0, (1 << 128) - 1))
    prefix = draw(st.one_of(st.integers(90, 128), st.integers(0, 128)))
    return ipaddress.IPv6Network((value, prefix), strict=False)


NETWORKS = st.lists(st.one_of(ipv4_networks(), ipv6_networks()), max_size=30)


def probes(networks: list[Network], extra: list[int]) -> list[Address]:
    """The edges of every network (first, last, one before, one past) and some addresses."""
    found: list[Address] = []
    for network in networks:
        first, last = int(network.network_address), int(network.broadcast_address)
        top = (1 << network.max_prefixlen) - 1
        make = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
        found += [make(value) for value in (first, last, first - 1, last + 1) if 0 <= value <= top]
    for value in extra:
        found += [ipaddress.IPv4Address(value & 0xFFFFFFFF), ipaddress.IPv6Address(value)]
    return found


def texts(address: Address) -> list[str]:
    """The ways a client's address is written: an IPv4 address also as ::ffff:-mapped IPv6."""
    if isinstance(address, ipaddress.IPv4Address):
        return [str(address), f"::ffff:{address}", f"::FFFF:{address}", f"0:0:0:0:0:ffff:{address}"]
    return [str(address), address.exploded]


@settings(max_examples=300, deadline=None)
@given(NETWORKS, st.lists(st.integers(0, (1 << 128) - 1), max_size=10))
@example([ipaddress.ip_network("::ffff:10.0.0.0/104")], [])
@example([ipaddress.ip_network("::/0")], [])
@example([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::fffe:0:0/95")], [])
@example([ipaddress.ip_network("::/80"), ipaddress.ip_network("::ffff:1.2.3.4/128")], [])
@example([ipaddress.ip_network("::ffff:0.0.0.0/128"), ipaddress.ip_network("::ffff:255.255.255.255/128")], [])
def test_contains_answers_as_ipaddress_does(networks: list[Network], extra: list[int]) -> None:
    addresses = AddressSet(networks)
    assert len(addresses) == len(networks)
    for address in probes(networks, extra):
        expected = listed(networks, address)
        for text in texts(address):
            assert addresses.contains(text) == expected, (text, networks)
        assert addresses.contains_int(address.version, int(address)) == expected, (address, networks)


@st.composite
def list_files(draw: st.DrawFn) -> tuple[str, list[Network]]:
    """A list file as operators write it, and the networks it holds."""
    networks = draw(NETWORKS)
    lines = []
    for network in networks:
        # Host bits set, a /32 as a plain address, whitespace, a trailing comment: all as written.
        host = network.network_address + draw(st.integers(0, network.num_addresses - 1))
        if network.prefixlen == network.max_prefixlen and draw(st.booleans()):
            entry = str(host)
        else:
            entry = f"{host if draw(st.booleans()) else network.network_address}/{network.prefixlen}"
        lines += draw(st.lists(st.sampled_from(["", "   ", "# a comment", "\t# 1.2.3.4"]), max_size=2))
        space = draw(st.sampled_from(["", " ", "\t", "  \t"]))
        after = draw(st.sampled_from(["", " ", "\t"]))
        comment = draw(st.sampled_from(["", "#", " # blocked 2024-06-01", "\t#x"]))
        lines.append(f"{space}{entry}{after}{comment}")
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return newline.join(lines) + draw(st.sampled_from(["", newline])), networks


@settings(max_examples=300, deadline=None)
@given(list_files(), st.lists(st.integers(0, (1 << 128) - 1), max_size=5))
def test_a_list_file_holds_what_it_lists(file: tuple[str, list[Network]], extra: list[int]) -> None:
    text, networks = file
    addresses = parse_list(text, "list.txt")
    assert addresses == AddressSet(networks)
    assert len(addresses) == len(networks)
    for address in probes(networks, extra):
        assert addresses.contains(str(address)) == listed(networks, address), (str(address), text)


def test_overlapping_and_adjacent_networks_merge() -> None:
    addresses = parse_list(
        "10.0.0.0/25\n10.0.0.128/25\n"  # adjacent halves: one interval
        "10.0.1.0/24\n10.0.1.7\n"  # adjacent to those, and an address inside
        "10.0.3.0/24\n"  # a gap of one /24 before it: its own interval
        "2001:db8::/33\n2001:db8:8000::/33\n2001:db8::1\n",
        "list.txt",
    )
    assert len(addresses) == 8
    assert addresses.size == 3
    assert addresses.contains("10.0.1.255") and not addresses.contains("10.0.2.0")
    assert addresses.contains("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")
    assert not addresses.contains("2001:db9::")


def test_host_bits_set_mean_the_network() -> None:
    assert parse_list("10.0.0.1/8\n2001:db8::1/32\n", "x") == parse_list("10.0.0.0/8\n2001:db8::/32", "x")


def test_comments_blank_lines_and_whitespace_do_not_count() -> None:
    text = "# blocklist\n\n   \n\t# 10.0.0.1\n  192.0.2.1  # a scanner\r\n198.51.100.0/24#x\n\xa0::1\xa0\n"
    addresses = parse_list(text, "x")
    assert len(addresses) == 3
    assert not addresses.contains("10.0.0.1")
    assert addresses.contains("192.0.2.1") and addresses.contains("198.51.100.255")
    assert addresses.contains("::1")
    assert len(parse_list("", "x")) == 0 and len(parse_list("# nothing\n\n", "x")) == 0


def test_an_ipv4_mapped_entry_lists_the_ipv4_address() -> None:
    addresses = parse_list("::ffff:192.0.2.0/120\n", "x")
    assert addresses.contains("192.0.2.77") and addresses.contains("::ffff:192.0.2.77")
    assert not addresses.contains("192.0.3.0")
    assert parse_list("192.0.2.9\n", "x").contains("::ffff:c000:209")


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "hello",
        "1.2.3",
        "1.2.3.4.5",
        "01.2.3.4",
        "1.2.3.04",
        "\u0661.\u0662.\u0663.\u0664",
        "+1.2.3.4",
        "1.2.3.4\x00",
        "1.2.3.4 ",
        " 1.2.3.4",
        "fe80::1%",
        "::ffff:1.2.3.256",
        "2001:db8::g",
        "1.2.3.4/24",
        "[::1]",
    ],
)
def test_junk_is_no_address(junk: str) -> None:
    addresses = parse_list("0.0.0.0/0\n::/0\n", "x")
    assert addresses.contains(junk) is False


BAD_LINES = [
    ("10.0.0.300", "'10.0.0.300' is not an IPv4 or IPv6 address or CIDR"),
    ("010.0.0.1", "'010.0.0.1' is not an IPv4 or IPv6 address or CIDR"),
    ("10.0.0", "'10.0.0' is not an IPv4 or IPv6 address or CIDR"),
    ("10.0.0.1.2", "'10.0.0.1.2' is not an IPv4 or IPv6 address or CIDR"),
    ("\u0661\u0660.0.0.1", "'\u0661\u0660.0.0.1' is not an IPv4 or IPv6 address or CIDR"),
    ("10.0.0.1:80", "'10.0.0.1:80' is not an IPv4 or IPv6 address or CIDR"),
    ("example.com", "'example.com' is not an IPv4 or IPv6 address or CIDR"),
    ("2001:db8::g", "'2001:db8::g' is not an IPv4 or IPv6 address or CIDR"),
    ("[2001:db8::1]", "'[2001:db8::1]' is not an IPv4 or IPv6 address or CIDR"),
    ("10.0.0.0/33", "'10.0.0.0/33' has a bad prefix length '33': IPv4 takes /0 to /32"),
    ("10.0.0.0/", "'10.0.0.0/' has a bad prefix length '': IPv4 takes /0 to /32"),
    ("10.0.0.0/-1", "'10.0.0.0/-1' has a bad prefix length '-1': IPv4 takes /0 to /32"),
    ("2001:db8::/129", "'2001:db8::/129' has a bad prefix length '129': IPv6 takes /0 to /128"),
    ("1.2.3.4 5.6.7.8", "'1.2.3.4 5.6.7.8' is not an IPv4 or IPv6 address or CIDR (write one per line)"),
    ("1.2.3.4,5.6.7.8", "'1.2.3.4,5.6.7.8' is not an IPv4 or IPv6 address or CIDR (write one per line)"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES, ids=[line for line, _ in BAD_LINES])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_bad_line_is_named_by_its_number(line: str, message: str, newline: str) -> None:
    lines = ["# blocklist", "", "192.0.2.1", "  # ok so far", "198.51.100.0/24", f"  {line}  # x", "::1"]
    text = newline.join(lines)
    with pytest.raises(ListError) as caught:
        parse_list(text, "blocklist.txt")
    assert str(caught.value) == f"blocklist.txt:6: {message}"
    assert isinstance(caught.value, ValueError)


def test_the_first_bad_line_is_named_and_the_others_counted() -> None:
    with pytest.raises(ListError, match=r"^x:2: 'a' is not .* \(and 2 more bad lines after it\)$"):
        parse_list("1.2.3.4\na\n2.3.4.5\nb\nc\n", "x")
    with pytest.raises(ListError, match=r"^x:1: 'a' is not .* \(and 1 more bad line after it\)$"):
        parse_list("a\nb", "x")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["192.0.2.1", "10.0.0.0/8", "2001:db8::/32", "", "# c", " ::1 "]), max_size=40),
    st.text(st.characters(exclude_characters="\n"), min_size=1, max_size=20),
    st.integers(0, 40),
)
def test_any_bad_line_is_found_at_its_number(good: list[str], junk: str, at: int) -> None:
    entry = junk.partition("#")[0].strip()
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        pass
    else:
        return  # not junk after all
    if not entry:
        return  # a blank or comment line
    at = min(at, len(good))
    lines = [*good[:at], junk, *good[at:]]
    with pytest.raises(ListError) as caught:
        parse_list("\n".join(lines), "f")
    assert str(caught.value).startswith(f"f:{at + 1}: {entry!r} ")


@st.composite
def near_entries(draw: st.DrawFn) -> str:
    """An address or network as written, then perhaps a character or two changed, added or lost:
    lines on both sides of valid."""
    network = draw(st.one_of(ipv4_networks(), ipv6_networks()))
    host = network.network_address + draw(st.integers(0, network.num_addresses - 1))
    forms = [str(host), f"{host}/{network.prefixlen}", f"{host.exploded}/{network.prefixlen}"]
    if isinstance(network, ipaddress.IPv4Network):
        forms += [f"{host}/{network.netmask}", f"::ffff:{host}/{96 + network.prefixlen}"]
    text = draw(st.sampled_from(forms))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(text)))
        change = draw(st.sampled_from("0123456789afAF:./% x#"))
        cut = draw(st.integers(0, 1))
        text = text[:at] + (change if draw(st.booleans()) else "") + text[at + cut :]
    return text


@settings(max_examples=2000, deadline=None)
@given(near_entries())
@example("1.2.3.4/24")
@example("::ffff:1.2.3.4/120")
@example("fe80::1%eth0/64")
@example("1.2.3.4/255.255.0.0")
@example("::/064")
def test_a_line_is_read_as_ip_network_reads_it(line: str) -> None:
    entry = line.partition("#")[0].strip()
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        if entry:
            with pytest.raises(ListError, match=r"^x:1: "):
                parse_list(line, "x")
        else:
            assert len(parse_list(line, "x")) == 0
    else:
        assert parse_list(line, "x") == AddressSet([network])


def test_a_large_list_parses_in_chunks_without_losing_a_line() -> None:
    lines = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}  # entry {i}" for i in range(0, 200_000, 2)]
    lines[77_777] = "10.0.0.999"
    with pytest.raises(ListError, match=r"^big:77778: '10\.0\.0\.999'"):
        parse_list("\n".join(lines), "big")
    lines[77_777] = "10.0.0.9"
    addresses = parse_list("\n".join(lines), "big")
    assert len(addresses) == 100_000
    assert addresses.contains("10.1.134.160") and not addresses.contains("10.1.134.161")


def test_contains_int_takes_parsed_addresses() -> None:
    addresses = parse_list("192.0.2.0/24\n2001:db8::/32\n", "x")
    assert addresses.contains_int(4, int(ipaddress.IPv4Address("192.0.2.9")))
    assert addresses.contains_int(6, int(ipaddress.IPv6Address("::ffff:192.0.2.9")))
    assert addresses.contains_int(6, int(ipaddress.IPv6Address("2001:db8::1")))
    assert not addresses.contains_int(4, 1 << 40) and not addresses.contains_int(6, -1)
    with pytest.raises(ValueError, match="IP version 5"):
        addresses.contains_int(5, 1)


def test_load_list_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "allow.txt"
    path.write_bytes("\ufeff192.0.2.1\n".encode())  # a byte order mark, as some editors write
    assert load_list(str(path)).contains("192.0.2.1")
    path.write_bytes(b"192.0.2.1\r\n192.0.2.0/24\r\n")
    assert len(load_list(str(path))) == 2
    missing = tmp_path / "missing.txt"
    with pytest.raises(ListError) as caught:
        load_list(str(missing))
    assert str(caught.value) == f"{missing}: cannot read: No such file or directory"
    path.write_bytes(b"192.0.2.1\n# caf\xe9\n")
    with pytest.raises(ListError) as caught:
        load_list(str(path))
    assert str(caught.value) == f"{path}:2: not UTF-8 text (the byte 0xe9)"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rewrite(path: Path, text: str) -> None:
    """Write the file and move its mtime on, as a later edit would (the test runs faster than
    the file system's clock ticks)."""
    stamp = path.stat().st_mtime_ns if path.exists() else time.time_ns()
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(stamp + 1_000_000_000, stamp + 1_000_000_000))


def test_a_watched_list_follows_its_file_and_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "block.txt"
    rewrite(path, "192.0.2.1\n")
    clock = Clock()
    watched = WatchedList(str(path), clock=clock)
    assert watched.current.contains("192.0.2.1") and watched.entries == 1
    assert watched.loaded_at == 1000.0 and watched.failures == 0 and watched.last_error is None
    assert watched.refresh() is False  # unchanged

    clock.now = 1010.0
    rewrite(path, "192.0.2.1\n198.51.100.0/24\n")
    assert watched.refresh() is True
    assert watched.current.contains("198.51.100.7") and watched.entries == 2 and watched.loaded_at == 1010.0

    clock.now = 1020.0
    rewrite(path, "192.0.2.1\n198.51.100.0/24\n203.0.113.300\n")
    with caplog.at_level(logging.ERROR, logger="shield.lists"):
        assert watched.refresh() is False
    assert watched.failures == 1
    assert watched.last_error == f"{path}:3: '203.0.113.300' is not an IPv4 or IPv6 address or CIDR"
    assert f"address list refused, the last good one stays in force: {watched.last_error}" in caplog.text
    assert watched.current.contains("198.51.100.7") and watched.entries == 2 and watched.loaded_at == 1010.0
    assert watched.refresh() is False and watched.failures == 1  # refused once, not every refresh

    clock.now = 1030.0
    rewrite(path, "192.0.2.1\n203.0.113.0/24\n")
    assert watched.refresh() is True
    assert watched.current.contains("203.0.113.30") and not watched.current.contains("198.51.100.7")
    assert watched.failures == 1 and watched.last_error is None and watched.loaded_at == 1030.0


def test_a_watched_list_survives_its_file_going_away(tmp_path: Path) -> None:
    path = tmp_path / "block.txt"
    rewrite(path, "192.0.2.1\n")
    watched = WatchedList(str(path))
    path.unlink()
    assert watched.refresh() is False
    assert watched.failures == 1 and watched.last_error is not None and "cannot read" in watched.last_error
    assert watched.current.contains("192.0.2.1")
    path.write_text("192.0.2.2\n")  # replaced: a new inode
    assert watched.refresh() is True and watched.current.contains("192.0.2.2")


def test_a_rewrite_with_the_same_addresses_is_no_change(tmp_path: Path) -> None:
    path = tmp_path / "block.txt"
    rewrite(path, "192.0.2.0/25\n192.0.2.128/25\n")
    watched = WatchedList(str(path))
    rewrite(path, "# merged\n192.0.2.0/24\n")
    assert watched.refresh() is False
    assert watched.entries == 1  # yet the file as it is now is the one in force


def test_a_watched_list_that_never_loaded_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "block.txt"
    path.write_text("nonsense\n")
    with pytest.raises(ListError, match=r"block.txt:1: 'nonsense'"):
        WatchedList(str(path))


async def test_a_refresh_in_a_worker_thread_leaves_the_loop_serving(tmp_path: Path) -> None:
    path = tmp_path / "block.txt"
    rewrite(path, "192.0.2.1\n")
    watched = WatchedList(str(path))
    rewrite(path, "\n".join(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(300_000)))
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.001)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    assert await asyncio.to_thread(watched.refresh) is True
    took = time.perf_counter() - started
    ticker.cancel()
    assert watched.entries == 300_000
    during = [b - a for a, b in itertools.pairwise(ticks) if b >= started]
    # The loop went on while the list loaded, with no long stall (one big sort would be one).
    assert len(during) > 10 and max(during) < max(0.25, took / 3), (took, max(during))

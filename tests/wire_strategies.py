"""Building blocks of the wire property tests (``tests/test_wire_requests.py``,
``tests/test_wire_responses.py``): Hypothesis strategies for the pieces of HTTP/1.1 messages,
writing a message in pieces, and returning the test rig to a known state between examples.

Strategies here shrink towards the plainest message: canonical header spellings, short ASCII
values, no chunk extensions, one write. A falsifying example therefore reads like a hand-written
test case.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from shield.app.server import Shield
from tests.conftest import MakeShield
from tests.test_proxy_http import RawUpstream, Respond

T = TypeVar("T")

# -- how long the properties run --------------------------------------------------------------

#: Examples per property. CI runs the default; ``SHIELD_WIRE_EXAMPLES=5000`` is a long hand run
#: (with ``--timeout=0``, or pytest-timeout stops it after the suite's 60 s per test).
EXAMPLES = int(os.environ.get("SHIELD_WIRE_EXAMPLES", "300"))
#: ``SHIELD_WIRE_SHRINK=0``: report the first failing example as found, unshrunk (a quick triage
#: of a long run). Hypothesis's explain phase is always off: it traces every line under
#: ``sys.settrace``, which on Python 3.11 took minutes per failure here.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target) + (
    () if os.environ.get("SHIELD_WIRE_SHRINK") == "0" else (Phase.shrink,)
)


def wire_settings() -> settings:
    """Settings of a wire property: ``EXAMPLES`` examples, no per-example deadline (loopback I/O
    has a tail), and the fixtures reused across examples on purpose (one Shield for all)."""
    return settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        phases=PHASES,
        print_blob=True,
    )


# -- the grammar's character sets (RFC 9110 §5.6.2, §5.5) --------------------------------------

LOWER = b"abcdefghijklmnopqrstuvwxyz"
DIGITS = b"0123456789"
# Visible characters of a field value; SP and HTAB only inside it (leading and trailing
# whitespace is not part of a value); a few bytes of obs-text (0x80-0xFF), which HTTP allows.
VCHAR = bytes(range(0x21, 0x7F))
OBS_TEXT = b"\x80\xa9\xc3\xe9\xff"

# Hop-by-hop fields (RFC 9110 §7.6.1) that Shield drops in both directions, with a plausible value.
HOP_BY_HOP_FIELDS: dict[bytes, bytes] = {
    b"Keep-Alive": b"timeout=5, max=100",
    b"Proxy-Connection": b"keep-alive",
    b"TE": b"trailers",
    b"Trailer": b"X-Checksum",
    b"Upgrade": b"h2c",
    b"Proxy-Authorization": b"Basic dXNlcjpwdw==",
    b"Proxy-Authenticate": b'Basic realm="proxy"',
}
HOP_BY_HOP = frozenset({name.lower() for name in HOP_BY_HOP_FIELDS} | {b"connection", b"transfer-encoding"})


# Drawing helpers. They take the ``draw`` of an ``@st.composite`` and use strategies built once
# at import: building a strategy per draw (``st.integers(0, n)`` inside a loop) cost Hypothesis
# more than running the example.


def chars(alphabet: bytes, min_size: int = 0, max_size: int = 8) -> st.SearchStrategy[bytes]:
    """Byte strings over ``alphabet`` (drawn as text, one choice rather than one per byte)."""
    return st.text(alphabet=alphabet.decode("latin-1"), min_size=min_size, max_size=max_size).map(
        lambda text: text.encode("latin-1")
    )


#: A lower-case token of letters and digits.
TOKENS = chars(LOWER + DIGITS, 1, 8)
SHORT_TOKENS = chars(LOWER + DIGITS, 1, 5)
#: A field value: visible characters with SP/HTAB inside, now and then obs-text.
FIELD_VALUES = st.one_of(chars(VCHAR + b" \t", 0, 12), chars(VCHAR + b" \t" + OBS_TEXT, 0, 12)).map(
    lambda value: value.strip(b" \t")
)

_MASKS = st.integers(0, 2**24 - 1)
INDEXES = st.integers(0, 2**16 - 1)
_OFFSETS = st.lists(st.integers(0, 2**24 - 1), max_size=8)
_DICE = {sides: st.integers(0, sides - 1) for sides in range(2, 33)}


def recase(draw: st.DrawFn, name: bytes) -> bytes:
    """``name`` with the case of any of its letters flipped (shrinks to ``name`` as given)."""
    mask = draw(_MASKS)
    return bytes(
        (byte ^ 0x20) if mask >> i & 1 and chr(byte).isalpha() else byte for i, byte in enumerate(name)
    )


def one_in(draw: st.DrawFn, sides: int) -> bool:
    """True once in ``sides`` draws (shrinks to False: the plainest message leaves it out)."""
    return draw(_DICE[sides]) == sides - 1


def pick(draw: st.DrawFn, items: Sequence[T]) -> T:
    """One of ``items`` (shrinks to the first)."""
    return items[draw(INDEXES) % len(items)]


def splits(draw: st.DrawFn, data: bytes, max_cuts: int = 6) -> list[int]:
    """Where to cut ``data`` into consecutive pieces: sorted offsets inside it (shrinks to none)."""
    if len(data) < 2:
        return []
    drawn = draw(_OFFSETS)[:max_cuts]
    return sorted({1 + offset * (len(data) - 1) // 2**24 for offset in drawn} - {len(data)})


def cut(data: bytes, offsets: Sequence[int]) -> list[bytes]:
    bounds = [0, *offsets, len(data)]
    return [data[a:b] for a, b in pairwise(bounds) if b > a]


def connection_value(draw: st.DrawFn, names: Sequence[bytes]) -> bytes:
    """A Connection field value listing ``names``, joined the ways clients join them."""
    return pick(draw, [b",", b", ", b" , ", b",,"]).join(names)


# -- bodies -----------------------------------------------------------------------------------

#: Bodies above this go the streamed way through Shield in both directions (proxy.SMALL_BODY).
SMALL_BODY = 64 * 1024

_SMALL_BODIES = st.binary(max_size=40)
_LARGE_SIZES = st.integers(SMALL_BODY + 1, SMALL_BODY + 4000)


def body(draw: st.DrawFn) -> bytes:
    """A body: usually a few arbitrary bytes, now and then more than Shield buffers whole."""
    if one_in(draw, 15):
        return bytes([pick(draw, LOWER)]) * draw(_LARGE_SIZES)
    return draw(_SMALL_BODIES)


_QUOTED = chars(LOWER + b" ,;=", 0, 6)


def chunk_extension(draw: st.DrawFn) -> bytes:
    """``b""`` or a chunk extension (RFC 9112 §7.1.1) in one of its forms."""
    form = draw(_DICE[4])
    if form == 0:
        return b""
    name = draw(SHORT_TOKENS)
    if form == 1:
        return b";" + name
    if form == 2:
        return b";%s=%s" % (name, draw(SHORT_TOKENS))
    return b';%s="%s"' % (name, draw(_QUOTED))


def chunk_size(draw: st.DrawFn, size: int) -> bytes:
    """``size`` in hex as a sender may write it: either case, now and then with leading zeros."""
    text = b"%x" % size
    if one_in(draw, 2):
        text = text.upper()
    return b"0" * pick(draw, [0, 0, 0, 1, 3]) + text


def chunked(draw: st.DrawFn, body: bytes, trailers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """``body`` in the chunked coding: random chunk sizes, extensions, then ``trailers``."""
    wire = b""
    for piece in cut(body, splits(draw, body, 5)):
        wire += b"%s%s\r\n%s\r\n" % (chunk_size(draw, len(piece)), chunk_extension(draw), piece)
    wire += b"0%s\r\n" % chunk_extension(draw)
    wire += b"".join(b"%s: %s\r\n" % field for field in trailers)
    return wire + b"\r\n"


def abbreviated(data: bytes, keep: int = 160) -> str:
    """``repr(data)``, a long run in the middle replaced by its length (for falsifying examples
    with bodies of 64 KiB)."""
    if len(data) <= 2 * keep:
        return repr(data)
    return f"{data[:keep]!r} + <{len(data) - 2 * keep} bytes> + {data[-keep:]!r}"


# -- on the wire ------------------------------------------------------------------------------


async def write_in_pieces(writer: asyncio.StreamWriter, pieces: Sequence[bytes]) -> None:
    """Write ``pieces`` one by one, yielding to the loop in between, so Shield reads them
    (most of the time) in separate reads. A peer that hangs up mid-way ends the writing."""
    try:
        for number, piece in enumerate(pieces):
            if number:
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            writer.write(piece)
            await writer.drain()
    except ConnectionError:
        pass


async def quiesce(upstream: RawUpstream, shield: Shield) -> None:
    """Bring the rig back to its start between examples: the upstream hangs up every connection
    and Shield has none open. Each example then starts from the same state, so a failure replays,
    and what a rogue answer left behind in a pooled connection cannot leak into the next example
    (it would only make that one fail, far from its cause)."""
    for writer in upstream._writers:
        writer.close()
    upstream._writers.clear()
    pool = shield.pool
    assert pool is not None
    await eventually(
        lambda: not pool.open_connections, "Shield kept upstream connections the upstream closed"
    )
    upstream.heads.clear()
    upstream.requests.clear()


async def eventually(condition: Callable[[], bool], failure: str, within: float = 3.0) -> None:
    """Wait until ``condition()`` holds (polling the loop), failing with ``failure`` after ``within``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, failure
        await asyncio.sleep(0.001)


# -- the rig: one Shield in front of one recording upstream, for all examples of a test --------


@dataclass
class Rig:
    upstream: RawUpstream
    shield: Shield

    def __repr__(self) -> str:
        return f"Rig(upstream={self.upstream.url}, shield=127.0.0.1:{self.shield.port})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how Hypothesis prints it
        printer.text(repr(self))

    @property
    def authority(self) -> bytes:
        """The upstream's host:port, the Host Shield sends when the client named none."""
        return self.upstream.url.removeprefix("http://").encode()


async def start_rig(make_shield: MakeShield, respond: Respond, **sections: object) -> Rig:
    """A recording upstream answering with ``respond``, and a Shield (``make_shield``) in front."""
    upstream = await RawUpstream(respond).start()
    shield = await make_shield(upstream.url, **sections)
    # Shield's readiness probe (a HEAD of its own) is done with the pool before examples run.
    await eventually(lambda: shield.admin_state.upstream_seen, "Shield never saw the upstream")
    await quiesce(upstream, shield)
    return Rig(upstream, shield)


async def stop_rig(rig: Rig) -> None:
    await quiesce(rig.upstream, rig.shield)
    await eventually(lambda: not rig.upstream._tasks, "the upstream is still serving a connection")
    await rig.upstream.close()

"""Driving code shared by the fuzz targets ``fuzz_request.py`` and ``fuzz_response.py``.

- One asyncio event loop serves the whole process (a loop per input would cost more than the
  input); each input runs as one ``run_until_complete``, and ``settle`` lets every task that can
  make progress do so, without sleeping.
- ``FakeTransport`` stands in for a socket: it collects what the protocol writes, and tracks
  reading paused and the connection closing.
- An input is split into the reads a protocol receives (``take_pieces``, the format is in
  README.md); ``encode`` writes a corpus file in that format.
- The invariants are named; a broken one raises ``Violation``, which names the bug when the
  invariant is one a known bug broke (``AUDITED``, ``OPEN``). ``OPEN`` holds the bugs not fixed
  yet: ``tolerate_open_bugs()`` (what the fuzz scripts call unless ``SHIELD_FUZZ_STRICT=1``)
  makes the fuzzer pass over inputs that break only their invariants, so it looks further.
  Once a fix lands, move its entry to ``AUDITED``. The corpus replay (CI) is always strict.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import atheris
import h11

T = TypeVar("T")

# Invariants the audit's bugs broke, by name, and the bug: all fixed, always checked.
# Each label's first word is the prefix of the corpus seeds that reproduce it.
AUDITED: dict[str, str] = {
    "request_trailers_not_forwarded": "bug1: chunked request trailers joined the request's headers",
    "response_trailers_not_in_head": "bug2: response trailers were merged into the response head",
    "glued_response_not_merged": "bug3: a second response glued in the same read was merged",
    "no_underscore_header_names": "bug4: header names with underscores passed through",
    "request_transfer_coding_is_chunked": "bug5: Transfer-Encoding: gzip, chunked was accepted",
    "response_transfer_coding_is_chunked": "bug5: Transfer-Encoding: gzip, chunked was accepted",
    "pipelined_requests_answered": "bug6: a parse error was answered before earlier requests",
    "request_version_and_host_valid": "bug7: no Host, a bad Host or HTTP/0.9 headers were accepted",
    # Found by fuzzing, fixed with tests in tests/test_http_integrity.py ("found by fuzzing").
    "response_status_three_digits": "finding1: an upstream status 000-099 is relayed as 'HTTP/1.1 0 '",
    "interim_answer_has_no_body": "finding2: a 1xx answer's body and trailers join the final answer",
    "response_chunked_once": "finding3: Transfer-Encoding: chunked in two fields is decoded once",
    "request_host_percent_encoded": "finding4: a Host with a '%' not followed by two hex digits is accepted",
    "relayed_content_length_canonical": "finding5: an upstream Content-Length like 0005 is relayed as is",
    "connection_cleans_up": "finding6: a refusal on an idle keep-alive connection left its task behind",
}
# Invariants broken by bugs not fixed yet (found by fuzzing), and the bug.
OPEN: dict[str, str] = {}

# A message is cut into at most this many + 1 reads.
MAX_SPLITS = 15
# Loop turns ``settle`` waits for the loop to go quiet: more is a livelock.
MAX_TURNS = 1000
PEER = ("203.0.113.7", 40000)
OWS = b" \t"


class Violation(AssertionError):
    """A broken invariant: a finding."""

    def __init__(self, invariant: str, detail: str) -> None:
        bug = OPEN.get(invariant) or AUDITED.get(invariant)
        label = f" [{bug}]" if bug else ""
        super().__init__(f"invariant {invariant} broken{label}: {detail}")
        self.invariant = invariant


def fail(invariant: str, detail: str) -> NoReturn:
    raise Violation(invariant, detail)


_tolerated: frozenset[str] = frozenset()


def tolerate_open_bugs() -> None:
    """Let inputs that break only an invariant of ``OPEN`` pass: fuzzing goes on past them."""
    global _tolerated
    _tolerated = frozenset(OPEN)


def judged(check: Any, *args: Any) -> None:
    """Run ``check(*args)``; a tolerated violation ends the input quietly. The checks of known bugs
    run before the general ones, so that their inputs never reach the checks they would also
    break."""
    try:
        check(*args)
    except Violation as violation:
        if violation.invariant not in _tolerated:
            raise


# -- input format ----------------------------------------------------------------------------------


def take_pieces(data: atheris.FuzzedDataProvider) -> list[bytes]:
    """The reads to deliver: a split count (mod ``MAX_SPLITS + 1``), that many piece sizes (one
    byte each; 0 is no split), then the message. The last piece is whatever the sizes left."""
    count = data.ConsumeUInt(1) % (MAX_SPLITS + 1)
    sizes = [data.ConsumeUInt(1) for _ in range(count)]
    message: bytes = data.ConsumeBytes(data.remaining_bytes())
    pieces = []
    start = 0
    for size in sizes:
        if size and start < len(message):
            pieces.append(message[start : start + size])
            start += size
    if start < len(message):
        pieces.append(message[start:])
    return pieces


def encode(message: bytes, sizes: Sequence[int] = (), *, flags: int | None = None) -> bytes:
    """A corpus file delivering ``message`` in reads of ``sizes`` (then the rest); ``flags`` is the
    response target's leading byte."""
    if len(sizes) > MAX_SPLITS or not all(0 <= size <= 255 for size in sizes):
        raise ValueError(f"at most {MAX_SPLITS} piece sizes, each 0-255")
    lead = b"" if flags is None else bytes([flags])
    return lead + bytes([len(sizes), *sizes]) + message


# -- the event loop ------------------------------------------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None
_loop_errors: list[dict[str, Any]] = []


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
        _loop.set_exception_handler(lambda _, context: _loop_errors.append(context))
    return _loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the process's loop. An exception a callback or task left unhandled (which
    asyncio would only log) is a finding."""
    result = _event_loop().run_until_complete(coro)
    if _loop_errors:
        context = _loop_errors[0]
        _loop_errors.clear()
        fail("no_unhandled_errors", f"{context.get('message')}: {context.get('exception')!r}")
    return result


def close_loop() -> None:
    global _loop
    if _loop is not None:
        _loop.close()
        _loop = None


async def settle() -> None:
    """Return once nothing but this coroutine is runnable (timers aside): every task that could
    make progress with what has arrived so far has made it."""
    ready = asyncio.get_running_loop()._ready  # type: ignore[attr-defined]  # the loop's run queue
    for _ in range(MAX_TURNS):
        await asyncio.sleep(0)
        if not ready:
            return
    fail("loop_settles", f"still busy after {MAX_TURNS} turns")


async def leftover_tasks() -> list[asyncio.Task[Any]]:
    """Tasks still pending besides the caller, once the connection is gone."""
    current = asyncio.current_task()
    return [task for task in asyncio.all_tasks() if task is not current and not task.done()]


class FakeTransport(asyncio.Transport):
    """One connection's socket: keeps what is written until it closes, tracks paused reading.
    Closing or aborting reports the loss to the protocol on the next loop turn, as asyncio does;
    after ``write_eof`` writing is an error, as it is on a socket transport."""

    def __init__(self, protocol: asyncio.BaseProtocol) -> None:
        super().__init__({"peername": PEER, "sockname": ("192.0.2.1", 8080)})
        self.protocol = protocol
        self.written = bytearray()
        self.closing = False
        self.eof = False
        self.paused = False

    @property
    def ended(self) -> bool:
        """Whether the peer has seen the end of what this side sends."""
        return self.closing or self.eof

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not self.closing:
            self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self._lose()

    def hang_up(self) -> None:
        """The peer closed the connection."""
        if not self.closing:
            self.closing = True
            self.protocol.connection_lost(None)

    def _lose(self) -> None:
        if not self.closing:
            self.closing = True
            _event_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused and not self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol


# -- reading HTTP with h11 -------------------------------------------------------------------------

Fields = list[tuple[bytes, bytes]]


def h11_fields(headers: Iterable[tuple[bytes, bytes]]) -> Fields:
    """h11's headers as (lower-cased name, value) pairs, in order."""
    return [(bytes(name), bytes(value)) for name, value in headers]


def normalized(fields: Iterable[tuple[bytes, bytes]]) -> Fields:
    """Fields as a recipient compares them: lower-cased names, values without surrounding OWS."""
    return [(name.lower(), value.strip(OWS)) for name, value in fields]


def connection_options(fields: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Lower-cased names listed by Connection fields (RFC 9110 §7.6.1)."""
    options: set[bytes] = set()
    for name, value in fields:
        if name.lower() == b"connection":
            options.update(token.strip(OWS).lower() for token in value.split(b","))
    options.discard(b"")
    return frozenset(options)


def values_of(fields: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for field, value in fields if field == name]


def single_coding(values: Sequence[bytes]) -> bool:
    """Whether the Transfer-Encoding values amount to exactly ``chunked``."""
    codings = [token.strip(OWS).lower() for value in values for token in value.split(b",")]
    return codings == [b"chunked"]


def describe(data: bytes | bytearray, limit: int = 400) -> str:
    text = repr(bytes(data[:limit]))
    return text + (f"... ({len(data)} bytes)" if len(data) > limit else "")


def h11_error(error: h11.ProtocolError) -> str:
    return f"{type(error).__name__}: {error}"

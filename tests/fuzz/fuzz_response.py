#!/usr/bin/env python3
"""Fuzz target: Shield's response path. What the upstream answered is what the client gets.

The input is an upstream's answer to one request: a real ``UpstreamConnection`` (over a fake
transport, with a stand-in for its pool) receives it in reads cut at the fuzzer's choice of
boundaries, and a task relays it as ``Proxy.forward`` does: ``response_bytes`` when the whole
answer came with its head, else ``streamed_head`` and the body as it arrives. llhttp, driven
here with per-answer bookkeeping, says what the first final answer was; h11 reads what the
client got; the invariants below compare the two. A refusal (502/504) or a cut-off stream is fine.

By hand (see README.md)::

    .venv/bin/python tests/fuzz/fuzz_response.py tests/fuzz/corpus/response -max_total_time=60
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import atheris
import h11
import httptools

FUZZING = __name__ == "__main__"
if FUZZING:  # run as a script: make ``tests.fuzz`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    # Shield's sources, not its compiled modules: coverage is measured on Python code.
    os.environ["SHIELD_PURE_PYTHON"] = "1"

with atheris.instrument_imports(include=["shield"]) if FUZZING else contextlib.nullcontext():
    from shield.errors import UpstreamError
    from shield.http.headers import HOP_BY_HOP
    from shield.http.response import DateHeader, response_bytes, streamed_head
    from shield.upstream.pool import UpstreamConnection, UpstreamPool
    from tests.fuzz import harness
    from tests.fuzz.harness import Fields, describe, fail, normalized

# The input's first byte.
HEAD_REQUEST = 1  # the request was a HEAD
UPSTREAM_CLOSES = 2  # the upstream closes the connection after its last byte
HTTP10_CLIENT = 4  # the client spoke HTTP/1.0 (and so does not keep the connection)
CLIENT_CLOSES = 8  # the client sent Connection: close

REQUEST_HEAD = b"GET /fuzz HTTP/1.1\r\nHost: upstream.test:8080\r\n\r\n"
# Waits never time out here: no pool ticker runs.
TIMEOUT = 60.0
DATE = DateHeader()
# Shield frames every answer itself.
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
CANONICAL_LENGTH = re.compile(rb"0|[1-9][0-9]{0,18}")


@dataclass(slots=True)
class Answer:
    """One answer as llhttp reported it."""

    head: Fields = field(default_factory=list)
    trailers: Fields = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    status: int = 0
    head_done: bool = False
    complete: bool = False


class Reference:
    """llhttp over the same reads, keeping each answer apart: head, trailers, body."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.failed = False
        self._parser: Any = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> None:
        if not self.failed:
            try:
                self._parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                self.failed = True

    def on_message_begin(self) -> None:
        self.answers.append(Answer())

    def on_header(self, name: bytes, value: bytes) -> None:
        answer = self.answers[-1]
        (answer.trailers if answer.head_done else answer.head).append((name, value))

    def on_headers_complete(self) -> None:
        answer = self.answers[-1]
        answer.head_done = True
        answer.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.answers[-1].body += body

    def on_message_complete(self) -> None:
        self.answers[-1].complete = True


@dataclass(slots=True)
class Relayed:
    """What the client got, as far as the relay went."""

    data: list[bytes] = field(default_factory=list)
    outcome: str = "pending"  # "complete", "refused" (502/504), "aborted" (cut off mid-body)
    keep_alive: bool = True


@dataclass(slots=True)
class Outcome:
    flags: int
    relayed: Relayed
    reference: Reference
    upstream_closed: bool


async def relay(conn: UpstreamConnection, relayed: Relayed, flags: int) -> None:
    """``Proxy.forward`` and ``_stream_response`` from the request written on. An
    ``UpstreamError`` before anything went to the client is a refusal (502/504), after the head a
    stream cut off."""
    head_request = bool(flags & HEAD_REQUEST)
    http10 = bool(flags & HTTP10_CLIENT)
    keep_alive = not (http10 or flags & CLIENT_CLOSES)
    try:
        while not conn.headers_complete:
            await conn.wait(TIMEOUT, "no answer")
        if conn.message_complete:
            body = conn.body.take_all()
            conn.finish()
            answer = response_bytes(
                conn.status, conn.headers, body, head_request=head_request, keep_alive=keep_alive, date=DATE
            )
            relayed.data.append(answer)
            relayed.keep_alive = keep_alive
            relayed.outcome = "complete"
            return
        head, chunked, relayed.keep_alive = streamed_head(
            conn.status, conn.headers, http10=http10, keep_alive=keep_alive, date=DATE
        )
        relayed.data.append(head)
        while chunk := await conn.read(TIMEOUT):
            if not head_request:
                relayed.data.append(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
    except UpstreamError:
        conn.close()
        relayed.outcome = "aborted" if relayed.data else "refused"
        return
    conn.finish()
    if chunked and not head_request:
        relayed.data.append(b"0\r\n\r\n")
    relayed.outcome = "complete"


async def _drive(flags: int, pieces: list[bytes]) -> Outcome:
    pool = UpstreamPool(
        host="127.0.0.1", port=9, ssl_context=None, max_connections=1, idle_timeout=4.0, connect_timeout=1.0
    )  # never connects: the harness hands the connection its transport
    conn = UpstreamConnection(pool)
    transport = harness.FakeTransport(conn)
    conn.connection_made(transport)
    conn.start(REQUEST_HEAD, head_request=bool(flags & HEAD_REQUEST))
    relayed = Relayed()
    task = asyncio.get_running_loop().create_task(relay(conn, relayed, flags))
    reference = Reference()
    for piece in pieces:
        await harness.settle()
        if transport.closing or transport.paused:
            break
        conn.data_received(piece)
        reference.feed(piece)
    await harness.settle()
    upstream_closed = bool(flags & UPSTREAM_CLOSES) and not transport.closing
    if upstream_closed:
        transport.hang_up()
        await harness.settle()
    if not task.done():
        task.cancel()  # Shield would time out: nothing to compare
    if not transport.closing:
        transport.hang_up()
    await harness.settle()
    if leftover := await harness.leftover_tasks():
        fail("connection_cleans_up", f"tasks left once the upstream hung up: {leftover}")
    return Outcome(flags, relayed, reference, upstream_closed)


def one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    flags = provider.ConsumeUInt(1)
    pieces = harness.take_pieces(provider)
    outcome = harness.run(_drive(flags, pieces))
    harness.judged(check, outcome)


# -- the invariants --------------------------------------------------------------------------------


@dataclass(slots=True)
class ClientView:
    status: int
    fields: Fields
    body: bytes


def check(outcome: Outcome) -> None:
    """Known bugs' invariants first (see ``harness.judged``), then the general ones."""
    answers = outcome.reference.answers
    # The first answer that is not interim (1xx); llhttp takes any three digits for a status.
    final = next((i for i, a in enumerate(answers) if a.head_done and not 100 <= a.status < 200), None)
    relayed = outcome.relayed
    head_request = bool(outcome.flags & HEAD_REQUEST)
    if final is not None and relayed.data:
        check_framing(answers[: final + 1], head_request, relayed.outcome)
    head_sent = b"".join(relayed.data).partition(b"\r\n\r\n")[0]
    for line in head_sent.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length" and not CANONICAL_LENGTH.fullmatch(value.strip(harness.OWS)):
            fail("relayed_content_length_canonical", f"Content-Length {value.strip()!r} relayed")
    if relayed.outcome != "complete":
        return
    if final is None:
        fail("response_is_the_upstreams", f"relayed an answer llhttp never completed: {relayed.data!r}")
    answer = answers[final]
    expected_body = b"" if head_request or answer.status in (204, 304) else bytes(answer.body)
    close_delimited = outcome.upstream_closed and not any(
        name in (b"content-length", b"transfer-encoding") for name, _ in normalized(answer.head)
    )
    if not (head_request or answer.complete or close_delimited):
        fail("response_is_the_upstreams", "relayed as complete an answer llhttp did not complete")
    client = read_client(b"".join(relayed.data), head_request, relayed.keep_alive)
    problem = mismatch(answer, expected_body, client)
    head = normalized(answer.head)
    # Shield frames what it relays itself: its own Transfer-Encoding or Content-Length may
    # match a trailer field by chance (found by fuzzing: a trailer 'Transfer-Encoding: chunked').
    leaked = [
        pair
        for pair in normalized(answer.trailers)
        if pair in client.fields
        and pair not in head
        and pair[0] not in (b"transfer-encoding", b"content-length")
    ]
    if problem and len(answers) > final + 1:
        fail("glued_response_not_merged", f"{problem}; the upstream sent {len(answers) - final - 1} more")
    if leaked:
        fail("response_trailers_not_in_head", f"trailer fields in the head: {leaked}")
    if problem:
        fail("response_trailers_not_in_head" if answer.trailers else "response_is_the_upstreams", problem)


def check_framing(answers: list[Answer], head_request: bool, outcome: str) -> None:
    """What the client must never get (these are refused): ``answers`` ends with the final one."""
    *interim, answer = answers
    if answer.status < 100:
        fail("response_status_three_digits", f"relayed ({outcome}) upstream status {answer.status:03d}")
    # No 1xx answer has a body (RFC 9112 §6.3); llhttp reads one for 104-199 when framed.
    if framed := [a for a in interim if a.body or a.trailers]:
        fail(
            "interim_answer_has_no_body",
            f"relayed ({outcome}) after a {framed[0].status} with body {describe(framed[0].body)} "
            f"and trailers {framed[0].trailers}",
        )
    codings = harness.values_of(normalized(answer.head), b"transfer-encoding")
    has_body = not head_request and answer.status not in (204, 304)
    if codings and has_body and not harness.single_coding(codings):
        # Chunked twice (in two fields) is left half decoded, like gzip, chunked (RFC 9112 §6.1).
        tokens = [token.strip(harness.OWS).lower() for coding in codings for token in coding.split(b",")]
        twice = all(token == b"chunked" for token in tokens)
        invariant = "response_chunked_once" if twice else "response_transfer_coding_is_chunked"
        fail(invariant, f"relayed ({outcome}) with Transfer-Encoding {codings}")


def mismatch(answer: Answer, expected_body: bytes, client: ClientView) -> str | None:
    """How the client's answer differs from the upstream's first final one, if it does."""
    if client.status != answer.status:
        return f"status {client.status} relayed, upstream answered {answer.status}"
    head = normalized(answer.head)
    # A field named "close" is ambiguous (a Connection option, or a field it names): not compared.
    dropped = HOP_BY_HOP | {b"content-length", b"close"} | harness.connection_options(head)
    expected = [(n, v) for n, v in head if n not in dropped]
    got = [(n, v) for n, v in client.fields if n not in FRAMING and n != b"close"]
    for name, own in ((b"date", None), (b"server", b"shield")):
        if not harness.values_of(head, name):
            added = harness.values_of(got, name)
            if len(added) != 1 or (own is not None and added != [own]):
                return f"{name.decode()} added as {added}"
            got = [(n, v) for n, v in got if n != name]
    if got != expected:
        return f"fields relayed {got}, upstream sent {expected}"
    if client.body != expected_body:
        return f"body relayed {describe(client.body)}, upstream sent {describe(expected_body)}"
    return None


def read_client(data: bytes, head_request: bool, keep_alive: bool) -> ClientView:
    """The one answer h11, as the client, reads in ``data``; nothing may follow it."""
    client = h11.Connection(h11.CLIENT)
    headers = [("Host", "shield.test")] + ([] if keep_alive else [("Connection", "close")])
    # h11 sends HTTP/1.1 only: an HTTP/1.0 client is one that does not keep the connection.
    client.send(h11.Request(method="HEAD" if head_request else "GET", target="/", headers=headers))
    client.send(h11.EndOfMessage())
    if data:  # h11 takes b"" for the end of the connection
        client.receive_data(data)
    if not keep_alive:
        client.receive_data(b"")
    response: h11.Response | None = None
    body = []
    try:
        while True:
            event = client.next_event()
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                fail("client_output_well_formed", f"{event!r} in {describe(data)}")
    except h11.ProtocolError as error:
        fail("client_output_well_formed", f"{harness.h11_error(error)} in {describe(data)}")
    assert response is not None
    if client.trailing_data[0]:
        fail("client_output_well_formed", f"bytes after the answer: {describe(client.trailing_data[0])}")
    return ClientView(response.status_code, harness.h11_fields(response.headers), b"".join(body))


if FUZZING:
    if os.environ.get("SHIELD_FUZZ_STRICT") != "1":
        harness.tolerate_open_bugs()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()

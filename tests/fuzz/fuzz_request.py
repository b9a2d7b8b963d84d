#!/usr/bin/env python3
"""Fuzz target: Shield's request path. What the rules judged is what the upstream gets.

The input, cut into reads at the fuzzer's choice of boundaries, goes to a real ``Http1Connection``
over a fake transport. Its handler does what the gatekeeper and ``shield/upstream/forward.py`` do with a
request (the origin-form target, 100 Continue, the body read whole or streamed) and builds the
upstream request with the real ``RequestHeadBuilder``, the body framed as Shield frames it.
h11, a parser that is not llhttp, then reads each upstream request and what the client got
back; the invariants below are checked on that. A refusal (4xx/5xx, then close) is fine.

By hand (see README.md)::

    .venv/bin/python tests/fuzz/fuzz_request.py tests/fuzz/corpus/request -max_total_time=60
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import atheris
import h11

FUZZING = __name__ == "__main__"
if FUZZING:  # run as a script: make ``tests.fuzz`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    # Shield's sources, not its compiled modules: coverage is measured on Python code.
    os.environ["SHIELD_PURE_PYTHON"] = "1"

with atheris.instrument_imports(include=["shield"]) if FUZZING else contextlib.nullcontext():
    from shield.config.model import ShieldConfig
    from shield.http.connection import Http1Connection, Http1Server, Request, Written
    from shield.http.headers import CLIENT_ADDRESS_HEADERS, HOP_BY_HOP, IDENTITY_HEADERS, REWRITE_HEADERS
    from shield.http.target import request_target
    from shield.upstream.forward import (
        BodyPieces,
        BodyTooLarge,
        ClientBodyError,
        ForwardSettings,
        _continue_if_expected,
        head_builder,
    )
    from tests.fuzz import harness
    from tests.fuzz.harness import Fields, describe, fail, normalized

CONFIG = ShieldConfig.model_validate({"upstream": {"url": "http://upstream.test:8080"}})
HEADS = head_builder(CONFIG, tls=False)
SETTINGS = ForwardSettings.from_config(CONFIG)
DEFAULT_HOST = CONFIG.upstream.authority.encode()
VIA = CONFIG.forwarding.via.encode()
CLIENT_IP = harness.PEER[0].encode()
# Never copied from the client as they are: Shield manages them (framing, Host, Via, Expect,
# X-Request-ID) or strips them (hop-by-hop, client addresses, identity, rewrite headers).
DROPPED = (
    HOP_BY_HOP
    | CLIENT_ADDRESS_HEADERS
    | IDENTITY_HEADERS
    | REWRITE_HEADERS
    | {b"content-length", b"host", b"via", b"expect", b"x-request-id"}
)
# Written by Shield itself on every upstream request.
ADDED = frozenset(
    {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via"}
    | {b"content-length", b"transfer-encoding"}
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# RFC 9110 §7.2, §4.2.4: uri-host [":" port]; empty is allowed (RFC 9112 §3.2).
VALID_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?"
)


@dataclass(slots=True)
class Parsed:
    """What llhttp reported for one request, noted beside Shield's own bookkeeping."""

    request: Request
    head: Fields
    trailers: Fields = field(default_factory=list)
    complete: bool = False


@dataclass(slots=True)
class Seen:
    """A request as the handler saw it, and what Shield would send upstream for it."""

    request: Request
    rules_view: Fields  # request.headers, what the rules read, back as bytes
    target: bytes = b""
    upstream: bytes | None = None  # head and framed body, once the whole body was read
    body: bytes = b""
    status: int = 0  # of the handler's answer, once it returned
    keep_alive: bool = False


class Observed:
    """Between llhttp and Shield's connection: passes every parse event on, noting per request
    the head fields, the trailer fields and whether llhttp parsed it to its end. (Not a subclass:
    the connection may be compiled, and compiled classes take no interpreted subclasses.)"""

    def __init__(self) -> None:
        self.conn: Http1Connection
        self.parsed: list[Parsed] = []
        self._after_head: Parsed | None = None

    def on_message_begin(self) -> None:
        self._after_head = None
        self.conn.on_message_begin()

    def on_url(self, url: bytes) -> None:
        self.conn.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._after_head is not None:
            self._after_head.trailers.append((name, value))
        self.conn.on_header(name, value)

    def on_headers_complete(self) -> None:
        self.conn.on_headers_complete()
        request = self.conn._parsing  # the request Shield just made of this head (private)
        if request is not None:
            self._after_head = Parsed(request, list(request.raw_headers))
            self.parsed.append(self._after_head)

    def on_body(self, body: bytes) -> None:
        self.conn.on_body(body)

    def on_message_complete(self) -> None:
        if self._after_head is not None:
            self._after_head.complete = True
            self._after_head = None
        self.conn.on_message_complete()


@dataclass(slots=True)
class Outcome:
    parsed: list[Parsed]
    seen: list[Seen]
    handler_errors: list[BaseException]
    written: bytes
    closed: bool
    stalled: bool
    sent: bytes = b""  # what the client sent, all of it


_seen: list[Seen] = []
_handler_errors: list[BaseException] = []
_server: Http1Server | None = None


def _answer(seen: Seen, status: int, keep_alive: bool = False) -> Written:
    seen.status = status
    seen.keep_alive = keep_alive
    body = b"" if seen.request.method == "HEAD" else b"ok"
    close = b"" if keep_alive else b"Connection: close\r\n"
    return Written(
        b"HTTP/1.1 %d Fuzz\r\nContent-Length: 2\r\n%s\r\n%s" % (status, close, body), keep_alive, status
    )


async def handle(request: Request) -> Written:
    rules_view = [
        (name.encode("latin-1"), value.encode("utf-8", "surrogateescape"))
        for name, value in request.headers.items()
    ]
    seen = Seen(request, rules_view)
    _seen.append(seen)
    try:
        return await _forward(request, seen)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as error:
        _handler_errors.append(error)
        raise


async def _forward(request: Request, seen: Seen) -> Written:
    """What the gatekeeper and ``Proxy.forward`` do up to writing the upstream request."""
    method = request.method
    if method == "CONNECT":
        return _answer(seen, 405)
    target = request.target
    if target[:1] != b"/" or target.find(b"#") >= 0:
        checked = request_target(request.raw_path, request.headers.get("Host"), request.method)
        if checked is None:
            return _answer(seen, 400)
        target = checked
    seen.target = target
    length = request.content_length

    def build(framing: bytes) -> bytes:
        return HEADS.build(method.encode(), target, request.raw_headers, harness.PEER[0], framing)

    if not request.body_exists:
        upstream = build(b"Content-Length: 0\r\n" if method in BODY_METHODS else b"")
    else:
        _continue_if_expected(request)
        # As Proxy.forward does: a body up to buffer_request_body is read whole and re-framed
        # with Content-Length; a longer one streams, what was read first.
        pieces = BodyPieces(request, SETTINGS)
        limit = SETTINGS.buffer_request_body
        try:
            read, complete = await pieces.buffer(limit) if length is None or length <= limit else (b"", False)
            if complete:
                seen.body = read
                upstream = build(b"Content-Length: %d\r\n" % len(read)) + read
            else:
                chunked = length is None
                parts = [
                    build(
                        b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % length
                    )
                ]
                body = []
                chunk = read or await pieces.next()
                while chunk:
                    body.append(chunk)
                    parts.append(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    chunk = await pieces.next()
                if chunked:
                    parts.append(b"0\r\n\r\n")
                seen.body = b"".join(body)
                upstream = b"".join(parts)
        except (BodyTooLarge, ClientBodyError):
            return _answer(seen, 400)
    seen.upstream = upstream
    return _answer(seen, 200, request.keep_alive)


def _get_server() -> Http1Server:
    """One server for all inputs, on the running loop."""
    global _server
    if _server is None or _server.loop is not asyncio.get_running_loop():
        limits = CONFIG.limits
        _server = Http1Server(
            handle,
            header_timeout=1e9,
            keepalive_timeout=1e9,
            max_line=limits.max_header_size,
            max_headers=limits.max_headers,
            lingering=1e9,
            underscores_in_headers=CONFIG.forwarding.underscores_in_headers,
        )
    return _server


async def _drive(pieces: list[bytes]) -> Outcome:
    _seen.clear()
    _handler_errors.clear()
    observed = Observed()
    conn = observed.conn = Http1Connection(_get_server(), observed)
    transport = harness.FakeTransport(conn)
    conn.connection_made(transport)
    stalled = False
    for piece in pieces:
        await harness.settle()
        if transport.closing:
            break
        if transport.paused:
            stalled = True
            break
        conn.data_received(piece)
    await harness.settle()
    outcome = Outcome(
        observed.parsed,
        list(_seen),
        list(_handler_errors),
        bytes(transport.written),
        transport.ended,
        stalled,
        b"".join(pieces),
    )
    transport.hang_up()
    await harness.settle()
    if leftover := await harness.leftover_tasks():
        fail("connection_cleans_up", f"tasks left once the client hung up: {leftover}")
    return outcome


def one_input(data: bytes) -> None:
    pieces = harness.take_pieces(atheris.FuzzedDataProvider(data))
    outcome = harness.run(_drive(pieces))
    harness.judged(check, outcome)


# -- the invariants --------------------------------------------------------------------------------


def check(outcome: Outcome) -> None:
    """Known bugs' invariants first (see ``harness.judged``), then the general ones."""
    if outcome.handler_errors:
        fail("handler_no_error", repr(outcome.handler_errors[0]))
    parsed = {id(p.request): p for p in outcome.parsed}
    for seen in outcome.seen:
        check_version_and_host(seen)
        if (codings := harness.values_of(normalized(seen.rules_view), b"transfer-encoding")) and (
            not harness.single_coding(codings)
        ):
            fail("request_transfer_coding_is_chunked", f"served with Transfer-Encoding {codings}")
    check_pipelining(outcome, parsed)
    for seen in outcome.seen:
        if seen.upstream is not None:
            check_upstream(seen, parsed[id(seen.request)])
    check_client_output(outcome)
    if outcome.stalled:
        fail("reading_not_stuck", "reading stayed paused with input unread and nothing left to answer")


def check_version_and_host(seen: Seen) -> None:
    version = seen.request.version
    hosts = harness.values_of(normalized(seen.rules_view), b"host")
    if version == "0.9" and seen.rules_view:
        fail("request_version_and_host_valid", "HTTP/0.9 request with header fields served")
    if version == "1.1" and len(hosts) != 1:
        fail("request_version_and_host_valid", f"HTTP/1.1 request with {len(hosts)} Host fields served")
    for host in hosts:
        if not VALID_HOST.fullmatch(host):
            stray_percent = VALID_HOST.fullmatch(host.replace(b"%", b"%25"))
            invariant = "request_host_percent_encoded" if stray_percent else "request_version_and_host_valid"
            fail(invariant, f"served with Host {host!r}")


def check_pipelining(outcome: Outcome, parsed: dict[int, Parsed]) -> None:
    """Every request llhttp parsed to its end is answered, in order, unless an earlier answer
    closed the connection."""
    for seen in outcome.seen:
        if id(seen.request) not in parsed:
            fail("served_requests_were_parsed", f"the handler got {seen.request.method} {seen.target!r}")
    complete = [p.request for p in outcome.parsed if p.complete]
    served = [s.request for s in outcome.seen if s.request in complete]
    if served != complete[: len(served)]:
        fail("served_requests_were_parsed", "requests served out of order")
    closed_by_answer = any(s.status and not s.keep_alive for s in outcome.seen)
    unserved = complete[len(served) :]
    if unserved and not closed_by_answer:
        fail(
            "pipelined_requests_answered",
            f"{len(unserved)} of {len(complete)} parsed requests never answered; client got "
            f"{describe(outcome.written)}",
        )


def read_upstream(seen: Seen) -> tuple[h11.Request, bytes]:
    """The one request h11 reads in what Shield sends upstream, and its body."""
    assert seen.upstream is not None
    server = h11.Connection(h11.SERVER)
    server.receive_data(seen.upstream)
    request: h11.Request | None = None
    body = []
    try:
        while True:
            event = server.next_event()
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                if event.headers:
                    fail("upstream_request_well_formed", f"a trailer section upstream: {list(event.headers)}")
                break
            else:
                fail("upstream_request_well_formed", f"{event!r} in {describe(seen.upstream)}")
    except h11.ProtocolError as error:
        fail("upstream_request_well_formed", f"{harness.h11_error(error)} in {describe(seen.upstream)}")
    assert request is not None
    rest = server.trailing_data[0]
    if rest:
        fail("upstream_request_well_formed", f"bytes after the request: {describe(rest)}")
    return request, b"".join(body)


def check_upstream(seen: Seen, parsed: Parsed) -> None:
    request, body = read_upstream(seen)
    upstream = harness.h11_fields(request.headers)
    head = normalized(parsed.head)
    leaked = [pair for pair in normalized(parsed.trailers) if pair in upstream and pair not in head]
    if leaked:
        fail("request_trailers_not_forwarded", f"trailer fields upstream: {leaked}")
    if underscored := [name for name, _ in upstream if b"_" in name]:
        fail("no_underscore_header_names", f"forwarded {underscored}")
    if problem := header_mismatch(seen, upstream):
        invariant = "request_trailers_not_forwarded" if parsed.trailers else "upstream_headers_match_rules"
        fail(invariant, problem)
    if request.method.decode() != seen.request.method or bytes(request.target) != seen.target:
        fail(
            "upstream_request_matches",
            f"{request.method!r} {request.target!r} upstream, rules saw {seen.target!r}",
        )
    if body != seen.body:
        fail("upstream_body_matches", f"upstream body {describe(body)}, handler read {describe(seen.body)}")


def header_mismatch(seen: Seen, upstream: Fields) -> str | None:
    """How the upstream head differs from the rules' view plus Shield's own fields, if it does."""
    view = normalized(seen.rules_view)
    named = harness.connection_options(view)
    # A field named "close" is ambiguous (a Connection option, or a field it names): not compared.
    ignored = DROPPED | named | {b"close"}
    expected = [(n, v) for n, v in view if n not in ignored and b"_" not in n]
    copied = [(n, v) for n, v in upstream if n not in ADDED and n != b"close" and b"_" not in n]
    if copied != expected:
        return f"end-to-end fields upstream {copied}, rules saw {expected}"
    hosts = harness.values_of(view, b"host")
    own = {
        b"host": hosts or [DEFAULT_HOST],
        b"x-forwarded-for": [CLIENT_IP],
        b"x-forwarded-proto": [b"http"],
        b"x-forwarded-host": hosts,
    }
    for name, values in own.items():
        if harness.values_of(upstream, name) != values:
            return f"{name.decode()} upstream {harness.values_of(upstream, name)}, expected {values}"
    hops = [hop.strip(harness.OWS) for value in harness.values_of(view, b"via") for hop in value.split(b",")]
    expected_via = [hop for hop in hops if hop] + [VIA]
    vias = harness.values_of(upstream, b"via")
    got_via = [hop.strip(harness.OWS) for value in vias for hop in value.split(b",")]
    if len(vias) != 1 or [hop for hop in got_via if hop] != expected_via:
        return f"Via upstream {vias}, expected {expected_via}"
    return None


def check_client_output(outcome: Outcome) -> None:
    """What the client got reads as the handler's answers in order, maybe then one refusal that
    closed the connection, and nothing else."""
    answered = [s for s in outcome.seen if s.status]
    expected = [s.status for s in answered]
    statuses, closes = read_answers(outcome.written, outcome.seen, outcome.closed, outcome.sent)
    refused = statuses[len(expected) :]
    refusal_ok = not refused or (len(refused) == 1 and refused[0] >= 400 and closes)
    if statuses[: len(expected)] != expected or not refusal_ok:
        fail(
            "client_output_well_formed",
            f"client got statuses {statuses} for answers {expected}: {describe(outcome.written)}",
        )


def read_answers(data: bytes, served: list[Seen], closed: bool, sent: bytes = b"") -> tuple[list[int], bool]:
    """The final statuses h11 reads as a client in ``data``, and whether the last one closes.
    ``served``: the requests the handler got, in the order they are answered (a refusal may
    follow them)."""
    client = h11.Connection(h11.CLIENT)
    if data:  # h11 takes b"" for the end of the connection
        client.receive_data(data)
    if closed:
        client.receive_data(b"")
    statuses: list[int] = []
    try:
        while True:
            seen = served[len(statuses)] if len(statuses) < len(served) else None
            method = "HEAD" if seen is not None and seen.request.method == "HEAD" else "GET"
            client.send(h11.Request(method=method, target="/", headers=[("Host", "shield.test")]))
            client.send(h11.EndOfMessage())
            status = 0
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                    if status:
                        fail("client_output_well_formed", f"a response cut short: {describe(data)}")
                    return statuses, False
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code != 100 or seen is None or not expects_continue(seen):
                        fail("client_output_well_formed", f"an unasked {event.status_code}: {describe(data)}")
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.EndOfMessage):
                    break
            statuses.append(status)
            if client.their_state is h11.MUST_CLOSE:
                if client.trailing_data[0]:
                    fail("client_output_well_formed", f"bytes after a closing answer: {describe(data)}")
                return statuses, True
            client.start_next_cycle()
    except h11.ProtocolError as error:
        if (
            len(statuses) >= len(served)
            and closed
            and _bodyless_refusal(data)
            and _refused_head(sent, served)
        ):
            # The refusal of a request that was not served: when its request line was a HEAD
            # (which the handler never saw), it rightly has no body (RFC 9110 §9.3.2).
            return [*statuses, int(data[data.rfind(b"HTTP/1.1 ") + 9 :][:3])], True
        fail("client_output_well_formed", f"{harness.h11_error(error)} in {describe(data)}")


def _refused_head(sent: bytes, served: list[Seen]) -> bool:
    """Whether the message after the served ones began with a HEAD request line: each served
    message is its head up to the blank line and the body its Content-Length declares (found by
    the fuzzer: a refused HEAD after requests with bodies). A chunked body is not walked: the
    blank line after its head is taken as the message's end, as before."""
    rest = sent
    for seen in served:
        _head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            return False
        rest = rest[seen.request.content_length or 0 :]
    return rest.lstrip(b"\r\n").startswith(b"HEAD ")


def _bodyless_refusal(data: bytes) -> bool:
    """Whether ``data`` ends with a 4xx/5xx head that closes, without the body it announces, as
    Shield answers a refused HEAD request."""
    last = data[data.rfind(b"HTTP/1.1 ") :]
    head, sep, body = last.partition(b"\r\n\r\n")
    return bool(sep) and body == b"" and last[9:10] in (b"4", b"5") and b"\r\nConnection: close" in head


def expects_continue(seen: Seen) -> bool:
    """Whether the request asks for 100 Continue: only HTTP/1.1 has it (RFC 9110 §10.1.1)."""
    expect = harness.values_of(normalized(seen.rules_view), b"expect")
    return seen.request.version == "1.1" and b"100-continue" in [value.lower() for value in expect]


if FUZZING:
    if os.environ.get("SHIELD_FUZZ_STRICT") != "1":
        harness.tolerate_open_bugs()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()

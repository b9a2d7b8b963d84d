"""The probes of ``differential.py``: raw client bytes, and optionally raw upstream answers.

Each probe is sent as is (``writes``, with ``pause`` seconds between them) on one fresh client
connection. ``answers`` maps a request path to the raw bytes the recorder answers it with (``*``:
every path); any other request gets ``HTTP/1.1 200 OK`` with ``ok``. The recorder frames a request
body by ``chunked`` when Transfer-Encoding mentions it, else by Content-Length: a lenient upstream,
so a ``GET /smuggled`` in its log is a request the proxy let through inside another one's body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HOST = b"probe.test"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n"
# A body that is a complete chunked body followed by a request: framing it by Content-Length
# forwards one request, framing it as chunked leaves GET /smuggled behind.
CL_TE_BODY = b"0\r\n\r\n" + SMUGGLED
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
WS_HEAD = (
    b"GET /ws HTTP/1.1\r\nHost: probe.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@dataclass(frozen=True)
class Probe:
    name: str
    description: str
    writes: list[bytes]
    answers: dict[str, bytes] = field(default_factory=dict)
    pause: float = 0.15
    # The first response answers a HEAD (so it has no body whatever its Content-Length says).
    first_is_head: bool = False
    # Read nothing until every write is done (or failed), like a client that sends the whole
    # request before looking at the answer.
    read_late: bool = False
    # Header names worth showing for this probe, in the answers and in what the upstream got,
    # besides the usual notable ones; "body" adds each answer's body length.
    show: tuple[str, ...] = ()


def req(line: bytes, *headers: bytes, body: bytes = b"", host: bool = True) -> bytes:
    """A request: ``line``, Host: probe.test (unless host=False), the given header lines, body."""
    lines = [line, *([b"Host: " + HOST] if host else []), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def cl(body: bytes) -> bytes:
    return b"Content-Length: %d" % len(body)


def te_variant(name: str, description: str, te_line: bytes, version: bytes = b"HTTP/1.1") -> Probe:
    """Content-Length framing one request, plus an obfuscated Transfer-Encoding: chunked."""
    head = b"POST / " + version + b"\r\nHost: " + HOST + b"\r\n" + cl(CL_TE_BODY) + b"\r\n" + te_line
    return Probe(name, description, [head + b"\r\n\r\n" + CL_TE_BODY])


CHUNKED = b"Transfer-Encoding: chunked"

PROBES: list[Probe] = [
    Probe("baseline", "plain GET, to check every proxy works", [req(b"GET / HTTP/1.1")]),
    # --- the audit's findings ---------------------------------------------------------------
    Probe(
        "req-trailers",
        "chunked request whose trailers carry X-Evil, Host, User-Agent, Authorization",
        [
            req(b"POST /t HTTP/1.1", b"User-Agent: probe", CHUNKED)
            + b"5\r\nhello\r\n0\r\nX-Evil: 1\r\nHost: admin.internal\r\nUser-Agent: evilbot\r\n"
            b"Authorization: Bearer x\r\n\r\n"
        ],
    ),
    Probe(
        "resp-trailers",
        "upstream answers chunked with a trailer X-Trailer: 1",
        [req(b"GET / HTTP/1.1")],
        answers={
            "*": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: 1\r\n\r\n"
        },
    ),
    Probe(
        "resp-glued",
        "upstream answer to /one has a second answer (302, Set-Cookie) glued on; then GET /two",
        [req(b"GET /one HTTP/1.1"), req(b"GET /two HTTP/1.1")],
        answers={
            "/one": OK + b"HTTP/1.1 302 Found\r\nLocation: http://evil/\r\nSet-Cookie: a=b\r\n"
            b"Content-Length: 0\r\n\r\n"
        },
        pause=0.4,
    ),
    Probe(
        "underscore-headers",
        "X_Evil: 1, Transfer_Encoding: chunked, Content_Length: 5 on a GET",
        [req(b"GET / HTTP/1.1", b"X_Evil: 1", b"Transfer_Encoding: chunked", b"Content_Length: 5")],
    ),
    Probe(
        "te-gzip-chunked-req",
        "client sends Transfer-Encoding: gzip, chunked",
        [req(b"POST / HTTP/1.1", b"Transfer-Encoding: gzip, chunked", body=b"5\r\nhello\r\n0\r\n\r\n")],
    ),
    Probe(
        "te-gzip-chunked-resp",
        "upstream answers Transfer-Encoding: gzip, chunked",
        [req(b"GET / HTTP/1.1")],
        answers={"*": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"},
        show=("content-encoding", "body"),
    ),
    Probe(
        "pipeline-garbage",
        "GET /a, GET /b and garbage in one write",
        [req(b"GET /a HTTP/1.1") + req(b"GET /b HTTP/1.1") + b"\x16\x03\x01GARBAGE\r\n\r\n"],
    ),
    Probe("no-host-http11", "HTTP/1.1 request without Host", [req(b"GET / HTTP/1.1", host=False)]),
    Probe("host-space", "Host: a b", [req(b"GET / HTTP/1.1", b"Host: a b", host=False)]),
    Probe(
        "host-userinfo",
        "Host: evil/x@127.0.0.1",
        [req(b"GET / HTTP/1.1", b"Host: evil/x@127.0.0.1", host=False)],
    ),
    Probe("http09-headers", "GET / HTTP/0.9 with headers", [req(b"GET / HTTP/0.9")]),
    Probe(
        "head-conn-close",
        "HEAD answered with Content-Length: 10, Connection: close, no body; then a POST",
        [req(b"HEAD /head HTTP/1.1"), req(b"POST /after HTTP/1.1", b"Content-Length: 5", body=b"hello")],
        answers={"/head": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"},
        pause=0.4,
        first_is_head=True,
    ),
    Probe(
        "expect-100-http10",
        "HTTP/1.0 POST with Expect: 100-continue, body sent 0.5 s later",
        [req(b"POST / HTTP/1.0", b"Expect: 100-continue", b"Content-Length: 5"), b"hello"],
        pause=0.5,
    ),
    Probe(
        "ws-declined-200",
        "WebSocket handshake the upstream answers with a plain 200",
        [WS_HEAD],
        answers={"/ws": b"HTTP/1.1 200 OK\r\nServer: recorder\r\nContent-Length: 2\r\n\r\nok"},
        show=("server", "upgrade", "body"),
    ),
    Probe(
        "ws-declined-400",
        "WebSocket handshake the upstream answers with 400",
        [WS_HEAD],
        answers={"/ws": b"HTTP/1.1 400 Bad Request\r\nServer: recorder\r\nContent-Length: 3\r\n\r\nbad"},
        show=("server", "body"),
    ),
    Probe(
        "body-limit-unread",
        "POST with Content-Length: 50000000 over the 1 KiB limit; the client sends 2 MiB anyway",
        [req(b"POST /big HTTP/1.1", b"Content-Length: 50000000"), b"x" * (2 << 20)],
        pause=0.0,
    ),
    Probe(
        "body-limit-read-late",
        "the same, from a client that reads only once it has written all 2 MiB",
        [req(b"POST /big HTTP/1.1", b"Content-Length: 50000000"), b"x" * (2 << 20)],
        pause=0.0,
        read_late=True,
    ),
    # --- classic smuggling and desync probes ---------------------------------------------------
    Probe(
        "cl-te",
        "Content-Length and Transfer-Encoding: chunked",
        [req(b"POST / HTTP/1.1", cl(CL_TE_BODY), CHUNKED) + CL_TE_BODY],
    ),
    Probe(
        "te-cl",
        "Transfer-Encoding: chunked with a Content-Length: 4 that ends inside the first chunk",
        [
            req(b"POST / HTTP/1.1", b"Content-Length: 4", CHUNKED)
            + b"%x\r\n" % len(SMUGGLED)
            + SMUGGLED
            + b"\r\n0\r\n\r\n"
        ],
    ),
    Probe(
        "cl-cl-dup",
        "Content-Length: 5 then Content-Length: 0, body hello",
        [req(b"POST / HTTP/1.1", b"Content-Length: 5", b"Content-Length: 0", body=b"hello")],
    ),
    Probe(
        "cl-cl-same",
        "Content-Length: 5 twice, body hello",
        [req(b"POST / HTTP/1.1", b"Content-Length: 5", b"Content-Length: 5", body=b"hello")],
    ),
    te_variant("te-xchunked", "Content-Length + Transfer-Encoding: xchunked", b"Transfer-Encoding: xchunked"),
    te_variant(
        "te-line-leading-space",
        "Content-Length + ' Transfer-Encoding: chunked' (line starts with a space)",
        b" Transfer-Encoding: chunked",
    ),
    te_variant("te-tab", "Content-Length + Transfer-Encoding:<TAB>chunked", b"Transfer-Encoding:\tchunked"),
    te_variant(
        "te-chunked-identity",
        "Content-Length + Transfer-Encoding: chunked, identity",
        CHUNKED + b", identity",
    ),
    te_variant("te-http10", "HTTP/1.0 request with Content-Length + chunked", CHUNKED, b"HTTP/1.0"),
    te_variant(
        "te-obs-fold",
        "Content-Length + 'Transfer-Encoding:' folded onto ' chunked'",
        b"Transfer-Encoding:\r\n chunked",
    ),
    Probe(
        "obs-fold",
        "header continuation line: X-Evil: a / ' b'",
        [req(b"GET / HTTP/1.1", b"X-Evil: a", b" b")],
    ),
    Probe(
        "bare-lf",
        "request line and headers ended by bare LF",
        [b"GET / HTTP/1.1\nHost: probe.test\nX-Evil: 1\n\n"],
    ),
    Probe("cl-plus", "Content-Length: +5", [req(b"POST / HTTP/1.1", b"Content-Length: +5", body=b"hello")]),
    Probe(
        "cl-list", "Content-Length: 5, 5", [req(b"POST / HTTP/1.1", b"Content-Length: 5, 5", body=b"hello")]
    ),
    Probe("nul-in-value", "X-Evil: a<NUL>b", [req(b"GET / HTTP/1.1", b"X-Evil: a\x00b")]),
    Probe("cr-in-value", "X-Evil: a<CR>b (bare CR)", [req(b"GET / HTTP/1.1", b"X-Evil: a\rb")]),
    Probe(
        "chunk-ext-long",
        "chunk extension of 20,000 bytes",
        [req(b"POST / HTTP/1.1", CHUNKED, body=b"5;ext=" + b"a" * 20000 + b"\r\nhello\r\n0\r\n\r\n")],
    ),
    Probe(
        "chunk-0x", "chunk size 0x5", [req(b"POST / HTTP/1.1", CHUNKED, body=b"0x5\r\nhello\r\n0\r\n\r\n")]
    ),
    Probe(
        "chunk-negative",
        "chunk size -5",
        [req(b"POST / HTTP/1.1", CHUNKED, body=b"-5\r\nhello\r\n0\r\n\r\n")],
    ),
    Probe(
        "chunk-overflow",
        "chunk size 10000000000000005 (wraps to 5 in 64 bits)",
        [req(b"POST / HTTP/1.1", CHUNKED, body=b"10000000000000005\r\nhello\r\n0\r\n\r\n")],
    ),
    Probe(
        "absolute-form-host",
        "GET http://other.example/x with Host: probe.test",
        [req(b"GET http://other.example/x HTTP/1.1")],
    ),
    Probe("host-dup", "two Host headers", [req(b"GET / HTTP/1.1", b"Host: evil.test")]),
    Probe(
        "host-space-colon",
        "'Host : probe.test' (space before the colon)",
        [req(b"GET / HTTP/1.1", b"Host : probe.test", host=False)],
    ),
    Probe("lowercase-method", "get / HTTP/1.1", [req(b"get / HTTP/1.1")]),
    Probe("unknown-method", "FOO / HTTP/1.1", [req(b"FOO / HTTP/1.1")]),
    Probe("asterisk-get", "GET * HTTP/1.1", [req(b"GET * HTTP/1.1")]),
    Probe(
        "hop-by-hop-xff",
        "Connection: close, X-Forwarded-For with X-Forwarded-For: 1.2.3.4",
        [req(b"GET / HTTP/1.1", b"Connection: close, X-Forwarded-For", b"X-Forwarded-For: 1.2.3.4")],
        show=("x-forwarded-for",),
    ),
]

"""The pure header, response and target modules: what crosses Shield, byte for byte."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from shield.decide import host as hosts
from shield.decide.host import host_name
from shield.http import headers as request_headers
from shield.http import response
from shield.http.headers import RequestHeadBuilder, filter_request_headers, filter_response_headers
from shield.http.response import DateHeader, response_bytes, status_line
from shield.http.target import request_target

Headers = list[tuple[bytes, bytes]]

CLIENT = "192.0.2.7"


def build_head(
    raw: Headers,
    *,
    method: bytes = b"GET",
    target: bytes = b"/",
    client_ip: str = CLIENT,
    framing: bytes = b"",
    **options: Any,
) -> tuple[bytes, Headers]:
    """The request line and headers ``RequestHeadBuilder`` writes for ``raw``."""
    settings: dict[str, Any] = {
        "proto": "http",
        "via": b"1.1 shield",
        "forwarded": False,
        "keep_rewrite_headers": False,
        "host_override": None,
        "default_host": b"upstream.internal:8000",
        **options,
    }
    head = RequestHeadBuilder(**settings).build(method, target, tuple(raw), client_ip, framing)
    assert head.endswith(b"\r\n\r\n")
    line, *lines = head[:-4].split(b"\r\n")
    pairs = []
    for text in lines:
        name, sep, value = text.partition(b": ")
        assert sep, text
        pairs.append((name, value))
    return line, pairs


def names(headers: Headers) -> list[bytes]:
    return [name.lower() for name, _ in headers]


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name.lower()]


# -- the upstream request head ----------------------------------------------------------------


def test_request_line_is_http11_origin_form_with_the_target_unchanged() -> None:
    line, _ = build_head([(b"Host", b"a")], method=b"DELETE", target=b"/a/%2e%2e/b?x=%20&y")
    assert line == b"DELETE /a/%2e%2e/b?x=%20&y HTTP/1.1"


def test_a_plain_request_gains_only_host_and_forwarding_headers() -> None:
    _, headers = build_head([(b"Host", b"shop.example")])
    assert headers == [
        (b"Host", b"shop.example"),
        (b"X-Forwarded-For", CLIENT.encode()),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"shop.example"),
        (b"Via", b"1.1 shield"),
    ]


def test_end_to_end_headers_keep_their_order_case_and_repeats() -> None:
    raw = [
        (b"Host", b"a"),
        (b"cookie", b"a=1"),
        (b"X-Custom", b"one"),
        (b"Cookie", b"b=2"),
        (b"X-Custom", b"two"),
        (b"Authorization", b"Bearer t"),
    ]
    _, headers = build_head(raw)
    assert headers[1:6] == raw[1:]


@pytest.mark.parametrize(
    "name",
    [
        b"Connection",
        b"Keep-Alive",
        b"Proxy-Connection",
        b"Proxy-Authorization",
        b"Proxy-Authenticate",
        b"TE",
        b"Trailer",
        b"Transfer-Encoding",
        b"Upgrade",
        b"Content-Length",
        b"Expect",
    ],
)
def test_hop_by_hop_framing_and_expect_headers_are_not_forwarded(name: bytes) -> None:
    _, headers = build_head([(b"Host", b"a"), (name, b"x"), (b"X-Kept", b"1")])
    assert name.lower() not in names(headers)
    assert values(headers, b"X-Kept") == [b"1"]


def test_framing_is_shields_own() -> None:
    raw = [(b"Host", b"a"), (b"Content-Length", b"99"), (b"Transfer-Encoding", b"chunked")]
    _, headers = build_head(raw, method=b"POST", framing=b"Content-Length: 5\r\n")
    assert values(headers, b"content-length") == [b"5"]
    assert values(headers, b"transfer-encoding") == []
    _, headers = build_head(raw, method=b"POST", framing=b"Transfer-Encoding: chunked\r\n")
    assert values(headers, b"content-length") == []
    assert values(headers, b"transfer-encoding") == [b"chunked"]


def test_headers_named_by_any_connection_field_are_dropped() -> None:
    raw = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive, X-Foo"),
        (b"X-Foo", b"1"),
        (b"connection", b" x-BAR ,,"),
        (b"X-Bar", b"2"),
        (b"X-Baz", b"3"),
    ]
    _, headers = build_head(raw)
    assert b"x-foo" not in names(headers)
    assert b"x-bar" not in names(headers)
    assert values(headers, b"X-Baz") == [b"3"]


def test_connection_cannot_remove_the_headers_shield_sets() -> None:
    raw = [
        (b"Host", b"a"),
        (b"Connection", b"close, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Via, Forwarded"),
        (b"Connection", b"Host"),
    ]
    _, headers = build_head(raw, forwarded=True)
    assert values(headers, b"Host") == [b"a"]
    assert values(headers, b"X-Forwarded-For") == [CLIENT.encode()]
    assert values(headers, b"X-Forwarded-Proto") == [b"http"]
    assert values(headers, b"X-Forwarded-Host") == [b"a"]
    assert values(headers, b"Via") == [b"1.1 shield"]
    assert values(headers, b"Forwarded") == [b'for=192.0.2.7;proto=http;host="a"']


def test_client_forwarding_headers_are_replaced_not_appended_to() -> None:
    raw = [
        (b"Host", b"a"),
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"x-forwarded-for", b"127.0.0.1"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"admin.internal"),
        (b"Forwarded", b"for=10.0.0.1"),
    ]
    _, headers = build_head(raw)
    assert values(headers, b"X-Forwarded-For") == [CLIENT.encode()]
    assert values(headers, b"X-Forwarded-Proto") == [b"http"]
    assert values(headers, b"X-Forwarded-Host") == [b"a"]
    assert values(headers, b"Forwarded") == []


@pytest.mark.parametrize(
    "name",
    [
        b"X-Real-IP",
        b"True-Client-IP",
        b"X-Client-IP",
        b"X-Cluster-Client-IP",
        b"Client-IP",
        b"X-Originating-IP",
    ],
)
def test_client_address_headers_are_stripped(name: bytes) -> None:
    _, headers = build_head([(b"Host", b"a"), (name, b"127.0.0.1")])
    assert name.lower() not in names(headers)


REWRITE = [
    b"X-Original-URL",
    b"X-Rewrite-URL",
    b"X-HTTP-Method-Override",
    b"X-HTTP-Method",
    b"X-Method-Override",
    b"X-Forwarded-Prefix",
    b"X-Forwarded-Path",
    b"X-Forwarded-URI",
]


@pytest.mark.parametrize("name", REWRITE)
def test_rewrite_headers_are_stripped_unless_kept(name: bytes) -> None:
    raw = [(b"Host", b"a"), (name, b"/api/register")]
    _, stripped = build_head(raw)
    assert name.lower() not in names(stripped)
    _, kept = build_head(raw, keep_rewrite_headers=True)
    assert values(kept, name) == [b"/api/register"]


def test_via_is_appended_to_the_clients_via() -> None:
    _, headers = build_head([(b"Host", b"a"), (b"Via", b"1.0 fred")], via=b"1.1 edge")
    assert values(headers, b"Via") == [b"1.0 fred, 1.1 edge"]


def test_via_keeps_every_hop_of_repeated_via_fields() -> None:
    raw = [(b"Host", b"a"), (b"Via", b"1.0 one"), (b"Via", b"1.1 two")]
    _, headers = build_head(raw)
    assert values(headers, b"Via") == [b"1.0 one, 1.1 two, 1.1 shield"]


def test_forwarded_header_is_sent_only_when_enabled() -> None:
    _, headers = build_head([(b"Host", b"a")], proto="https")
    assert values(headers, b"Forwarded") == []
    _, headers = build_head([(b"Host", b"a")], proto="https", forwarded=True)
    assert values(headers, b"Forwarded") == [b'for=192.0.2.7;proto=https;host="a"']
    assert values(headers, b"X-Forwarded-Proto") == [b"https"]


def test_forwarded_quotes_and_brackets_an_ipv6_client() -> None:
    _, headers = build_head([(b"Host", b"a")], client_ip="2001:db8::1", forwarded=True)
    assert values(headers, b"Forwarded") == [b'for="[2001:db8::1]";proto=http;host="a"']
    assert values(headers, b"X-Forwarded-For") == [b"2001:db8::1"]


def test_forwarded_host_cannot_inject_parameters() -> None:
    # A Host value with quotes must stay inside the quoted-string (RFC 7239 §4, RFC 9110 §5.6.4);
    # unescaped, this one would add its own for= to Shield's Forwarded element.
    _, headers = build_head([(b"Host", b'a";for=1.2.3.4;x="')], forwarded=True)
    assert values(headers, b"Forwarded") == [b'for=192.0.2.7;proto=http;host="a\\";for=1.2.3.4;x=\\""']


def test_host_is_preserved_by_default() -> None:
    _, headers = build_head([(b"Host", b"shop.example:8443")])
    assert values(headers, b"Host") == [b"shop.example:8443"]


def test_host_override_replaces_the_clients_host_and_keeps_it_in_x_forwarded_host() -> None:
    _, headers = build_head([(b"Host", b"shop.example")], host_override=b"upstream.internal:8000")
    assert values(headers, b"Host") == [b"upstream.internal:8000"]
    assert values(headers, b"X-Forwarded-Host") == [b"shop.example"]


def test_a_request_without_host_gets_the_upstreams_and_no_x_forwarded_host() -> None:
    _, headers = build_head([(b"Accept", b"*/*")], forwarded=True)
    assert values(headers, b"Host") == [b"upstream.internal:8000"]
    assert values(headers, b"X-Forwarded-Host") == []
    assert values(headers, b"Forwarded") == [b"for=192.0.2.7;proto=http"]


def test_forwarding_headers_are_the_ones_build_adds() -> None:
    builder = RequestHeadBuilder(
        proto="http",
        via=b"1.1 shield",
        forwarded=True,
        keep_rewrite_headers=False,
        host_override=None,
        default_host=b"u",
    )
    added = builder.forwarding_headers(((b"Host", b"a"), (b"X-Forwarded-For", b"6.6.6.6")), "::1")
    assert added == [
        (b"X-Forwarded-For", b"::1"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"a"),
        (b"Via", b"1.1 shield"),
        (b"Forwarded", b'for="[::1]";proto=http;host="a"'),
    ]


def test_a_flood_of_header_names_is_filtered_alike_and_remembered_within_bounds() -> None:
    builder = RequestHeadBuilder(
        proto="http",
        via=b"1.1 shield",
        forwarded=False,
        keep_rewrite_headers=False,
        host_override=None,
        default_host=b"u",
    )
    for i in range(2 * request_headers._REMEMBERED_NAMES):
        raw = ((b"X-N%d" % i, b"1"), (b"X-FORWARDED-FOR" if i % 2 else b"x-real-ip", b"6.6.6.6"))
        head = builder.build(b"GET", b"/", raw, f"10.0.{i // 256}.{i % 256}", b"")
        assert b"\r\nX-N%d: 1\r\n" % i in head
        assert b"6.6.6.6" not in head
    assert len(builder._kinds) <= request_headers._REMEMBERED_NAMES
    assert len(builder._for_lines) <= request_headers._REMEMBERED_CLIENTS
    long_name = b"X-" + b"a" * request_headers._REMEMBERED_NAME
    assert b"\r\n" + long_name + b": 1\r\n" in builder.build(b"GET", b"/", ((long_name, b"1"),), "::1", b"")
    assert long_name not in builder._kinds


def test_filter_request_headers_for_the_websocket_handshake() -> None:
    raw = (
        (b"Host", b"a"),
        (b"Connection", b"Upgrade, X-Foo"),
        (b"Upgrade", b"websocket"),
        (b"X-Foo", b"1"),
        (b"X-Real-IP", b"1.1.1.1"),
        (b"X-Original-URL", b"/admin"),
        (b"Cookie", b"s=1"),
    )
    assert filter_request_headers(raw) == [(b"Cookie", b"s=1")]
    assert filter_request_headers(raw, keep_rewrite_headers=True) == [
        (b"X-Original-URL", b"/admin"),
        (b"Cookie", b"s=1"),
    ]


def test_filter_response_headers_drops_framing_hop_by_hop_and_named_headers() -> None:
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"3"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive, X-Internal"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Internal", b"secret"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    assert filter_response_headers(headers) == [
        (b"Content-Type", b"text/plain"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]


# -- the response Shield writes on the fast path ----------------------------------------------


def parse_response(data: bytes) -> tuple[bytes, Headers, bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep
    line, *lines = head.split(b"\r\n")
    return line, [(n, v) for n, _, v in (text.partition(b": ") for text in lines)], body


def respond(
    status: int,
    headers: Headers,
    body: bytes = b"",
    *,
    head_request: bool = False,
    keep_alive: bool = True,
    extra: Headers | None = None,
) -> tuple[bytes, Headers, bytes]:
    data = response_bytes(
        status,
        headers,
        body,
        head_request=head_request,
        keep_alive=keep_alive,
        date=DateHeader(),
        extra=b"".join(b"%s: %s\r\n" % pair for pair in extra or ()),
    )
    return parse_response(data)


def test_content_length_is_computed_from_the_body_sent() -> None:
    upstream = [(b"Content-Length", b"999"), (b"Transfer-Encoding", b"chunked"), (b"X-A", b"1")]
    line, headers, body = respond(200, upstream, b"hello")
    assert line == b"HTTP/1.1 200 OK"
    assert values(headers, b"Content-Length") == [b"5"]
    assert values(headers, b"Transfer-Encoding") == []
    assert values(headers, b"X-A") == [b"1"]
    assert body == b"hello"


def test_content_length_lines_are_right_for_every_size_and_remembered_within_bounds() -> None:
    for size in range(2 * response._REMEMBERED_LENGTHS):
        assert response.content_length_line(size) == b"Content-Length: %d\r\n" % size
    assert len(response._LENGTH_LINES) <= response._REMEMBERED_LENGTHS
    _, headers, body = respond(200, [], b"x" * 70_000)
    assert values(headers, b"Content-Length") == [b"70000"]
    assert len(body) == 70_000


def test_head_keeps_the_upstreams_content_length_and_sends_no_body() -> None:
    _, headers, body = respond(200, [(b"Content-Length", b"1234")], b"", head_request=True)
    assert values(headers, b"Content-Length") == [b"1234"]
    assert body == b""


def test_head_without_a_declared_length_sends_none() -> None:
    _, headers, body = respond(200, [(b"Transfer-Encoding", b"chunked")], b"", head_request=True)
    assert values(headers, b"Content-Length") == []
    assert values(headers, b"Transfer-Encoding") == []
    assert body == b""


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_carry_no_body_and_no_length(status: int) -> None:
    upstream = [(b"Content-Length", b"4"), (b"ETag", b'"v1"')]
    line, headers, body = respond(status, upstream, b"oops")
    assert line.startswith(b"HTTP/1.1 %d " % status)
    assert values(headers, b"Content-Length") == []
    assert values(headers, b"ETag") == [b'"v1"']
    assert body == b""


def test_date_and_server_are_added_only_when_the_upstream_sent_none() -> None:
    _, headers, _ = respond(200, [])
    assert values(headers, b"Server") == [b"shield"]
    (date,) = values(headers, b"Date")
    assert parsedate_to_datetime(date.decode()).tzinfo is not None

    upstream = [(b"date", b"Tue, 01 Jan 2030 00:00:00 GMT"), (b"SERVER", b"app/1.0")]
    _, headers, _ = respond(200, upstream)
    assert values(headers, b"Date") == [b"Tue, 01 Jan 2030 00:00:00 GMT"]
    assert values(headers, b"Server") == [b"app/1.0"]


def test_connection_close_is_written_only_when_the_client_connection_ends() -> None:
    _, headers, _ = respond(200, [(b"Connection", b"keep-alive")], b"x", keep_alive=False)
    assert values(headers, b"Connection") == [b"close"]
    _, headers, _ = respond(200, [(b"Connection", b"close")], b"x", keep_alive=True)
    assert values(headers, b"Connection") == []


def test_upstream_hop_by_hop_and_named_headers_are_dropped_and_repeats_kept() -> None:
    upstream = [
        (b"Connection", b"X-Internal"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Upgrade", b"h2c"),
        (b"Trailer", b"X-Checksum"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"X-Internal", b"secret"),
        (b"Set-Cookie", b"a=1; Path=/"),
        (b"Set-Cookie", b"b=2; HttpOnly"),
    ]
    _, headers, _ = respond(200, upstream, b"ok")
    assert names(headers) == [b"set-cookie", b"set-cookie", b"date", b"server", b"content-length"]
    assert values(headers, b"Set-Cookie") == [b"a=1; Path=/", b"b=2; HttpOnly"]


def test_shields_extra_headers_follow_the_upstreams() -> None:
    _, headers, _ = respond(200, [(b"X-A", b"1")], b"", extra=[(b"RateLimit-Limit", b"10")])
    assert values(headers, b"RateLimit-Limit") == [b"10"]


def test_a_flood_of_upstream_header_names_is_framed_alike_and_remembered_within_bounds() -> None:
    for i in range(2 * response._REMEMBERED_NAMES):
        name = b"X-N%d" % i
        upstream = [(name, b"1"), (b"CONTENT-LENGTH" if i % 2 else b"connection", b"7")]
        _, headers, _ = respond(200, upstream, b"ok")
        assert values(headers, name) == [b"1"]
        assert values(headers, b"Content-Length") == [b"2"]
        assert values(headers, b"Connection") == []
    assert len(response._kinds) <= response._REMEMBERED_NAMES


def test_answers_alternating_between_header_sets_are_each_framed_as_their_own() -> None:
    """The last answer's names are remembered in order (an upstream repeats itself): answers
    that differ from it, by a name, its place or the count, must not be read with its kinds."""
    heads = [
        [(b"Content-Type", b"text/plain"), (b"Content-Length", b"2")],
        [(b"Content-Type", b"text/plain"), (b"Connection", b"close")],
        [(b"Connection", b"close"), (b"Content-Type", b"text/plain")],
        [(b"Content-Type", b"text/plain"), (b"Connection", b"close"), (b"X-More", b"1")],
        [(b"X-Many-%d" % i, b"v") for i in range(2 * response._REMEMBERED_HEAD)],
    ]
    for _ in range(3):
        for upstream in heads:
            _, headers, _ = respond(200, upstream, b"ok")
            kept = [(n, v) for n, v in upstream if n.lower() not in (b"connection", b"content-length")]
            assert [
                (n, v) for n, v in headers if n.lower() not in (b"date", b"server", b"content-length")
            ] == kept
            assert values(headers, b"Content-Length") == [b"2"]
        assert len(response._last_head.names) <= response._REMEMBERED_HEAD


def test_status_line_of_an_unregistered_status_has_an_empty_reason() -> None:
    assert status_line(599) == b"HTTP/1.1 599 \r\n"
    assert status_line(404) == b"HTTP/1.1 404 Not Found\r\n"


def test_date_header_is_an_http_date_line() -> None:
    line = DateHeader().line()
    assert re.fullmatch(rb"Date: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n", line)


# -- the request-target -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_path", "host", "expected"),
    [
        ("/a/%2e%2e/b?x=%20", "a", b"/a/%2e%2e/b?x=%20"),
        ("/p#fragment", "a", b"/p"),
        ("http://a/x?y=1", "a", b"/x?y=1"),
        ("HTTPS://Shop.Example./x", "shop.example", b"/x"),
        ("http://a:8080/x", "a:8080", b"/x"),
        ("http://a", "a", b"/"),
        ("http://a?q=1", "a", b"/?q=1"),
    ],
)
def test_forwarded_target_is_origin_form(raw_path: str, host: str, expected: bytes) -> None:
    assert request_target(raw_path, host, "GET") == expected


def test_the_asterisk_form_is_forwarded_for_options_only() -> None:
    assert request_target("*", "a", "OPTIONS") == b"*"
    assert request_target("*", "a", "GET") is None


@pytest.mark.parametrize(
    ("raw_path", "host"),
    [
        ("http://other/x", "a"),
        ("http://a:8080/x", "a"),
        ("http://a/x", None),
        ("http://user@a/x", "a"),
        ("http:///x", "a"),
        ("ftp://a/x", "a"),
        ("x", "a"),
    ],
)
def test_unacceptable_targets_are_refused(raw_path: str, host: str | None) -> None:
    assert request_target(raw_path, host, "GET") is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, ""),
        ("", ""),
        ("Shop.Example", "shop.example"),
        ("shop.example:8080", "shop.example"),
        ("shop.example.", "shop.example"),
        ("SHOP.example.:443", "shop.example"),
        ("[::1]:80", "[::1]"),
        ("[::1]", "[::1]"),
        ("[x", ""),
    ],
)
def test_host_name_is_the_lower_cased_host_without_port_or_trailing_dot(
    host: str | None, expected: str
) -> None:
    assert host_name(host) == expected
    assert host_name(host) == expected  # remembered


def test_remembered_host_names_are_bounded() -> None:
    for i in range(2 * hosts._HOSTS):
        assert host_name(f"H{i}.example:80") == f"h{i}.example"
    assert len(hosts._hosts) <= hosts._HOSTS

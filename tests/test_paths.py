"""Path canonicalization: every shape of /api/register a client can send is either matched as
/api/register or refused, and what goes upstream is the form the rules matched.

The cases are the route-rule bypass list of the reverse-proxy research notes (§4.3, items 1-11).
"""

from __future__ import annotations

import pytest

from shield.decide import paths
from shield.decide.paths import UnsafePath, canonical_path
from shield.http.target import request_target

REGISTER = "/api/register"

# raw path -> the form forwarded upstream; every one of these is matched as /api/register.
MATCHES_REGISTER = [
    # 1-2. trailing slashes: matched without, forwarded with one
    ("/api/register", "/api/register"),
    ("/api/register/", "/api/register/"),
    ("/api/register//", "/api/register/"),
    # 3. repeated slashes
    ("/api//register", "/api/register"),
    ("//api/register", "/api/register"),
    ("///api/register", "/api/register"),
    # 5. dot segments
    ("/api/./register", "/api/register"),
    ("/api/x/../register", "/api/register"),
    ("/x/../api/register", "/api/register"),
    ("/api/register/.", "/api/register"),
    ("/api/register/..;/register", "/api/register"),
    # 6. encoded dot segments are decoded, then resolved like plain ones
    ("/api/%2e/register", "/api/register"),
    ("/api/%2e%2e/api/register", "/api/register"),
    ("/%2e%2e/api/register", "/api/register"),
    ("/static/%2e%2e/api/register", "/api/register"),
    ("/api/%2E/register", "/api/register"),
    # 7. encoded letters
    ("/api/%72egister", "/api/register"),
    ("/api/regist%65r", "/api/register"),
    ("/%61pi/register", "/api/register"),
    ("/%61%70%69/%72%65%67%69%73%74%65%72", "/api/register"),
    # 8. path parameters (Tomcat, Jetty, Spring) are dropped
    ("/api/register;jsessionid=x", "/api/register"),
    ("/api/register;", "/api/register"),
    ("/api;x=1/register", "/api/register"),
    ("/api/..;/api/register", "/api/register"),
    ("/api/register;x=1/", "/api/register/"),
    # mixed
    ("/a/b/../..//api/./%72egister;x=1//", "/api/register/"),
]

# Refused with 400: the upstream could read these differently from the rules.
UNSAFE = [
    # 6. double encoding
    "/api/%252e%252e/register",
    "/api/%252f/register",
    # 7. encoded slash and backslash
    "/api/register%2f",
    "/api/register%2F",
    "/api%2fregister",
    "/api%5cregister",
    "/api%5Cregister",
    # 8. an encoded ';' (some containers decode before they strip ;params)
    "/api/register%3b",
    "/api/register%3Bx=1",
    # 9. control characters and NUL
    "/api/register%00",
    "/api/register%09",
    "/api/register%0a",
    "/api/register%0D",
    "/api/register%7f",
    "/api/register\x00",
    "/api/register\t",
    # 10. backslashes, raw or encoded
    "/api\\register",
    "\\api\\register",
    "/api/register\\",
    # 11. invalid or overlong UTF-8
    "/api/%c0%af",
    "/api/%e0%80%af",
    "/api/regist%ff",
    # not origin-form
    "api/register",
]

# Distinct routes: matched as themselves and forwarded so the upstream sees the same route.
DISTINCT = [
    # 6. '.%2e' is '..': the route really is /register, for Shield and for the upstream
    ("/api/.%2e/register", "/register", "/register"),
    ("/api/%2E%2E/register", "/register", "/register"),
    ("/api/register/../../../..", "/", "/"),
    # 9. trailing junk makes another route for a plain router
    ("/api/register.", "/api/register.", "/api/register."),
    ("/api/register..", "/api/register..", "/api/register.."),
    ("/api/register%20", "/api/register ", "/api/register%20"),
    ("/api/register.json", "/api/register.json", "/api/register.json"),
    ("/api/register~", "/api/register~", "/api/register~"),
    ("/api/register%23x", "/api/register#x", "/api/register%23x"),
    ("/api/registered", "/api/registered", "/api/registered"),
    # 11. full-width solidus is not a slash: it goes upstream percent-encoded, never as '/'
    ("/%EF%BC%8Fapi%EF%BC%8Fregister", "/\uff0fapi\uff0fregister", "/%EF%BC%8Fapi%EF%BC%8Fregister"),
    ("/api/reg%C4%B1ster", "/api/reg\u0131ster", "/api/reg%C4%B1ster"),
    ("/api/caf\u00e9", "/api/caf\u00e9", "/api/caf%C3%A9"),
]


@pytest.mark.parametrize(("raw", "forward"), MATCHES_REGISTER)
def test_bypass_shapes_match_register(raw: str, forward: str) -> None:
    path = canonical_path(raw)
    assert path.match == REGISTER
    assert path.forward == forward


@pytest.mark.parametrize("raw", UNSAFE)
def test_ambiguous_paths_are_refused(raw: str) -> None:
    with pytest.raises(UnsafePath):
        canonical_path(raw)


@pytest.mark.parametrize(("raw", "match", "forward"), DISTINCT)
def test_distinct_routes_are_matched_and_forwarded_as_what_they_are(
    raw: str, match: str, forward: str
) -> None:
    path = canonical_path(raw)
    assert (path.match, path.forward) == (match, forward)


@pytest.mark.parametrize(("raw", "forward"), MATCHES_REGISTER)
def test_the_forwarded_form_is_stable(raw: str, forward: str) -> None:
    # What the upstream receives canonicalizes to itself: Shield and the upstream agree on it.
    again = canonical_path(forward)
    assert again.match == REGISTER
    assert again.forward == forward


@pytest.mark.parametrize("raw", ["/API/register", "/Api/Register", "/api/REGISTER/", "/%41PI/register"])
def test_case_folding_is_an_option(raw: str) -> None:
    assert canonical_path(raw).match != REGISTER
    folded = canonical_path(raw, case_insensitive=True)
    assert folded.match == REGISTER
    # The upstream gets the client's spelling; only matching ignores case.
    assert folded.forward.lower().rstrip("/") == REGISTER
    assert folded.forward != REGISTER


@pytest.mark.parametrize("raw", ["/api/reg%C4%B1ster", "/api/regi%C5%BFter"])
def test_case_folding_catches_letters_that_upper_case_to_ascii(raw: str) -> None:
    # Case-insensitive routers compare upper-cased (.NET OrdinalIgnoreCase): U+0131 dotless i is 'I',
    # U+017F long s is 'S'.
    assert canonical_path(raw, case_insensitive=True).match == REGISTER


def test_forward_keeps_the_trailing_slash_and_match_drops_it() -> None:
    path = canonical_path("/api/x/../register/")
    assert (path.match, path.forward) == ("/api/register", "/api/register/")
    assert canonical_path("/").match == "/"
    assert canonical_path("/").forward == "/"
    assert canonical_path("//").forward == "/"


def test_a_path_asked_again_gets_the_same_answer_for_each_case_setting() -> None:
    assert canonical_path("/API/x/../Register/") == ("/API/Register", "/API/Register/")
    assert canonical_path("/API/x/../Register/", case_insensitive=True) == (
        "/api/register",
        "/API/Register/",
    )
    assert canonical_path("/API/x/../Register/") == ("/API/Register", "/API/Register/")
    for raw in ["/api/%2fregister", "/api/\\register"]:
        for _ in range(2):
            with pytest.raises(UnsafePath):
                canonical_path(raw)


def test_remembered_paths_are_bounded() -> None:
    for i in range(paths._KNOWN_ENTRIES + 10):
        assert canonical_path(f"/p/{i}/") == (f"/p/{i}", f"/p/{i}/")
    long = "/" + "a" * paths._KNOWN_LENGTH
    assert canonical_path(long).match == long
    assert all(len(known) <= paths._KNOWN_ENTRIES for known in paths._known)
    assert all(long not in known for known in paths._known)


@pytest.mark.parametrize("case_insensitive", [False, True])
def test_the_raw_form_agrees_with_canonical_path(case_insensitive: bool) -> None:
    """What the gatekeeper calls (bytes in, bytes out when the forwarded path changes)."""
    raws = [raw for raw, _ in MATCHES_REGISTER] + [raw for raw, _, _ in DISTINCT] + ["/", "/API/Register"]
    for raw in raws * 2:  # the second time from the table
        raw_bytes = raw.encode("utf-8", "surrogateescape")
        path = canonical_path(raw, case_insensitive=case_insensitive)
        forward = None if path.forward == raw else path.forward.encode()
        assert paths.canonical_raw_path(raw_bytes, case_insensitive=case_insensitive) == (path.match, forward)
    for raw in UNSAFE:
        raw_bytes = raw.encode("utf-8", "surrogateescape")
        with pytest.raises(UnsafePath):
            paths.canonical_raw_path(raw_bytes, case_insensitive=case_insensitive)


def test_remembered_raw_paths_are_bounded() -> None:
    for i in range(paths._KNOWN_ENTRIES + 10):
        assert paths.canonical_raw_path(b"/p/%d/" % i) == (f"/p/{i}", None)
    assert all(len(known) <= paths._KNOWN_ENTRIES for known in paths._known_raw)


def test_forward_re_encodes_what_it_decoded() -> None:
    assert canonical_path("/a%20b/c%3Fd/e%25f").forward == "/a%20b/c%3Fd/e%25f"
    assert canonical_path("/a%20b/c%3Fd/e%25f").match == "/a b/c?d/e%f"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/api/register#x", b"/api/register"),
        ("/api/register?", b"/api/register?"),
        ("/api/register?a=1#frag", b"/api/register?a=1"),
        ("http://shop.example/api//register", b"/api//register"),
        ("HTTP://SHOP.example./api/register?q=1", b"/api/register?q=1"),
    ],
)
def test_request_target_drops_fragment_and_authority(raw: str, expected: bytes) -> None:
    target = request_target(raw, "shop.example", "GET")
    assert target == expected
    assert canonical_path(target.decode().partition("?")[0]).match == REGISTER


@pytest.mark.parametrize(
    "raw",
    ["http://other.example/api/register", "http://a@shop.example/api/register", "ftp://shop.example/x", "x"],
)
def test_absolute_form_naming_another_host_is_refused(raw: str) -> None:
    assert request_target(raw, "shop.example", "GET") is None

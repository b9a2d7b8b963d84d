"""`shield explain`: what Shield would do with one request, and why, as an operator reads it."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import jwt
import pytest

from shield.cli import main
from shield.decide.decision import FORWARD_UNRULED, Decision
from tests import explain_agreement
from tests.conftest import MakeShield, url_of
from tests.explain_agreement import Agreement

RULES = """\
upstream: http://127.0.0.1:8000
policy:
  default_retry_after: 2m
rules:
  - name: registration-closed
    public_name: Registration
    match: { methods: [POST], paths: [/api/register] }
    action: close
    retry_after: 10m
    message: Registration may be busy. Please try again later.
  - name: scraper-watch
    match: { user_agents: ["(?i)scrapy"] }
    action: block
    mode: dry-run
  - name: login
    match: { paths: [/api/login] }
    action: throttle
    limit: 10/minute
    burst: 5
    key: ip
  - name: partner
    match: { paths: ["/api/partner/**"], headers: { X-Api-Key: present } }
    action: throttle
    limit: 100/10s
    key: header:X-Api-Key
  - name: maintenance
    public_name: The legacy site
    match: { hosts: [legacy.example.com] }
    action: close
  - name: internal
    match: { paths: ["/internal/**"] }
    action: block
"""


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "shield.yaml"
    path.write_text(RULES)
    return str(path)


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert main(["explain", *args]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out.splitlines()


def rule_line(lines: list[str], name: str) -> str:
    return next(line for line in lines if line.split(". ", 1)[-1].startswith(name + " "))


def test_close(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    lines = explain(capsys, "-c", config, "post", "/api//x/../register/")
    assert lines[0].startswith("request:  POST /api//x/../register/")
    assert lines[1] == "path:     /api/register  (forwarded upstream as /api/register/)"
    assert lines[2] == "identity: anonymous (no credentials configured)"
    assert "MATCH: close (503, Retry-After 600s): 'Registration may be busy. Please try again later.'" in (
        rule_line(lines, "registration-closed")
    )
    assert rule_line(lines, "login").endswith("not reached (first match wins)")
    assert lines[-1] == "decision: closed by rule 'registration-closed'"


def test_throttle(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    lines = explain(capsys, "-c", config, "POST", "/api/login", "--ip", "203.0.113.7")
    assert "client 203.0.113.7" in lines[0]
    assert rule_line(lines, "registration-closed").endswith(
        "no: path /api/login matches none of ['/api/register']"
    )
    assert rule_line(lines, "scraper-watch").endswith("no: User-Agent does not match")
    assert rule_line(lines, "login").endswith("MATCH: throttle 10/minute, burst 5, key ip")
    decision = lines[-1]
    assert decision.startswith("decision: throttle by 'login'")
    assert "203.0.113.7" in decision
    assert "5 at once, then 10/minute" in decision
    assert "429 beyond" in decision


def test_throttle_by_header(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    lines = explain(capsys, "-c", config, "GET", "/api/partner/orders", "-H", "X-Api-Key: k-123")
    assert rule_line(lines, "partner").endswith("MATCH: throttle 100/10s, burst 100, key header:X-Api-Key")
    assert "k-123" in lines[-1]
    without = explain(capsys, "-c", config, "GET", "/api/partner/orders")
    assert rule_line(without, "partner").endswith("no: header X-Api-Key is not present")
    assert without[-1] == "decision: forward to the upstream (no rule matched)"


def test_no_match(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    lines = explain(capsys, "-c", config, "GET", "/home")
    assert lines[1] == "path:     /home  (forwarded upstream as /home)"
    reasons = lines[lines.index("rules:") + 1 : -1]
    assert len(reasons) == 6
    assert all(" no: " in line for line in reasons)
    assert rule_line(lines, "registration-closed").endswith("no: method GET is not one of ['POST']")
    assert rule_line(lines, "maintenance").endswith(
        "no: host 'localhost' is not one of ['legacy.example.com']"
    )
    assert lines[-1] == "decision: forward to the upstream (no rule matched)"


def test_host_from_the_url_and_the_default_retry_after(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = explain(capsys, "-c", config, "GET", "http://LEGACY.example.com:8080/anything?x=1")
    assert "(Host: LEGACY.example.com:8080" in lines[0]
    assert "MATCH: close (503, Retry-After 120s)" in rule_line(lines, "maintenance")
    assert lines[-1] == "decision: closed by rule 'maintenance'"


@pytest.mark.parametrize(
    "url", ["/api%2fregister", "/api\\register", "/api/register%00", "/api/%252e%252e/x"]
)
def test_unsafe_path(config: str, capsys: pytest.CaptureFixture[str], url: str) -> None:
    lines = explain(capsys, "-c", config, "POST", url)
    assert len(lines) == 2
    assert lines[-1].startswith("decision: 400 Bad Request (")
    assert lines[-1].endswith("no rule is consulted")


def test_dry_run(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    lines = explain(capsys, "-c", config, "GET", "/internal/x", "-H", "User-Agent: Scrapy/2.11")
    assert rule_line(lines, "scraper-watch").endswith("MATCH in dry-run: would block (403); matching goes on")
    assert rule_line(lines, "internal").endswith("MATCH: block (403)")
    assert lines[-1] == "decision: blocked by rule 'internal'"
    # A dry-run match alone decides nothing.
    lines = explain(capsys, "-c", config, "GET", "/home", "-H", "User-Agent: Scrapy/2.11")
    assert "MATCH in dry-run" in rule_line(lines, "scraper-watch")
    assert lines[-1] == "decision: forward to the upstream (no rule matched)"


def test_bad_header_argument(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "-c", config, "GET", "/", "-H", "no colon"]) == 2
    assert "invalid header 'no colon'" in capsys.readouterr().err


def test_a_broken_config_is_reported_not_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("upstream: http://127.0.0.1:8000\nrules:\n  - name: x\n    action: shut\n")
    assert main(["explain", "-c", str(path), "GET", "/"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}:4:13: rules[1] 'x'.action: 'shut' is not one of")


IDENTITY_RULES = """\
upstream: http://127.0.0.1:8000
clients:
  trusted_proxies: [10.0.0.0/8]
auth:
  jwt:
    keys:
      - algorithms: [HS256]
        secret_env: SHIELD_EXPLAIN_SECRET
  introspection:
    path: /api/me
    cookie: sid
rules:
  - name: registration-closed
    match: { methods: [POST], paths: [/api/register] }
    for: anonymous
    action: close
"""
EXPLAIN_SECRET = "explain-test-secret-" + "s" * 44


@pytest.fixture
def identity_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SHIELD_EXPLAIN_SECRET", EXPLAIN_SECRET)
    path = tmp_path / "identity.yaml"
    path.write_text(IDENTITY_RULES)
    return str(path)


def test_identity_with_a_verified_token(identity_config: str, capsys: pytest.CaptureFixture[str]) -> None:
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, EXPLAIN_SECRET, algorithm="HS256")
    lines = explain(
        capsys, "-c", identity_config, "POST", "/api/register", "-H", f"Authorization: Bearer {token}"
    )
    assert lines[2] == (
        "identity: authenticated as alice (JWT from Authorization: Bearer, verified (HS256, key 0), "
        "user from claim 'sub')"
    )
    assert rule_line(lines, "registration-closed").endswith(
        "no: rule is for anonymous clients; this one is authenticated"
    )
    assert lines[-1] == "decision: forward to the upstream (no rule matched)"


def test_identity_refused_and_introspection_not_called(
    identity_config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = explain(
        capsys, "-c", identity_config, "POST", "/api/register",
        "-H", "Authorization: Bearer not.a.token", "--cookie", "sid=opaque",
    )  # fmt: skip
    assert lines[2].startswith("identity: anonymous (JWT from Authorization: Bearer is malformed")
    assert "Shield would ask the upstream at /api/me with the cookie sid" in lines[2]
    assert lines[-1] == "decision: closed by rule 'registration-closed'"


def test_client_behind_a_trusted_proxy(identity_config: str, capsys: pytest.CaptureFixture[str]) -> None:
    lines = explain(
        capsys, "-c", identity_config, "GET", "/", "--ip", "10.0.0.2",
        "-H", "X-Forwarded-For: 6.6.6.6, 203.0.113.9",
    )  # fmt: skip
    assert lines[3].startswith("client:   203.0.113.9  (peer 10.0.0.2 is a trusted proxy;")
    assert lines[3].endswith("upstream gets X-Forwarded-For: 203.0.113.9, 10.0.0.2)")
    direct = explain(
        capsys, "-c", identity_config, "GET", "/", "--ip", "2001:db8::7", "-H", "X-Forwarded-For: 1.1.1.1"
    )
    assert direct[3] == (
        "client:   2001:db8::7  (the TCP peer, not a trusted proxy: forwarding headers ignored; "
        "key 2001:db8::/64)"
    )


def test_explain_says_shield_answers_its_status_page_itself(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # It used to say "forward to the upstream": explain did not share the proxy's decision.
    path = tmp_path / "status.yaml"
    path.write_text(RULES + "status_page: { enabled: true, path: /status }\n")
    lines = explain(capsys, "-c", str(path), "GET", "/status")
    assert lines[-1] == "decision: Shield answers its status page (/status); no rule is consulted"
    path.write_text(RULES + "status_page: { enabled: false, path: /status }\n")
    assert explain(capsys, "-c", str(path), "GET", "/status")[-1] == (
        "decision: forward to the upstream (no rule matched)"
    )


def test_explain_says_shield_takes_challenge_solutions_itself(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "challenge.yaml"
    path.write_text(RULES + '  - name: prove\n    match: { paths: ["/signup"] }\n    action: challenge\n')
    lines = explain(capsys, "-c", str(path), "POST", "/.shield/challenge")
    assert lines[-1].startswith("decision: Shield checks a challenge solution posted to /.shield/challenge")
    assert explain(capsys, "-c", str(path), "GET", "/signup")[-1] == "decision: challenged by rule 'prove'"


async def test_every_request_the_proxy_decides_is_compared_with_explain(
    upstream_url: str, make_shield: MakeShield, client: aiohttp.ClientSession, explain_agrees: Agreement
) -> None:
    """The suite-wide check (``tests/explain_agreement.py``) runs on every decision, and a
    disagreement fails the test it happens in."""
    rules = [
        {"name": "closed", "match": {"methods": ["POST"], "paths": ["/api/register"]}, "action": "close"},
        {"name": "login", "match": {"paths": ["/api/login"]}, "action": "throttle", "limit": "1/minute"},
    ]
    shield = await make_shield(upstream_url, rules=rules, status_page={"enabled": True})
    for method, path in [
        ("POST", "/api/register"),
        ("GET", "/api/login"),
        ("GET", "/api/login"),
        ("GET", "/status"),
        ("GET", "/x"),
    ]:
        async with client.request(method, url_of(shield, path)) as response:
            await response.read()
    assert explain_agrees.compared == 5
    assert explain_agrees.disagreements == []

    def explains_otherwise(*args: object, **kwargs: object) -> tuple[list[str], Decision]:
        return ["(a different answer)"], FORWARD_UNRULED

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(explain_agreement, "explained", explains_otherwise)
        async with client.post(url_of(shield, "/api/register")) as response:
            assert response.status == 503
    assert len(explain_agrees.disagreements) == 1
    assert "the proxy decided ('closed', 'closed', 'close', 'closed'" in explain_agrees.disagreements[0]
    explain_agrees.disagreements.clear()  # seen: the fixture would fail this test on it

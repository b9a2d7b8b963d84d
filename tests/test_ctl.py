"""``shield ctl``: rules closed and opened at runtime through the token-protected admin API.

What an operator sees: a closed rule answers its 503 page until the closure ends (or is lifted),
unknown rules and missing tokens are refused, every closure shows in status and metrics, and
with Redis state a switch flipped on one Shield holds on every Shield within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from shield import cli
from shield.app.server import Shield
from shield.clock import FakeClock
from tests.conftest import serve, shield_config, url_of
from tests.redis_servers import SHARED_REDIS_URL

TOKEN = "correct-horse-battery-staple"
RULES = [
    {"name": "register", "match": {"methods": ["POST"], "paths": ["/api/register"]}, "action": "allow"},
    {"name": "watch", "match": {"paths": ["/api/watched"]}, "action": "block", "mode": "dry-run"},
    {"name": "file-closed", "match": {"paths": ["/old"]}, "action": "close"},
]


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SHIELD_TEST_CTL_TOKEN", TOKEN)
    return "SHIELD_TEST_CTL_TOKEN"


async def answer_upstream(request: web.Request) -> web.Response:
    return web.Response(text="upstream")


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> str:
    return await serve(aiohttp_server, answer_upstream)


async def start(started: list[Shield], upstream: str, token_env: str, **sections: Any) -> Shield:
    wall = sections.pop("wall", None)
    admin = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "ctl": {"token_env": token_env, "max_duration": "2h"},
    }
    shield = Shield(shield_config(upstream, admin=admin, rules=RULES, **sections), wall=wall)
    await shield.start()
    started.append(shield)
    return shield


async def ctl(
    shield: Shield, method: str, path: str, json: Any = None, token: str = TOKEN
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as client,
        client.request(
            method,
            f"http://127.0.0.1:{shield.admin_port}/ctl{path}",
            json=json,
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        return response.status, await response.json()


async def post(shield: Shield, path: str, accept: str = "text/html") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as client,
        client.post(url_of(shield, path), headers={"Accept": accept}) as response,
    ):
        return response.status, await response.text()


async def metric(shield: Shield, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{shield.admin_port}/metrics") as response,
    ):
        text = await response.text()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_the_ctl_api_cannot_be_enabled_without_a_token(upstream: str = "http://127.0.0.1:1") -> None:
    with pytest.raises(ValidationError, match="needs a token"):
        shield_config(upstream, admin={"ctl": {}})


async def test_calls_without_the_right_token_are_refused(
    shields: list[Shield], upstream: str, token_env: str
) -> None:
    shield = await start(shields, upstream, token_env)
    assert (await ctl(shield, "GET", "/status", token="wrong-token-of-some-length"))[0] == 401
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"http://127.0.0.1:{shield.admin_port}/ctl/rules/register/close") as response,
    ):
        assert response.status == 401
    assert await post(shield, "/api/register") == (200, "upstream")


async def test_a_closed_rule_answers_its_page_until_opened_and_shows_everywhere(
    shields: list[Shield], upstream: str, token_env: str
) -> None:
    shield = await start(shields, upstream, token_env)
    status, body = await ctl(
        shield, "POST", "/rules/register/close", {"for": "30m", "message": "Sign-ups are paused."}
    )
    assert status == 200
    assert body["closed"]["rule"] == "register" and body["closed"]["source"] == "ctl"
    assert 1799 <= body["closed"]["remaining"] <= 1800

    status, page = await post(shield, "/api/register")
    assert status == 503 and "Sign-ups are paused." in page
    assert await post(shield, "/api/login") == (200, "upstream")

    _, state = await ctl(shield, "GET", "/status")
    assert [c["rule"] for c in state["closures"]] == ["register"]
    assert state["closed_by_file"] == ["file-closed"]
    assert state["scope"] == "this process only"
    assert await metric(shield, "shield_rule_closed") == {
        (("rule", "register"), ("source", "ctl")): 1.0,
        (("rule", "file-closed"), ("source", "file")): 1.0,
    }
    requests = await metric(shield, "shield_requests_total")
    key = (("action", "ctl-close"), ("decision", "closed"), ("identity", "anonymous"), ("rule", "register"))
    assert requests[key] == 1
    assert [c.rule for c in shield.switches.closures()] == ["register"]

    assert await ctl(shield, "POST", "/rules/register/open") == (
        200,
        {"opened": "register", "was_closed": True, "was_queued": False},
    )
    assert await post(shield, "/api/register") == (200, "upstream")
    assert await metric(shield, "shield_rule_closed") == {(("rule", "file-closed"), ("source", "file")): 1.0}


async def test_a_closure_ends_by_itself_when_its_duration_is_over(
    shields: list[Shield], upstream: str, token_env: str
) -> None:
    wall = FakeClock(1_700_000_000.0)
    shield = await start(shields, upstream, token_env, wall=wall)
    assert (await ctl(shield, "POST", "/rules/register/close", {"for": "10m"}))[0] == 200
    wall.advance(599)
    status, page = await post(shield, "/api/register", accept="application/json")
    assert status == 503 and '"retry_after": 1' in page
    wall.advance(1)
    assert await post(shield, "/api/register") == (200, "upstream")
    assert (await ctl(shield, "GET", "/status"))[1]["closures"] == []


async def test_without_a_duration_the_default_applies_and_none_may_exceed_the_cap(
    shields: list[Shield], upstream: str, token_env: str
) -> None:
    shield = await start(shields, upstream, token_env)
    _, body = await ctl(shield, "POST", "/rules/register/close")
    assert 3599 <= body["closed"]["remaining"] <= 3600  # admin.ctl.default_duration: 1h
    status, body = await ctl(shield, "POST", "/rules/register/close", {"for": "3h"})
    assert status == 400 and "at most 7200s" in body["error"]
    status, body = await ctl(shield, "POST", "/rules/register/close", {"for": "soon"})
    assert status == 400 and "invalid duration" in body["error"]


async def test_unknown_rules_are_refused_with_404(
    shields: list[Shield], upstream: str, token_env: str
) -> None:
    shield = await start(shields, upstream, token_env)
    status, body = await ctl(shield, "POST", "/rules/registr/close", {"for": "1m"})
    assert status == 404
    assert body["error"] == "no rule named 'registr' in the rule file (rules: register, watch, file-closed)"
    assert (await ctl(shield, "POST", "/rules/registr/open"))[0] == 404


async def test_ctl_cannot_open_what_the_rule_file_closes(
    shields: list[Shield], upstream: str, token_env: str
) -> None:
    shield = await start(shields, upstream, token_env)
    status, body = await ctl(shield, "POST", "/rules/file-closed/open")
    assert status == 409 and "closed by the rule file" in body["error"]
    assert (await post(shield, "/old"))[0] == 503


async def test_a_ctl_closure_is_enforced_on_a_dry_run_rule(
    shields: list[Shield], upstream: str, token_env: str
) -> None:
    shield = await start(shields, upstream, token_env)
    assert await post(shield, "/api/watched") == (200, "upstream")
    await ctl(shield, "POST", "/rules/watch/close", {"for": "1m", "message": "Paused."})
    status, page = await post(shield, "/api/watched")
    assert status == 503 and "Paused." in page


async def test_the_cli_closes_lists_and_opens(
    shields: list[Shield], upstream: str, token_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shield = await start(shields, upstream, token_env)
    admin = ["ctl", "--admin", f"http://127.0.0.1:{shield.admin_port}"]

    def run(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([*admin, *args])
        return code, out.getvalue(), err.getvalue()

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHIELD_CTL_TOKEN", TOKEN)
        code, out, _ = await asyncio.to_thread(
            run, "close", "register", "--for", "30m", "--message", "Later."
        )
        assert code == 0 and out.startswith("closed register until ") and "'Later.'" in out
        code, out, _ = await asyncio.to_thread(run, "status")
        assert code == 0 and "register" in out and "closed by the rule file: file-closed" in out
        assert (await post(shield, "/api/register"))[0] == 503
        code, _, err = await asyncio.to_thread(run, "close", "nope")
        assert code == 1 and "404: no rule named 'nope'" in err
        code, out, _ = await asyncio.to_thread(run, "open", "register")
        assert (code, out) == (0, "opened register\n")
        code, out, _ = await asyncio.to_thread(run, "bans")
        assert out == "bans are not enabled (no bans: section in the config)\n"
        patch.setenv("SHIELD_CTL_TOKEN", "wrong-token-of-some-length")
        code, _, err = await asyncio.to_thread(run, "status")
        assert code == 1 and "401" in err
    assert await post(shield, "/api/register") == (200, "upstream")


async def test_a_switch_flipped_on_one_shield_holds_on_another_on_the_same_redis(
    shields: list[Shield], upstream: str, token_env: str
) -> None:
    state = {
        "backend": "redis",
        "url": SHARED_REDIS_URL,
        "key_prefix": f"test-{uuid4()}:",
        "timeout": "500ms",
    }
    first = await start(shields, upstream, token_env, state=state)
    second = await start(shields, upstream, token_env, state=state)
    assert (await ctl(first, "GET", "/status"))[1]["scope"] == "every replica"

    await ctl(first, "POST", "/rules/register/close", {"for": "5m", "message": "Paused everywhere."})
    loop = asyncio.get_running_loop()
    flipped = loop.time()
    while (await post(second, "/api/register"))[0] != 503:
        assert loop.time() - flipped < 1.0, "the second Shield did not see the switch within a second"
        await asyncio.sleep(0.02)
    assert "Paused everywhere." in (await post(second, "/api/register"))[1]
    assert [c.rule for c in second.switches.closures()] == ["register"]

    await ctl(second, "POST", "/rules/register/open")
    opened = loop.time()
    while (await post(first, "/api/register"))[0] != 200:
        assert loop.time() - opened < 1.0, "the first Shield did not see the opening within a second"
        await asyncio.sleep(0.02)


async def test_explain_shows_an_active_closure_or_says_closures_are_runtime_only(
    shields: list[Shield], upstream: str, token_env: str, tmp_path: Any
) -> None:
    shield = await start(shields, upstream, token_env)
    await ctl(shield, "POST", "/rules/register/close", {"for": "30m", "message": "Later."})

    def explain(admin_port: int) -> list[str]:
        path = tmp_path / f"shield-{admin_port}.yaml"
        path.write_text(
            f"upstream: {upstream}\n"
            f"admin: {{listen: 127.0.0.1:{admin_port}, ctl: {{token_env: {token_env}}}}}\n"
            "rules:\n  - {name: register, match: {methods: [POST], paths: [/api/register]}, action: allow}\n"
        )
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["explain", "-c", str(path), "POST", "/api/register"]) == 0
        return out.getvalue().splitlines()

    lines = await asyncio.to_thread(explain, shield.admin_port)
    assert lines[-2].startswith("override: rule 'register' is closed by ctl: 'Later.' for 1")
    assert lines[-1] == "decision: closed (503) by ctl on rule 'register'"
    await ctl(shield, "POST", "/rules/register/open")
    lines = await asyncio.to_thread(explain, shield.admin_port)
    assert lines[-2] == (
        "overrides: no ctl closure or waiting room applies (closed by ctl: none; queued by ctl: none)"
    )

    port = shield.admin_port
    await shield.stop(grace=0.1)
    shields.remove(shield)
    lines = await asyncio.to_thread(explain, port)
    assert lines[-2].startswith(
        "overrides: ctl closures and waiting rooms are runtime-only and the admin listener did not answer"
    )

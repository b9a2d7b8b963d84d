"""Hot reload: a good file swaps the rules, a broken one is refused and counted, requests never fail."""

from __future__ import annotations

import asyncio
import http.server
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import jwt
import pytest

from shield.app.server import Shield
from shield.cli import main
from shield.clock import FakeClock
from shield.config import load_config
from shield.config.model import ShieldConfig
from shield.config.reloadable import IGNORED, LIVE, RESTART, RESTART_PARTS
from shield.decide.challenge_tokens import solve
from tests.conftest import free_port, url_of

REPO = Path(__file__).resolve().parent.parent

OPEN = "rules: []\n"
CLOSED = """\
rules:
  - name: registration-closed
    match: { methods: [POST], paths: [/api/register] }
    action: close
    message: Registration may be busy. Please try again later.
"""
BROKEN = """\
rules:
  - name: registration-closed
    match: { methods: [POST], paths: [/api/register] }
    action: shut
"""


class Files:
    def __init__(self, path: Path, head: str) -> None:
        self.path = path
        self.head = head

    def write(self, rules: str) -> None:
        self.path.write_text(self.head + rules)


StartShield = Callable[..., Awaitable[tuple[Shield, Files]]]


@pytest.fixture
async def start(tmp_path: Path, upstream_url: str) -> AsyncIterator[StartShield]:
    """``await start(rules_yaml)``: a Shield serving a config file, with a fake clock."""
    started: list[Shield] = []

    async def make(rules: str, clock: FakeClock | None = None) -> tuple[Shield, Files]:
        head = (
            "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\n"
            f"upstream: {upstream_url}\npolicy: {{ debug_header: true }}\n"
        )
        files = Files(tmp_path / "shield.yaml", head)
        files.write(rules)
        shield = Shield(load_config(files.path), config_path=str(files.path), clock=clock or FakeClock())
        await shield.start()
        started.append(shield)
        return shield, files

    yield make
    for shield in started:
        await shield.stop(grace=1.0)


async def register(client: aiohttp.ClientSession, shield: Shield) -> int:
    async with client.post(url_of(shield, "/api/register"), data=b"{}") as response:
        await response.read()
        return response.status


async def metrics(client: aiohttp.ClientSession, shield: Shield) -> dict[str, float]:
    async with client.get(f"http://127.0.0.1:{shield.admin_port}/metrics") as response:
        text = await response.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def test_a_good_file_swaps_the_rules(start: StartShield, client: aiohttp.ClientSession) -> None:
    shield, files = await start(OPEN)
    assert await register(client, shield) == 200
    before = await metrics(client, shield)

    files.write(CLOSED)
    assert shield.reload() is True
    assert await register(client, shield) == 503
    after = await metrics(client, shield)
    assert after['shield_config_reloads_total{result="success"}'] == 1
    assert after['shield_config_reloads_total{result="failure"}'] == 0
    assert [k for k in before if k.startswith("shield_config_info")] != [
        k for k in after if k.startswith("shield_config_info")
    ]  # the version label changed

    files.write(OPEN)
    assert shield.reload() is True
    assert await register(client, shield) == 200


async def test_a_broken_file_is_refused_and_the_old_rules_keep_serving(
    start: StartShield, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    shield, files = await start(CLOSED)
    assert await register(client, shield) == 503
    before = await metrics(client, shield)

    files.write(BROKEN)
    assert shield.reload() is False
    assert await register(client, shield) == 503
    after = await metrics(client, shield)
    assert after['shield_config_reloads_total{result="failure"}'] == 1
    assert after['shield_config_reloads_total{result="success"}'] == 0
    version = [k for k in after if k.startswith("shield_config_info")]
    assert version == [k for k in before if k.startswith("shield_config_info")]
    # The log names the file, the line and the problem.
    assert f"{files.path}:8:13: rules[1] 'registration-closed'.action:" in caplog.text

    files.write("rules: [\n")
    assert shield.reload() is False
    assert (await metrics(client, shield))['shield_config_reloads_total{result="failure"}'] == 2
    assert await register(client, shield) == 503

    files.write(OPEN)
    assert shield.reload() is True
    assert await register(client, shield) == 200


async def test_a_missing_close_page_is_refused(
    start: StartShield, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    shield, files = await start(CLOSED)
    missing = tmp_path / "missing.html"
    policy = f"policy: {{ close_page: {missing} }}"
    files.path.write_text(files.head.replace("policy: { debug_header: true }", policy) + OPEN)
    assert shield.reload() is False
    assert await register(client, shield) == 503
    assert (await metrics(client, shield))['shield_config_reloads_total{result="failure"}'] == 1


async def test_the_file_watcher_picks_up_a_change(start: StartShield, client: aiohttp.ClientSession) -> None:
    shield, files = await start(OPEN)
    assert await register(client, shield) == 200
    files.write(CLOSED)
    changed_at = time.monotonic()
    while await register(client, shield) != 503:
        assert time.monotonic() - changed_at < 3.0, "the change was not picked up within 3 s"
        await asyncio.sleep(0.05)
    assert time.monotonic() - changed_at < 2.5
    assert (await metrics(client, shield))['shield_config_reloads_total{result="success"}'] == 1


THROTTLE = """\
rules:
  - name: api
    match: { paths: ["/api/**"] }
    action: throttle
    limit: {limit}
{extra}"""
EXTRA_RULE = """\
  - name: internal
    match: { paths: ["/internal/**"] }
    action: block
"""


async def test_throttle_state_survives_a_reload_of_an_unchanged_rule(
    start: StartShield, client: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    shield, files = await start(THROTTLE.replace("{limit}", "2/minute").replace("{extra}", ""), clock=clock)

    async def api() -> int:
        async with client.get(url_of(shield, "/api/x")) as response:
            return response.status

    assert [await api(), await api(), await api()] == [200, 200, 429]
    # Another rule added, 'api' untouched: its bucket is still empty.
    files.write(THROTTLE.replace("{limit}", "2/minute").replace("{extra}", EXTRA_RULE))
    assert shield.reload() is True
    assert await api() == 429
    async with client.get(url_of(shield, "/internal/x")) as response:
        assert response.status == 403
    # The same limit spelled differently is the same limit.
    files.write(THROTTLE.replace("{limit}", "2 / minutes").replace("{extra}", EXTRA_RULE))
    assert shield.reload() is True
    assert await api() == 429
    # A new limit starts from a full bucket.
    files.write(THROTTLE.replace("{limit}", "3/minute").replace("{extra}", EXTRA_RULE))
    assert shield.reload() is True
    assert [await api(), await api(), await api(), await api()] == [200, 200, 200, 429]


def many_rules(count: int) -> str:
    """CLOSED, then ``count`` more rules: a file that takes a while to compile."""
    more = "".join(
        f"  - name: r{i}\n    match: {{ paths: [/p{i}/**], headers: {{ X-R{i}: present }} }}\n"
        "    action: block\n"
        for i in range(count)
    )
    return CLOSED + more


async def test_requests_are_served_while_a_reload_compiles(
    start: StartShield, client: aiohttp.ClientSession
) -> None:
    """A big rule file compiles in a thread: the old rules keep answering until the swap."""
    shield, files = await start(OPEN)
    files.write(many_rules(1500))
    reloading = asyncio.create_task(shield.reload_off_loop())
    served_meanwhile = []
    while not reloading.done():
        served_meanwhile.append(await register(client, shield))
    assert await reloading is True
    # The old rules answered while the new ones compiled (the last request may meet the new).
    assert served_meanwhile.count(200) >= len(served_meanwhile) - 1 >= 1
    assert await register(client, shield) == 503


async def test_a_broken_file_reloaded_off_the_loop_is_refused_and_counted(
    start: StartShield, client: aiohttp.ClientSession
) -> None:
    shield, files = await start(CLOSED)
    files.write(BROKEN)
    assert await shield.reload_off_loop() is False
    assert await register(client, shield) == 503
    assert (await metrics(client, shield))['shield_config_reloads_total{result="failure"}'] == 1


async def test_zero_failed_requests_during_20_reloads_under_load(
    start: StartShield, client: aiohttp.ClientSession
) -> None:
    shield, files = await start(OPEN)
    stop = asyncio.Event()
    statuses: Counter[int] = Counter()
    errors: list[BaseException] = []

    async def user() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.post(url_of(shield, "/api/register"), data=b"{}") as response:
                        await response.read()
                        statuses[response.status] += 1
                except (aiohttp.ClientError, OSError) as error:
                    errors.append(error)

    users = [asyncio.create_task(user()) for _ in range(20)]
    try:
        await asyncio.sleep(0.05)
        for n in range(20):
            files.write(CLOSED if n % 2 == 0 else OPEN)
            assert shield.reload() is True
            await asyncio.sleep(0.03)
    finally:
        stop.set()
        await asyncio.gather(*users)
    assert errors == []
    assert set(statuses) == {200, 503}
    assert sum(statuses.values()) > 100
    assert (await metrics(client, shield))['shield_config_reloads_total{result="success"}'] == 20
    assert await register(client, shield) == 200  # the last file written


@pytest.mark.slow
async def test_shield_run_reloads_on_sighup(upstream_url: str, tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "shield.yaml"
    head = (
        f"listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{free_port()} }}\nupstream: {upstream_url}\n"
    )
    rule = "rules:\n  - name: reg\n    match: {{ methods: [POST], paths: [/api/register] }}\n    action: {}\n"
    path.write_text(head + rule.format("allow"))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shield",
        "run",
        "-c",
        str(path),
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api/register"
    try:
        async with aiohttp.ClientSession() as session:

            async def status() -> int | None:
                try:
                    async with session.post(url) as response:
                        return response.status
                except aiohttp.ClientConnectionError:
                    return None

            deadline = time.monotonic() + 15
            while (first := await status()) is None:
                assert process.returncode is None, "shield run exited"
                assert time.monotonic() < deadline, "shield run did not start listening"
                await asyncio.sleep(0.1)
            assert first == 200

            # Same size, same mtime, same inode: only SIGHUP can make Shield read it again.
            stat = path.stat()
            with path.open("r+") as file:
                file.write(head + rule.format("close"))
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            assert path.stat().st_size == stat.st_size
            await asyncio.sleep(1.5)  # a watcher tick passes: nothing changed as far as it can tell
            assert await status() == 200

            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while await status() != 503:
                assert time.monotonic() < deadline, "SIGHUP did not reload the rules"
                await asyncio.sleep(0.05)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
    assert process.returncode == 0


# -- every section: live, or named as waiting for a restart ---------------------------------------


def test_every_section_of_the_file_is_either_live_or_restart_only() -> None:
    sections = set(ShieldConfig.model_fields) - set(IGNORED)
    assert not LIVE.keys() & RESTART.keys()
    assert sections == LIVE.keys() | RESTART.keys()
    for section, _ in RESTART_PARTS:
        assert section in LIVE  # a part of a live section that waits for a restart


def test_the_readme_table_says_what_the_code_does() -> None:
    readme = (REPO / "README.md").read_text()
    for section in LIVE:
        assert re.search(rf"^ *\| `{section}` \| live \|", readme, re.M), section
    for section in RESTART:
        assert re.search(rf"^ *\| `{section}` \| restart \|", readme, re.M), section


CHALLENGED = """\
challenge: {{ difficulty: {bits} }}
rules:
  - name: signup
    match: {{ paths: ["/signup/**"] }}
    action: challenge
"""


async def puzzle_bits(client: aiohttp.ClientSession, shield: Shield) -> tuple[int, dict[str, str]]:
    async with client.get(url_of(shield, "/signup/"), headers={"Accept": "text/html"}) as page:
        assert page.status == 429
        text = await page.text()
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', text))
    shown = re.search(r"const difficulty = (\d+);", text)
    assert shown is not None
    return int(shown.group(1)), fields


async def test_a_reloaded_challenge_difficulty_applies_and_passes_given_stay_valid(
    start: StartShield,
) -> None:
    shield, files = await start(CHALLENGED.format(bits=4))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        bits, fields = await puzzle_bits(client, shield)
        assert bits == 4
        fields["counter"] = solve(fields["token"], 4)
        async with client.post(url_of(shield, "/.shield/challenge"), data=fields, allow_redirects=False) as r:
            assert r.status == 303

        files.write(CHALLENGED.format(bits=6))
        assert shield.reload() is True
        async with client.get(url_of(shield, "/signup/")) as passed:
            assert passed.status == 200  # the pass earned before the reload still lets it in
    async with aiohttp.ClientSession() as stranger:
        assert (await puzzle_bits(stranger, shield))[0] == 6  # a new visitor gets the new puzzle


PER_CLIENT = """\
clients: {{ trusted_proxies: [{trusted}] }}
rules:
  - name: api
    match: {{ paths: ["/api/**"] }}
    action: throttle
    key: ip
    limit: 1/minute
"""


async def test_reloaded_trusted_proxies_tell_clients_apart(
    start: StartShield, client: aiohttp.ClientSession
) -> None:
    shield, files = await start(PER_CLIENT.format(trusted=""))

    async def api(client_ip: str) -> int:
        headers = {"X-Forwarded-For": client_ip}
        async with client.get(url_of(shield, "/api/x"), headers=headers) as response:
            return response.status

    # Not trusted: the header is ignored and both requests are the loopback peer's.
    assert [await api("198.51.100.1"), await api("198.51.100.2")] == [200, 429]
    files.write(PER_CLIENT.format(trusted="127.0.0.1/32"))
    assert shield.reload() is True
    assert [await api("198.51.100.3"), await api("198.51.100.4"), await api("198.51.100.3")] == [
        200,
        200,
        429,
    ]


BANNING = """\
bans: {{ after: {after}, within: 1m, duration: 10m, answer: {answer} }}
rules:
  - name: internal
    match: {{ paths: ["/internal/**"] }}
    action: block
"""


async def test_reloaded_ban_thresholds_apply_to_violations_already_counted(
    start: StartShield, client: aiohttp.ClientSession
) -> None:
    shield, files = await start(BANNING.format(after=10, answer=403))

    async def status(path: str) -> int:
        async with client.get(url_of(shield, path)) as response:
            return response.status

    assert [await status("/internal/x") for _ in range(3)] == [403, 403, 403]
    assert await status("/") == 200  # three of ten: not banned
    files.write(BANNING.format(after=4, answer=429))
    assert shield.reload() is True
    assert await status("/internal/x") == 403  # the fourth violation earns the ban...
    assert await status("/") == 429  # ...answered as the reloaded file says


RESTART_HEAD_CHANGE = ("timeouts: { client_header: 7s }\nworkers: 2\n", ["timeouts.client_header", "workers"])


async def test_restart_only_changes_are_named_in_the_log_the_gauge_and_check(
    start: StartShield,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shield, files = await start(CLOSED)
    admin = f"http://127.0.0.1:{shield.admin_port}"
    assert (await metrics(client, shield))["shield_config_restart_pending"] == 0

    change, named = RESTART_HEAD_CHANGE
    files.path.write_text(files.head + change + OPEN)
    assert await asyncio.to_thread(main, ["check", "-c", str(files.path), "--running", admin]) == 0
    said = capsys.readouterr().out
    assert f"takes these on restart only: {', '.join(named)}" in said

    assert shield.reload() is True
    assert await register(client, shield) == 200  # the live part (the rules) is in force
    assert f"take effect on restart only (shield_config_restart_pending): {', '.join(named)}" in caplog.text
    assert (await metrics(client, shield))["shield_config_restart_pending"] == 1
    async with client.get(f"{admin}/config") as report:
        assert (await report.json())["restart_pending"] == named

    # Put back as the process started: nothing waits any more.
    files.write(OPEN)
    assert shield.reload() is True
    assert (await metrics(client, shield))["shield_config_restart_pending"] == 0
    assert await asyncio.to_thread(main, ["check", "-c", str(files.path), "--running", admin]) == 0
    assert "reloads every change in this file live" in capsys.readouterr().out


def test_check_running_says_when_what_answers_is_not_a_shield(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class NotShield(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotShield)
    threading.Thread(target=server.handle_request, daemon=True).start()
    path = tmp_path / "shield.yaml"
    path.write_text("upstream: http://127.0.0.1:9\n")
    admin = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert main(["check", "-c", str(path), "--running", admin]) == 2
    finally:
        server.server_close()
    said = capsys.readouterr().err
    assert f"cannot compare with the running Shield: {admin}/config is not its report" in said


def test_check_running_says_when_no_shield_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "shield.yaml"
    path.write_text("upstream: http://127.0.0.1:9\n")
    assert main(["check", "-c", str(path), "--running", f"http://127.0.0.1:{free_port()}"]) == 2
    assert (
        "cannot compare with the running Shield: cannot reach the admin listener" in capsys.readouterr().err
    )


AUTHENTICATED_ONLY = """\
auth:
  jwt: {{ keys: [{{ algorithms: [HS256], secret_env: {secret_env} }}] }}
status_page: {{ enabled: {status} }}
rules:
  - name: registration-closed
    public_name: Registration
    match: {{ paths: [/api/register] }}
    for: anonymous
    action: close
"""


async def test_reloaded_auth_keys_and_status_page_apply(
    start: StartShield, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_A", "a-test-secret-" * 4)
    monkeypatch.setenv("SECRET_B", "b-test-secret-" * 4)
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, "a-test-secret-" * 4, "HS256")
    shield, files = await start(AUTHENTICATED_ONLY.format(secret_env="SECRET_A", status="false"))

    async def as_alice() -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with client.post(url_of(shield, "/api/register"), headers=headers) as response:
            return response.status

    async def status_page() -> str:
        async with client.get(url_of(shield, "/status")) as response:
            return await response.text()

    assert await as_alice() == 200  # proven by key A: walks past the closure
    assert "Service status" not in await status_page()  # the upstream's /status
    files.write(AUTHENTICATED_ONLY.format(secret_env="SECRET_B", status="true"))
    assert shield.reload() is True
    assert await as_alice() == 503  # key A no longer proves anything: anonymous, closed
    assert "Registration" in await status_page()  # Shield's own page, listing the closure

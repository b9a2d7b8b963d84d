"""The command line: ``shield check`` on good and bad files, ``shield demo``, ``--version``.

Each ``tests/configs/bad/NAME.yaml`` has ``NAME.expected`` beside it holding the exact lines
``shield check`` must print on stderr; adding a case means adding those two files.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from shield import __version__, build
from shield.cli import main
from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "tests" / "configs"
BAD = sorted(CONFIGS.glob("bad/*.yaml"))
GOOD = sorted(CONFIGS.glob("good/*.yaml"))
ISSUE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def expected_lines(path: Path) -> list[str]:
    return path.with_suffix(".expected").read_text().splitlines()


@pytest.fixture(autouse=True)
def _from_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


def test_every_kind_of_config_error_has_a_case() -> None:
    assert {p.stem for p in BAD} >= {
        "bad_yaml",
        "unknown_key",
        "bad_duration",
        "missing_upstream",
        "duplicate_keys",
        "several_at_once",
    }
    assert all(path.with_suffix(".expected").exists() for path in BAD)
    assert GOOD


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_check_reports_every_error_of_a_bad_file_at_its_line(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "-c", relative(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == expected_lines(path)
    for line in err.splitlines():
        issue = ISSUE.match(line)
        assert issue is not None, line
        assert issue["file"] == relative(path)
        source = path.read_text().splitlines()
        assert 1 <= int(issue["line"]) <= len(source)
        assert 1 <= int(issue["col"]) <= len(source[int(issue["line"]) - 1]) + 1


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_check_accepts_a_good_file_in_one_line(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", relative(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert len(out.splitlines()) == 1
    assert out.startswith(f"{relative(path)}: ok: ")


def test_the_messages_say_what_to_fix() -> None:
    # Spot checks of the expected files, so a regenerated file cannot hide a regression.
    lines = {line for path in BAD for line in expected_lines(path)}
    assert (
        "tests/configs/bad/unknown_key.yaml:3:3: timeouts.conect: unknown key (did you mean 'connect'?)"
        in lines
    )
    assert "tests/configs/bad/missing_upstream.yaml:1:1: upstream: required key is missing" in lines
    assert "tests/configs/bad/duplicate_keys.yaml:5:3: duplicate key 'connect'" in lines
    assert "tests/configs/bad/duplicate_keys.yaml:6:1: duplicate key 'listen'" in lines
    assert any(
        line.startswith("tests/configs/bad/bad_yaml.yaml:4:") and "invalid YAML" in line for line in lines
    )
    assert any("timeouts.shutdown_grace: invalid duration 'soon'" in line for line in lines)
    assert len(expected_lines(CONFIGS / "bad" / "several_at_once.yaml")) >= 6


def test_check_as_a_command_exits_1_with_errors_on_stderr() -> None:
    path = CONFIGS / "bad" / "several_at_once.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "shield", "check", "-c", relative(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == expected_lines(path)


def test_check_as_a_command_exits_0_with_a_summary() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shield", "check", "-c", "tests/configs/good/minimal.yaml"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    assert result.stdout == (
        "tests/configs/good/minimal.yaml: ok: 0 rules, listen 0.0.0.0:8080 -> http://127.0.0.1:8000, "
        "admin 127.0.0.1:9090, 1 worker(s)\n"
    )


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shield", "--version"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"shield {__version__} ({build()})"


async def test_demo_serves_the_sample_app_behind_shield(tmp_path: Path) -> None:
    port, admin_port, upstream_port = free_port(), free_port(), free_port()
    demo = (REPO / "config" / "demo.yaml").read_text()
    assert "listen: 127.0.0.1:8080" in demo and "listen: 127.0.0.1:9090" in demo
    config = tmp_path / "demo.yaml"
    config.write_text(
        demo.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace(
            "127.0.0.1:9090", f"127.0.0.1:{admin_port}"
        )
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shield",
        "demo",
        "-c",
        str(config),
        "--upstream-port",
        str(upstream_port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    public = f"http://127.0.0.1:{port}"
    try:
        assert process.stdout is not None
        printed: list[str] = []
        async with asyncio.timeout(15):
            while not printed or printed[-1] != "Stop with Ctrl-C.":
                line = await process.stdout.readline()
                assert line, "demo exited early:\n" + "\n".join(printed)
                printed.append(line.decode().strip())
        assert f"curl -i {public}/api/data" in printed
        assert f"curl -i -X POST {public}/api/login -H 'Content-Type: application/json' \\" in printed
        assert f"curl -s http://127.0.0.1:{admin_port}/metrics | grep ^shield_" in printed

        async with aiohttp.ClientSession() as client:
            async with client.get(f"{public}/api/data") as response:
                assert response.status == 200
                assert response.content_type == "application/json"
                assert len((await response.json())["items"]) == 3
            login = {"username": "alice", "password": "wonderland"}
            async with client.post(f"{public}/api/login", json=login) as response:
                assert response.status == 200
                assert (await response.json())["user"] == "alice"
            wrong = {"username": "alice", "password": "looking-glass"}
            async with client.post(f"{public}/api/login", json=wrong) as response:
                assert response.status == 401
            # The demo's first rule closes registration, as during an attack.
            async with client.post(f"{public}/api/register", json=login) as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "600"
            # The tour: the status page lists that closure, the sign-up page is challenged, and
            # the ctl API answers the token the demo printed.
            async with client.get(f"{public}/status") as response:
                assert response.status == 200
                assert "Registration may be busy" in await response.text()
            async with client.get(f"{public}/signup") as response:
                assert response.status == 429  # a script gets the proof-of-work page
                assert "text/html" in response.headers["Content-Type"]
            token = next(
                line.split("=", 1)[1] for line in printed if line.startswith("export SHIELD_CTL_TOKEN=")
            )
            admin = f"http://127.0.0.1:{admin_port}"
            assert f"shield ctl --admin {admin} status" in printed
            async with client.get(
                f"{admin}/ctl/status", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                assert response.status == 200
            async with client.get(
                f"{admin}/ctl/status", headers={"Authorization": "Bearer wrong"}
            ) as response:
                assert response.status == 401

        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

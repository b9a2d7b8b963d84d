"""`shield check` on rule files: every problem reported at once, as FILE:LINE:COL: message.

Each ``tests/rule_configs/bad/NAME.yaml`` has ``NAME.expected`` beside it with the exact lines
`shield check` must print; a good file may have one holding its warnings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shield.cli import main

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "tests" / "rule_configs"
BAD = sorted(CONFIGS.glob("bad/*.yaml"))
GOOD = sorted(CONFIGS.glob("good/*.yaml"))
EXAMPLES = sorted((REPO / "config").glob("*.yaml"))


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def expected_lines(path: Path) -> list[str]:
    expected = path.with_suffix(".expected")
    return expected.read_text().splitlines() if expected.exists() else []


@pytest.fixture(autouse=True)
def _from_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


def test_the_folders_cover_every_error_kind() -> None:
    names = {path.stem for path in BAD}
    assert {
        "bad_yaml",
        "unknown_key",
        "unknown_action",
        "bad_limit",
        "limit_on_block",
        "bad_regex",
        "bad_cidr",
        "duplicate_names",
    } <= names
    assert all(path.with_suffix(".expected").exists() for path in BAD)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_config(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", relative(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == expected_lines(path)


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_config(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", relative(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{relative(path)}: ok: ")
    assert err.splitlines() == expected_lines(path)


def test_messages_a_user_needs() -> None:
    # Spot checks of the expected files themselves, so a regenerated file cannot hide a regression.
    text = "\n".join(line for path in BAD for line in expected_lines(path))
    assert "rules[1] 'registration-closed'.acton: unknown key (did you mean 'action'?)" in text
    assert "rules[2] 'login'.match.method: unknown key (did you mean 'methods'?)" in text
    assert "invalid limit '10/fortnight'" in text
    assert "'limit' only applies to action: throttle" in text
    assert "invalid regex 'python-(requests'" in text
    assert "invalid CIDR '10.0.0.0/33'" in text
    assert "duplicate rule name 'api' (also rules[1] 'api')" in text
    assert "invalid YAML" in text
    assert "rules[1] 'registration-closed'.action: 'shut' is not one of allow, block, close" in text
    assert (
        "rules[1] 'scrapers'.action: 'blok' is not one of allow, block, close, throttle, challenge, queue"
        in text
    )
    assert (
        "'blok' is not one of allow, block, close, throttle, challenge, queue (did you mean 'block'?)" in text
    )
    warnings = expected_lines(CONFIGS / "good" / "shadowed.yaml")
    assert [w.split(": ", 1)[1].split(":")[0] for w in warnings] == ["warning"] * 4
    assert "rules[2] 'login' can never match: rules[1] 'api' comes first" in warnings[0]
    assert "rules[6] 'too-late' can never match: rules[5] 'everything' comes first" in warnings[3]
    partly = expected_lines(CONFIGS / "good" / "partly_shadowed.yaml")
    assert len(partly) == 3  # nothing about 'api' below 'login', or 'bots' and 'no-trace' across routes
    assert "rules[2] 'login': POST /api/login now goes to rules[1] 'login-failures', not 'login'" in partly[0]
    assert "rules[7] 'archives': /files/a* matching /files/*.png (any method) now goes to" in partly[1]
    assert "rules[8] 'signup' closes, and the status page would show it by its rule name" in partly[2]


def test_every_problem_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", "tests/rule_configs/bad/every_problem_at_once.yaml"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 6
    assert [line.split(":")[1] for line in lines] == sorted((line.split(":")[1] for line in lines), key=int)


def test_check_as_a_real_command() -> None:
    bad = CONFIGS / "bad" / "unknown_key.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "shield", "check", "-c", relative(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == expected_lines(bad)

    good = CONFIGS / "good" / "shadowed.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "shield", "check", "--config", relative(good)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("tests/rule_configs/good/shadowed.yaml: ok: 6 rules")
    assert result.stderr.splitlines() == expected_lines(good)


def test_a_missing_file_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", "tests/rule_configs/nope.yaml"]) == 1
    assert capsys.readouterr().err.startswith("tests/rule_configs/nope.yaml:1:1: cannot read config")


def test_schema_matches_the_committed_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    committed = (REPO / "config" / "shield.schema.json").read_text()
    assert json.loads(printed) == json.loads(committed)
    assert printed.strip() == committed.strip()


def test_schema_describes_rules() -> None:
    schema = json.loads((REPO / "config" / "shield.schema.json").read_text())
    rule = schema["$defs"]["Rule"]
    assert rule["additionalProperties"] is False
    assert set(rule["properties"]) >= {
        "name",
        "match",
        "for",
        "action",
        "mode",
        "limit",
        "burst",
        "key",
        "count",
    }
    assert rule["properties"]["action"]["enum"] == [
        "allow",
        "block",
        "close",
        "throttle",
        "challenge",
        "queue",
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_stay_valid(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", relative(path)]) == 0
    out, err = capsys.readouterr()
    assert "ok:" in out
    assert err == ""  # no warnings either
    assert path.read_text().startswith("# yaml-language-server: $schema=./shield.schema.json")


def test_example_configs_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"shield.yaml", "demo.yaml"}

"""The fuzz corpus (tests/fuzz/corpus) replayed through both fuzz targets, every invariant checked.

One test per corpus file, named after it: ``bugN-...`` seeds reproduce the audit's bug N, and
``findingN-...`` seeds a bug the fuzzer found (``AUDITED`` and ``OPEN`` in tests/fuzz/harness.py
say which invariant each broke); the others are ordinary traffic and smuggling attempts Shield
must refuse or forward faithfully. A finding of the fuzzer becomes a file here (README.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is installed on Linux with Python < 3.13 only")

from tests.fuzz import fuzz_request, fuzz_response, harness

CORPUS = Path(__file__).parent / "fuzz" / "corpus"


@pytest.fixture(scope="module", autouse=True)
def _fuzz_loop() -> Iterator[None]:
    """The targets share one event loop, as when fuzzing; closed after the last replay."""
    yield
    harness.close_loop()


def _seeds(target: str) -> list[Path]:
    return sorted(path for path in (CORPUS / target).iterdir() if path.is_file())


def _replay(one_input: Callable[[bytes], None], seed: Path) -> None:
    one_input(seed.read_bytes())


@pytest.mark.parametrize("seed", _seeds("request"), ids=lambda path: path.name)
def test_request_seed(seed: Path) -> None:
    _replay(fuzz_request.one_input, seed)


@pytest.mark.parametrize("seed", _seeds("response"), ids=lambda path: path.name)
def test_response_seed(seed: Path) -> None:
    _replay(fuzz_response.one_input, seed)


def test_every_known_bug_has_a_seed() -> None:
    bugs = {label.split(":")[0] for label in (*harness.AUDITED.values(), *harness.OPEN.values())}
    seeded = {path.name.split("-")[0] for path in CORPUS.glob("*/*")}
    assert bugs <= seeded

"""The benchmark's null server (bench/null_server.py) trains real OpenFL 1.7.1 collaborators, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.openfl_cases import Case, run_case
from bench.servers import openfl_python
from fedagg.pki import write_federation_pki
from tests.conftest import require


@pytest.mark.slow
@pytest.mark.interop
def test_the_null_server_serves_openfl_rounds_over_mtls(tmp_path: Path) -> None:
    python = openfl_python()
    require(python is not None, "the OpenFL 1.7.1 venv is missing and cannot be built")
    assert python is not None
    case = Case("null-smoke", 10_000, 2, rounds=2)
    write_federation_pki(tmp_path / "pki", case.names, ["localhost", "127.0.0.1"])

    result = run_case("null", case, tmp_path, tmp_path / "pki", python)

    assert result.server == "null"
    assert (
        len(result.round_seconds) == case.rounds
    )  # every round ended: each collaborator uploaded every task
    assert result.cpu_seconds >= 0

"""``python -m bench --quick`` runs end to end and its numbers are sane (no timing is asserted)."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.bench import run_quick

ROOT = Path(__file__).resolve().parents[2]


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


@pytest.mark.slow
def test_the_quick_benchmark_runs_and_reports_sane_numbers(tmp_path: Path) -> None:
    venv = subprocess.run(
        ["bash", str(ROOT / "scripts" / "openfl-venv")],
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    require(
        venv.returncode == 0, f"the OpenFL 1.7.1 venv is missing and cannot be built: {venv.stderr[-500:]}"
    )

    text, data = run_quick("bench", tmp_path, timeout=600)  # a loaded machine is slow, never a failure

    assert data["skipped"] == []
    for server in ("fedagg", "null", "openfl"):
        runs = data["cases"]["a"][server]
        assert runs, server
        for run in runs:
            assert run["round_seconds"], server
            assert all(positive(seconds) for seconds in run["round_seconds"]), run
            assert 50 < run["peak_hwm_mib"] < 4096, run  # a Python server holding a 4 MB model
            assert run["peak_hwm_mib"] >= max(run["peak_anon_mib"], run["peak_file_mib"]), run
            assert run["cpu_seconds"] >= 0, run
    assert {"plaintext, 1 stream", "mTLS, 1 stream"} <= data["raw"].keys()
    assert all(positive(raw["bytes_per_second"]) for raw in data["raw"].values())
    assert data["wire"], "fedagg's client-library throughput"
    assert all(positive(run["bytes_per_second"]) for run in data["wire"])
    assert all(positive(run["steady_bytes_per_second"]) for run in data["wire"]), "from round 2 on"
    assert all(positive(run["client_peak_hwm_mib"]) for run in data["wire"])
    [large] = data["large"]
    assert large["collaborators"] == 2
    assert all(positive(seconds) for seconds in large["round_seconds"]), large
    assert positive(large["peak_hwm_mib"]), large
    assert positive(large["client_peak_hwm_mib"]), large
    assert [result["collaborators"] for result in data["scale"]["fedagg"]] == [2, 8]
    assert all(positive(result["peak_hwm_mib"]) for result in data["scale"]["fedagg"])
    assert {"fedagg", "openfl"} <= data["polls"].keys()
    assert all(positive(poll["calls_per_second"]) for poll in data["polls"].values())
    assert text.startswith("Benchmark of "), text[:200]
    assert "| fedagg / null round time |" in text
    for heading in ("### 1.", "### 2.", "### 3.", "### 5."):
        assert heading in text
    assert not re.search(r"\bnan\b", text, re.IGNORECASE), "a measurement is missing"

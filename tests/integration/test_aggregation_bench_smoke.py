"""``python -m bench.aggregation --quick`` runs end to end and its numbers are sane (no timing is asserted)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests.support.bench import run_quick


@pytest.mark.slow
def test_the_quick_aggregation_benchmark_runs_and_reports_sane_numbers(tmp_path: Path) -> None:
    text, data = run_quick("bench.aggregation", tmp_path, timeout=110)

    assert data["failed"] == {}
    assert [run["label"] for run in data["methods"]] == ["weighted_average", "bulyan", "adam"]
    for run in data["methods"]:
        assert 50 < run["peak_hwm_mib"] < run["bound_mib"], run  # a Python server aggregating a 1 MiB model
        assert run["peak_hwm_mib"] >= max(run["peak_anon_mib"], run["peak_file_mib"]), run
        assert len(run["rounds_memory"]) == len(run["aggregation_seconds"]) == run["rounds"], run
        for phase in run["rounds_memory"]:
            assert phase["end_seconds"] > 0, run
            assert 0 < phase["end_peak_rss_mib"] <= run["peak_hwm_mib"] + 1, run
            assert math.isfinite(phase["transfer_peak_rss_mib"]), run
        assert run["within_bound"] is True
    assert text.startswith("Run of "), text[:200]
    assert text.count("\n| ") == 1 + 3, text  # the header and one row per method
    assert "`aggregation: bulyan, aggregation_settings: {malicious: 3}`" in text
    assert not re.search(r"\bnan\b", text, re.IGNORECASE), "a measurement is missing"

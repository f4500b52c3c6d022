"""Fixtures of the deploy tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import require
from tests.deploy import chart
from tests.deploy.chart import ROOT


@pytest.fixture
def helm_sdk() -> None:
    """Skip (fail in CI) a chart test without the Helm SDK: chart modules use it with ``pytest.mark.usefixtures``."""
    chart.require_helm_sdk()


@pytest.fixture(scope="session")
def image() -> str:
    """Build the image (once per session; unchanged sources reuse every layer) and return its name."""
    require(os.geteuid() == 0, "the container tests need root (rootful podman)")
    tools = subprocess.run(
        ["bash", str(ROOT / "scripts/install-container-tools")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    require(
        tools.returncode == 0 and shutil.which("podman") is not None,
        f"podman unavailable: {tools.stderr[-500:]}",
    )
    build = subprocess.run(
        ["bash", str(ROOT / "scripts/build-image")],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert build.returncode == 0, build.stderr[-4000:]
    return build.stdout.strip().splitlines()[-1]

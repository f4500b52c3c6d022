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


def _script(name: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """scripts/``name`` run with bash, its output captured; the caller checks the exit code."""
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / name)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


@pytest.fixture(scope="session")
def image() -> str:
    """Build the image (once per session; unchanged sources reuse every layer) and return its name."""
    require(os.geteuid() == 0, "the container tests need root (rootful podman)")
    tools = _script("install-container-tools", timeout=900)
    require(
        tools.returncode == 0 and shutil.which("podman") is not None,
        f"podman unavailable: {tools.stderr[-500:]}",
    )
    build = _script("build-image", timeout=1200, env={**os.environ, "PYTHON": sys.executable})
    assert build.returncode == 0, build.stderr[-4000:]
    return build.stdout.strip().splitlines()[-1]

"""Fixtures of the fault-injection suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.openfl import openfl_python


@pytest.fixture(scope="session")
def openfl() -> Path:
    """The OpenFL 1.7.1 venv's python (built on first use; skipped locally, a failure in CI, when it cannot be)."""
    return openfl_python()


@pytest.fixture(scope="session")
def openfl_19() -> Path:
    """The OpenFL 1.9 venv's python (likewise)."""
    return openfl_python("1.9")

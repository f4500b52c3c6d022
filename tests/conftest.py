"""Shared fixtures: a real PKI and tool discovery that skips locally but fails under CI=true."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pki import Pki, make_pki

COLLABORATORS = ("one", "two", "three")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip the test when ``condition`` is false, unless running in CI, where that is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA, server certificate for localhost, and certificates for the collaborators, an observer and a rogue."""
    return make_pki(tmp_path_factory.mktemp("pki"), (*COLLABORATORS, "observer", "rogue"))


@pytest.fixture(scope="session")
def openfl() -> Path:
    """The OpenFL 1.7.1 venv's python (built on first use; skipped locally, a failure in CI, when it cannot be)."""
    from tests.interop.openfl import openfl_python  # noqa: PLC0415 (it imports this module's require)

    return openfl_python()


@pytest.fixture(scope="session")
def openfl_19() -> Path:
    """The OpenFL 1.9 venv's python (likewise)."""
    from tests.interop.openfl import openfl_python  # noqa: PLC0415 (it imports this module's require)

    return openfl_python("1.9")


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """An unrelated CA whose certificates the aggregator must refuse."""
    return make_pki(tmp_path_factory.mktemp("other-pki"), COLLABORATORS)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(autouse=True)
def isolated_logging() -> Iterator[None]:
    """Commands run in-process (``fedagg.cli.main``) configure the root logger for a whole process: put pytest's
    handlers and level back after each test, so the next test's ``caplog`` sees its records."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)

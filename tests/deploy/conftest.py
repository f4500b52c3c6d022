"""Fixtures of the deploy tests."""

from __future__ import annotations

import pytest

from tests.deploy import chart


@pytest.fixture
def helm_sdk() -> None:
    """Skip (fail in CI) a chart test without the Helm SDK: chart modules use it with ``pytest.mark.usefixtures``."""
    chart.require_helm_sdk()

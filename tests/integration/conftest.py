"""Fixtures of the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cli import fedagg


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PKI made by ``fedagg certs`` (collaborators site-a and site-b, observer dashboard), once per module."""
    out = tmp_path_factory.mktemp("cli") / "pki"
    fedagg(
        "certs",
        "--out",
        str(out),
        "--collaborators",
        "site-a,site-b",
        "--observers",
        "dashboard",
        "--hosts",
        "localhost,127.0.0.1,fedagg.example.org",
    )
    return out

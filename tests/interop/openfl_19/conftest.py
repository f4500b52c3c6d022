"""The OpenFL 1.9 venv, ``fedagg certs``' OpenFL layout and a workspace fx made: once for the package's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ports import free_port
from fedagg.pki.federation import write_federation_pki
from tests.interop.fx_workspace import (
    FxWorkspace,
    make_fx_workspace,
)
from tests.interop.openfl import openfl_python
from tests.interop.openfl_19.side_by_side import ONE, TWO


@pytest.fixture(scope="package")
def python() -> Path:
    return openfl_python("1.9")


@pytest.fixture(scope="package")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fedagg certs``' OpenFL layout (cert_chain.crt, server/agg_localhost.*, client/col_<name>.*)."""
    pki = write_federation_pki(
        tmp_path_factory.mktemp("pki"), ["one", "two", "three", "mallory"], ["localhost"]
    )
    return pki.openfl_cert_dir


@pytest.fixture(scope="package")
def template(python: Path, certs: Path, tmp_path_factory: pytest.TempPathFactory) -> FxWorkspace:
    """A workspace fx made (create + initialize) that the tests copy and adapt (``copy_fx_workspace``);
    nothing ever runs in it. The first test builds its own, from scratch."""
    return make_fx_workspace(
        python, tmp_path_factory.mktemp("fx") / "template", (ONE, TWO), None, free_port(), certs
    )

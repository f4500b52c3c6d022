"""Call reference implementations from tests: Flower, OpenFL and dp-accounting, each from its own venv.

This module builds the venvs and runs the side scripts; the oracles themselves are in flower_oracle.py,
openfl_oracle.py and dp_accounting_oracle.py.

Each wrapper writes its inputs to a temporary directory, runs a script of ``flower_side/``,
``openfl_side/`` or ``dp_side/`` with the python of that oracle's venv in a separate process, and reads
the outputs back. fedagg's test process never imports flwr, openfl or dp_accounting. The venvs are built
on first use and cached, pinned by frozen constraint files: ``.venv-flower/`` and
``.venv-dp-accounting/`` by ``scripts/oracle-venv`` (``tests/oracles/*-constraints.txt``),
``.venv-openfl[-VERSION]/`` by ``scripts/openfl-venv``. A venv that cannot be built skips the test
locally and fails it under ``CI=true`` (``tests.conftest.require``).

Conventions: a model or a client's contribution is a sequence of numpy arrays ("layers"), float32
normally; arrays are passed with their dtype and shape unchanged, and results come back as the oracle
computed them (its dtype). What each oracle computes, with file:line references into the installed
packages, is in the docstring of its side script (flower_side/aggregate.py, openfl_side/aggregate.py,
dp_side/accountant.py). An oracle that fails (e.g. Flower's ValueError for Bulyan with too few clients)
raises ``OracleError`` carrying the script's stderr.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
Layers = Sequence[np.ndarray]
"""A model or one client's contribution: its arrays in order."""


class OracleError(RuntimeError):
    """The oracle's script failed; the message ends with its stderr."""


# ---- venvs ------------------------------------------------------------------------------------------------


def _venv_python(command: list[str], what: str) -> Path:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
    require(result.returncode == 0, f"cannot build the {what} venv: {result.stderr[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@functools.cache
def flower_python() -> Path:
    """The python of ``.venv-flower/`` (flwr 1.42.0), built on first use."""
    return _venv_python(["bash", str(ROOT / "scripts" / "oracle-venv"), "flower"], "Flower")


@functools.cache
def dp_accounting_python() -> Path:
    """The python of ``.venv-dp-accounting/`` (dp-accounting 0.6.0), built on first use."""
    return _venv_python(["bash", str(ROOT / "scripts" / "oracle-venv"), "dp-accounting"], "dp-accounting")


@functools.cache
def openfl_python(version: str = "1.7.1") -> Path:
    """The python of OpenFL ``version``'s venv (``scripts/openfl-venv VERSION``: 1.7.1, and 1.9 where the
    script knows it), built on first use."""
    return _venv_python(["bash", str(ROOT / "scripts" / "openfl-venv"), version], f"OpenFL {version}")


def clean_env() -> dict[str, str]:
    """Environment without this venv's paths, so an oracle never sees fedagg's packages."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run_script(python: Path, script: Path, *args: str, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(python), str(script), *args],
        capture_output=True,
        text=True,
        check=False,
        env=clean_env(),
        timeout=timeout,
    )
    if result.returncode != 0:
        raise OracleError(f"{script.name} exited with {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout


def run_in_workdir(
    python: Path, script: Path, config: dict[str, Any], arrays: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run ``script WORKDIR`` on config.json + input.npz; return output.npz and report.json."""
    with tempfile.TemporaryDirectory(prefix="oracle-") as tmp:
        work = Path(tmp)
        (work / "config.json").write_text(json.dumps(config))
        np.savez(work / "input.npz", **arrays)
        run_script(python, script, str(work))
        with np.load(work / "output.npz") as output:
            out = {key: output[key] for key in output.files}
        report: dict[str, Any] = json.loads((work / "report.json").read_text())
    return out, report

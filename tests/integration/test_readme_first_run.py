"""The README's first-run block works when pasted as it stands, on one machine.

The block between ``<!-- first-run:start -->`` and ``<!-- first-run:end -->`` in "Running an aggregator" runs
in ``bash -e`` in an empty directory, with ``fedagg`` on the PATH. Only the ports change: the federation port
50051 becomes a free port in the text, and the ops and metrics ports (defaults, not in the text) become
ephemeral through the documented environment overrides, so the test never collides with anything listening.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ports import free_port
from fedagg.protocol.model_file import read_model
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
pytestmark = pytest.mark.slow


def first_run_block() -> str:
    text = README.read_text()
    start = text.index("<!-- first-run:start -->")
    end = text.index("<!-- first-run:end -->", start)
    match = re.search(r"```sh\n(.*?)```", text[start:end], re.DOTALL)
    assert match, "the first-run markers must hold one ```sh block"
    return match[1]


def test_the_block_is_the_one_machine_variant() -> None:
    block = first_run_block()

    for step in (
        "fedagg certs",
        "fedagg model init --reference",
        "fedagg config check",
        "fedagg serve",
        "fedagg status",
        "fedagg collaborator",
        "localhost:50051",
    ):
        assert step in block
    assert "example.org" not in block


def test_the_readme_first_run_works_as_pasted(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    require(bash is not None, "bash is not installed")
    assert bash is not None
    binaries = Path(sys.executable).parent
    require((binaries / "fedagg").exists(), f"no fedagg console script next to {sys.executable}")
    port = free_port()
    script = first_run_block().replace("50051", str(port))
    environment = {key: value for key, value in os.environ.items() if not key.startswith("FEDAGG")}
    environment.update(
        PATH=f"{binaries}{os.pathsep}{environment.get('PATH', '')}",
        FEDAGG__OPS__PORT="0",
        FEDAGG__OPS__METRICS_PORT="0",
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        [bash, "-e", "-c", script],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the block starts background jobs: on a timeout, kill the whole group
    )
    try:
        output = process.communicate(timeout=240)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
        pytest.fail(f"the first-run block did not finish in 240 s:\n{output}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    log = (tmp_path / "aggregator.log").read_text() if (tmp_path / "aggregator.log").exists() else ""

    assert process.returncode == 0, output + log
    assert "every collaborator has its quit job: the experiment is complete" in log, output + log
    assert read_model(tmp_path / "state" / "last.pbuf").round_number == 3
    assert "OK: federation myfed_0123abcd" in output
    assert "experiment myfed_0123abcd: pending, round 0 of 3" in output
    assert "site-a: quit after 3 rounds" in output
    assert "site-b: quit after 3 rounds" in output
    assert "state/last.pbuf: round 3, 2 tensors" in output

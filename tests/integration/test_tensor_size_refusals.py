"""The commands refuse a tensor no gRPC message can carry, naming it and the limit, without a traceback.

``fedagg serve`` refuses such an initial model at start, before it listens; ``fedagg model init --reference``
refuses a shape that would make one before writing anything. The model file is sparse (its data is a hole) and
the reference model's zeros are never touched: nothing here uses 2 GiB of memory or disk.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.models import HUGE, SMALL, sparse_model
from tests.support.process import write_config

ROOT = Path(__file__).resolve().parents[2]
LIMIT = "2147483647 bytes per gRPC message"


def fedagg(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedagg.cli", *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )


def test_serve_refuses_an_initial_model_with_a_tensor_over_2_gib_before_listening(tmp_path: Path) -> None:
    model = sparse_model(tmp_path / "huge.pbuf", {"small": SMALL, "huge": HUGE})
    config = write_config(tmp_path, None, ("one", "two"), 1, model)

    result = fedagg("serve", "--config", str(config))

    assert result.returncode == 2, result.stderr
    assert "federation.initial_model" in result.stderr
    assert "tensor 'huge' (600000000 float32)" in result.stderr
    assert LIMIT in result.stderr
    assert "listening" not in result.stderr
    assert "Traceback" not in result.stderr


def test_model_init_refuses_a_reference_model_whose_weights_exceed_2_gib(tmp_path: Path) -> None:
    out = tmp_path / "init.pbuf"

    result = fedagg(
        "model", "init", "--reference", "--features", "300000000", "--classes", "2", "--out", str(out)
    )

    assert result.returncode != 0
    assert "tensor 'softmax/weights' (300000000x2 float32)" in result.stderr
    assert LIMIT in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()

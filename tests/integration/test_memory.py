"""Peak memory of a round does not grow with the number of contributions."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fedagg.federation.plan import TaskSpec, single_group_assigner
from fedagg.protocol.model_file import read_model
from tests.support.pki import Pki
from tests.support.servers import make_federation, make_plan, serving

ROOT = Path(__file__).resolve().parents[2]
MODEL_BYTES = 40 * 1024 * 1024
TENSORS = 4
ELEMENTS = MODEL_BYTES // 4 // TENSORS
CONTRIBUTORS = ("one", "two", "three", "rogue")


@pytest.mark.slow
def test_four_contributions_of_a_40_mb_model_stay_under_three_model_sizes(tmp_path: Path, pki: Pki) -> None:
    tasks = {"train": TaskSpec("train", "train_task")}
    plan = make_plan(CONTRIBUTORS, 1, tasks=tasks, assigner=single_group_assigner(tasks))
    model = {f"layer{index}": np.zeros(ELEMENTS, np.float32) for index in range(TENSORS)}
    federation = make_federation(tmp_path, plan, model)
    del model

    with serving(federation, pki) as thread:
        tracemalloc.start()
        try:
            workers = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.support.upload_worker",
                        thread.address,
                        name,
                        str(pki.root),
                        str(ELEMENTS),
                        str(TENSORS),
                    ],
                    cwd=ROOT,
                )
                for name in CONTRIBUTORS
            ]
            codes = [worker.wait(timeout=120) for worker in workers]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    assert codes == [0] * len(CONTRIBUTORS)
    assert federation.round_number == 1
    expected = np.mean([len(name) for name in CONTRIBUTORS])
    np.testing.assert_allclose(read_model(tmp_path / "last.pbuf").tensors["layer0"][:5], expected)
    assert peak < 3 * MODEL_BYTES, f"peak {peak / 2**20:.1f} MiB for a {MODEL_BYTES / 2**20:.0f} MiB model"

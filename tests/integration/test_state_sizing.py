"""The state directory of a real ``fedagg serve`` never outgrows the documented sizing rule (:mod:`fedagg.sizing`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from fedagg.config import load_config
from fedagg.federation.store import publish_model
from fedagg.sizing import Sizing, plan_sizing
from tests.support.process import FedaggProcess, write_config
from tests.support.training import train

ROUNDS = 3


def directory_bytes(root: Path) -> int:
    """The apparent size of every file under ``root``, skipping files deleted while it is walked."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                continue
    return total


class PeakSampler:
    """Samples a directory's size from a thread, as fast as the walk allows, and keeps the largest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, directory_bytes(self.root))
            self.samples += 1


@pytest.mark.parametrize("collaborators", [2, 4])
def test_the_state_directory_peaks_within_the_sizing_rule(tmp_path: Path, collaborators: int) -> None:
    names = tuple(f"site{index}" for index in range(collaborators))
    model = tmp_path / "init.pbuf"  # 1 MiB of weights, so the model-sized files dominate the small ones
    publish_model(model, {"w": np.zeros((512, 512), np.float32), "b": np.zeros(512, np.float32)}, 0)
    config = write_config(tmp_path, None, names, ROUNDS, model)
    rule = plan_sizing(load_config(config).plan(), model)
    state = tmp_path / "state"
    state.mkdir()

    with PeakSampler(state) as sampler, FedaggProcess(config) as process:
        train(process.wait_for_federation().address, None, dict.fromkeys(names, (1.0, 10)))
        assert process.wait() == 0, process.log()

    assert rule == Sizing(model.stat().st_size, 1 << 20, collaborators, 2, ROUNDS, 0)
    assert sampler.samples > 1
    # what a finished experiment keeps: the kept models, their deltas, best, last and the last round's uploads
    assert directory_bytes(state) >= (2 * 2 + 2 + collaborators) * rule.model_bytes
    assert sampler.peak <= rule.disk_bytes, (sampler.peak, rule)

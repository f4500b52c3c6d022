"""The state directory of a real ``fedagg serve`` never outgrows the documented sizing rule (:mod:`fedagg.sizing`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedagg.config.loading import load_config
from fedagg.federation.store import publish_model
from fedagg.sizing import Sizing, plan_sizing
from tests.support.process import FedaggProcess, write_config
from tests.support.servers import FEDERATION_UUID
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


def unlinked_bytes(pid: int, root: Path) -> int:
    """The size of the files under ``root`` that process ``pid`` holds open after deleting them (the fold's scratch
    file): disk the volume must have that no directory walk sees."""
    total = 0
    fds = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fds.iterdir())
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            target = os.readlink(entry)
            if target.startswith(str(root)) and target.endswith(" (deleted)"):
                total += os.stat(entry).st_size
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


class PeakSampler:
    """Samples what a state directory occupies from a thread, as fast as the walk allows, and keeps the largest:
    its files, and once :attr:`pid` is set, the deleted files that process still holds open there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pid = 0
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
            unlinked = unlinked_bytes(self.pid, self.root) if self.pid else 0
            self.peak = max(self.peak, directory_bytes(self.root) + unlinked)
            self.samples += 1


def tasks(aggregation: str) -> dict[str, Any]:
    """OpenFL's three default tasks, the train task aggregated by ``aggregation``."""
    validation = {"function": "validate_task", "kwargs": {"metrics": ["acc"]}}
    return {
        "aggregated_model_validation": validation,
        "train": {"function": "train_task", "kwargs": {"metrics": ["loss"]}, "aggregation": aggregation},
        "locally_tuned_model_validation": validation,
    }


@pytest.mark.parametrize(
    ("collaborators", "aggregation", "slots"),
    [(2, "weighted_average", 0), (4, "weighted_average", 0), (2, "adam", 2)],
)
def test_the_state_directory_peaks_within_the_sizing_rule(
    tmp_path: Path, collaborators: int, aggregation: str, slots: int
) -> None:
    """adam keeps two model-sized moments per kept round: the optimizer-state extras of the rule."""
    names = tuple(f"site{index}" for index in range(collaborators))
    model = tmp_path / "init.pbuf"  # 1 MiB of weights, so the model-sized files dominate the small ones
    publish_model(model, {"w": np.zeros((512, 512), np.float32), "b": np.zeros(512, np.float32)}, 0)
    federation = {
        "federation_uuid": FEDERATION_UUID,
        "collaborators": list(names),
        "rounds_to_train": ROUNDS,
        "initial_model": str(model),
        "sleep_seconds": 1,
        "tasks": tasks(aggregation),
    }
    config = write_config(tmp_path, None, names, ROUNDS, model, federation=federation)
    rule = plan_sizing(load_config(config).plan(), model)
    state = tmp_path / "state"
    state.mkdir()

    with PeakSampler(state) as sampler, FedaggProcess(config) as process:
        sampler.pid = process.process.pid
        train(process.wait_for_federation().address, None, dict.fromkeys(names, (1.0, 10)))
        assert process.wait() == 0, process.log()

    folded = 1 if aggregation == "weighted_average" else 0  # the train task's sums, folded as uploads arrive
    assert rule == Sizing(model.stat().st_size, 1 << 20, collaborators, 2, ROUNDS, slots, folded)
    assert sampler.samples > 1
    # what a finished experiment keeps: the kept models, best, last, the last round's uploads and the optimizer's
    # moments of the kept rounds
    assert directory_bytes(state) >= (2 + 2 + collaborators + 2 * slots) * rule.model_bytes
    assert sampler.peak <= rule.disk_bytes, (sampler.peak, rule)

"""What the oracle records of OpenFL's run: each round's aggregated model and participants, and every upload."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from openfl.callbacks import Callback
from openfl.component.aggregator.aggregator import Aggregator
from openfl.utilities import TensorKey

logger = logging.getLogger("openfl_side.oracle")


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` without its keyword clashes (a tensor may be called ``file``)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


class RoundRecorder(Callback):
    """Saves the global model OpenFL computed at the end of each round (before TensorDB clean-up)."""

    def __init__(self, output: Path, tensor_names: list[str]) -> None:
        super().__init__()
        self.output = output
        self.tensor_names = tensor_names
        self.aggregator: Aggregator | None = None
        self.saved_rounds: list[int] = []
        self.participants: dict[str, dict[str, list[str]]] = {}
        self.errors: list[str] = []

    def on_round_end(self, round_num: int, logs: dict[str, Any] | None = None) -> None:
        # Must never raise: this runs inside OpenFL's SendLocalTaskResults handler.
        try:
            agg = self.aggregator
            assert agg is not None, "RoundRecorder.aggregator was not set"
            # Still this round's: OpenFL resets both lists after on_round_end.
            self.participants[str(round_num)] = {
                "done": sorted(agg.collaborators_done),
                "stragglers": sorted(agg.stragglers),
            }
            arrays = {}
            for name in self.tensor_names:
                key = TensorKey(name, agg.uuid, round_num + 1, False, ("model",))
                value = agg.tensor_db.get_tensor_from_cache(key)
                if value is None:
                    raise LookupError(f"no aggregated model tensor {key}")
                arrays[name] = np.asarray(value, dtype=np.float32)
            save_npz(self.output / f"round-{round_num}.npz", arrays)
            self.saved_rounds.append(round_num)
            logger.info("round %d: saved aggregated model; metrics %s", round_num, logs)
        except Exception as exc:
            logger.exception("round %d: could not record the aggregated model", round_num)
            self.errors.append(f"round {round_num}: {exc!r}")


def record_uploads(aggregator: Aggregator) -> list[dict[str, Any]]:
    """Note what each upload carried (``summary.json``'s ``uploads``) before OpenFL processes it unchanged."""
    uploads: list[dict[str, Any]] = []
    process = aggregator.send_local_task_results

    def recording(
        collaborator_name: str, round_number: int, task_name: str, data_size: int, named_tensors: Any
    ) -> Any:
        uploads.append(
            {
                "collaborator": collaborator_name,
                "round": round_number,
                "task": task_name,
                "data_size": data_size,
                "tensors": [
                    {"name": t.name, "tags": list(t.tags), "lossless": t.lossless} for t in named_tensors
                ],
            }
        )
        return process(collaborator_name, round_number, task_name, data_size, named_tensors)

    aggregator.send_local_task_results = recording
    return uploads

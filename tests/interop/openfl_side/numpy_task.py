"""The deterministic numpy task runner of the OpenFL-side collaborators, for OpenFL 1.7.1, 1.8 and 1.9.

Runs only with an OpenFL venv's python (``scripts/openfl-venv [VERSION]``); fedagg never imports openfl.

Two ways in:

* ``collaborator.py`` builds :class:`NumpyRunner` and :class:`SizedLoader` from its command line.
* An fx workspace copies this file to ``src/numpy_task.py`` and names :class:`PlanTaskRunner` and
  :class:`PlanDataLoader` in its plan (``task_runner.template: src.numpy_task.PlanTaskRunner``,
  ``data_loader.template: src.numpy_task.PlanDataLoader``), so ``fx plan initialize`` builds
  ``save/init.pbuf`` (zeros) and ``fx collaborator start -n NAME`` trains without torch or data. The
  collaborator's data path (``plan/data.yaml``: ``NAME,data/NAME``) holds ``collaborator.json``::

      {"step": 1.0, "train_size": 10, "valid_size": 5,
       "stall": {"task": "locally_tuned_model_validation", "seconds": 5.0, "round": null}}   # stall optional

  and the runner writes what it did to ``rounds-<pid>.json`` there after every task (the ``rounds`` list
  of ``collaborator.py``'s result). The plan's ``task_runner.settings.shapes`` (``{name: [dims]}``)
  gives the model's tensors (default ``{"w": [2, 3], "b": [3]}``).

With ``s`` = the step, ``r`` = the round and ``G`` = the global model received for round ``r``:

* ``train`` (data_size = train size): trained tensors ``T = G + s * (r + 1)`` (float32), metric
  ``loss = s / (r + 1)``.
* ``aggregated_model_validation`` (data_size = valid size): metric ``acc = mean(G) + s``.
* ``locally_tuned_model_validation`` (data_size = valid size): metric ``acc = mean(T) + s``.

``mean`` is over all elements of all tensors together.

A deterministic straggler: a :class:`Stall` makes the runner sleep at the start of its task's work
(after its inputs were fetched, before its result exists) in every round it runs that task, or only in
``Stall.round``. It logs ``round R: stalling S s before TASK`` first: by then the uploads of the
round's earlier tasks have been answered (OpenFL sends each task's results before starting the next).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from openfl.federated.data.loader import DataLoader
from openfl.federated.task.runner import TaskRunner
from openfl.utilities import TensorKey, change_tags

logger = logging.getLogger("openfl_side.numpy_task")

TASK_CONFIG: dict[str, dict[str, Any]] = {
    "aggregated_model_validation": {"function": "validate_task", "kwargs": {"apply": "global"}},
    "train": {"function": "train_task", "kwargs": {}},
    "locally_tuned_model_validation": {"function": "validate_task", "kwargs": {"apply": "local"}},
}
DEFAULT_SHAPES: dict[str, tuple[int, ...]] = {"w": (2, 3), "b": (3,)}
PROFILE_FILE = "collaborator.json"

TensorDict = dict[TensorKey, Any]


class SizedLoader:
    """The part of an OpenFL DataLoader that the collaborator and TaskRunner use."""

    def __init__(self, train_size: int, valid_size: int) -> None:
        self.train_size = train_size
        self.valid_size = valid_size

    def get_feature_shape(self) -> tuple[int, ...]:
        return (1,)

    def get_train_data_size(self) -> int:
        return self.train_size

    def get_valid_data_size(self) -> int:
        return self.valid_size


@dataclass(frozen=True)
class Stall:
    """Sleep ``seconds`` at the start of ``task``'s work, every round (or only in round ``round``)."""

    task: str
    seconds: float
    round: int | None = None


class NumpyRunner(TaskRunner):
    """Deterministic numpy task runner (see the module docstring for the formulas).

    ``record`` (optional): a JSON file rewritten after every task with the ``rounds`` list.
    """

    def __init__(
        self,
        data_loader: Any,
        shapes: dict[str, tuple[int, ...]],
        step: float,
        stall: Stall | None = None,
        record: Path | None = None,
    ) -> None:
        super().__init__(data_loader)
        self.shapes = shapes
        self.step = step
        self.stall = stall
        self.record = record
        self.weights = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
        self.rounds: dict[int, dict[str, Any]] = {}

    def _maybe_stall(self, task: str, round_num: int) -> None:
        if self.stall is None or self.stall.task != task:
            return
        if self.stall.round is not None and self.stall.round != round_num:
            return
        logger.info("round %d: stalling %.3f s before %s", round_num, self.stall.seconds, task)
        self._record(round_num).setdefault("stalled", []).append(task)
        self._save()
        time.sleep(self.stall.seconds)
        logger.info("round %d: resuming %s", round_num, task)

    def get_required_tensorkeys_for_function(self, func_name: str, **kwargs: Any) -> list[TensorKey]:
        if func_name == "validate_task" and kwargs["apply"] == "local":
            return [TensorKey(name, "LOCAL", 0, False, ("trained",)) for name in self.shapes]
        return [TensorKey(name, "GLOBAL", 0, False, ("model",)) for name in self.shapes]

    def _inputs(self, input_tensor_dict: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays = {name: np.asarray(input_tensor_dict[name], np.float32) for name in self.shapes}
        for name, array in arrays.items():
            if array.shape != tuple(self.shapes[name]):
                raise ValueError(f"tensor {name!r} has shape {array.shape}, expected {self.shapes[name]}")
        return arrays

    def _record(self, round_num: int, **fields: Any) -> dict[str, Any]:
        entry = self.rounds.setdefault(round_num, {"round": round_num, "metrics": {}})
        entry.update(fields)
        return entry

    def _save(self) -> None:
        if self.record is None:
            return
        temporary = self.record.with_name(self.record.name + ".tmp")
        temporary.write_text(json.dumps([self.rounds[r] for r in sorted(self.rounds)], indent=1) + "\n")
        temporary.replace(self.record)

    @staticmethod
    def _mean(arrays: dict[str, np.ndarray]) -> float:
        return float(np.concatenate([a.ravel() for a in arrays.values()]).astype(np.float64).mean())

    def train_task(
        self, col_name: str, round_num: int, input_tensor_dict: dict[str, Any], **kwargs: Any
    ) -> tuple[TensorDict, TensorDict]:
        self._maybe_stall("train", round_num)
        increment = np.float32(self.step * (round_num + 1))
        self.weights = {name: a + increment for name, a in self._inputs(input_tensor_dict).items()}
        loss = np.float32(self.step / (round_num + 1))
        entry = self._record(round_num, trained={k: v.tolist() for k, v in self.weights.items()})
        entry["metrics"]["train"] = {"loss": float(loss)}
        self._save()
        out: TensorDict = {TensorKey("loss", col_name, round_num, True, ("metric",)): loss}
        out.update(
            {
                TensorKey(k, col_name, round_num, False, ("trained",)): v.copy()
                for k, v in self.weights.items()
            }
        )
        return out, {}

    def validate_task(
        self, col_name: str, round_num: int, input_tensor_dict: dict[str, Any], **kwargs: Any
    ) -> tuple[TensorDict, TensorDict]:
        local = kwargs["apply"] == "local"
        task = "locally_tuned_model_validation" if local else "aggregated_model_validation"
        self._maybe_stall(task, round_num)
        self.weights = self._inputs(input_tensor_dict)
        acc = np.float32(self._mean(self.weights) + self.step)
        if local:
            entry = self._record(round_num)
        else:
            entry = self._record(round_num, **{"global": {k: v.tolist() for k, v in self.weights.items()}})
        entry["metrics"][task] = {"acc": float(acc)}
        self._save()
        tags = change_tags(("metric",), add_field="validate_local" if local else "validate_agg")
        return {TensorKey("acc", col_name, round_num, True, tags): acc}, {}


class PlanDataLoader(DataLoader):
    """An fx plan's data loader: the collaborator's ``<data_path>/collaborator.json`` (module docstring).

    ``data_path=None`` (``fx plan initialize`` builds the runner only for the initial model) means no data.
    """

    def __init__(self, data_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_path = None if data_path is None else Path(data_path)
        self.profile: dict[str, Any] = {}
        if self.data_path is not None:
            self.profile = json.loads((self.data_path / PROFILE_FILE).read_text())

    def get_feature_shape(self) -> tuple[int, ...]:
        return (1,)

    def get_train_data_size(self) -> int:
        return int(self.profile.get("train_size", 0))

    def get_valid_data_size(self) -> int:
        return int(self.profile.get("valid_size", 0))


class PlanTaskRunner(NumpyRunner):
    """An fx plan's task runner: :class:`NumpyRunner` set up by the plan and the collaborator's profile."""

    def __init__(
        self, data_loader: PlanDataLoader, shapes: dict[str, list[int]] | None = None, **kwargs: Any
    ):
        # OpenFL 1.8's `fx plan initialize` may hand a MockDataLoader (no profile, no data path).
        profile: dict[str, Any] = getattr(data_loader, "profile", {})
        data_path: Path | None = getattr(data_loader, "data_path", None)
        stall = profile.get("stall")
        record = None if data_path is None else data_path / f"rounds-{os.getpid()}.json"
        super().__init__(
            data_loader,
            {name: tuple(int(d) for d in dims) for name, dims in shapes.items()}
            if shapes
            else DEFAULT_SHAPES,
            float(profile.get("step", 1.0)),
            Stall(stall["task"], float(stall["seconds"]), stall.get("round")) if stall else None,
            record,
        )

    def get_tensor_dict(self, with_opt_vars: bool = False) -> dict[str, np.ndarray]:
        """The initial model (``fx plan initialize``): zeros."""
        return {name: np.zeros(shape, np.float32) for name, shape in self.shapes.items()}

    def initialize_tensorkeys_for_functions(self, with_opt_vars: bool = False) -> None:
        """Nothing to prepare: the required tensor keys are fixed."""
